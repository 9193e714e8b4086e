"""The likelihood-ratio attack (LiRA) of Carlini et al. (2022), "Membership Inference Attacks
From First Principles".

For each example (x, y), LiRA looks at the *logit-scaled confidence* of a model on it,

    φ = log(p_y / (1 − p_y)),

which is close to Gaussian across retrainings. K shadow models are trained on random halves
of a dataset, so that each example is "in" some shadow models and "out" of the others. For
each example it fits N(μ_in, σ_in²) to φ over the shadow models that trained on it and
N(μ_out, σ_out²) over those that did not, then scores the target model's φ_target by

* **online**: log N(φ_target; μ_in, σ_in²) − log N(φ_target; μ_out, σ_out²), the
  log-likelihood ratio of "member" against "non-member";
* **offline** (no shadow model may train on the target examples): log Pr[Z ≤ φ_target] with
  Z ~ N(μ_out, σ_out²), a one-sided test that the confidence is unusually high.

With several queries per example (e.g. augmentations), statistics are per query and the
per-query scores are averaged. With few shadow models, ``fix_variance=True`` replaces the
per-example variances by one global variance for "in" and one for "out", as the paper
recommends.

This module takes the scores as arrays; :mod:`keras_privacy.privacy_tests.keras_adapters`
trains Keras shadow models and computes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import special, stats

from keras_privacy.privacy_tests import metrics
from keras_privacy.privacy_tests.data_structures import (
    AttackResults,
    AttackType,
    RocCurve,
    SingleAttackResult,
    SingleSliceSpec,
)

__all__ = [
    "ShadowModelScores",
    "lira_attack_result",
    "lira_offline_scores",
    "lira_online_scores",
    "logit_scaled_confidence",
    "logit_scaled_confidence_from_logits",
    "make_shadow_in_mask",
    "run_lira",
]

_MIN_STD = 1e-6


def logit_scaled_confidence_from_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """φ = log p_y − log(1 − p_y) from logits, computed stably as z_y − logsumexp_{j≠y} z_j.

    ``logits`` has shape ``(n, C)`` or ``(n, queries, C)``; ``labels`` shape ``(n,)``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim not in (2, 3) or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"logits must be (n, C) or (n, queries, C) with n = len(labels), received "
            f"{logits.shape} and {labels.shape}"
        )
    one_hot = np.eye(logits.shape[-1], dtype=bool)[labels]
    if logits.ndim == 3:
        one_hot = one_hot[:, None, :]
    true_logit = np.sum(np.where(one_hot, logits, 0.0), axis=-1)
    others = special.logsumexp(np.where(one_hot, -np.inf, logits), axis=-1)
    return true_logit - others


