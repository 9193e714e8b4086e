"""DP queries (keras_privacy.queries): clipping, noise, events, quantiles, adaptive clipping.

Framework-free: these tests import no deep-learning framework.
"""

import math
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest

from keras_privacy import queries as Q


def _run(query, records, global_state=None):
    """One sample through the query's protocol: params, accumulate, noised result."""
    state = query.initial_global_state() if global_state is None else global_state
    params = query.derive_sample_params(state)
    sample = query.initial_sample_state(records[0])
    for record in records:
        sample = query.accumulate_record(params, sample, record)
    return query.get_noised_result(sample, state)


def test_gaussian_sum_clips_each_whole_record_then_sums():
    records = [
        {"w": np.array([3.0, 4.0]), "b": np.array(0.0)},  # norm 5 -> scaled to 1
        {"w": np.array([0.3, 0.0]), "b": np.array(0.4)},  # norm 0.5 -> unchanged
    ]
    result, _, event = _run(Q.GaussianSumQuery(l2_norm_clip=1.0, stddev=0.0), records)
    np.testing.assert_allclose(result["w"], [0.6 + 0.3, 0.8])
    np.testing.assert_allclose(result["b"], 0.4)
    assert isinstance(event, dp_accounting.NonPrivateDpEvent)


def test_removing_one_record_moves_the_sum_by_at_most_the_clip_norm():
    rng = np.random.default_rng(0)
    records = [
        [rng.normal(size=5) * 10 ** rng.uniform(-2, 3), rng.normal(size=(2, 2))] for _ in range(20)
    ]
    query = Q.GaussianSumQuery(l2_norm_clip=0.7, stddev=0.0)
    full, _, _ = _run(query, records)
    for i in range(len(records)):
        without, _, _ = _run(query, records[:i] + records[i + 1 :])
        moved = math.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(full, without, strict=True)))
        assert moved <= 0.7 + 1e-12


def test_gaussian_noise_has_the_stated_scale_and_event():
    query = Q.GaussianSumQuery(l2_norm_clip=2.0, stddev=3.0, rng=1)
    result, state, event = _run(query, [np.zeros(40_000)])
    assert abs(np.std(result) - 3.0) < 0.05 and abs(np.mean(result)) < 0.05
    assert event == dp_accounting.GaussianDpEvent(1.5)
    assert state == query.initial_global_state()
    # Seeded generators repeat (tests only); fresh ones do not.
    again, _, _ = _run(Q.GaussianSumQuery(2.0, 3.0, rng=1), [np.zeros(40_000)])
    np.testing.assert_array_equal(result, again)
    fresh, _, _ = _run(Q.GaussianSumQuery(2.0, 3.0), [np.zeros(40_000)])
    assert not np.array_equal(result, fresh)


def test_a_record_with_a_non_finite_norm_contributes_nothing():
    result, _, _ = _run(Q.GaussianSumQuery(1.0, 0.0), [np.array([np.inf, 1.0]), np.ones(2)])
    np.testing.assert_allclose(result, [1 / math.sqrt(2)] * 2)


def test_zero_clip_releases_nothing_about_the_records():
    result, _, event = _run(Q.GaussianSumQuery(0.0, 1.0, rng=0), [np.ones(3) * 5])
    assert isinstance(event, dp_accounting.NoOpDpEvent)
    noise_only, _, _ = _run(Q.GaussianSumQuery(0.0, 1.0, rng=0), [np.zeros(3)])
    np.testing.assert_array_equal(result, noise_only)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Q.GaussianSumQuery(-1.0, 1.0), "l2_norm_clip"),
        (lambda: Q.GaussianSumQuery(1.0, float("nan")), "stddev"),
        (lambda: Q.GaussianAverageQuery(1.0, 1.0, 0), "denominator"),
        (lambda: Q.QuantileEstimatorQuery(1.0, 1.5, 0.2, 1.0, 100), "target_quantile"),
        (lambda: Q.QuantileEstimatorQuery(0.0, 0.5, 0.2, 1.0, 100), "initial_estimate"),
        (lambda: Q.split_noise_multiplier(1.0, 0.4), "too small"),
    ],
)
def test_bad_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_sum_queries_need_a_template_and_nested_queries_need_queries():
    with pytest.raises(ValueError, match="template"):
        Q.GaussianSumQuery(1.0, 1.0).initial_sample_state()
    with pytest.raises(TypeError, match="DP queries"):
        Q.NestedQuery({"a": 3})
    with pytest.raises(TypeError, match="sum query"):
        Q.NormalizedQuery(Q.NestedQuery({"a": Q.GaussianSumQuery(1.0, 1.0)}), 2.0)


