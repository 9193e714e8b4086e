"""Framework-free accounting: golden values, monotonicity, calibration, statement, ledger."""

import json
import math
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_privacy import accounting
from keras_privacy.accounting import events, planning

TUTORIAL = dict(number_of_examples=60000, batch_size=256, noise_multiplier=1.1)


# -- golden values ---------------------------------------------------------------------


@pytest.mark.parametrize("accountant, expected", [("rdp", 2.597), ("pld", 2.382)])
def test_tf_privacy_tutorial_setting(accountant, expected):
    epsilon = accounting.compute_epsilon(**TUTORIAL, delta=1e-5, epochs=60, accountant=accountant)
    assert epsilon == pytest.approx(expected, abs=5e-4)


def test_old_tf_privacy_readme_value_came_from_the_older_rdp_conversion():
    """TF Privacy's README said 3.01. Same RDP curve, older RDP -> (eps, delta) conversion.

    Today's dp_accounting converts with Canonne-Kamath-Steinke / Asoodeh et al. (2.597);
    Mironov's (2017, Prop. 3) original eps = min_a rdp(a) + log(1/delta) / (a - 1) gives
    3.008, restricting to the old order set or not.
    """
    event = events.dp_sgd_event(**TUTORIAL, epochs=60)
    old_orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    for orders in (None, old_orders):
        rdp = dp_accounting.rdp.RdpAccountant(orders=orders)
        rdp.compose(event)
        mironov = np.min(rdp.rdp - math.log(1e-5) / (rdp.orders - 1))
        assert mironov == pytest.approx(3.01, abs=0.005)
        assert rdp.get_epsilon(1e-5) == pytest.approx(2.597, abs=5e-4)


def test_jax_privacy_docstring_setting():
    epsilon = accounting.compute_epsilon(5120, 512, 3.0, delta=1e-6, steps=512)  # q = 0.1
    assert epsilon == pytest.approx(3.77, abs=5e-3)


def test_three_gaussians_delta_from_dp_accounting_pld_test():
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(math.sqrt(3)), 3)
    assert accounting.delta_for_event(event, 1.0, "pld") == pytest.approx(0.126936, abs=2e-6)


@pytest.mark.parametrize("order", [2.0, 8.0, 32.0])
def test_gaussian_rdp_is_order_over_two_sigma_squared(order):
    sigma = 1.7
    rdp = dp_accounting.rdp.RdpAccountant(orders=[order])
    rdp.compose(events.shuffle_dp_sgd_event(1, sigma))
    assert rdp.rdp[0] == pytest.approx(order / (2 * sigma**2), rel=1e-10)


def test_noise_calibration_reference_values():
    rdp = accounting.compute_noise_multiplier(3.0, 1e-5, 60000, 256, epochs=60, accountant="rdp")
    assert rdp == pytest.approx(1.014, abs=1e-3)
    assert accounting.compute_epsilon(60000, 256, rdp, delta=1e-5, epochs=60, accountant="rdp") <= 3


@pytest.mark.slow
def test_noise_calibration_reference_values_pld():
    pld = accounting.compute_noise_multiplier(3.0, 1e-5, 60000, 256, epochs=60)
    assert pld == pytest.approx(0.968, abs=1e-3)
    assert accounting.compute_epsilon(60000, 256, pld, delta=1e-5, epochs=60) <= 3.0
    assert accounting.compute_epsilon(60000, 256, pld - 2e-4, delta=1e-5, epochs=60) > 3.0


def test_jax_privacy_calibration_to_epsilon_one():
    sigma = accounting.compute_noise_multiplier(1.0, 1e-6, 5120, 512, steps=512)
    assert sigma == pytest.approx(9.66, abs=0.01)
    assert accounting.compute_epsilon(5120, 512, sigma, delta=1e-6, steps=512) <= 1.0


# -- structure of the model ----------------------------------------------------------