def logit_scaled_confidence(
    probs: np.ndarray, labels: np.ndarray, epsilon: float = 1e-30
) -> np.ndarray:
    """φ = log(p_y) − log(Σ_{j≠y} p_j) from probabilities (floored at ``epsilon``)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim not in (2, 3) or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probs must be (n, C) or (n, queries, C) with n = len(labels), received "
            f"{probs.shape} and {labels.shape}"
        )
    one_hot = np.eye(probs.shape[-1], dtype=bool)[labels]
    if probs.ndim == 3:
        one_hot = one_hot[:, None, :]
    p_true = np.sum(np.where(one_hot, probs, 0.0), axis=-1)
    p_rest = np.sum(np.where(one_hot, 0.0, probs), axis=-1)
    return np.log(np.maximum(p_true, epsilon)) - np.log(np.maximum(p_rest, epsilon))


def make_shadow_in_mask(
    num_shadow_models: int, num_examples: int, seed: int | None = 0
) -> np.ndarray:
    """``(K, N)`` boolean mask: example n is in shadow model k's training set.

    Each example is in exactly ⌊K/2⌋ shadow models, chosen at random, so each has as many
    "in" as "out" models (for even K), and each shadow model trains on about half the data.
    """
    if num_shadow_models < 2:
        raise ValueError(f"need at least 2 shadow models, received {num_shadow_models}")
    if num_examples < 1:
        raise ValueError(f"need at least one example, received {num_examples}")
    rng = np.random.default_rng(seed)
    ranks = np.argsort(rng.random((num_shadow_models, num_examples)), axis=0)
    return ranks < num_shadow_models // 2


@dataclasses.dataclass
class ShadowModelScores:
    """Per-example scores of K models, and which examples each model trained on.

    Attributes:
      scores: ``(K, N)`` or ``(K, N, queries)`` logit-scaled confidences.
      in_mask: ``(K, N)`` booleans, True where model k trained on example n.
      train_accuracy, test_accuracy: optional per-model accuracies on their in/out examples.
    """

    scores: np.ndarray
    in_mask: np.ndarray
    train_accuracy: np.ndarray | None = None
    test_accuracy: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.in_mask = np.asarray(self.in_mask, dtype=bool)
        _check_shadow(self.scores, self.in_mask)


def _check_shadow(shadow_scores: np.ndarray, in_mask: np.ndarray) -> None:
    if shadow_scores.ndim not in (2, 3):
        raise ValueError(
            f"shadow scores must be (K, N) or (K, N, queries), received {shadow_scores.shape}"
        )
    if in_mask.shape != shadow_scores.shape[:2]:
        raise ValueError(
            f"in_mask has shape {in_mask.shape}, expected {shadow_scores.shape[:2]} "
            "(one entry per shadow model and example)"
        )
    if shadow_scores.shape[0] == 0 or shadow_scores.shape[1] == 0:
        raise ValueError("no shadow models or no examples")
    if not np.all(np.isfinite(shadow_scores)):
        raise ValueError("shadow scores contain NaN or infinite values")


def _prepare(
    target_scores: np.ndarray, shadow_scores: np.ndarray, in_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shadow = np.asarray(shadow_scores, dtype=np.float64)
    mask = np.asarray(in_mask, dtype=bool)
    target = np.asarray(target_scores, dtype=np.float64)
    _check_shadow(shadow, mask)
    if target.shape != shadow.shape[1:]:
        raise ValueError(
            f"target scores have shape {target.shape}, expected {shadow.shape[1:]} "
            "(one per example, and per query if the shadow scores have queries)"
        )
    if not np.all(np.isfinite(target)):
        raise ValueError("target scores contain NaN or infinite values")
    if shadow.ndim == 2:  # add a query axis of length 1
        shadow, target = shadow[..., None], target[..., None]
    return target, shadow, mask


def _gaussian_fit(
    shadow: np.ndarray, weights: np.ndarray, fix_variance: bool, side: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-(example, query) mean and std of shadow scores where ``weights`` (K, N) is 1."""
    counts = weights.sum(axis=0)
    if np.any(counts == 0):
        missing = int(np.sum(counts == 0))
        raise ValueError(
            f"{missing} examples have no '{side}' shadow model; train more shadow models or "
            "use a mask where every example is both in and out of some models"
        )
    w = weights[..., None]
    mean = np.sum(w * shadow, axis=0) / counts[:, None]
    squared = np.sum(w * (shadow - mean) ** 2, axis=0)
    if fix_variance:
        std = np.full_like(mean, np.sqrt(squared.sum() / max(counts.sum() * shadow.shape[2], 1)))
    else:
        std = np.sqrt(squared / counts[:, None])
    return mean, np.maximum(std, _MIN_STD)


def lira_online_scores(
    target_scores: np.ndarray,
    shadow_scores: np.ndarray,
    shadow_in_mask: np.ndarray,
    fix_variance: bool = False,
) -> np.ndarray:
    """Online LiRA membership scores (higher = more likely a member), shape ``(N,)``.

    Args:
      target_scores: ``(N,)`` or ``(N, queries)`` φ of the attacked model.
      shadow_scores: ``(K, N)`` or ``(K, N, queries)`` φ of the shadow models.
      shadow_in_mask: ``(K, N)``, True where shadow model k trained on example n. Every
        example needs at least one "in" and one "out" shadow model.
      fix_variance: use one global σ_in and σ_out instead of per-example ones.
    """
    target, shadow, mask = _prepare(target_scores, shadow_scores, shadow_in_mask)
    mean_in, std_in = _gaussian_fit(shadow, mask.astype(float), fix_variance, "in")
    mean_out, std_out = _gaussian_fit(shadow, (~mask).astype(float), fix_variance, "out")
    log_ratio = stats.norm.logpdf(target, mean_in, std_in) - stats.norm.logpdf(
        target, mean_out, std_out
    )
    return log_ratio.mean(axis=1)


