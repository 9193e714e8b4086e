"""Lower confidence bounds on ratios of binomial proportions and TF Privacy's ε bounds.

Expected values are derived here from the textbook formulas (with ``math``), from exact
binomial coverage computed by enumeration, and from seeded simulations; nothing needs a
deep-learning framework.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from keras_privacy.privacy_tests.ratio_bounds import (
    BoundMethod,
    EpsilonLowerBound,
    RatioBound,
    counts_at_thresholds,
    ratio_lower_bound,
)

Z95 = 1.6448536269514722  # Φ⁻¹(0.95)
ALL = list(BoundMethod)
NORMAL_APPROXIMATIONS = [m for m in BoundMethod if m is not BoundMethod.CLOPPER_PEARSON]


# ---- each interval against its formula, by hand ----------------------------------------------


def test_katz_log_by_hand():
    x1, n1, x2, n2 = 30, 100, 10, 200
    p1, p2 = x1 / n1, x2 / n2
    expected = p1 / p2 * math.exp(-Z95 * math.sqrt((1 - p1) / x1 + (1 - p2) / x2))
    assert ratio_lower_bound(x1, n1, x2, n2, 0.05, "katz-log") == pytest.approx(expected)


def test_adjusted_log_by_hand():
    x1, n1, x2, n2 = 7, 40, 3, 90
    a1, a2, m1, m2 = x1 + 0.5, x2 + 0.5, n1 + 0.5, n2 + 0.5
    spread = math.sqrt(1 / a1 - 1 / m1 + 1 / a2 - 1 / m2)
    expected = (a1 / m1) / (a2 / m2) * math.exp(-Z95 * spread)
    got = ratio_lower_bound(x1, n1, x2, n2, 0.05, BoundMethod.ADJUSTED_LOG)
    assert got == pytest.approx(expected)


def test_bailey_by_hand():
    x1, n1, x2, n2 = 50, 120, 20, 150
    p1, p2 = x1 / n1, x2 / n2
    q1, q2 = 1 - p1, 1 - p2
    root = math.sqrt(q1 / x1 + q2 / x2 - Z95**2 * q1 * q2 / (9 * x1 * x2))
    expected = p1 / p2 * ((1 - Z95 / 3 * root) / (1 - Z95**2 * q2 / (9 * x2))) ** 3
    assert ratio_lower_bound(x1, n1, x2, n2, 0.05, "bailey") == pytest.approx(expected)


def test_inverse_sinh_by_hand():
    x1, n1, x2, n2 = 12, 60, 4, 80
    spread = math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    expected = (x1 / n1) / (x2 / n2) * math.exp(-2 * math.asinh(Z95 / 2 * spread))
    assert ratio_lower_bound(x1, n1, x2, n2, 0.05, "inv-sinh") == pytest.approx(expected)


def test_clopper_pearson_by_hand():
    # exact bounds, alpha/2 on each side: lower of p1 / upper of p2
    x1, n1, x2, n2, alpha = 40, 50, 5, 60, 0.1
    low = stats.beta.ppf(alpha / 2, x1, n1 - x1 + 1)
    high = stats.beta.ppf(1 - alpha / 2, x2 + 1, n2 - x2)
    got = ratio_lower_bound(x1, n1, x2, n2, alpha, "clopper-pearson")
    assert got == pytest.approx(low / high)
    # all flagged members, no flagged non-members: closed forms of the Beta quantiles
    got = ratio_lower_bound(500, 500, 0, 500, 0.01, "clopper-pearson")
    closed = 0.005 ** (1 / 500) / (1 - 0.005 ** (1 / 500))
    assert got == pytest.approx(closed)
    assert math.log(got) == pytest.approx(4.54, abs=0.005)


# ---- coverage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("p1, p2", [(0.5, 0.5), (0.8, 0.2), (0.3, 0.05), (0.95, 0.6)])
def test_clopper_pearson_exact_coverage_at_small_n(p1, p2):
    # P[L ≤ p1/p2] summed exactly over every outcome (x1, x2) of Bin(12, p1) × Bin(15, p2)
    n1, n2, alpha = 12, 15, 0.1
    x1, x2 = np.meshgrid(np.arange(n1 + 1), np.arange(n2 + 1), indexing="ij")
    bounds = ratio_lower_bound(x1, n1, x2, n2, alpha, BoundMethod.CLOPPER_PEARSON)
    weights = np.outer(stats.binom.pmf(np.arange(n1 + 1), n1, p1), stats.binom.pmf(x2[0], n2, p2))
    coverage = float(np.sum(weights[bounds <= p1 / p2]))
    assert coverage >= 1 - alpha


def test_clopper_pearson_coverage_by_seeded_simulation():
    rng = np.random.default_rng(7)
    n1, n2, alpha, repeats = 20, 25, 0.05, 4000
    for p1, p2 in [(0.6, 0.1), (0.35, 0.3)]:
        x1 = rng.binomial(n1, p1, size=repeats)
        x2 = rng.binomial(n2, p2, size=repeats)
        bounds = ratio_lower_bound(x1, n1, x2, n2, alpha, "clopper-pearson")
        assert np.mean(bounds <= p1 / p2) >= 1 - alpha


def _randomized_response_counts(epsilon, size, repeats, seed):
    # members answer 1 w.p. e^ε/(1+e^ε), non-members w.p. 1/(1+e^ε): an ε-DP mechanism whose
    # TPR/FPR and TNR/FNR at the threshold ½ (fixed in advance) are both exactly e^ε
    rng = np.random.default_rng(seed)
    keep = math.exp(epsilon) / (1 + math.exp(epsilon))
    return rng.binomial(size, keep, repeats), rng.binomial(size, 1 - keep, repeats)


@pytest.mark.parametrize("method", ALL)
def test_epsilon_bound_at_a_fixed_threshold_exceeds_the_true_epsilon_rarely(method):
    epsilon, size, alpha, repeats = 1.0, 300, 0.05, 2000
    tp, fp = _randomized_response_counts(epsilon, size, repeats, seed=3)
    tpr_fpr = RatioBound(tp, fp, size, size, alpha).compute_bound(method)
    assert np.mean(np.log(tpr_fpr) > epsilon) <= alpha + 0.015  # 3 simulation SDs
    # the top of the two ratios needs alpha / 2 (Bonferroni) to hold at level alpha
    top = np.maximum(
        RatioBound(tp, fp, size, size, alpha / 2).compute_bound(method),
        RatioBound(size - fp, size - tp, size, size, alpha / 2).compute_bound(method),
    )
    assert np.mean(np.log(top) > epsilon) <= alpha + 0.015


def test_top_of_several_uncorrected_bounds_is_not_valid_at_level_alpha():
    # why the docstring asks for alpha / m: uncorrected, the larger of TPR/FPR and TNR/FNR
    # exceeds the true ε in about 7% of runs at alpha = 5% (Katz-log, seeded)
    epsilon, size, alpha = 1.0, 300, 0.05
    tp, fp = _randomized_response_counts(epsilon, size, 2000, seed=3)
    top = np.maximum(
        RatioBound(tp, fp, size, size, alpha).compute_bound("katz-log"),
        RatioBound(size - fp, size - tp, size, size, alpha).compute_bound("katz-log"),
    )
    assert np.mean(np.log(top) > epsilon) > alpha


# ---- shape of the results ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL)
def test_bounds_shrink_as_alpha_shrinks(method):
    x1 = np.array([5, 40, 90, 100, 3])
    x2 = np.array([2, 10, 30, 0, 3])
    by_alpha = [ratio_lower_bound(x1, 100, x2, 120, a, method) for a in (0.01, 0.05, 0.2)]
    assert np.all(by_alpha[0] <= by_alpha[1] + 1e-12)
    assert np.all(by_alpha[1] <= by_alpha[2] + 1e-12)


@pytest.mark.parametrize("method", ALL)
def test_equal_rates_give_a_bound_below_one(method):
    assert 0 < ratio_lower_bound(30, 100, 60, 200, 0.05, method) < 1


@pytest.mark.parametrize(
    "method", [BoundMethod.KATZ_LOG, BoundMethod.ADJUSTED_LOG, BoundMethod.INV_SINH]
)
def test_log_scale_intervals_are_symmetric_in_the_two_groups(method):
    # their spread term is symmetric in (x1, n1) and (x2, n2), so the product of the bound on
    # p1/p2 and the bound on p2/p1 does not depend on which group comes first
    forward = ratio_lower_bound(20, 80, 9, 70, 0.05, method)
    backward = ratio_lower_bound(9, 70, 20, 80, 0.05, method)
    mirrored = ratio_lower_bound(9, 80, 20, 70, 0.05, method) * ratio_lower_bound(
        20, 70, 9, 80, 0.05, method
    )
    assert forward * backward < 1
    assert forward * backward == pytest.approx(mirrored)


def test_swapping_members_and_nonmembers_gives_the_same_two_sided_bounds():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1, 1, 40), rng.normal(0, 1, 55)
    for method in ALL:
        direct = EpsilonLowerBound(members, nonmembers, 0.05).compute_epsilon_lower_bound(method)
        swapped = EpsilonLowerBound(nonmembers, members, 0.05).compute_epsilon_lower_bound(method)
        np.testing.assert_allclose(direct, swapped)


def test_zero_counts_follow_the_documented_conventions():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero warnings leak out
        for method in ALL:
            # no true positives: no evidence, except adjusted-log's ½ correction
            no_tp = ratio_lower_bound(0, 50, 10, 50, 0.05, method)
            if method is BoundMethod.ADJUSTED_LOG:
                assert 0 < no_tp < 1
            else:
                assert no_tp == 0.0
            assert ratio_lower_bound(0, 50, 0, 50, 0.05, method) == 0.0
            # no false positives: a finite, positive bound
            no_fp = ratio_lower_bound(30, 50, 0, 50, 0.05, method)
            assert np.isfinite(no_fp) and no_fp > 1
            # everything flagged on both sides: finite, below one
            everyone = ratio_lower_bound(50, 50, 60, 60, 0.05, method)
            assert np.isfinite(everyone) and 0 <= everyone < 1
    # Clopper–Pearson: an upper bound of 1 on the FPR gives no evidence
    assert ratio_lower_bound(50, 50, 60, 60, 0.05, "clopper-pearson") == 0.0


def test_scalar_and_array_inputs_agree():
    tp, fp = np.array([900, 0, 10, 1000]), np.array([600, 14, 0, 1200])
    for method in ALL:
        as_array = RatioBound(tp, fp, 1000, 1200, 0.05).compute_bound(method)
        assert isinstance(as_array, np.ndarray) and as_array.shape == (4,)
        for i in range(4):
            scalar = RatioBound(int(tp[i]), int(fp[i]), 1000, 1200, 0.05).compute_bound(method)
            assert isinstance(scalar, float)
            assert scalar == pytest.approx(as_array[i])
        one = RatioBound(tp[:1], fp[:1], 1000, 1200, 0.05).compute_bound(method)
        assert one.shape == (1,)


def test_compute_bounds_and_available_methods():
    ratio = RatioBound(10, 2, 20, 20, 0.05)
    assert set(ratio.available_methods) == set(BoundMethod)
    everything = ratio.compute_bounds()
    assert list(everything) == ALL
    chosen = ratio.compute_bounds(["bailey", BoundMethod.KATZ_LOG])
    assert list(chosen) == [BoundMethod.BAILEY, BoundMethod.KATZ_LOG]
    assert chosen[BoundMethod.BAILEY] == everything[BoundMethod.BAILEY]
    assert ratio.available_methods[BoundMethod.INV_SINH]() == everything[BoundMethod.INV_SINH]


# ---- thresholds and the ε bounds --------------------------------------------------------------


def test_counts_at_given_thresholds_are_strictly_above():
    tp, fp = counts_at_thresholds([1, 2, 2, 3], [0, 2, 5], thresholds=[2, 1.5, 10, -1])
    np.testing.assert_array_equal(tp, [1, 3, 0, 4])
    np.testing.assert_array_equal(fp, [1, 2, 0, 3])


def test_counts_at_every_distinct_score_are_at_or_above():
    tp, fp = counts_at_thresholds([1, 2, 2, 3], [0, 2, 5])
    # distinct scores 5, 3, 2, 1, 0
    np.testing.assert_array_equal(tp, [0, 1, 3, 4, 4])
    np.testing.assert_array_equal(fp, [1, 1, 2, 2, 3])


def test_epsilon_bounds_are_logs_of_the_positive_ratio_bounds():
    members, nonmembers = np.array([3.0, 5, 6, 8]), np.array([1.0, 2, 4, 7, 9])
    thresholds = np.array([2.5, 5.5])
    tp, fp = counts_at_thresholds(members, nonmembers, thresholds)
    fn, tn = 4 - tp, 5 - fp
    for method in ALL:
        one_sided = [
            RatioBound(tp, fp, 4, 5, 0.1).compute_bound(method),
            RatioBound(tn, fn, 5, 4, 0.1).compute_bound(method),
        ]
        reversed_ = [
            RatioBound(fp, tp, 5, 4, 0.1).compute_bound(method),
            RatioBound(fn, tn, 4, 5, 0.1).compute_bound(method),
        ]
        for sides, ratios in [(False, one_sided), (True, one_sided + reversed_)]:
            flat = np.concatenate(ratios)
            expected = np.sort(np.log(flat[flat > 0]))[::-1]
            bound = EpsilonLowerBound(members, nonmembers, 0.1, sides, thresholds)
            np.testing.assert_allclose(bound.compute_epsilon_lower_bound(method), expected)


def test_top_k_and_all_methods():
    rng = np.random.default_rng(1)
    bound = EpsilonLowerBound(rng.normal(2, 1, 30), rng.normal(0, 1, 30), 0.05)
    full = bound.compute_epsilon_lower_bound("katz-log")
    assert np.all(np.diff(full) <= 0)  # largest first
    np.testing.assert_array_equal(bound.compute_epsilon_lower_bound("katz-log", k=3), full[:3])
    np.testing.assert_array_equal(bound.compute_epsilon_lower_bound("katz-log", k=10**6), full)
    every = bound.compute_epsilon_lower_bounds(k=2)
    assert list(every) == ALL and all(v.shape == (2,) for v in every.values())
    assert full[0] > 0  # well-separated scores show leakage


def test_separated_scores_give_finite_bounds_and_identical_scores_no_leakage():
    separated = EpsilonLowerBound(np.ones(200), np.zeros(200), 0.05)
    for values in separated.compute_epsilon_lower_bounds().values():
        assert values.size and np.all(np.isfinite(values))
    same = EpsilonLowerBound(np.arange(50.0), np.arange(50.0), 0.05)
    for values in same.compute_epsilon_lower_bounds().values():
        assert np.all(values < 0.5)


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, -0.1, 0.5, 0.9, 1.0, 1.5, float("nan")])
def test_alpha_outside_the_open_interval_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        RatioBound(1, 1, 2, 2, alpha)
    with pytest.raises(ValueError, match="alpha"):
        EpsilonLowerBound([1.0], [0.0], alpha)


@pytest.mark.parametrize(
    "args, match",
    [
        ((-1, 1, 5, 5), "tp must lie"),
        ((1, -2, 5, 5), "fp must lie"),
        ((6, 1, 5, 5), "tp must lie"),
        ((1, 6, 5, 5), "fp must lie"),
        (([1, 2], [1], 5, 5), "same shape"),
        ((1, 1, 0, 5), "pos_size"),
        ((1, 1, 5, 2.5), "neg_size"),
        ((float("nan"), 1, 5, 5), "NaN"),
    ],
)
def test_bad_counts_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        RatioBound(*args, alpha=0.05)


def test_bad_scores_methods_and_k_are_refused():
    with pytest.raises(ValueError, match="empty"):
        EpsilonLowerBound([], [1.0], 0.05)
    with pytest.raises(ValueError, match="one-dimensional"):
        EpsilonLowerBound(np.ones((2, 2)), [1.0], 0.05)
    with pytest.raises(ValueError, match="NaN"):
        EpsilonLowerBound([1.0, float("nan")], [1.0], 0.05)
    with pytest.raises(ValueError, match="thresholds"):
        EpsilonLowerBound([1.0], [0.0], 0.05, thresholds=[[0.5]])
    bound = EpsilonLowerBound([1.0, 2.0], [0.0], 0.05)
    with pytest.raises(ValueError, match="unknown bound method"):
        bound.compute_epsilon_lower_bound("wald")
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="k must"):
            bound.compute_epsilon_lower_bound(BoundMethod.BAILEY, k=k)
