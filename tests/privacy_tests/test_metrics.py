"""Metrics against scikit-learn and closed forms; the ε lower bound against exact ε."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats
from sklearn import metrics as sk_metrics

from keras_privacy.privacy_tests import metrics

# ----------------------------------------------------------------------------- ROC metrics


def test_auc_and_advantage_by_hand():
    fpr, tpr, _ = metrics.roc_curve([0.9, 0.4], [0.6, 0.1])
    assert metrics.auc(fpr, tpr) == pytest.approx(0.75)
    assert metrics.attacker_advantage(fpr, tpr) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_advantage_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    members = np.round(rng.normal(0.3, 1.0, 700), 1)  # rounding makes ties
    nonmembers = np.round(rng.normal(0.0, 1.0, 500), 1)
    labels = np.r_[np.ones(700), np.zeros(500)]
    scores = np.r_[members, nonmembers]
    fpr, tpr, _ = metrics.roc_curve(members, nonmembers)
    assert metrics.auc(fpr, tpr) == pytest.approx(sk_metrics.roc_auc_score(labels, scores))
    sk_fpr, sk_tpr, _ = sk_metrics.roc_curve(labels, scores)
    assert metrics.attacker_advantage(fpr, tpr) == pytest.approx(np.max(np.abs(sk_tpr - sk_fpr)))


def test_weighted_auc_equals_scikit_learn():
    rng = np.random.default_rng(3)
    members, nonmembers = rng.normal(0.5, 1, 300), rng.normal(0, 1, 200)
    w_members, w_nonmembers = rng.uniform(0.1, 2, 300), rng.uniform(0.1, 2, 200)
    fpr, tpr, _ = metrics.roc_curve(members, nonmembers, w_members, w_nonmembers)
    expected = sk_metrics.roc_auc_score(
        np.r_[np.ones(300), np.zeros(200)],
        np.r_[members, nonmembers],
        sample_weight=np.r_[w_members, w_nonmembers],
    )
    assert metrics.auc(fpr, tpr) == pytest.approx(expected)


@pytest.mark.parametrize("shift", [0.0, 0.5, 1.0, 2.0])
def test_gaussian_auc_and_advantage_match_closed_form(shift):
    # members ~ N(shift, 1), non-members ~ N(0, 1): AUC = P[X > Y] = Φ(shift/√2), and the
    # best threshold (the midpoint) gives advantage Φ(shift/2) − Φ(−shift/2).
    rng = np.random.default_rng(42)
    members, nonmembers = rng.normal(shift, 1, 20_000), rng.normal(0, 1, 20_000)
    fpr, tpr, _ = metrics.roc_curve(members, nonmembers)
    assert metrics.auc(fpr, tpr) == pytest.approx(stats.norm.cdf(shift / np.sqrt(2)), abs=0.01)
    expected_advantage = 2 * stats.norm.cdf(shift / 2) - 1
    assert metrics.attacker_advantage(fpr, tpr) == pytest.approx(expected_advantage, abs=0.02)


def test_ppv_and_tpr_at_fpr_by_hand():
    # members 0.9, 0.8, 0.3; non-members 0.85, 0.2, 0.1, 0.05
    fpr, tpr, _ = metrics.roc_curve([0.9, 0.8, 0.3], [0.85, 0.2, 0.1, 0.05])
    # threshold 0.9 flags one member and no non-member: precision 1
    assert metrics.positive_predictive_value(fpr, tpr, test_train_ratio=4 / 3) == 1.0
    assert metrics.tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(1 / 3)
    assert metrics.tpr_at_fpr(fpr, tpr, 0.25) == pytest.approx(1.0)
    # an attack that never flags anybody has chance precision
    assert metrics.positive_predictive_value([0.0], [0.0], 3.0) == 0.25


@pytest.mark.parametrize(
    "members, nonmembers",
    [([], [1.0]), ([1.0], []), ([np.nan, 1.0], [0.0]), ([[1.0]], [0.0]), ([1.0], [np.inf])],
)
def test_roc_rejects_bad_scores(members, nonmembers):
    with pytest.raises(ValueError):
        metrics.roc_curve(members, nonmembers)


# ----------------------------------------------------------------------------- Clopper–Pearson


@pytest.mark.parametrize("p, n", [(0.01, 50), (0.1, 50), (0.5, 20), (0.9, 200)])
def test_clopper_pearson_covers_with_stated_confidence(p, n):
    # exact coverage: sum over outcomes k of P[K = k] · [p ≤ bound(k)]
    k = np.arange(n + 1)
    bounds = metrics.clopper_pearson_upper(k, n, 0.95)
    coverage = np.sum(stats.binom.pmf(k, n, p) * (p <= bounds))
    assert coverage >= 0.95
    assert np.all(np.diff(bounds) > 0) and bounds[-1] == 1.0


def test_clopper_pearson_zero_successes_closed_form():
    # k = 0: the bound solves (1 − p)^n = 1 − confidence
    assert metrics.clopper_pearson_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))


def test_clopper_pearson_rejects_bad_input():
    with pytest.raises(ValueError):
        metrics.clopper_pearson_upper(5, 4, 0.95)
    with pytest.raises(ValueError):
        metrics.clopper_pearson_upper(1, 4, 1.5)


# ----------------------------------------------------------------------------- ε lower bound


def gaussian_mechanism_epsilon(mu: float, delta: float) -> float:
    """Exact ε(δ) of the Gaussian mechanism with sensitivity/σ = mu (Balle & Wang 2018):
    δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)."""

    def delta_of(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)

    return optimize.brentq(lambda eps: delta_of(eps) - delta, 0.0, 100.0)


def test_gaussian_mechanism_epsilon_reference():
    # checks the helper itself: at ε = 0 the profile is the total variation 2Φ(μ/2) − 1
    assert gaussian_mechanism_epsilon(1.0, 2 * stats.norm.cdf(0.5) - 1 - 1e-12) < 1e-6
    assert gaussian_mechanism_epsilon(1.0, 1e-2) == pytest.approx(2.318, abs=1e-3)


@pytest.mark.parametrize("method", ["holdout", "uniform"])
@pytest.mark.parametrize("mu, delta", [(1.0, 1e-2), (2.0, 1e-3), (0.5, 1e-5)])
def test_epsilon_lower_bound_never_exceeds_true_epsilon(method, mu, delta):
    # Outputs of an exact Gaussian mechanism on neighbouring datasets: N(μ, 1) and N(0, 1).
    true_epsilon = gaussian_mechanism_epsilon(mu, delta)
    bounds = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        members, nonmembers = rng.normal(mu, 1, 2000), rng.normal(0, 1, 2000)
        bound = metrics.compute_epsilon_lower_bound(
            members, nonmembers, delta, confidence=0.95, method=method, seed=seed
        )
        bounds.append(bound.epsilon)
    assert max(bounds) <= true_epsilon
    assert np.mean(bounds) > 0.15 * true_epsilon  # and it is not trivially zero


def test_epsilon_lower_bound_is_zero_without_signal():
    # identical distributions: true ε = 0, so any positive bound is a false claim, which the
    # 95% confidence allows at most 5% of the time
    positives = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        bound = metrics.compute_epsilon_lower_bound(
            rng.normal(size=1000), rng.normal(size=1000), confidence=0.95, seed=seed
        )
        positives += bound.epsilon > 0
    assert positives <= 10


def test_epsilon_lower_bound_is_tight_with_enough_samples():
    # With 10^6 outputs per side, the holdout bound reaches 90% of the true ε = 2.318.
    mu, delta = 1.0, 1e-2
    true_epsilon = gaussian_mechanism_epsilon(mu, delta)
    rng = np.random.default_rng(7)
    members, nonmembers = rng.normal(mu, 1, 1_000_000), rng.normal(0, 1, 1_000_000)
    bound = metrics.compute_epsilon_lower_bound(members, nonmembers, delta, confidence=0.95)
    assert 0.9 * true_epsilon <= bound.epsilon <= true_epsilon
    assert bound.fpr_upper > 0 and bound.fnr_upper > 0 and bound.method == "holdout"


def test_epsilon_lower_bound_grows_with_samples():
    mu, delta = 1.0, 1e-2
    rng = np.random.default_rng(11)
    small = metrics.compute_epsilon_lower_bound(
        rng.normal(mu, 1, 1000), rng.normal(0, 1, 1000), delta, method="uniform"
    )
    large = metrics.compute_epsilon_lower_bound(
        rng.normal(mu, 1, 100_000), rng.normal(0, 1, 100_000), delta, method="uniform"
    )
    assert large.epsilon > small.epsilon


def test_epsilon_from_counts_matches_formula():
    # 10 false positives of 1000, 200 false negatives of 1000, δ = 0
    bound = metrics.epsilon_lower_bound_at_counts(10, 1000, 200, 1000, 0.0, 0.95)
    fpr_u = stats.beta.ppf(0.975, 11, 990)
    fnr_u = stats.beta.ppf(0.975, 201, 800)
    expected = max(np.log((1 - fnr_u) / fpr_u), np.log((1 - fpr_u) / fnr_u))
    assert float(bound) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delta": -0.1},
        {"delta": 1.0},
        {"confidence": 1.0},
        {"method": "bootstrap"},
        {"selection_fraction": 1.0},
    ],
)
def test_epsilon_lower_bound_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        metrics.compute_epsilon_lower_bound([1.0, 2.0, 3.0], [0.0, 0.5, 1.0], **kwargs)


def test_holdout_needs_enough_scores():
    with pytest.raises(ValueError, match="uniform"):
        metrics.compute_epsilon_lower_bound([1.0], [0.0], method="holdout")
    assert metrics.compute_epsilon_lower_bound([1.0], [0.0], method="uniform").epsilon == 0.0