def lira_offline_scores(
    target_scores: np.ndarray,
    shadow_scores: np.ndarray,
    shadow_in_mask: np.ndarray | None = None,
    fix_variance: bool = False,
) -> np.ndarray:
    """Offline LiRA membership scores, log Pr[Z ≤ φ_target], Z ~ N(μ_out, σ_out²).

    Only "out" shadow scores are used (all of them when ``shadow_in_mask`` is ``None``).
    """
    shadow = np.asarray(shadow_scores, dtype=np.float64)
    mask = (
        np.zeros(shadow.shape[:2], dtype=bool)
        if shadow_in_mask is None
        else np.asarray(shadow_in_mask, dtype=bool)
    )
    target, shadow, mask = _prepare(target_scores, shadow, mask)
    mean_out, std_out = _gaussian_fit(shadow, (~mask).astype(float), fix_variance, "out")
    return stats.norm.logcdf(target, mean_out, std_out).mean(axis=1)


def lira_attack_result(
    membership_scores: np.ndarray,
    is_member: np.ndarray,
    attack_type: AttackType = AttackType.LIRA_ONLINE,
    epsilon_lower_bound_delta: float = 0.0,
    epsilon_lower_bound_confidence: float = 0.95,
    seed: int = 0,
) -> SingleAttackResult:
    """A :class:`SingleAttackResult` from LiRA scores and the true membership."""
    scores = np.asarray(membership_scores, dtype=np.float64)
    members = np.asarray(is_member, dtype=bool)
    if scores.shape != members.shape or scores.ndim != 1:
        raise ValueError(
            f"membership_scores {scores.shape} and is_member {members.shape} must be equal 1-D"
        )
    if members.all() or not members.any():
        raise ValueError("need both members and non-members to evaluate an attack")
    fpr, tpr, thresholds = metrics.roc_curve(scores[members], scores[~members])
    method = "holdout" if min(members.sum(), (~members).sum()) >= 2 else "uniform"
    bound = metrics.compute_epsilon_lower_bound(
        scores[members],
        scores[~members],
        delta=epsilon_lower_bound_delta,
        confidence=epsilon_lower_bound_confidence,
        method=method,
        seed=seed,
    )
    return SingleAttackResult(
        slice_spec=SingleSliceSpec(),
        attack_type=attack_type,
        roc_curve=RocCurve(tpr, fpr, thresholds, float((~members).sum() / members.sum())),
        data_size={"train": int(members.sum()), "test": int((~members).sum())},
        membership_scores_train=scores[members],
        membership_scores_test=scores[~members],
        epsilon_lower_bound=bound,
    )


def run_lira(
    shadow: ShadowModelScores,
    target_model_indices: Sequence[int] = (0,),
    online: bool = True,
    fix_variance: bool = False,
    epsilon_lower_bound_delta: float = 0.0,
    epsilon_lower_bound_confidence: float = 0.95,
    seed: int = 0,
) -> AttackResults:
    """Evaluate LiRA leave-one-model-out: each model in ``target_model_indices`` is attacked
    using all the other models as shadow models; member/non-member scores are pooled over
    targets into one result."""
    num_models = shadow.scores.shape[0]
    if not target_model_indices:
        raise ValueError("target_model_indices is empty")
    all_scores, all_members = [], []
    for target in target_model_indices:
        if not 0 <= target < num_models:
            raise ValueError(f"target model index {target} out of range [0, {num_models})")
        others = np.arange(num_models) != target
        if online:
            scores = lira_online_scores(
                shadow.scores[target], shadow.scores[others], shadow.in_mask[others], fix_variance
            )
        else:
            scores = lira_offline_scores(
                shadow.scores[target], shadow.scores[others], shadow.in_mask[others], fix_variance
            )
        all_scores.append(scores)
        all_members.append(shadow.in_mask[target])
    result = lira_attack_result(
        np.concatenate(all_scores),
        np.concatenate(all_members),
        AttackType.LIRA_ONLINE if online else AttackType.LIRA_OFFLINE,
        epsilon_lower_bound_delta,
        epsilon_lower_bound_confidence,
        seed,
    )
    return AttackResults([result])
