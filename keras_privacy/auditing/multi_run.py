"""Multi-run auditing: train many times with and without one canary, bound ε from the
two score samples (Jagielski et al. 2020; Nasr et al. 2021, 2023).

Each trial trains from scratch (or runs the mechanism) once, with the canary included or
left out by a fair coin, and scores the canary. The scores of the runs with the canary are
independent draws from the output distribution on D ∪ {canary}, those without from D, so
an attack "included iff score ≥ t" has a false-positive and a false-negative rate that
(ε, δ)-DP constrains: ε ≥ log((1 - δ - FNR) / FPR) and ε ≥ log((1 - δ - FPR) / FNR).
The bound is the project's :func:`keras_privacy.privacy_tests.compute_epsilon_lower_bound`
(Clopper–Pearson upper bounds on both rates, with the threshold chosen on a held-out half
or covered by a union bound), so its confidence is exact, not asymptotic.

With enough trials this is the tightest audit there is: for white-box gradient canaries
and full-batch DP-SGD the score is a Gaussian with mean shifted by the clipped canary, and
the bound approaches the accountant's ε as trials grow (Nasr et al. 2023). Its cost is
one training run per trial, so it suits small models; :func:`run_multi_run_audit` runs the
trials for any ``train_and_score`` function.

Two statements can be refuted:

* ``privacy_profile="any"`` (default, assumption-free): "the mechanism is (ε, δ)-DP" for
  the one δ given, as above. At small δ the refuting events are rare (rates near δ), so
  even 10^5 runs per side reach only about half of the Gaussian mechanism's ε at
  δ = 1e-5.
* ``privacy_profile="gaussian"`` (Nasr et al. 2023, "Tight Auditing of Differentially
  Private Machine Learning"): "the mechanism is μ-GDP" (Dong, Roth & Su), i.e. its whole
  trade-off curve lies above ``FNR = Φ(Φ⁻¹(1 - FPR) - μ)``. This is exactly what the
  accountant claims for full-batch DP-SGD and white-box canaries (T Gaussian mechanisms
  of noise σ compose to μ = √T / σ), so refuting it refutes the accountant's claim. With
  upper bounds FPR⁺, FNR⁺ the run refutes every μ < Φ⁻¹(1 - FPR⁺) - Φ⁻¹(FNR⁺); the result
  reports that μ's ε at δ. It does *not* refute (ε, δ)-DP at that single δ for a
  mechanism whose curve is not Gaussian-shaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from keras_privacy.auditing.results import AuditResult
from keras_privacy.auditing.theory import claimed_epsilon
from keras_privacy.privacy_tests.metrics import clopper_pearson_upper, compute_epsilon_lower_bound
from keras_privacy.privacy_tests.ratio_bounds import counts_at_thresholds

__all__ = ["multi_run_audit", "run_multi_run_audit"]


def multi_run_audit(
    scores_with_canary: np.ndarray | Sequence[float],
    scores_without_canary: np.ndarray | Sequence[float],
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    epsilon_claimed: float | None = None,
    canary_kind: str = "white-box gradient",
    threshold_method: str = "holdout",
    threshold: float | None = None,
    privacy_profile: str = "any",
    seed: int | None = 0,
) -> AuditResult:
    """The ε lower bound of a multi-run audit from the canary's score in each run.

    Args:
      scores_with_canary: the canary's score in each run that included it (higher means
        "more likely included").
      scores_without_canary: its score in each run without it.
      delta: the δ of the (ε, δ) being refuted.
      confidence: the probability that the reported bound holds.
      epsilon_claimed: the accountant's ε at ``delta``, copied to the result.
      canary_kind: ``"white-box gradient"`` or ``"input-space"``.
      threshold_method: ``"holdout"`` (choose the threshold on half the runs, bound on the
        other half) or ``"uniform"`` (all runs, union bound over thresholds); see
        :func:`~keras_privacy.privacy_tests.compute_epsilon_lower_bound`.
      threshold: a threshold fixed before seeing the scores (e.g. half the canary's
        expected signal); then every run is used and no selection is paid for.
        ``privacy_profile="gaussian"`` only.
      privacy_profile: ``"any"`` (refute (ε, δ)-DP at ``delta``) or ``"gaussian"``
        (refute μ-GDP, reported as that μ's ε at ``delta``); see the module.
      seed: the holdout split's seed.

    Returns:
      An :class:`~keras_privacy.auditing.AuditResult` with ``method="multi-run"``,
      ``num_canaries=1``, ``num_trials`` the runs, and ``num_guesses`` / ``num_correct``
      the runs classified (all of them) and classified correctly at the chosen threshold.
    """
    with_canary = np.asarray(scores_with_canary, dtype=np.float64)
    without_canary = np.asarray(scores_without_canary, dtype=np.float64)
    if privacy_profile == "gaussian":
        return _gaussian_profile_audit(
            with_canary,
            without_canary,
            delta=delta,
            confidence=confidence,
            epsilon_claimed=epsilon_claimed,
            canary_kind=canary_kind,
            threshold_method=threshold_method,
            threshold=threshold,
            seed=seed,
        )
    if privacy_profile != "any":
        raise ValueError(
            f"privacy_profile must be 'any' or 'gaussian', received {privacy_profile!r}"
        )
    if threshold is not None:
        raise ValueError("a fixed threshold is only supported with privacy_profile='gaussian'")
    bound = compute_epsilon_lower_bound(
        with_canary,
        without_canary,
        delta=delta,
        confidence=confidence,
        method=threshold_method,
        seed=seed,
    )
    correct = int(np.count_nonzero(with_canary >= bound.threshold)) + int(
        np.count_nonzero(without_canary < bound.threshold)
    )
    trials = with_canary.size + without_canary.size
    return _multi_run_result(
        bound.epsilon,
        delta,
        confidence,
        epsilon_claimed,
        canary_kind,
        guesses=trials,
        correct=correct,
        trials=trials,
        details={
            "threshold": bound.threshold,
            "privacy_profile": "any",
            "threshold_method": threshold_method,
            "fpr_upper": bound.fpr_upper,
            "fnr_upper": bound.fnr_upper,
            "runs_with_canary": int(with_canary.size),
            "runs_without_canary": int(without_canary.size),
        },
    )


def _multi_run_result(
    epsilon: float,
    delta: float,
    confidence: float,
    epsilon_claimed: float | None,
    canary_kind: str,
    *,
    guesses: int,
    correct: int,
    trials: int,
    details: dict,
) -> AuditResult:
    """A multi-run :class:`AuditResult` (one canary)."""
    return AuditResult(
        epsilon_lower_bound=float(epsilon),
        confidence=float(confidence),
        delta=float(delta),
        epsilon_claimed=None if epsilon_claimed is None else float(epsilon_claimed),
        method="multi-run",
        canary_kind=canary_kind,
        num_canaries=1,
        num_guesses=int(guesses),
        num_correct=int(correct),
        num_trials=int(trials),
        details=details,
    )


def _gdp_mu(fpr_upper: np.ndarray, fnr_upper: np.ndarray) -> np.ndarray:
    """The μ-GDP values refuted by rate upper bounds: Φ⁻¹(1 - FPR⁺) - Φ⁻¹(FNR⁺), ≥ 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = stats.norm.isf(fpr_upper) - stats.norm.ppf(fnr_upper)
    return np.where(np.isnan(mu), 0.0, np.maximum(mu, 0.0))


def _rate_upper_bounds(
    members: np.ndarray, nonmembers: np.ndarray, thresholds: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(FPR⁺, FNR⁺, false positives, false negatives) of "included iff score > t"."""
    true_positives, false_positives = counts_at_thresholds(members, nonmembers, thresholds)
    false_negatives = members.size - true_positives
    fpr_upper = clopper_pearson_upper(false_positives, nonmembers.size, level)
    fnr_upper = clopper_pearson_upper(false_negatives, members.size, level)
    return fpr_upper, fnr_upper, false_positives, false_negatives


def _gaussian_profile_audit(
    with_canary: np.ndarray,
    without_canary: np.ndarray,
    *,
    delta: float,
    confidence: float,
    epsilon_claimed: float | None,
    canary_kind: str,
    threshold_method: str,
    threshold: float | None,
    seed: int | None,
) -> AuditResult:
    """``privacy_profile="gaussian"``: a lower bound on μ, reported as its ε at δ."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"privacy_profile='gaussian' needs 0 < delta < 1, received {delta}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), received {confidence}")
    for name, values in (
        ("scores_with_canary", with_canary),
        ("scores_without_canary", without_canary),
    ):
        if values.ndim != 1 or values.size < 2 or not np.all(np.isfinite(values)):
            raise ValueError(f"{name} must be a one-dimensional array of >= 2 finite scores")
    alpha = 1.0 - confidence
    evaluate_with, evaluate_without = with_canary, without_canary
    if threshold is not None:
        level, how = 1.0 - alpha / 2, "fixed"
        chosen = float(threshold)
    elif threshold_method == "uniform":
        grid = np.unique(
            np.quantile(np.concatenate([with_canary, without_canary]), np.linspace(0, 1, 1000))
        )
        n = max(with_canary.size, without_canary.size)
        fpr_u, fnr_u, _, _ = _rate_upper_bounds(
            with_canary, without_canary, grid, 1.0 - alpha / (2 * n)
        )
        chosen, level, how = (
            float(grid[int(np.argmax(_gdp_mu(fpr_u, fnr_u)))]),
            1.0 - alpha / (2 * n),
            "uniform",
        )
    elif threshold_method == "holdout":
        rng = np.random.default_rng(seed)
        parts = []
        for values in (with_canary, without_canary):
            permuted = rng.permutation(values)
            cut = values.size // 2
            parts.append((permuted[:cut], permuted[cut:]))
        (select_with, evaluate_with), (select_without, evaluate_without) = parts
        grid = np.unique(np.concatenate([select_with, select_without]))
        fpr_u, fnr_u, _, _ = _rate_upper_bounds(select_with, select_without, grid, 1.0 - alpha / 2)
        chosen, level, how = (
            float(grid[int(np.argmax(_gdp_mu(fpr_u, fnr_u)))]),
            1.0 - alpha / 2,
            "holdout",
        )
    else:
        raise ValueError(
            f"threshold_method must be 'holdout' or 'uniform', received {threshold_method!r}"
        )
    fpr_u, fnr_u, fp, fn = _rate_upper_bounds(
        evaluate_with, evaluate_without, np.array([chosen]), level
    )
    mu = float(_gdp_mu(fpr_u, fnr_u)[0])
    epsilon = claimed_epsilon(1.0 / mu, 1, delta) if mu > 0 else 0.0
    trials = evaluate_with.size + evaluate_without.size
    return _multi_run_result(
        epsilon,
        delta,
        confidence,
        epsilon_claimed,
        canary_kind,
        guesses=trials,
        correct=int(trials - fp[0] - fn[0]),
        trials=with_canary.size + without_canary.size,
        details={
            "privacy_profile": "gaussian",
            "mu_lower_bound": mu,
            "threshold": chosen,
            "threshold_method": how,
            "fpr_upper": float(fpr_u[0]),
            "fnr_upper": float(fnr_u[0]),
        },
    )


def run_multi_run_audit(
    train_and_score: Callable[[bool, int], float],
    num_trials: int,
    *,
    seed: int | None = None,
    **audit_arguments: object,
) -> AuditResult:
    """Run ``num_trials`` trials and audit them with :func:`multi_run_audit`.

    Trial ``t`` flips a fair coin ``include`` and calls ``train_and_score(include, t)``,
    which must train afresh (new initialization and fresh noise: nothing may carry over
    between trials), with the canary only if ``include``, and return the canary's score.
    ``seed`` seeds the coins (not the training); ``audit_arguments`` go to
    :func:`multi_run_audit`.

    Raises:
      ValueError: fewer than 4 trials, or a draw that leaves either side with fewer than 2
        runs.
    """
    if isinstance(num_trials, bool) or int(num_trials) != num_trials or num_trials < 4:
        raise ValueError(f"num_trials must be a whole number >= 4, received {num_trials!r}")
    coins = np.random.default_rng(seed).random(int(num_trials)) < 0.5
    if coins.sum() < 2 or (~coins).sum() < 2:
        raise ValueError("the coin flips left fewer than 2 runs on one side; use more trials")
    scores = np.array([float(train_and_score(bool(include), t)) for t, include in enumerate(coins)])
    return multi_run_audit(scores[coins], scores[~coins], **audit_arguments)
