"""Adaptive clipping's two releases per update (the clipped sum and the clipped count),
accounted from a training record, against dp_accounting composing them itself."""

import dp_accounting
import pytest
from dp_accounting import rdp

from keras_privacy.accounting.record_accounting import epsilon_of_record
from keras_privacy.queries import split_noise_multiplier
from keras_privacy.training.record import TrainingRecord, TrainingSegment

SIGMA, COUNT_STDDEV, Q, UPDATES, N = 1.1, 256 / 20, 256 / 60_000, 500, 60_000


def _record(sampling, adaptive):
    segment = TrainingSegment(
        sampling=sampling,
        dataset_size=N,
        expected_batch_size=256,
        noise_multiplier=SIGMA,
        l2_norm_clip=0.1,
        updates=UPDATES,
    )
    if adaptive:
        segment.adaptive_clip = {
            "target_quantile": 0.5,
            "learning_rate": 0.2,
            "clipped_count_stddev": COUNT_STDDEV,
            "gradient_noise_multiplier": split_noise_multiplier(SIGMA, COUNT_STDDEV),
            "count_noise_multiplier": 2 * COUNT_STDDEV,
        }
        segment.clip_values = [0.1] * UPDATES
    return TrainingRecord([segment])


def _paper_event(sampling):
    """The paper's pair per update, composed by dp_accounting itself."""
    pair = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.GaussianDpEvent(split_noise_multiplier(SIGMA, COUNT_STDDEV)),
            dp_accounting.GaussianDpEvent(2 * COUNT_STDDEV),
        ]
    )
    if sampling == "poisson":
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(Q, pair), UPDATES
        )
    passes = -(-UPDATES // (N // 256))
    return dp_accounting.SelfComposedDpEvent(pair, passes)


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_adaptive_record_epsilon_matches_dp_accounting(sampling):
    accountant = rdp.RdpAccountant()
    accountant.compose(_paper_event(sampling))
    expected = accountant.get_epsilon(1e-5)
    record = _record(sampling, adaptive=True)
    assert epsilon_of_record(record, 1e-5, "rdp") == pytest.approx(expected, rel=1e-9)
    # ... which is the fixed-clip run's epsilon at the user's sigma, on PLD too.
    fixed = _record(sampling, adaptive=False)
    assert epsilon_of_record(record, 1e-5) == pytest.approx(epsilon_of_record(fixed, 1e-5))


def test_adaptive_record_round_trips():
    record = _record("poisson", adaptive=True)
    again = TrainingRecord.from_dict(record.to_dict())
    assert again.segments[0].adaptive_clip == record.segments[0].adaptive_clip
    assert again.segments[0].clip_values == record.segments[0].clip_values
