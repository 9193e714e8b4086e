"""TF Privacy's accounting call forms, computed by keras-privacy's accounting.

* :func:`compute_dp_sgd_privacy_statement` with TF Privacy's ``accountant_type``
  (``AccountantType.RDP`` / ``.PLD`` or their names) as well as keras-privacy's
  ``accountant``. The default stays keras-privacy's (PLD, tighter); TF Privacy's is RDP.
* :func:`compute_dp_sgd_privacy` (deprecated in TF Privacy): epsilon and the optimal RDP
  order of ``ceil(epochs N / B)`` Poisson-subsampled Gaussian steps, q = B / N, from
  dp_accounting's ``RdpAccountant`` over the union of dp_accounting's default orders and
  TF Privacy's list. ε = min over orders α of the RDP conversion, so a larger set of
  orders can only lower it: the answer is never above TF Privacy's, and is below it where
  the best order falls between TF Privacy's (1.1 instead of 1.25 at small σ).
* :func:`compute_noise`: the smallest noise multiplier for a target epsilon, by
  :func:`~keras_privacy.accounting.compute_noise_multiplier` with the RDP accountant
  (TF Privacy's ``noise_lbd``, the start of its search, is accepted and not needed).
"""

from __future__ import annotations

import enum
from typing import Any

from keras_privacy.accounting import _checks


class AccountantType(enum.Enum):
    """TF Privacy's accountant names."""

    RDP = "RDP"
    PLD = "PLD"


def _accountant_name(accountant_type: Any, accountant: str | None) -> str:
    if accountant_type is None:
        return _checks.check_accountant(accountant or "pld")
    if isinstance(accountant_type, AccountantType):
        accountant_type = accountant_type.value
    if hasattr(accountant_type, "value"):  # TF Privacy's own enum
        accountant_type = accountant_type.value
    return _checks.check_accountant(str(accountant_type).lower())


def compute_dp_sgd_privacy_statement(
    number_of_examples: int,
    batch_size: int,
    num_epochs: float,
    noise_multiplier: float,
    delta: float,
    used_microbatching: bool = True,
    max_examples_per_user: int | None = None,
    accountant_type: AccountantType | str | None = None,
    *,
    accountant: str | None = None,
) -> str:
    """:func:`keras_privacy.accounting.compute_dp_sgd_privacy_statement` with
    TF Privacy's ``accountant_type`` argument (default: PLD)."""
    from keras_privacy.accounting import statement

    return statement.compute_dp_sgd_privacy_statement(
        number_of_examples,
        batch_size,
        num_epochs,
        noise_multiplier,
        delta,
        used_microbatching=used_microbatching,
        max_examples_per_user=max_examples_per_user,
        accountant=_accountant_name(accountant_type, accountant),
    )


#: TF Privacy's RDP orders for ``compute_dp_sgd_privacy`` (a fact of its API, 2026-04).
_TF_PRIVACY_ORDERS = (
    1.25,
    1.5,
    1.75,
    2.0,
    2.25,
    2.5,
    3.0,
    3.5,
    4.0,
    4.5,
    *range(5, 64),
    128,
    256,
    512,
)


def _union_orders() -> list[float]:
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    return sorted({float(order) for order in (*DEFAULT_RDP_ORDERS, *_TF_PRIVACY_ORDERS)})


def compute_dp_sgd_privacy(
    n: int, batch_size: int, noise_multiplier: float, epochs: float, delta: float
) -> tuple[float, float]:
    """(epsilon, optimal RDP order) of Poisson-sampled DP-SGD, as TF Privacy returns.

    Assumes Poisson sampling and per-example clipping (no microbatching), like TF
    Privacy's function; prefer :func:`compute_dp_sgd_privacy_statement`, which states both.
    """
    import dp_accounting

    from keras_privacy.accounting import events, planning

    plan = planning.DpSgdPlan.create(n, batch_size, noise_multiplier, epochs)
    delta = _checks.check_delta(delta)
    accountant = dp_accounting.rdp.RdpAccountant(_union_orders())
    accountant.compose(
        events.poisson_dp_sgd_event(
            plan.sampling_probability, plan.noise_multiplier, plan.poisson_updates
        )
    )
    epsilon, order = accountant.get_epsilon_and_optimal_order(delta)
    return float(epsilon), float(order)


def compute_noise(
    n: int,
    batch_size: int,
    target_epsilon: float,
    epochs: float,
    delta: float,
    noise_lbd: float | None = None,
) -> float:
    """Smallest noise multiplier whose RDP epsilon is at most ``target_epsilon``."""
    from keras_privacy.accounting import planning

    del noise_lbd  # the search brackets the answer itself
    sigma = planning.compute_noise_multiplier(
        target_epsilon, delta, n, batch_size, epochs=epochs, accountant="rdp"
    )
    return sigma