def test_pld_is_tighter_than_rdp():
    for kwargs in (dict(epochs=60), dict(epochs=3), dict(steps=50)):
        for sampling in ("poisson", "shuffle"):
            pld = accounting.compute_epsilon(
                **TUTORIAL, delta=1e-5, sampling=sampling, accountant="pld", **kwargs
            )
            rdp = accounting.compute_epsilon(
                **TUTORIAL, delta=1e-5, sampling=sampling, accountant="rdp", **kwargs
            )
            assert pld <= rdp


def _eps(steps=1000, q=0.01, sigma=1.0, sampling="poisson", accountant="rdp"):
    n = 100000
    return accounting.compute_epsilon(
        n, round(q * n), sigma, delta=1e-6, steps=steps, sampling=sampling, accountant=accountant
    )


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_is_monotone_in_steps_q_and_sigma(accountant):
    by_steps = [_eps(steps=s, accountant=accountant) for s in (10, 100, 1000)]
    by_q = [_eps(q=q, accountant=accountant) for q in (0.001, 0.01, 0.05)]
    by_sigma = [_eps(sigma=s, accountant=accountant) for s in (0.8, 1.0, 2.0)]
    assert by_steps == sorted(by_steps) and len(set(by_steps)) == 3
    assert by_q == sorted(by_q) and len(set(by_q)) == 3
    assert by_sigma == sorted(by_sigma, reverse=True) and len(set(by_sigma)) == 3


def test_shuffle_gets_no_amplification_and_is_the_per_epoch_gaussian():
    epsilon = accounting.compute_epsilon(**TUTORIAL, delta=1e-5, epochs=60, sampling="shuffle")
    one_gaussian = dp_accounting.get_epsilon_gaussian(1.1 / math.sqrt(60), 1e-5)
    assert epsilon == pytest.approx(one_gaussian, rel=1e-9)
    # the PLD accountant on the composed event agrees
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(events.shuffle_dp_sgd_event(5, 1.1))
    assert accounting.compute_epsilon(
        **TUTORIAL, delta=1e-5, epochs=5, sampling="shuffle"
    ) == pytest.approx(pld.get_epsilon(1e-5), rel=1e-3)
    poisson = accounting.compute_epsilon(**TUTORIAL, delta=1e-5, epochs=60)
    assert epsilon > 10 * poisson
    # partial epochs round up
    assert accounting.compute_epsilon(
        **TUTORIAL, delta=1e-5, epochs=2.1, sampling="shuffle"
    ) == accounting.compute_epsilon(**TUTORIAL, delta=1e-5, epochs=3, sampling="shuffle")


def test_microbatching_is_accounted_at_half_the_noise_multiplier():
    with_microbatches = accounting.compute_epsilon(
        **TUTORIAL, delta=1e-5, epochs=5, used_microbatching=True, accountant="rdp"
    )
    half_sigma = accounting.compute_epsilon(
        60000, 256, 0.55, delta=1e-5, epochs=5, accountant="rdp"
    )
    assert with_microbatches == half_sigma


def test_epochs_are_converted_to_updates_like_tf_privacy():
    plan = planning.DpSgdPlan.create(60000, 256, 1.1, epochs=60)
    assert plan.poisson_updates == 14063 and plan.shuffle_passes == 60
    # steps of fixed batches: at least floor(N/B) = 234 per pass, so 14063 steps touch 61
    assert planning.DpSgdPlan.create(60000, 256, 1.1, steps=14063).shuffle_passes == 61


def test_noise_zero_means_infinite_epsilon():
    assert accounting.compute_epsilon(1000, 10, 0.0, delta=1e-5, steps=1) == math.inf


# -- user-level privacy ----------------------------------------------------------------


def test_user_level_shuffle_is_the_gaussian_with_k_times_the_sensitivity():
    k = 3
    user = accounting.compute_epsilon(
        **TUTORIAL, delta=1e-5, epochs=4, sampling="shuffle", max_examples_per_user=k
    )
    assert user == pytest.approx(dp_accounting.get_epsilon_gaussian(1.1 / k / 2, 1e-5), rel=1e-9)


