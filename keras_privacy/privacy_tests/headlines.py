"""Headline figures of attack results: from slices big enough to mean something, with intervals.

A "best attack over all slices" picked from a slice of a hundred examples, or a positive
predictive value of 1.00 read off the single example an attack flagged, says more about
chance than about the model. So the headlines of :meth:`AttackResults.summary` and of the
privacy reports

* consider only slices with at least ``min_slice_size`` members *and* non-members (when no
  slice has that many, the largest slice, and the summary says so), and
* carry a confidence interval: exact Clopper–Pearson for the rates read off one ROC point
  (the TPR at 1% FPR, the PPV, and the TPR and FPR behind the advantage, each at
  1 − α/2 so that the advantage interval holds at 1 − α), and Hanley–McNeil's normal
  interval for the AUC.

An interval is for the ROC point reported; it does not correct for the choice of the best of
many attacks, slices and thresholds, so a headline is, if anything, optimistic for the
attacker. With sample weights the counts are the weighted rates times the slice sizes,
rounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from scipy import stats

from keras_privacy.privacy_tests.metrics import clopper_pearson_interval


class AttackResultLike(Protocol):
    """What the headlines read of an attack result (``attack_results.SingleAttackResult``
    has it; described here so that this lower module imports no result class)."""

    data_size: Any
    roc_curve: Any
    slice_spec: Any
    attack_type: Any

    def get_auc(self) -> float: ...


__all__ = [
    "DEFAULT_MIN_SLICE_SIZE",
    "advantage_interval",
    "auc_interval",
    "headline_results",
    "ppv_interval",
    "tpr_at_fpr_interval",
]

#: Members and non-members (each) a slice needs for its results to make a headline.
DEFAULT_MIN_SLICE_SIZE = 200


def _size(result: AttackResultLike) -> int:
    return min(result.data_size["train"], result.data_size["test"])


def headline_results(
    results: Sequence[AttackResultLike], min_slice_size: int = DEFAULT_MIN_SLICE_SIZE
) -> tuple[list[AttackResultLike], bool]:
    """The results a headline may come from, and whether any slice was big enough.

    Those whose slice has at least ``min_slice_size`` members and non-members; if there are
    none, those of the largest slice (``False`` is returned with them).
    """
    if min_slice_size < 1:
        raise ValueError(f"min_slice_size must be >= 1, received {min_slice_size}")
    if not results:
        raise ValueError("no attack results")
    big = [r for r in results if _size(r) >= min_slice_size]
    if big:
        return big, True
    largest = max(_size(r) for r in results)
    return [r for r in results if _size(r) == largest], False


def _counts(result: AttackResultLike, index: int) -> tuple[int, int]:
    """(true positives, false positives) at ROC point ``index``."""
    curve = result.roc_curve
    true_positives = round(float(curve.tpr[index]) * result.data_size["train"])
    false_positives = round(float(curve.fpr[index]) * result.data_size["test"])
    return true_positives, false_positives


def auc_interval(result: AttackResultLike, confidence: float = 0.95) -> tuple[float, float]:
    """Hanley & McNeil (1982): AUC ± z · SE, clipped to [0, 1]."""
    area = result.get_auc()
    members, nonmembers = result.data_size["train"], result.data_size["test"]
    q1, q2 = area / (2.0 - area), 2.0 * area**2 / (1.0 + area)
    variance = (
        area * (1.0 - area) + (members - 1) * (q1 - area**2) + (nonmembers - 1) * (q2 - area**2)
    ) / (members * nonmembers)
    half = float(stats.norm.ppf(0.5 + confidence / 2.0)) * math.sqrt(max(variance, 0.0))
    return max(0.0, area - half), min(1.0, area + half)


def tpr_at_fpr_interval(
    result: AttackResultLike, max_fpr: float = 0.01, confidence: float = 0.95
) -> tuple[float, float]:
    """Clopper–Pearson interval of the TPR at the best ROC point with FPR ≤ ``max_fpr``."""
    curve = result.roc_curve
    allowed = np.flatnonzero(np.asarray(curve.fpr) <= max_fpr)
    index = int(allowed[np.argmax(np.asarray(curve.tpr)[allowed])]) if allowed.size else 0
    true_positives, _ = _counts(result, index)
    return clopper_pearson_interval(true_positives, result.data_size["train"], confidence)


def ppv_interval(result: AttackResultLike, confidence: float = 0.95) -> tuple[float, float, int]:
    """Clopper–Pearson interval of the PPV at its best ROC point, and how many examples the
    attack flagged there (the interval's sample size)."""
    curve = result.roc_curve
    tpr, fpr = np.asarray(curve.tpr, float), np.asarray(curve.fpr, float)
    denominator = tpr + fpr * curve.test_train_ratio
    valid = np.flatnonzero(denominator > 0)
    if not valid.size:
        return 0.0, 1.0, 0
    index = int(valid[np.argmax(tpr[valid] / denominator[valid])])
    true_positives, false_positives = _counts(result, index)
    flagged = true_positives + false_positives
    if flagged == 0:
        return 0.0, 1.0, 0
    low, high = clopper_pearson_interval(true_positives, flagged, confidence)
    return low, high, flagged


def advantage_interval(result: AttackResultLike, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of TPR − FPR at the ROC point of the largest advantage, from Clopper–Pearson
    intervals of the TPR and the FPR, each at 1 − (1 − confidence) / 2 (lower end at least 0)."""
    curve = result.roc_curve
    index = int(np.argmax(np.asarray(curve.tpr) - np.asarray(curve.fpr)))
    true_positives, false_positives = _counts(result, index)
    each = 1.0 - (1.0 - confidence) / 2.0
    tpr_low, tpr_high = clopper_pearson_interval(true_positives, result.data_size["train"], each)
    fpr_low, fpr_high = clopper_pearson_interval(false_positives, result.data_size["test"], each)
    # the advantage is a maximum over thresholds that include TPR = FPR = 0: never below 0
    return max(0.0, tpr_low - fpr_high), min(1.0, tpr_high - fpr_low)


def _ci(interval: tuple[float, ...], confidence: float, digits: int = 2) -> str:
    return f"{confidence:.0%} CI {interval[0]:.{digits}f}–{interval[1]:.{digits}f}"


def best_lines(
    results: Sequence[AttackResultLike],
    indent: str,
    with_slice: bool = True,
    confidence: float = 0.95,
) -> list[str]:
    """The summary's lines: the best attack by each metric, each figure with its interval."""

    def describe(result: AttackResultLike, what: str) -> str:
        where = f" on slice {result.slice_spec}" if with_slice else ""
        return (
            f"{indent}{result.attack_type} (with {result.data_size['train']} training and "
            f"{result.data_size['test']} test examples) achieved {what}{where}"
        )

    best_auc = max(results, key=lambda r: r.get_auc())
    best_advantage = max(results, key=lambda r: r.get_attacker_advantage())
    best_ppv = max(results, key=lambda r: r.get_ppv())
    best_tpr = max(results, key=lambda r: r.get_tpr_at_fpr(0.01))
    ppv_low, ppv_high, flagged = ppv_interval(best_ppv, confidence)
    examples = "example" if flagged == 1 else "examples"
    auc_ci = _ci(auc_interval(best_auc, confidence), confidence)
    lines = [
        describe(best_auc, f"an AUC of {best_auc.get_auc():.2f} ({auc_ci})"),
        describe(
            best_advantage,
            f"an advantage of {best_advantage.get_attacker_advantage():.2f} "
            f"({_ci(advantage_interval(best_advantage, confidence), confidence)})",
        ),
        describe(
            best_ppv,
            f"a positive predictive value of {best_ppv.get_ppv():.2f} "
            f"({_ci((ppv_low, ppv_high), confidence)}, {flagged} {examples} flagged)",
        ),
        describe(
            best_tpr,
            f"a TPR of {best_tpr.get_tpr_at_fpr(0.01):.3f} at 1% FPR "
            f"({_ci(tpr_at_fpr_interval(best_tpr, 0.01, confidence), confidence, 3)})",
        ),
    ]
    with_bound = [r for r in results if r.epsilon_lower_bound is not None]
    if with_bound:
        best_eps = max(with_bound, key=lambda r: r.get_epsilon_lower_bound())
        bound = best_eps.epsilon_lower_bound
        lines.append(
            describe(
                best_eps,
                f"an ε lower bound of {bound.epsilon:.2f} (δ={bound.delta:g}, "
                f"{bound.confidence:.0%} confidence)",
            )
        )
    return lines
