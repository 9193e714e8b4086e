"""Metrics of a membership attack: ROC, AUC, advantage, PPV, TPR at low FPR, ε lower bounds.

Everything here works on *membership scores*: one number per example, larger meaning "more
likely a member" (a training example). Members are the positives, non-members the negatives.

The ε lower bound follows from the hypothesis-testing view of differential privacy
(Wasserman & Zhou 2010; Kairouz et al. 2015). If a mechanism M is (ε, δ)-DP, then for any
neighbouring datasets D, D' and any rejection region S,

    P[M(D) ∈ S] ≤ e^ε · P[M(D') ∈ S] + δ    and    P[M(D') ∈ S] ≤ e^ε · P[M(D) ∈ S] + δ.

Read as an attack that says "member" when the score is at least a threshold, with TPR its
true-positive rate and FPR its false-positive rate (FNR = 1 − TPR, TNR = 1 − FPR), the two
inequalities give

    ε ≥ log((1 − δ − FNR) / FPR)    and    ε ≥ log((1 − δ − FPR) / FNR).

The rates are estimated from finite samples, so we replace FPR and FNR by one-sided
Clopper–Pearson *upper* confidence bounds: the resulting ε is then a lower bound on the true
ε with at least the stated confidence. (Making FPR and FNR larger only lowers both bounds.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

__all__ = [
    "EpsilonLowerBound",
    "attacker_advantage",
    "auc",
    "clopper_pearson_interval",
    "clopper_pearson_upper",
    "compute_epsilon_lower_bound",
    "epsilon_lower_bound_at_counts",
    "positive_predictive_value",
    "roc_curve",
    "tpr_at_fpr",
]


def _as_finite_1d(name: str, values: np.ndarray | Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, received shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _labels_and_scores(
    member_scores: np.ndarray | Sequence[float],
    nonmember_scores: np.ndarray | Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    members = _as_finite_1d("member_scores", member_scores)
    nonmembers = _as_finite_1d("nonmember_scores", nonmember_scores)
    labels = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    return labels, np.concatenate([members, nonmembers])


def roc_curve(
    member_scores: np.ndarray | Sequence[float],
    nonmember_scores: np.ndarray | Sequence[float],
    member_weights: np.ndarray | None = None,
    nonmember_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of the attack "member if score ≥ threshold", via ``sklearn.metrics.roc_curve``.

    Returns ``(fpr, tpr, thresholds)``, starting at (0, 0) and ending at (1, 1).
    """
    labels, scores = _labels_and_scores(member_scores, nonmember_scores)
    weights = None
    if (member_weights is None) != (nonmember_weights is None):
        raise ValueError("give sample weights for both members and non-members, or for neither")
    if member_weights is not None:
        weights = np.concatenate(
            [np.asarray(member_weights, float), np.asarray(nonmember_weights, float)]
        )
        if weights.shape != scores.shape:
            raise ValueError("sample weights must have one entry per score")
    fpr, tpr, thresholds = sk_metrics.roc_curve(
        labels, scores, sample_weight=weights, drop_intermediate=False
    )
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal rule, ``sklearn.metrics.auc``)."""
    return float(sk_metrics.auc(fpr, tpr))


def attacker_advantage(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """max over thresholds of |TPR − FPR| (Yeom et al. 2018's membership advantage)."""
    return float(np.max(np.abs(np.asarray(tpr) - np.asarray(fpr))))


def positive_predictive_value(fpr: np.ndarray, tpr: np.ndarray, test_train_ratio: float) -> float:
    """Best precision of the attack over thresholds: max TP / (TP + FP).

    With ``test_train_ratio = n_nonmembers / n_members``,
    TP / (TP + FP) = TPR / (TPR + FPR · test_train_ratio). Thresholds at which the attack
    predicts nobody a member (TPR = FPR = 0) are skipped; if there is no other, the PPV of a
    random guess, 1 / (1 + test_train_ratio), is returned.
    """
    tpr = np.asarray(tpr, float)
    fpr = np.asarray(fpr, float)
    denominator = tpr + fpr * test_train_ratio
    valid = denominator > 0
    if not np.any(valid):
        return 1.0 / (1.0 + test_train_ratio)
    return float(np.max(tpr[valid] / denominator[valid]))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Largest TPR reached at an FPR of at most ``max_fpr`` (e.g. 0.001 or 0.01).

    This is the low-false-positive view that Carlini et al. (2022) argue for: an attack that is
    confident about a few examples is a privacy risk even when its AUC is unremarkable.
    """
    fpr = np.asarray(fpr, float)
    allowed = fpr <= max_fpr
    if not np.any(allowed):
        return 0.0
    return float(np.max(np.asarray(tpr, float)[allowed]))


def clopper_pearson_upper(
    successes: np.ndarray | int, trials: np.ndarray | int, confidence: float
) -> np.ndarray:
    """One-sided Clopper–Pearson upper bound on a binomial proportion.

    For k successes in n trials, the bound is the ``confidence`` quantile of
    Beta(k + 1, n − k) (and 1 when k = n): P[p ≤ bound] ≥ confidence for every true p.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), received {confidence}")
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 ≤ successes ≤ trials and trials > 0")
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(confidence, k + 1, np.maximum(n - k, 1e-300))
    return np.where(k >= n, 1.0, bound)