def test_user_level_poisson_uses_the_group_privacy_lemma():
    example = accounting.compute_epsilon(**TUTORIAL, delta=1e-5, epochs=5, accountant="rdp")
    plan = planning.DpSgdPlan.create(**TUTORIAL, epochs=5, max_examples_per_user=2)
    details = plan.epsilon_details(1e-5, "poisson", "rdp")
    assert details["epsilon"] == 2 * details["example_epsilon"] > 2 * example
    # Vadhan Lemma 2.2 (sum in its proof): delta_example (1 + e^eps) <= delta_user for k = 2
    assert (1 + math.exp(details["example_epsilon"])) * details["example_delta"] <= 1e-5
    # and tight: a slightly larger example-level delta would not be admissible
    assert (1 + math.exp(details["example_epsilon"])) * details["example_delta"] > 0.999e-5
    assert accounting.compute_epsilon(
        **TUTORIAL, delta=1e-5, epochs=5, accountant="rdp", max_examples_per_user=1
    ) == pytest.approx(example)


# -- calibration and inverses ------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.floats(0.3, 8.0),
    delta_exponent=st.integers(4, 8),
    n=st.integers(1000, 100000),
    batch_fraction=st.floats(0.001, 0.2),
    steps=st.integers(1, 3000),
    sampling=st.sampled_from(["poisson", "shuffle"]),
)
def test_calibrated_sigma_meets_the_target(
    target, delta_exponent, n, batch_fraction, steps, sampling
):
    batch = max(1, round(batch_fraction * n))
    delta = min(10.0**-delta_exponent, 0.1 / n)  # delta >= 1/N is refused
    common = dict(steps=steps, sampling=sampling, accountant="rdp")
    sigma = accounting.compute_noise_multiplier(target, delta, n, batch, **common)
    assert accounting.compute_epsilon(n, batch, sigma, delta=delta, **common) <= target
    # and it is (nearly) the smallest: 0.2% less noise exceeds the target
    assert accounting.compute_epsilon(n, batch, sigma * 0.998, delta=delta, **common) > target


def test_max_steps_and_epochs_are_the_largest_within_budget():
    args = (2.0, 1e-5, 60000, 256, 1.1)
    steps = accounting.compute_max_steps(*args, accountant="rdp")
    assert _within(steps, "rdp") <= 2.0 < _within(steps + 1, "rdp")
    epochs = accounting.compute_max_epochs(*args, accountant="rdp")
    assert epochs == math.floor(steps * 256 / 60000)
    shuffle_args = (20.0, 1e-5, 60000, 256, 1.1)
    shuffle_epochs = accounting.compute_max_epochs(
        *shuffle_args, sampling="shuffle", accountant="rdp"
    )
    assert shuffle_epochs > 1
    eps = [
        accounting.compute_epsilon(
            60000, 256, 1.1, delta=1e-5, epochs=e, sampling="shuffle", accountant="rdp"
        )
        for e in (shuffle_epochs, shuffle_epochs + 1)
    ]
    assert eps[0] <= 20.0 < eps[1]
    assert accounting.compute_max_steps(0.001, 1e-5, 100, 50, 0.5) == 0


def _within(steps, accountant):
    return accounting.compute_epsilon(
        60000, 256, 1.1, delta=1e-5, steps=steps, accountant=accountant
    )


@pytest.mark.slow
def test_max_steps_pld():
    steps = accounting.compute_max_steps(2.382, 1e-5, 60000, 256, 1.1)
    assert _within(steps, "pld") <= 2.382 < _within(steps + 1, "pld")


# -- bad input ---------------------------------------------------------------------------

BAD_INPUTS = [
    (dict(delta=1.0), "delta", "1.0"),
    (dict(delta=0), "delta", "0"),
    (dict(batch_size=70000), "batch_size", "70000"),
    (dict(noise_multiplier=-1.0), "noise_multiplier", "-1.0"),
    (dict(steps=0, epochs=None), "steps", "0"),
    (dict(epochs=-1), "epochs", "-1"),
    (dict(sampling="random"), "sampling", "random"),
    (dict(accountant="moments"), "accountant", "moments"),
    (dict(max_examples_per_user=0), "max_examples_per_user", "0"),
    (dict(number_of_examples=2.5), "number_of_examples", "2.5"),
]


