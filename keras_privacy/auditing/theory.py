"""What the accountant claims for an audited mechanism, and exact simulations of the
mechanisms the audits are validated on.

White-box gradient canaries and full-batch DP-SGD. A gradient canary is a unit whose
gradient is a fixed vector of norm ≥ C along one coordinate, so after clipping it adds
exactly C there, in every one of the T updates (q = 1). The noise adds N(0, (σC)²) to the
coordinate in each update, so the canary's score (the sum of the T noised updates along
its coordinate, divided by C) is

    N(T·[included], T σ²) = a Gaussian mechanism with sensitivity 1 and noise σ / √T,

whose ε at δ is the accountant's ε for T self-composed Gaussian mechanisms with noise
multiplier σ (:func:`claimed_epsilon`). These functions are framework-free (NumPy and
``dp-accounting``).
"""

from __future__ import annotations

import dp_accounting
import numpy as np

from keras_privacy.accounting.accountants import epsilon_for_event

__all__ = ["claimed_epsilon", "gaussian_canary_scores"]


def claimed_epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
    """The accountant's ε at ``delta`` for ``steps`` Gaussian mechanisms of noise
    multiplier σ composed, with sampling probability 1 (full-batch DP-SGD, or a canary
    present in every update), by ``dp-accounting``'s privacy-loss-distribution
    accountant."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be > 0, received {noise_multiplier}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, received {steps!r}")
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(float(noise_multiplier)), int(steps)
    )
    return float(epsilon_for_event(event, delta))


def gaussian_canary_scores(
    included: np.ndarray,
    noise_multiplier: float,
    steps: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Scores of white-box canaries in full-batch DP-SGD, simulated exactly: canary i's
    summed update along its coordinate divided by C, ``T·included_i + N(0, T σ²)`` (the
    Gaussian mechanism itself for T = 1)."""
    rng = np.random.default_rng() if rng is None else rng
    mask = np.asarray(included, dtype=bool)
    noise = rng.standard_normal(mask.shape) * noise_multiplier * np.sqrt(steps)
    return steps * mask.astype(np.float64) + noise