def clopper_pearson_interval(
    successes: int, trials: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Two-sided Clopper–Pearson (exact) interval for a binomial proportion k / n.

    Each side holds with probability (1 − ``confidence``) / 2 at most: the lower end is the
    (1 − confidence) / 2 quantile of Beta(k, n − k + 1) (0 when k = 0), the upper end the
    (1 + confidence) / 2 quantile of Beta(k + 1, n − k) (1 when k = n).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), received {confidence}")
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(
            f"need 0 ≤ successes ≤ trials and trials > 0, received {successes}/{trials}"
        )
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    high = (
        1.0
        if successes == trials
        else float(stats.beta.ppf(1.0 - tail, successes + 1, trials - successes))
    )
    return low, high


def _epsilon_from_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """max(log((1 − δ − FNR)/FPR), log((1 − δ − FPR)/FNR), 0), elementwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bound_a = np.log(np.maximum(1.0 - delta - fnr, 0.0) / fpr)
        bound_b = np.log(np.maximum(1.0 - delta - fpr, 0.0) / fnr)
    bound = np.fmax(bound_a, bound_b)
    return np.where(np.isnan(bound), 0.0, np.maximum(bound, 0.0))


def epsilon_lower_bound_at_counts(
    false_positives: np.ndarray | int,
    num_nonmembers: int,
    false_negatives: np.ndarray | int,
    num_members: int,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> np.ndarray:
    """ε lower bound for *fixed* thresholds, from their error counts.

    FPR and FNR are each replaced by their Clopper–Pearson upper bound at level
    1 − (1 − confidence)/2, so that both hold together with probability ≥ ``confidence``
    (union bound). Valid only if the thresholds were chosen without looking at these counts.
    """
    _check_delta_confidence(delta, confidence)
    half_alpha = (1.0 - confidence) / 2.0
    fpr_upper = clopper_pearson_upper(false_positives, num_nonmembers, 1.0 - half_alpha)
    fnr_upper = clopper_pearson_upper(false_negatives, num_members, 1.0 - half_alpha)
    return _epsilon_from_rates(fpr_upper, fnr_upper, delta)


def _check_delta_confidence(delta: float, confidence: float) -> None:
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), received {delta}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), received {confidence}")


def _error_counts(
    members_sorted: np.ndarray, nonmembers_sorted: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(false positives, false negatives) of "member iff score ≥ t" for each threshold t."""
    false_positives = nonmembers_sorted.size - np.searchsorted(
        nonmembers_sorted, thresholds, side="left"
    )
    false_negatives = np.searchsorted(members_sorted, thresholds, side="left")
    return false_positives, false_negatives


def _candidate_thresholds(scores: np.ndarray, max_candidates: int) -> np.ndarray:
    unique = np.unique(scores)
    # The threshold just above the largest score (nobody flagged) adds nothing: its bound is 0.
    if unique.size > max_candidates:
        unique = np.unique(np.quantile(unique, np.linspace(0.0, 1.0, max_candidates)))
    return unique


@dataclasses.dataclass(frozen=True)
class EpsilonLowerBound:
    """An empirical lower bound on ε, with how it was obtained.

    Attributes:
      epsilon: the bound (0 when the attack shows nothing).
      delta: the δ it refers to.
      confidence: probability (over the sampling of the scores) that the true ε is at least
        ``epsilon``, assuming the scores are independent draws from the two output
        distributions of the mechanism on neighbouring datasets.
      method: ``"holdout"`` or ``"uniform"`` (see :func:`compute_epsilon_lower_bound`).
      threshold: the score threshold the bound was evaluated at.
      fpr_upper, fnr_upper: the Clopper–Pearson upper bounds used at that threshold.
    """

    epsilon: float
    delta: float
    confidence: float
    method: str
    threshold: float
    fpr_upper: float
    fnr_upper: float