@pytest.mark.parametrize("change, name, value", BAD_INPUTS)
def test_bad_input_names_the_argument_and_the_value(change, name, value):
    kwargs = dict(**TUTORIAL, delta=1e-5, epochs=1)
    kwargs.update(change)
    with pytest.raises(ValueError, match=rf"{name}.*{value}"):
        accounting.compute_epsilon(**kwargs)


def test_bad_targets_are_rejected():
    with pytest.raises(ValueError, match="target_epsilon.*0"):
        accounting.compute_noise_multiplier(0, 1e-5, 100, 10, epochs=1)
    with pytest.raises(ValueError, match="target_epsilon.*-2"):
        accounting.compute_max_steps(-2, 1e-5, 100, 10, 1.0)
    with pytest.raises(ValueError, match="epochs and steps"):
        accounting.compute_epsilon(100, 10, 1.0, delta=1e-5)


# -- statement -----------------------------------------------------------------------------


def test_statement_shows_both_assumptions_and_user_level():
    text = accounting.compute_dp_sgd_privacy_statement(
        60000, 256, 60, 1.1, 1e-5, used_microbatching=False, max_examples_per_user=2
    )
    assert "2.382" in text and "54.05" in text
    assert "Poisson" in text and "shuffled" in text and "User-level" in text
    assert "mixture of Gaussians" in text and "14,063" in text and "5.27 " in text
    report = accounting.compute_dp_sgd_privacy_report(
        60000, 256, 1.1, 1e-5, num_epochs=60, used_microbatching=False
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["epsilon"]["poisson"] == pytest.approx(2.382, abs=5e-4)
    assert data["user_epsilon"] is None


def test_statement_defaults_to_microbatching_like_tf_privacy():
    text = accounting.compute_dp_sgd_privacy_statement(60000, 256, 60, 1.1, 1e-5)
    assert "2C" in text and "1.1 / 2" in text


# -- training record and ledger ------------------------------------------------------------


def _record():
    from keras_privacy.training.record import TrainingRecord, TrainingSegment

    return TrainingRecord(
        [
            TrainingSegment("poisson", 60000, 256, 1.1, 1.0, updates=500),
            TrainingSegment("shuffle", 60000, 256, 2.0, 1.0, updates=300),
            TrainingSegment("fixed_batches", 60000, 128, 2.0, 1.0, None, 4, updates=10),
        ]
    )


def test_record_event_composes_segments_with_their_sampling():
    record = _record()
    event = accounting.training_record_event(record)
    expected = dp_accounting.ComposedDpEvent(
        [
            events.poisson_dp_sgd_event(256 / 60000, 1.1, 500),
            events.shuffle_dp_sgd_event(2, 2.0),  # 300 updates of 256: 2 passes
            events.shuffle_dp_sgd_event(1, 2.0, used_microbatching=True),
        ]
    )
    assert event == expected
    assert accounting.epsilon_of_record(record, 1e-5, "rdp") == accounting.epsilon_for_event(
        expected, 1e-5, "rdp"
    )


def test_record_budget_search():
    record = _record()
    record.segments = record.segments[:1]
    record.current.updates = 0
    target = accounting.compute_epsilon(60000, 256, 1.1, delta=1e-5, steps=700, accountant="rdp")
    assert accounting.max_updates_within_budget(record, target, 1e-5, "rdp") == 700


def test_ledger_round_trips_through_json_bit_identically():
    ledger = accounting.PrivacyLedger.from_training_record(_record())
    assert ledger.num_events == 500 + 2 + 1
    text = ledger.to_json()
    restored = accounting.PrivacyLedger.from_json(text)
    assert restored == ledger
    for accountant in ("rdp", "pld"):
        assert restored.epsilon(1e-5, accountant) == ledger.epsilon(1e-5, accountant)


def test_ledger_records_one_event_per_update_and_merges_runs():
    ledger = accounting.PrivacyLedger()
    update = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0))
    for _ in range(7):
        ledger.record(update)
    ledger.record(dp_accounting.GaussianDpEvent(3.0), count=2)
    assert ledger.num_events == 9 and len(ledger.entries) == 2
    assert ledger.epsilon(1e-5, "rdp") == accounting.epsilon_for_event(
        dp_accounting.ComposedDpEvent(
            [
                dp_accounting.SelfComposedDpEvent(update, 7),
                dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(3.0), 2),
            ]
        ),
        1e-5,
        "rdp",
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "laplace", "noise_multiplier": 1.0},
        {"type": "gaussian", "noise_multiplier": "1.0"},
        {"type": "gaussian", "noise_multiplier": -1.0},
        {"type": "poisson_sampled", "sampling_probability": 2.0, "event": {"type": "no_op"}},
        {"type": "self_composed", "count": 1.5, "event": {"type": "no_op"}},
        {"module_name": "os", "class_name": "system"},
    ],
)
def test_ledger_loading_rejects_anything_unexpected(bad):
    data = {
        "format": "keras-privacy/privacy-ledger",
        "version": 1,
        "entries": [{"event": bad, "count": 1, "note": ""}],
    }
    with pytest.raises(ValueError, match="privacy ledger"):
        accounting.PrivacyLedger.from_dict(data)