def test_average_divides_the_noised_sum_by_the_public_denominator():
    records = [np.array([2.0]), np.array([0.5])]
    result, state, event = _run(Q.GaussianAverageQuery(1.0, 0.0, denominator=4), records)
    np.testing.assert_allclose(result, [(1.0 + 0.5) / 4])
    assert state.denominator == 4.0 and isinstance(event, dp_accounting.NonPrivateDpEvent)


def test_nested_query_applies_each_query_to_its_part_and_composes_the_events():
    query = Q.NestedQuery(
        {
            "grad": Q.GaussianSumQuery(1.0, 0.0),
            "stats": Q.GaussianAverageQuery(10.0, 20.0, 2, rng=0),
        }
    )
    records = [
        {"grad": [np.array([3.0, 4.0])], "stats": np.array([1.0])},
        {"grad": [np.array([0.0, 0.5])], "stats": np.array([3.0])},
    ]
    result, state, event = _run(query, records)
    np.testing.assert_allclose(result["grad"][0], [0.6, 0.8 + 0.5])
    assert result["stats"].shape == (1,)
    assert event == dp_accounting.ComposedDpEvent(
        [dp_accounting.NonPrivateDpEvent(), dp_accounting.GaussianDpEvent(2.0)]
    )
    assert set(state) == {"grad", "stats"}
    # Partial states of disjoint records merge into the state of all of them.
    params = query.derive_sample_params(state)
    parts = []
    for chunk in (records[:1], records[1:]):
        sample = query.initial_sample_state(records[0])
        for record in chunk:
            sample = query.accumulate_record(params, sample, record)
        parts.append(sample)
    merged = query.merge_sample_states(*parts)
    np.testing.assert_allclose(merged["grad"][0], [0.6, 1.3])
    np.testing.assert_allclose(merged["stats"], [4.0])


def _exponential_norm_records(rng, count, scale=1.0):
    """Records whose L2 norms are Exponential(scale) (median scale * ln 2)."""
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return list(directions * rng.exponential(scale, size=(count, 1)))


@pytest.mark.parametrize("geometric", [True, False])
@pytest.mark.parametrize("noisy", [False, True])
def test_quantile_estimate_converges_to_the_target_quantile(geometric, noisy):
    rng = np.random.default_rng(3)
    m = 500
    query = Q.QuantileEstimatorQuery(
        initial_estimate=4.0,
        target_quantile=0.5,
        learning_rate=0.2,
        below_estimate_stddev=m / 20 if noisy else 0.0,
        expected_num_records=m,
        geometric_update=geometric,
        rng=4,
    )
    state = query.initial_global_state()
    for _ in range(150):
        estimate, state, event = _run(query, list(rng.exponential(1.0, size=m)), state)
    assert abs(estimate - math.log(2)) < (0.1 if noisy else 0.03)
    assert query.derive_metrics(state) == {"estimate": estimate}
    expected = dp_accounting.GaussianDpEvent(m / 10) if noisy else dp_accounting.NonPrivateDpEvent()
    assert event == expected  # count sensitivity 1/2: multiplier stddev / (1/2)


def test_adaptive_clip_sums_at_the_current_clip_then_moves_it_to_the_target_quantile():
    rng = np.random.default_rng(5)
    m, target = 300, 0.8
    query = Q.QuantileAdaptiveClipSumQuery(
        initial_l2_norm_clip=0.1,
        noise_multiplier=0.0,
        target_unclipped_quantile=target,
        learning_rate=0.2,
        clipped_count_stddev=0.0,
        expected_num_records=m,
        rng=6,
    )
    state = query.initial_global_state()
    records = _exponential_norm_records(rng, m)
    total, state, _ = _run(query, records, state)
    # The first sum uses the initial clip, 0.1, for every record.
    expected = sum(r * min(1.0, 0.1 / np.linalg.norm(r)) for r in records)
    np.testing.assert_allclose(total, expected)
    for _ in range(150):
        total, state, event = _run(query, _exponential_norm_records(rng, m), state)
    clip = query.derive_metrics(state)["clip"]
    assert abs(clip - (-math.log(1 - target))) < 0.05  # Exponential(1)'s 0.8 quantile
    assert state.sum_state.stddev == 0.0
    assert event == dp_accounting.ComposedDpEvent(
        [dp_accounting.NonPrivateDpEvent(), dp_accounting.NonPrivateDpEvent()]
    )


