"""The result of a privacy audit: an empirical lower bound on ε, and how it was obtained.

Framework-free (standard library only), so that reports and tools can read audit results
without importing Keras or a deep-learning framework.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["AuditResult", "CANARY_KINDS", "METHODS"]

METHODS = ("one-run", "multi-run")
CANARY_KINDS = ("white-box gradient", "input-space")


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """An empirical lower bound on the ε of a training run (or of a mechanism).

    The bound is a *lower* bound: with probability at least ``confidence`` (over the
    randomness of the audit: canary inclusion, training noise), the mechanism audited is not
    (ε, ``delta``)-DP for any ε < ``epsilon_lower_bound``. A bound above
    ``epsilon_claimed`` (the accountant's ε for the same δ) therefore shows that the claim is
    wrong (a bug, or an accountant told the wrong thing); a bound below it proves nothing
    about privacy.

    Attributes:
      epsilon_lower_bound: the bound (0 when the audit shows nothing).
      confidence: probability that the bound holds (e.g. 0.95).
      delta: the δ the bound refers to.
      epsilon_claimed: the accountant's ε at ``delta`` for the audited run, if known.
      method: ``"one-run"`` (Steinke, Nasr & Jagielski 2023: many canaries in one training
        run) or ``"multi-run"`` (one canary, many training runs with and without it).
      canary_kind: ``"white-box gradient"`` (a gradient injected into the DP step) or
        ``"input-space"`` (an example added to the training data).
      num_canaries: canaries in the audit (one-run: m; multi-run: 1).
      num_guesses: guesses the bound was computed from (one-run: the r canaries guessed on,
        the rest abstained; multi-run: the trials the chosen threshold was evaluated on).
      num_correct: correct guesses among them (multi-run: trials classified correctly).
      num_trials: training runs (or mechanism runs) the audit used.
      details: anything else worth keeping (the abstention counts, the threshold, ...).
    """

    epsilon_lower_bound: float
    confidence: float
    delta: float
    epsilon_claimed: float | None
    method: str
    canary_kind: str
    num_canaries: int
    num_guesses: int
    num_correct: int
    num_trials: int = 1
    details: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, received {self.method!r}")
        if self.canary_kind not in CANARY_KINDS:
            raise ValueError(
                f"canary_kind must be one of {CANARY_KINDS}, received {self.canary_kind!r}"
            )
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), received {self.confidence}")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(f"delta must be in [0, 1), received {self.delta}")
        if not (self.epsilon_lower_bound >= 0.0 and math.isfinite(self.epsilon_lower_bound)):
            raise ValueError(
                f"epsilon_lower_bound must be finite and ≥ 0, received {self.epsilon_lower_bound}"
            )
        if not 0 <= self.num_correct <= self.num_guesses:
            raise ValueError(
                f"need 0 ≤ num_correct ≤ num_guesses, received {self.num_correct}"
                f"/{self.num_guesses}"
            )

    @property
    def fraction_of_claimed(self) -> float | None:
        """``epsilon_lower_bound / epsilon_claimed`` (None without a positive claim)."""
        if self.epsilon_claimed is None or self.epsilon_claimed <= 0:
            return None
        return self.epsilon_lower_bound / self.epsilon_claimed

    @property
    def violates_claim(self) -> bool:
        """True when the bound exceeds the claimed ε: the run is not as private as claimed
        (with probability ≥ ``confidence``)."""
        return self.epsilon_claimed is not None and self.epsilon_lower_bound > self.epsilon_claimed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, plus ``fraction_of_claimed`` and
        ``violates_claim``."""
        data = dataclasses.asdict(self)
        data["fraction_of_claimed"] = self.fraction_of_claimed
        data["violates_claim"] = self.violates_claim
        return data

    def summary(self) -> str:
        """One line: the bound, its confidence, and how it compares with the claim."""
        line = (
            f"{self.method} audit ({self.canary_kind} canaries): ε ≥ "
            f"{self.epsilon_lower_bound:.3f} at δ = {self.delta:g} with confidence "
            f"{self.confidence:g} ({self.num_correct}/{self.num_guesses} correct guesses, "
            f"{self.num_canaries} canaries, {self.num_trials} run(s))"
        )
        if self.epsilon_claimed is not None:
            verdict = "VIOLATES the claim" if self.violates_claim else "consistent with it"
            line += f"; claimed ε = {self.epsilon_claimed:.3f}: {verdict}"
        return line