def test_unknown_dataset_size_is_stated_clearly():
    from keras_privacy.training.record import TrainingRecord, TrainingSegment

    record = TrainingRecord([TrainingSegment("fixed_batches", None, 32, 1.0, 1.0, updates=5)])
    with pytest.raises(accounting.DatasetSizeUnknownError, match="dataset_size=None"):
        accounting.epsilon_of_record(record, 1e-5)


# -- no deep-learning framework --------------------------------------------------------------


def test_accounting_and_cli_import_no_deep_learning_framework():
    code = (
        "import sys; import keras_privacy.accounting, keras_privacy.cli; "
        "from keras_privacy import compute_epsilon; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'jax', 'torch', 'flax')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_other_releases_are_composed_with_the_run_and_planned_around():
    """A statistic released before training (a Gaussian with noise multiplier 5) is
    composed with the run: the epsilon is that of the composition computed directly with
    dp_accounting, and the calibrated sigma leaves room for it."""
    release = dp_accounting.GaussianDpEvent(5.0)
    n, batch, steps, delta = 60_000, 8192, 560, 1e-5
    alone = accounting.compute_epsilon(n, batch, 4.7, delta=delta, steps=steps)
    both = accounting.compute_epsilon(
        n, batch, 4.7, delta=delta, steps=steps, other_releases=[release]
    )
    run = events.poisson_dp_sgd_event(batch / n, 4.7, steps)
    direct = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    direct.compose(dp_accounting.ComposedDpEvent([release, run]))
    assert both > alone
    assert both == pytest.approx(direct.get_epsilon(delta), rel=2e-3)
    sigma = accounting.compute_noise_multiplier(3.0, delta, n, batch, steps=steps)
    sigma_with = accounting.compute_noise_multiplier(
        3.0, delta, n, batch, steps=steps, other_releases=(release,)
    )
    assert sigma_with > sigma
    assert (
        accounting.compute_epsilon(
            n, batch, sigma_with, delta=delta, steps=steps, other_releases=(release,)
        )
        <= 3.0
    )
    assert (
        accounting.compute_epsilon(
            n, batch, sigma, delta=delta, steps=steps, other_releases=(release,)
        )
        > 3.0
    )


def test_other_releases_must_be_dp_events_and_example_level():
    with pytest.raises(ValueError, match="not a dp_accounting DpEvent"):
        accounting.compute_epsilon(60_000, 256, 1.0, delta=1e-5, epochs=1, other_releases=[1.0])
    with pytest.raises(ValueError, match="example-level guarantee only"):
        accounting.compute_epsilon(
            60_000,
            256,
            1.0,
            delta=1e-5,
            epochs=1,
            max_examples_per_user=4,
            other_releases=[dp_accounting.GaussianDpEvent(5.0)],
        )