def test_adaptive_clip_noise_follows_the_clip_and_its_event_composes_both_queries():
    query = Q.QuantileAdaptiveClipSumQuery(2.0, 1.5, 0.5, 0.3, 25.0, 500, rng=0)
    state = query.initial_global_state()
    result, state, event = _run(query, [np.zeros(20_000)], state)
    assert abs(np.std(result) - 1.5 * 2.0) < 0.06  # noise z * C at the clip used
    # An all-zero record is below the estimate: the next clip is smaller, so its noise.
    assert state.sum_state.l2_norm_clip < 2.0
    assert math.isclose(state.sum_state.stddev, 1.5 * state.sum_state.l2_norm_clip)
    assert event == dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(1.5), dp_accounting.GaussianDpEvent(50.0)]
    )


@pytest.mark.parametrize("z, s", [(1.1, 12.5), (0.8, 2.0), (3.0, 1.6)])
def test_split_noise_multiplier_makes_the_pair_exactly_the_asked_gaussian(z, s):
    z_sum = Q.split_noise_multiplier(z, s)
    assert z_sum > z
    pair = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(z_sum), dp_accounting.GaussianDpEvent(2 * s)]
    )
    single = dp_accounting.GaussianDpEvent(z)
    for delta in (1e-5, 1e-8):
        rdp = [
            dp_accounting.rdp.RdpAccountant().compose(e).get_epsilon(delta) for e in (pair, single)
        ]
        assert math.isclose(rdp[0], rdp[1], rel_tol=1e-9)
        pld = [
            dp_accounting.pld.PLDAccountant().compose(e).get_epsilon(delta) for e in (pair, single)
        ]
        assert math.isclose(pld[0], pld[1], rel_tol=2e-3)


def test_the_queries_import_no_framework():
    code = (
        "import sys, keras_privacy.queries;"
        "bad = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nested_metrics_are_named_by_path_and_structures_must_match():
    adaptive = Q.QuantileAdaptiveClipSumQuery(3.0, 1.0, 0.5, 0.2, 10.0, 100)
    query = Q.NestedSumQuery({"a": adaptive, "b": [Q.GaussianSumQuery(1.0, 1.0), adaptive]})
    metrics = query.derive_metrics(query.initial_global_state())
    assert metrics == {"a/clip": 3.0, "b/1/clip": 3.0}
    assert Q.NestedQuery(adaptive).derive_metrics(adaptive.initial_global_state()) == {"clip": 3.0}
    single = Q.GaussianSumQuery(1.0, 0.0)
    with pytest.raises(TypeError, match="structures differ"):
        _run(single, [[1.0], (1.0,)])  # a list and a tuple
    with pytest.raises(ValueError, match="structures differ"):
        _run(single, [[1.0], [1.0, 1.0]])
    with pytest.raises(TypeError, match="structures differ"):
        _run(Q.NestedSumQuery([single, [single]]), [[1.0, 1.0]])  # record not as deep


def test_a_learning_rate_object_is_read_at_every_update():
    class Schedule:  # anything np.asarray reads as a number, e.g. a framework variable
        value = 1.0

        def __array__(self, dtype=None, copy=None):
            return np.asarray(self.value, dtype=dtype)

    rate = Schedule()
    query = Q.QuantileEstimatorQuery(10.0, 0.5, rate, 0.0, 2, geometric_update=False)
    estimate, state, _ = _run(query, [np.array(1.0), np.array(2.0)])
    assert estimate == 9.5  # both below: fraction 1, step 1.0 * (1 - 0.5)
    rate.value = 0.0
    estimate, _, _ = _run(query, [np.array(1.0), np.array(2.0)], state)
    assert estimate == 9.5
