"""The audit bounds themselves, framework-free: hand-computed values, Monte Carlo checks
that they hold at their stated confidence, and the Gaussian mechanism (what full-batch
DP-SGD is, seen from a white-box canary): never above the accountant's ε on a correct
mechanism, above it on a broken one."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from keras_privacy.auditing import (
    AuditResult,
    claimed_epsilon,
    gaussian_canary_scores,
    guesses_from_scores,
    multi_run_audit,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    run_multi_run_audit,
)

DELTA = 1e-5


# -- the one-run theorem: hand-computed values ------------------------------------------


def test_all_guesses_right_pure_dp_has_closed_form():
    # f(r) = p^r <= beta  <=>  p <= beta^(1/r): eps = log(p / (1 - p)) at p = beta^(1/r).
    for r in (10, 100, 1000):
        p = 0.05 ** (1 / r)
        expected = math.log(p / (1 - p))
        assert one_run_epsilon_lower_bound(r, r, r, 0.0, 0.95) == pytest.approx(expected, abs=1e-5)


def test_p_value_by_hand():
    # eps = 0: p = 1/2; P[Bin(2, 1/2) >= 2] = 1/4.
    assert one_run_p_value(0.0, 0.0, 2, 2, 2) == pytest.approx(0.25)
    # delta term, m = 2, r = 2, v = 2: f(2) = 1/4, f(1) = 3/4, f(0) = 1:
    # 1/4 + 2 * 2 * 0.01 * max((3/4 - 1/4) / 1, (1 - 1/4) / 2) = 0.27.
    assert one_run_p_value(0.0, 0.01, 2, 2, 2) == pytest.approx(0.27)
    # m = 10, r = 4, v = 3, eps = 0: f(3) = 5/16, f(2) = 11/16, f(1) = 15/16, f(0) = 1;
    # max(6/16, 10/16 / 2, 11/16 / 3) = 6/16: 5/16 + 2 * 10 * 0.001 * 6/16 = 0.32.
    assert one_run_p_value(0.0, 0.001, 10, 4, 3) == pytest.approx(5 / 16 + 0.02 * 6 / 16)
    # eps = log 3: p = 3/4; P[Bin(3, 3/4) >= 2] = 27/64 + 27/64 = 54/64.
    assert one_run_p_value(math.log(3), 0.0, 5, 3, 2) == pytest.approx(54 / 64)


def test_bound_refutes_exactly_at_the_level():
    bound = one_run_epsilon_lower_bound(1000, 200, 170, DELTA, 0.95)
    assert one_run_p_value(bound, DELTA, 1000, 200, 170) <= 0.05
    assert one_run_p_value(bound + 1e-3, DELTA, 1000, 200, 170) > 0.05


def test_bound_is_monotone_and_zero_without_evidence():
    assert one_run_epsilon_lower_bound(100, 100, 50) == 0.0
    bounds = [one_run_epsilon_lower_bound(1000, 100, v, DELTA) for v in range(60, 101, 5)]
    assert bounds == sorted(bounds)
    # A larger delta or confidence can only lower the bound.
    assert one_run_epsilon_lower_bound(1000, 100, 90, 1e-3) < one_run_epsilon_lower_bound(
        1000, 100, 90, 0.0
    )
    assert one_run_epsilon_lower_bound(1000, 100, 90, confidence=0.99) < (
        one_run_epsilon_lower_bound(1000, 100, 90, confidence=0.9)
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_correct"):
        one_run_epsilon_lower_bound(10, 5, 6)
    with pytest.raises(ValueError, match="delta"):
        one_run_epsilon_lower_bound(10, 5, 5, delta=1.0)
    with pytest.raises(ValueError, match="confidence"):
        one_run_epsilon_lower_bound(10, 5, 5, confidence=1.0)
    with pytest.raises(ValueError, match="exceed"):
        guesses_from_scores([1.0, 2.0], 2, 1)
    with pytest.raises(ValueError, match="included"):
        one_run_audit([1.0, 2.0], [True])
    with pytest.raises(ValueError, match="method"):
        AuditResult(1.0, 0.95, 0.0, None, "two-run", "input-space", 1, 1, 1)


def test_guesses_with_abstention():
    guesses = guesses_from_scores([0.3, -2.0, 5.0, 0.1, 1.0], 2, 1)
    np.testing.assert_array_equal(guesses, [0, -1, 1, 0, 1])


# -- Monte Carlo: the bound holds at its confidence -------------------------------------


@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_one_run_bound_holds_for_randomized_response(epsilon):
    # Randomized response on each canary's bit is exactly eps-DP and every guess is right
    # with probability p = e^eps / (1 + e^eps): the worst case of the theorem. The bound
    # may exceed eps at most 5% of the time.
    r, trials = 200, 4000
    rng = np.random.default_rng(0)
    correct = rng.binomial(r, 1 / (1 + math.exp(-epsilon)), size=trials)
    bound_at = {v: one_run_epsilon_lower_bound(r, r, v, 0.0, 0.95) for v in np.unique(correct)}
    exceed = np.mean([bound_at[v] > epsilon for v in correct])
    assert exceed <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    # ... and it is not vacuous: the median bound is a sizeable part of eps.
    assert np.median([bound_at[v] for v in correct]) > 0.5 * epsilon


# -- the Gaussian mechanism (full-batch DP-SGD as a white-box canary sees it) ------------


def _one_run_gaussian(sigma, steps, seed, m=1000, claim_sigma=None):
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    scores = gaussian_canary_scores(included, sigma, steps, rng)
    claim = claimed_epsilon(claim_sigma or sigma, steps, DELTA)
    return one_run_audit(scores, included, delta=DELTA, epsilon_claimed=claim)


def test_claimed_epsilon_is_the_gaussian_mechanism():
    # T Gaussian mechanisms of noise sigma compose to one of noise sigma / sqrt(T).
    assert claimed_epsilon(2.0, 4, DELTA) == pytest.approx(claimed_epsilon(1.0, 1, DELTA), rel=1e-3)
    # Balle & Wang's analytic Gaussian mechanism, checked at one point: delta(eps) =
    # Phi(-eps sigma + 1/(2 sigma)) - e^eps Phi(-eps sigma - 1/(2 sigma)).
    eps = claimed_epsilon(1.0, 1, DELTA)
    delta = stats.norm.cdf(-eps + 0.5) - math.exp(eps) * stats.norm.cdf(-eps - 0.5)
    assert delta == pytest.approx(DELTA, rel=0.05)


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.0])
def test_one_run_never_exceeds_the_accountant_across_seeds(sigma):
    fractions = [_one_run_gaussian(sigma, 1, seed).fraction_of_claimed for seed in range(12)]
    assert max(fractions) <= 1.0
    assert np.mean(fractions) > 0.25  # measured: 0.37-0.45 (see docs/auditing.md)


@pytest.mark.parametrize("profile", ["any", "gaussian"])
def test_multi_run_never_exceeds_the_accountant_across_seeds(profile):
    claim = claimed_epsilon(1.0, 1, DELTA)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        with_canary = gaussian_canary_scores(np.ones(2000, bool), 1.0, 1, rng)
        without = gaussian_canary_scores(np.zeros(2000, bool), 1.0, 1, rng)
        result = multi_run_audit(
            with_canary, without, delta=DELTA, epsilon_claimed=claim, privacy_profile=profile
        )
        assert result.epsilon_lower_bound <= claim


def test_multi_run_gaussian_profile_reaches_the_target_fraction():
    # Nasr et al. 2023's target for white-box canaries and q = 1: >= 0.85 of the
    # accountant's eps. 20,000 runs per side, threshold fixed in advance at half the
    # canary's signal.
    rng = np.random.default_rng(0)
    claim = claimed_epsilon(1.0, 1, DELTA)
    with_canary = gaussian_canary_scores(np.ones(20_000, bool), 1.0, 1, rng)
    without = gaussian_canary_scores(np.zeros(20_000, bool), 1.0, 1, rng)
    result = multi_run_audit(
        with_canary,
        without,
        delta=DELTA,
        epsilon_claimed=claim,
        privacy_profile="gaussian",
        threshold=0.5,
    )
    assert 0.85 <= result.fraction_of_claimed <= 1.0
    assert result.details["mu_lower_bound"] <= 1.0


def test_broken_gaussian_mechanisms_are_flagged():
    # Noise halved (claimed sigma 2, real sigma 1): the multi-run audit flags it.
    rng = np.random.default_rng(0)
    claim = claimed_epsilon(2.0, 1, DELTA)
    result = multi_run_audit(
        gaussian_canary_scores(np.ones(5000, bool), 1.0, 1, rng),
        gaussian_canary_scores(np.zeros(5000, bool), 1.0, 1, rng),
        delta=DELTA,
        epsilon_claimed=claim,
        privacy_profile="gaussian",
        threshold=0.5,
    )
    assert result.violates_claim
    # Noise left out of most updates: one run with 1,000 canaries flags it.
    assert _one_run_gaussian(0.05, 1, 0, claim_sigma=2.0).violates_claim


def test_run_multi_run_audit_calls_each_trial_once():
    calls = []

    def train_and_score(include, trial):
        calls.append((include, trial))
        return float(include) * 10.0

    result = run_multi_run_audit(train_and_score, 40, seed=0, threshold_method="uniform")
    assert [t for _, t in calls] == list(range(40))
    assert result.num_trials == 40 and result.epsilon_lower_bound > 0
    with pytest.raises(ValueError, match="num_trials"):
        run_multi_run_audit(train_and_score, 3)


def test_audit_result_contract():
    result = _one_run_gaussian(1.0, 1, 0)
    data = result.to_dict()
    for key in (
        "epsilon_lower_bound",
        "confidence",
        "delta",
        "epsilon_claimed",
        "method",
        "canary_kind",
        "num_canaries",
        "num_guesses",
        "num_correct",
    ):
        assert key in data
    assert result.method == "one-run" and result.canary_kind == "white-box gradient"
    assert not result.violates_claim and "consistent" in result.summary()


def test_the_core_imports_no_framework():
    code = (
        "import sys, keras_privacy.auditing as a;"
        "a.one_run_audit([1.0, 0.0], [True, False], guess_counts=(1, 1));"
        "a.claimed_epsilon(1.0, 1, 1e-5);"
        "bad = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules];"
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
