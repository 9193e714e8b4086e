"""User-level (add-or-remove-one-user) epsilon of Poisson-sampled DP-SGD.

A user contributes at most k examples. Two sound conversions are used, each with the
accountant it fits:

* ``"pld"``: the mixture-of-Gaussians event of
  :func:`~keras_privacy.accounting.events.poisson_user_dp_sgd_event` (Ganesh 2024,
  Theorem 3.1: the user's ``J ~ Binomial(k, q)`` sampled examples per update), composed by
  dp_accounting's PLD accountant. This is a tight bound, not a conversion from the
  example-level guarantee, and much smaller than the group-privacy lemma's (TF Privacy's
  RDP case N=1000, B=10, sigma 0.8, 5 epochs, k=5, delta 1e-5: 13.69 here, 108.5 there).
* ``"rdp"``: dp_accounting's RDP accountant does not support mixtures of Gaussians, so the
  example-level (epsilon, delta) curve is converted by the group-privacy lemma
  (:func:`~keras_privacy.accounting.accountants.group_privacy_epsilon`; Vadhan 2017,
  Lemma 2.2 in the tighter form of its proof, as TF Privacy does).

If the requested accountant gives no finite bound and the other one does, the other one
answers and the result names it (``"accountant"``); an infinite result carries a
``"reason"`` saying why and what would answer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from keras_privacy.accounting import accountants, events

#: PLD discretization for the mixture-of-Gaussians event. Building its PLD at 1e-4 takes
#: ~25 s (at 1e-3, ~4 s); the PLD is pessimistic at any interval, so this is still an upper
#: bound (1e-5 relative difference on the case in the module docstring).
MIXTURE_PLD_DISCRETIZATION = 1e-3

MIXTURE_METHOD = "mixture of Gaussians over the user's sampled examples (Ganesh 2024, Thm 3.1)"
LEMMA_METHOD = "group privacy (Vadhan 2017, Lemma 2.2, tight form of its proof)"

_OTHER = {"pld": "rdp", "rdp": "pld"}


def poisson_user_epsilon(
    sampling_probability: float,
    noise_multiplier: float,
    updates: int,
    examples_per_user: int,
    delta: float,
    accountant: str = "pld",
    *,
    used_microbatching: bool = False,
    pld_discretization: float = accountants.PLD_DISCRETIZATION,
    fallback: bool = True,
) -> dict[str, Any]:
    """User-level epsilon at ``delta`` for ``updates`` Poisson-sampled DP-SGD updates.

    Returns a dict with ``epsilon``, ``method``, ``accountant`` (the one that answered),
    ``example_epsilon`` / ``example_delta`` (group-privacy lemma only) and ``reason``
    (non-empty only when ``epsilon`` is infinite). With ``fallback`` the other accountant
    is tried when the requested one gives ``inf``.
    """
    if noise_multiplier == 0:
        return {
            "epsilon": math.inf,
            "method": "no noise",
            "accountant": accountant,
            "reason": "noise_multiplier is 0: no finite epsilon exists; add noise",
        }
    result = _one_accountant(
        sampling_probability,
        noise_multiplier,
        updates,
        examples_per_user,
        delta,
        accountant,
        used_microbatching,
        pld_discretization,
    )
    if math.isfinite(result["epsilon"]) or not fallback:
        return result
    other = _one_accountant(
        sampling_probability,
        noise_multiplier,
        updates,
        examples_per_user,
        delta,
        _OTHER[accountant],
        used_microbatching,
        pld_discretization,
    )
    if math.isfinite(other["epsilon"]):
        other["reason"] = ""
        other["fallback_from"] = accountant
        return other
    result["reason"] = (
        f"{result['reason']}; the {_OTHER[accountant]} accountant gives no finite bound "
        f"either ({other['reason']}). A larger noise multiplier, fewer updates or fewer "
        "examples per user would answer."
    )
    return result


@functools.lru_cache(maxsize=16)
def _mixture_epsilon_curve(
    q: float, sigma: float, updates: int, k: int, discretization: float
) -> Callable[[float], float]:
    """``delta -> epsilon`` of the user-level mixture event; its PLD takes seconds to build,
    so the last few are kept (a statement and the searches ask for the same one again)."""
    event = events.poisson_user_dp_sgd_event(q, sigma, updates, k)
    return accountants.epsilon_curve(event, "pld", pld_discretization=discretization)


def _one_accountant(
    q: float,
    sigma: float,
    updates: int,
    k: int,
    delta: float,
    accountant: str,
    used_microbatching: bool,
    pld_discretization: float,
) -> dict[str, Any]:
    if accountant == "pld":
        sigma_effective = events.effective_noise_multiplier(sigma, used_microbatching)
        discretization = max(pld_discretization, MIXTURE_PLD_DISCRETIZATION)
        epsilon = _mixture_epsilon_curve(q, sigma_effective, updates, k, discretization)(delta)
        reason = (
            ""
            if math.isfinite(epsilon)
            else f"the PLD accountant gives no finite epsilon at delta {delta:g}"
        )
        return {
            "epsilon": epsilon,
            "method": MIXTURE_METHOD,
            "accountant": "pld",
            "reason": reason,
        }
    group = accountants.group_privacy_epsilon(
        events.poisson_dp_sgd_event(q, sigma, updates, used_microbatching),
        k,
        delta,
        accountant,
        pld_discretization=pld_discretization,
    )
    return {
        "epsilon": group.epsilon,
        "method": LEMMA_METHOD,
        "accountant": accountant,
        "example_epsilon": group.example_epsilon,
        "example_delta": group.example_delta,
        "reason": group.reason,
    }
