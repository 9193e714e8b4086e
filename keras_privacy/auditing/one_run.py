"""One-run auditing (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1)
Training Run", arXiv:2305.08846): m canaries in a single training run.

The experiment. Each of ``m`` canaries is included independently with probability 1/2
(``S_i = +1`` included, ``-1`` left out). After training the auditor scores every canary
and guesses ``T_i in {+1, -1, 0}``: +1 ("included") for the ``k+`` highest scores, -1
("left out") for the ``k-`` lowest, 0 (abstain) for the rest, so it makes
``r = k+ + k-`` guesses. ``W``, the number of correct guesses, is all it looks at.

The theorem (their Theorem 3.1 for pure DP, and the (ε, δ) form of their main result).
If training is (ε, δ)-DP with respect to adding or removing one canary, then for every
``v``

    P[W >= v] <= f_ε(v) + 2 m δ max_{i = 1..v} (f_ε(v - i) - f_ε(v)) / i,
    f_ε(v) = P[Binomial(r, p) >= v],  p = e^ε / (1 + e^ε),

(``f_ε(v) = 1`` for ``v <= 0``; the maximum over ``i > v`` is never larger than at
``i = v``). For δ = 0 this is their pure-DP statement: W is stochastically dominated by
Binomial(r, e^ε / (1 + e^ε)), because, whatever the output, each guess is right with
conditional probability at most p. The δ term comes from the canaries whose privacy loss
exceeds ε: there are at most 2mδ of them in expectation, and each can turn at most one
guess right. They matter only when the other canaries supply between ``v - i`` and
``v - 1`` correct guesses, an event of probability ``f_ε(v - i) - f_ε(v)``, and Markov's
inequality prices ``i`` of them at ``2mδ / i``; the largest of these products over ``i``
is the paper's term (its Algorithm for the p-value computes the same maximum).

The bound. For the observed ``v`` the right-hand side grows with ε; the audit reports
the largest ε at which it is still at most ``β = 1 - confidence``: every smaller ε is
refuted at level β, so with probability ≥ ``confidence`` training is not (ε', δ)-DP for
any ε' below the reported value. Choosing ``k+`` and ``k-`` after looking at the scores
would spoil that; :func:`one_run_audit` either takes them fixed or, given several
candidates, splits β evenly among them (a union bound).

What one run can reach. With all ``r`` guesses right the bound is at most about
``log(β^(1/r) / (1 - β^(1/r)))`` (e.g. 5.8 for r = 1000 and β = 0.05): one run with
m canaries cannot show a large ε, however leaky the training; and because the canaries
share one run it is looser than the multi-run audit for the same ε
(:mod:`keras_privacy.auditing.multi_run`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import special, stats

from keras_privacy.auditing.results import AuditResult
from keras_privacy.privacy_tests.metrics import _check_delta_confidence

__all__ = [
    "guesses_from_scores",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
]

_EPSILON_CEILING = 60.0  # beyond float64's resolution of p = e^ε / (1 + e^ε)


def _check_counts(num_canaries: int, num_guesses: int, num_correct: int) -> None:
    for name, value in (
        ("num_canaries", num_canaries),
        ("num_guesses", num_guesses),
        ("num_correct", num_correct),
    ):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{name} must be a whole number, received {value!r}")
    if num_canaries < 1:
        raise ValueError(f"num_canaries must be at least 1, received {num_canaries}")
    if not 0 <= num_correct <= num_guesses <= num_canaries:
        raise ValueError(
            "need 0 <= num_correct <= num_guesses <= num_canaries, received "
            f"{num_correct}, {num_guesses}, {num_canaries}"
        )


def one_run_p_value(
    epsilon: float, delta: float, num_canaries: int, num_guesses: int, num_correct: int
) -> float:
    """The theorem's bound on ``P[W >= num_correct]`` for an (ε, δ)-DP run (see the module):
    ``f_ε(v) + 2 m δ max_{i <= v} (f_ε(v - i) - f_ε(v)) / i``, at most 1."""
    _check_counts(num_canaries, num_guesses, num_correct)
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, received {epsilon}")
    r, v, m = int(num_guesses), int(num_correct), int(num_canaries)
    p = float(special.expit(epsilon))
    # P[Binomial(r, p) >= v] = sf(v - 1); 1 for v <= 0.
    tail = float(stats.binom.sf(v - 1, r, p)) if v > 0 else 1.0
    if delta > 0 and v > 0:
        shifts = np.arange(1, v + 1)
        shifted = np.where(v - shifts > 0, stats.binom.sf(v - shifts - 1, r, p), 1.0)
        tail += 2.0 * m * delta * float(np.max((shifted - tail) / shifts))
    return min(tail, 1.0)


def one_run_epsilon_lower_bound(
    num_canaries: int,
    num_guesses: int,
    num_correct: int,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> float:
    """The largest ε that ``num_correct`` right guesses out of ``num_guesses`` refute at
    level ``1 - confidence`` (Steinke et al.'s theorem, see the module); 0 when even ε = 0
    is not refuted.

    Raises:
      ValueError: counts that are not whole numbers with 0 <= correct <= guesses <=
        canaries, delta outside [0, 1) or confidence outside (0, 1).
    """
    _check_counts(num_canaries, num_guesses, num_correct)
    _check_delta_confidence(delta, confidence)
    beta = 1.0 - confidence

    def refuted(epsilon: float) -> bool:
        return one_run_p_value(epsilon, delta, num_canaries, num_guesses, num_correct) <= beta

    if not refuted(0.0):
        return 0.0
    if refuted(_EPSILON_CEILING):
        return _EPSILON_CEILING
    low, high = 0.0, _EPSILON_CEILING
    while high - low > 1e-6:
        middle = 0.5 * (low + high)
        if refuted(middle):
            low = middle
        else:
            high = middle
    return low


def guesses_from_scores(
    scores: np.ndarray | Sequence[float], num_positive: int, num_negative: int
) -> np.ndarray:
    """+1 for the ``num_positive`` highest scores, -1 for the ``num_negative`` lowest, 0
    (abstain) for the others; ties are broken by position (a fixed rule, so the guesses
    stay a function of the scores).

    Raises:
      ValueError: scores that are not finite and one-dimensional, or guess counts that are
        negative or add up to more than the number of scores.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("scores must be a non-empty one-dimensional array of finite numbers")
    for name, count in (("num_positive", num_positive), ("num_negative", num_negative)):
        if isinstance(count, bool) or int(count) != count or count < 0:
            raise ValueError(f"{name} must be a whole number >= 0, received {count!r}")
    if num_positive + num_negative > values.size:
        raise ValueError(
            f"num_positive + num_negative = {num_positive + num_negative} guesses exceed "
            f"the {values.size} canaries"
        )
    order = np.argsort(values, kind="stable")
    guesses = np.zeros(values.size, dtype=np.int64)
    if num_negative:
        guesses[order[: int(num_negative)]] = -1
    if num_positive:
        guesses[order[values.size - int(num_positive) :]] = 1
    return guesses


def _as_inclusion(included: np.ndarray | Sequence[bool], size: int) -> np.ndarray:
    mask = np.asarray(included)
    if mask.shape != (size,):
        raise ValueError(f"included must have shape ({size},) like scores, received {mask.shape}")
    if mask.dtype != bool:
        if not np.all(np.isin(mask, (0, 1))):
            raise ValueError("included must hold booleans (or 0/1)")
        mask = mask.astype(bool)
    return mask


def one_run_audit(
    scores: np.ndarray | Sequence[float],
    included: np.ndarray | Sequence[bool],
    *,
    guess_counts: Sequence[tuple[int, int]] | tuple[int, int] | None = None,
    delta: float = 0.0,
    confidence: float = 0.95,
    epsilon_claimed: float | None = None,
    canary_kind: str = "white-box gradient",
    num_trials: int = 1,
) -> AuditResult:
    """A one-run audit's ε lower bound from the canaries' scores and inclusion bits.

    Args:
      scores: one score per canary, higher meaning "more likely included" (for gradient
        canaries the observed update along the canary's direction; for input canaries
        minus the loss).
      included: which canaries were in the training run (drawn with probability 1/2
        each, independently of everything else, before training).
      guess_counts: ``(k+, k-)`` (guess "included" for the k+ highest scores and "left out"
        for the k- lowest), or several such pairs: then each is evaluated at
        ``1 - (1 - confidence) / len(guess_counts)`` and the best is reported (a union
        bound keeps the overall confidence). Default: the pairs (k, k) for k = 1%, 2%, 5%,
        10%, 20% and 50% of the canaries (at least 1).
      delta: the δ of the (ε, δ) being refuted.
      confidence: the probability that the reported bound holds.
      epsilon_claimed: the accountant's ε at ``delta``, copied to the result.
      canary_kind: ``"white-box gradient"`` or ``"input-space"``.
      num_trials: training runs behind the scores (1 for the one-run audit).

    Returns:
      An :class:`~keras_privacy.auditing.AuditResult` with ``method="one-run"``; its
      ``details`` hold the chosen ``(k+, k-)``, the candidates and the level used for each.
    """
    _check_delta_confidence(delta, confidence)
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError("scores must be one-dimensional")
    mask = _as_inclusion(included, values.size)
    m = values.size
    if guess_counts is None:
        sizes = sorted({max(1, int(round(f * m / 2))) for f in (0.02, 0.04, 0.1, 0.2, 0.4, 1.0)})
        candidates = [(k, min(k, m - k)) for k in sizes if k <= m]
    elif len(guess_counts) == 2 and all(isinstance(c, (int, np.integer)) for c in guess_counts):
        candidates = [(int(guess_counts[0]), int(guess_counts[1]))]
    else:
        candidates = [(int(a), int(b)) for a, b in guess_counts]
    if not candidates:
        raise ValueError("guess_counts must name at least one (k+, k-) pair")
    level = 1.0 - (1.0 - confidence) / len(candidates)
    truth = np.where(mask, 1, -1)
    best = None
    for num_positive, num_negative in candidates:
        guesses = guesses_from_scores(values, num_positive, num_negative)
        made = int(np.count_nonzero(guesses))
        correct = int(np.count_nonzero(guesses == truth))
        bound = one_run_epsilon_lower_bound(m, made, correct, delta, level)
        if best is None or bound > best[0]:
            best = (bound, made, correct, (num_positive, num_negative))
    bound, made, correct, chosen = best
    return AuditResult(
        epsilon_lower_bound=float(bound),
        confidence=float(confidence),
        delta=float(delta),
        epsilon_claimed=None if epsilon_claimed is None else float(epsilon_claimed),
        method="one-run",
        canary_kind=canary_kind,
        num_canaries=m,
        num_guesses=made,
        num_correct=correct,
        num_trials=int(num_trials),
        details={
            "guess_counts": chosen,
            "candidates": candidates,
            "level_per_candidate": level,
            "num_included": int(mask.sum()),
        },
    )