def compute_epsilon_lower_bound(
    member_scores: np.ndarray | Sequence[float],
    nonmember_scores: np.ndarray | Sequence[float],
    delta: float = 0.0,
    confidence: float = 0.95,
    method: str = "holdout",
    selection_fraction: float = 0.5,
    max_candidate_thresholds: int = 1000,
    seed: int | None = 0,
) -> EpsilonLowerBound:
    """Lower bound on ε, valid with probability ≥ ``confidence``, from attack scores.

    The scores are treated as independent outputs of the mechanism on neighbouring datasets D
    (``member_scores``) and D' (``nonmember_scores``), as in DP auditing with canaries
    (Jagielski et al. 2020; Nasr et al. 2021). At a threshold t the attack "member iff
    score ≥ t" has rates FPR(t), FNR(t), and (ε, δ)-DP implies
    ε ≥ max(log((1 − δ − FNR)/FPR), log((1 − δ − FPR)/FNR)). Because the best threshold is
    picked from the data, the confidence bound must account for that choice; two ways:

    * ``"holdout"``: split both score sets at random, pick the threshold that maximizes the
      Clopper–Pearson bound on the selection part (``selection_fraction`` of each), then
      evaluate that single threshold on the untouched rest. The threshold is independent of the
      evaluation data, so the usual Clopper–Pearson guarantee applies (FPR and FNR each at
      1 − α/2, α = 1 − confidence).
    * ``"uniform"``: use all data and all thresholds, with a union bound over the order
      statistics: every threshold has the error counts of one of the n + 1 cut points of each
      sorted score set, so bounding each of those at level α/(2n) makes all of them hold at
      once. Deterministic; better when data are scarce, looser (by a log factor) otherwise.

    In both, at most ``max_candidate_thresholds`` thresholds (quantiles of the scores) are
    searched, which keeps the cost at a sort plus that many Beta quantiles.

    When the scores come from one trained model scored on many members and non-members
    (ordinary membership inference), they are not independent draws of a single
    neighbouring-pair experiment, and the number is an indication, not a guarantee.

    Raises:
      ValueError: on empty or non-finite scores, δ ∉ [0, 1), confidence ∉ (0, 1), an unknown
        method, or a holdout split that leaves a part empty.
    """
    _check_delta_confidence(delta, confidence)
    members = _as_finite_1d("member_scores", member_scores)
    nonmembers = _as_finite_1d("nonmember_scores", nonmember_scores)
    alpha = 1.0 - confidence

    if method == "uniform":
        members_sorted, nonmembers_sorted = np.sort(members), np.sort(nonmembers)
        # Any subset of thresholds keeps the union bound valid; a grid keeps it fast.
        thresholds = _candidate_thresholds(
            np.concatenate([members, nonmembers]), max_candidate_thresholds
        )
        fp, fn = _error_counts(members_sorted, nonmembers_sorted, thresholds)
        fpr_upper = clopper_pearson_upper(fp, nonmembers.size, 1.0 - alpha / (2 * nonmembers.size))
        fnr_upper = clopper_pearson_upper(fn, members.size, 1.0 - alpha / (2 * members.size))
        bounds = _epsilon_from_rates(fpr_upper, fnr_upper, delta)
        best = int(np.argmax(bounds))
        return EpsilonLowerBound(
            float(bounds[best]),
            delta,
            confidence,
            method,
            float(thresholds[best]),
            float(fpr_upper[best]),
            float(fnr_upper[best]),
        )
    if method != "holdout":
        raise ValueError(f"method must be 'holdout' or 'uniform', received {method!r}")
    if not 0.0 < selection_fraction < 1.0:
        raise ValueError(f"selection_fraction must be in (0, 1), received {selection_fraction}")

    rng = np.random.default_rng(seed)

    def split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        permuted = rng.permutation(values)
        cut = int(round(selection_fraction * values.size))
        if cut == 0 or cut == values.size:
            raise ValueError(
                f"{values.size} scores are too few to split for the holdout method; "
                "use method='uniform'"
            )
        return np.sort(permuted[:cut]), np.sort(permuted[cut:])

    select_members, eval_members = split(members)
    select_nonmembers, eval_nonmembers = split(nonmembers)
    thresholds = _candidate_thresholds(
        np.concatenate([select_members, select_nonmembers]), max_candidate_thresholds
    )
    fp, fn = _error_counts(select_members, select_nonmembers, thresholds)
    selection_bounds = epsilon_lower_bound_at_counts(
        fp, select_nonmembers.size, fn, select_members.size, delta, confidence
    )
    threshold = thresholds[int(np.argmax(selection_bounds))]
    fp, fn = _error_counts(eval_members, eval_nonmembers, np.array([threshold]))
    fpr_upper = clopper_pearson_upper(fp, eval_nonmembers.size, 1.0 - alpha / 2)
    fnr_upper = clopper_pearson_upper(fn, eval_members.size, 1.0 - alpha / 2)
    epsilon = _epsilon_from_rates(fpr_upper, fnr_upper, delta)
    return EpsilonLowerBound(
        float(epsilon[0]),
        delta,
        confidence,
        method,
        float(threshold),
        float(fpr_upper[0]),
        float(fnr_upper[0]),
    )
