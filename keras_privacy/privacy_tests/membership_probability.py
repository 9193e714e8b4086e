"""Membership probability ("privacy risk score", Song & Mittal 2021, arXiv:2003.10595).

Each example's membership probability is the posterior probability that it was a member
given its loss (or entropy), estimated from histograms with equal member/non-member
priors: with the losses of members and non-members binned on ``num_bins`` log-spaced bins
over their common range, and ``f_in(b)``, ``f_out(b)`` the fraction of members and of
non-members falling in bin ``b``,

    P(member | loss in b) = f_in(b) / (f_in(b) + f_out(b)).

Losses are floored at 1e-10 before taking logs. Thresholding this probability is an attack:
at threshold ``t`` it flags examples with probability >= t, with recall = TPR and (balanced)
precision ``TPR / (TPR + FPR)``. This is the analysis TF Privacy runs with
``run_membership_probability_analysis``; the same inputs give the same probabilities.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from keras_privacy.privacy_tests import metrics
from keras_privacy.privacy_tests.data_structures import (
    AttackInputData,
    SingleSliceSpec,
    SlicingSpec,
)
from keras_privacy.privacy_tests.slicing import get_single_slice_specs, get_slice

__all__ = [
    "MembershipProbabilityResults",
    "SingleMembershipProbabilityResult",
    "membership_probabilities",
    "run_membership_probability_analysis",
]

_FLOOR = 1e-10


def membership_probabilities(
    train_values: np.ndarray, test_values: np.ndarray, num_bins: int = 15
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example membership probabilities of members and non-members (module docstring)."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, received {num_bins}")
    train = np.maximum(np.asarray(train_values, dtype=np.float64), _FLOOR)
    test = np.maximum(np.asarray(test_values, dtype=np.float64), _FLOOR)
    low = min(train.min(), test.min())
    high = max(train.max(), test.max())
    edges = np.logspace(np.log10(low), np.log10(high), num_bins + 1)

    def bin_of(values: np.ndarray) -> np.ndarray:
        # bins [e_i, e_{i+1}), the last one closed (as np.histogram)
        return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, num_bins - 1)

    train_bins, test_bins = bin_of(train), bin_of(test)
    in_fraction = np.bincount(train_bins, minlength=num_bins) / train.size
    out_fraction = np.bincount(test_bins, minlength=num_bins) / test.size
    total = in_fraction + out_fraction
    total[total == 0] = _FLOOR
    probability = in_fraction / total
    return probability[train_bins], probability[test_bins]


@dataclasses.dataclass
class SingleMembershipProbabilityResult:
    """Membership probabilities of the members and non-members of one slice."""

    slice_spec: SingleSliceSpec
    train_membership_probs: np.ndarray
    test_membership_probs: np.ndarray

    def attack_with_varied_thresholds(
        self, threshold_list: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds used, precision, recall) of "member iff probability >= t".

        Thresholds above every probability flag nobody and are left out.
        """
        train, test = self.train_membership_probs, self.test_membership_probs
        highest = max(train.max(), test.max())
        used, precision, recall = [], [], []
        for threshold in threshold_list:
            if threshold > highest:
                continue
            tpr = float(np.mean(train >= threshold))
            fpr = float(np.mean(test >= threshold))
            used.append(threshold)
            precision.append(tpr / (tpr + fpr))
            recall.append(tpr)
        return np.array(used), np.array(precision), np.array(recall)

    def collect_results(
        self, threshold_list: Sequence[float], return_roc_results: bool = True
    ) -> list[str]:
        """Summary lines: precision and recall per threshold; AUC, advantage, epsilon bound."""
        lines = [f'\nMembership probability analysis over slice: "{self.slice_spec}"']
        for threshold, precision, recall in zip(
            *self.attack_with_varied_thresholds(threshold_list), strict=True
        ):
            lines.append(
                f"  with {threshold:.4f} as the threshold on membership probability, the "
                f"precision-recall pair is ({precision:.4f}, {recall:.4f})"
            )
        if return_roc_results:
            train, test = self.train_membership_probs, self.test_membership_probs
            fpr, tpr, _ = metrics.roc_curve(train, test)
            method = "holdout" if min(train.size, test.size) >= 2 else "uniform"
            bound = metrics.compute_epsilon_lower_bound(train, test, method=method)
            lines.append(
                "  thresholding on membership probability achieved an AUC of "
                f"{metrics.auc(fpr, tpr):.2f}"
            )
            lines.append(
                "  thresholding on membership probability achieved an advantage of "
                f"{metrics.attacker_advantage(fpr, tpr):.2f}"
            )
            lines.append(
                "  thresholding on membership probability achieved an epsilon lower bound "
                f"of {bound.epsilon:.2f} (confidence {bound.confidence:g})"
            )
        return lines


@dataclasses.dataclass
class MembershipProbabilityResults:
    """Membership probability results of several slices."""

    membership_prob_results: list[SingleMembershipProbabilityResult]

    def summary(self, threshold_list: Sequence[float]) -> str:
        lines: list[str] = []
        for result in self.membership_prob_results:
            lines.extend(result.collect_results(threshold_list))
        return "\n".join(lines)


def run_membership_probability_analysis(
    attack_input: AttackInputData,
    slicing_spec: SlicingSpec | None = None,
    num_bins: int = 15,
) -> MembershipProbabilityResults:
    """Membership probabilities of every example, per slice of ``slicing_spec``.

    Uses the given losses, else the given entropies, else the losses computed from
    outputs and labels. Empty slices are left out.
    """
    attack_input.validate()
    slicing_spec = slicing_spec or SlicingSpec()
    results = []
    for spec in get_single_slice_specs(slicing_spec, attack_input):
        sliced = get_slice(attack_input, spec, slicing_spec)
        if sliced is None:
            continue
        if sliced.loss_train is not None:
            train, test = sliced.loss_train, sliced.loss_test
        elif sliced.entropy_train is not None:
            train, test = sliced.entropy_train, sliced.entropy_test
        else:
            train, test = sliced.get_loss_train(), sliced.get_loss_test()
        if train is None:
            raise ValueError("membership probabilities need losses or entropies")
        probs_train, probs_test = membership_probabilities(train, test, num_bins)
        results.append(SingleMembershipProbabilityResult(spec, probs_train, probs_test))
    return MembershipProbabilityResults(results)
