"""Epsilon and delta of a DpEvent, with dp_accounting's PLD or RDP accountant.

* ``"pld"``: privacy loss distributions (``dp_accounting.pld.PLDAccountant``, value
  discretization 1e-4). Numerically tight up to a pessimistic discretization: the default.
* ``"rdp"``: Renyi DP (``dp_accounting.rdp.RdpAccountant`` with its default orders),
  converted to (epsilon, delta) with the improved conversion of Canonne, Kamath & Steinke
  (2020) / Asoodeh et al. (2020). Looser than PLD but very fast.

For events that are compositions of plain Gaussian mechanisms only (the shuffled-batches
model), ``"pld"`` uses the exact (epsilon, delta) curve of the Gaussian mechanism instead
(``dp_accounting.get_epsilon_gaussian``, Balle & Wang 2018), with the composition of
Gaussians of noise multipliers sigma_i being one Gaussian with
``sigma^-2 = sum_i sigma_i^-2``. The PLD accountant converges to the same value but is slow
for the small composed noise multipliers this gives.

Both use the add-or-remove-one neighbouring relation (datasets differing by one example,
or, for user-level statements, one user).

Group (user-level) privacy for events that are not a plain Gaussian uses the standard
(epsilon, delta) group-privacy lemma (Vadhan 2017, "The Complexity of Differential
Privacy", Lemma 2.2): an (eps, d)-DP mechanism is (k eps, k e^{(k-1) eps} d)-DP for datasets
differing in k examples. The example-level delta is chosen so that the user-level delta is
met, and among those choices the one giving the smallest user-level epsilon is used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from keras_privacy.accounting import _checks

#: dp_accounting's default PLD discretization; the value behind every reported epsilon.
PLD_DISCRETIZATION = 1e-4


def make_accountant(
    accountant: str = "pld", *, pld_discretization: float = PLD_DISCRETIZATION
) -> dp_accounting.PrivacyAccountant:
    """A fresh dp_accounting accountant (add-or-remove-one relation).

    ``pld_discretization`` is the PLD's value discretization interval. The PLD is
    pessimistic, so any interval gives an upper bound on epsilon; a coarser one is faster
    and looser (the searches in :mod:`~keras_privacy.accounting.planning` use 1e-3 to
    find a starting point, then answer with the default).
    """
    accountant = _checks.check_accountant(accountant)
    if accountant == "pld":
        return pld.PLDAccountant(value_discretization_interval=pld_discretization)
    return rdp.RdpAccountant()


def composed_accountant(
    event: dp_accounting.DpEvent,
    accountant: str = "pld",
    *,
    pld_discretization: float = PLD_DISCRETIZATION,
) -> dp_accounting.PrivacyAccountant:
    """An accountant that has composed ``event``."""
    privacy_accountant = make_accountant(accountant, pld_discretization=pld_discretization)
    if not privacy_accountant.supports(event):
        raise ValueError(f"the {accountant!r} accountant cannot account for event {event!r}")
    privacy_accountant.compose(event)
    return privacy_accountant


def gaussian_composition_noise_multiplier(event: dp_accounting.DpEvent) -> float | None:
    """Noise multiplier of the single Gaussian equivalent to ``event``, if there is one.

    Returns ``(sum_i count_i / sigma_i^2)^(-1/2)`` when ``event`` is built only from
    Gaussian, self-composed, composed and no-op events (``inf`` for no Gaussian at all,
    0 when one of them has no noise), and None otherwise.
    """
    precision = 0.0  # sum of count / sigma^2

    def visit(node: dp_accounting.DpEvent, count: int) -> bool:
        nonlocal precision
        if isinstance(node, dp_accounting.NoOpDpEvent):
            return True
        if isinstance(node, dp_accounting.GaussianDpEvent):
            if node.noise_multiplier == 0:
                precision = math.inf
            else:
                precision += count / node.noise_multiplier**2
            return True
        if isinstance(node, dp_accounting.SelfComposedDpEvent):
            return visit(node.event, count * node.count)
        if isinstance(node, dp_accounting.ComposedDpEvent):
            return all(visit(child, count) for child in node.events)
        return False

    if not visit(event, 1):
        return None
    if precision == 0:
        return math.inf
    return 0.0 if math.isinf(precision) else precision**-0.5


#: Absolute tolerance of the analytic Gaussian epsilon; added to the result so that the
#: value returned is never below the true epsilon.
_GAUSSIAN_EPSILON_TOLERANCE = 1e-12


def epsilon_curve(
    event: dp_accounting.DpEvent,
    accountant: str = "pld",
    *,
    pld_discretization: float = PLD_DISCRETIZATION,
) -> Callable[[float], float]:
    """``delta -> epsilon`` for ``event``; the event is composed once, queried many times."""
    if _checks.check_accountant(accountant) == "pld":
        sigma = gaussian_composition_noise_multiplier(event)
        if sigma is not None:

            def analytic_gaussian_epsilon(delta: float) -> float:
                epsilon = float(
                    dp_accounting.get_epsilon_gaussian(
                        sigma, delta, tol=_GAUSSIAN_EPSILON_TOLERANCE
                    )
                )
                return epsilon + (_GAUSSIAN_EPSILON_TOLERANCE if epsilon > 0 else 0.0)

            return analytic_gaussian_epsilon
    privacy_accountant = composed_accountant(
        event, accountant, pld_discretization=pld_discretization
    )
    return lambda delta: float(privacy_accountant.get_epsilon(delta))


def epsilon_for_event(event: dp_accounting.DpEvent, delta: float, accountant: str = "pld") -> float:
    """Smallest epsilon such that ``event`` is (epsilon, delta)-DP, per the accountant."""
    delta = _checks.check_delta(delta)
    return epsilon_curve(event, accountant)(delta)


def delta_for_event(event: dp_accounting.DpEvent, epsilon: float, accountant: str = "pld") -> float:
    """Smallest delta such that ``event`` is (epsilon, delta)-DP, per the accountant."""
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or epsilon < 0:
        raise ValueError(f"epsilon must be a number >= 0, received {epsilon!r}")
    return float(composed_accountant(event, accountant).get_delta(float(epsilon)))


@dataclasses.dataclass(frozen=True)
class GroupPrivacyEpsilon:
    """A user-level guarantee obtained from an example-level one by group privacy.

    Attributes:
      epsilon: user-level epsilon (``group_size x example_epsilon``), ``inf`` when no
        example-level delta meets the user-level delta.
      delta: the user-level delta it holds for.
      group_size: k, the maximum number of examples per user.
      example_epsilon: the example-level epsilon used.
      example_delta: the example-level delta used, with
        ``k e^{(k-1) example_epsilon} example_delta <= delta``.
    """

    epsilon: float
    delta: float
    group_size: int
    example_epsilon: float
    example_delta: float


def _group_delta_log(group_size: int, example_epsilon: float, example_delta: float) -> float:
    """log of the user-level delta ``k e^{(k-1) eps} d`` of Vadhan's Lemma 2.2."""
    return math.log(group_size) + (group_size - 1) * example_epsilon + math.log(example_delta)


def group_privacy_epsilon(
    event: dp_accounting.DpEvent,
    group_size: int,
    delta: float,
    accountant: str = "pld",
    *,
    search_decades: float = 12.0,
    grid_points: int = 49,
    pld_discretization: float = PLD_DISCRETIZATION,
) -> GroupPrivacyEpsilon:
    """User-level epsilon at user-level ``delta`` via the group-privacy lemma.

    The example-level delta ``d`` ranges over a log-spaced grid from ``delta / k`` down by
    ``search_decades`` decades; a grid point is admissible when
    ``k e^{(k-1) eps(d)} d <= delta`` (computed, not assumed). The admissible point with the
    smallest ``k eps(d)`` is then refined by bisection towards its inadmissible neighbour.
    Every returned value is admissible, so the statement is a valid bound even where the
    search is not optimal.
    """
    delta = _checks.check_delta(delta)
    group_size = _checks.check_positive_int(group_size, "group_size")
    epsilon_at = epsilon_curve(event, accountant, pld_discretization=pld_discretization)
    if group_size == 1:
        example_epsilon = epsilon_at(delta)
        return GroupPrivacyEpsilon(example_epsilon, delta, 1, example_epsilon, delta)

    log_user_delta = math.log(delta)

    def admissible(log_example_delta: float) -> tuple[bool, float]:
        example_delta = math.exp(log_example_delta)
        example_epsilon = epsilon_at(example_delta)
        if not math.isfinite(example_epsilon):
            return False, example_epsilon
        ok = _group_delta_log(group_size, example_epsilon, example_delta) <= log_user_delta
        return ok, example_epsilon

    upper = log_user_delta - math.log(group_size)
    grid = np.linspace(upper, upper - search_decades * math.log(10.0), grid_points)
    best: tuple[float, float] | None = None  # (example_epsilon, log_example_delta)
    best_index = -1
    for index, log_d in enumerate(grid):
        ok, example_epsilon = admissible(float(log_d))
        if ok and (best is None or example_epsilon < best[0]):
            best, best_index = (example_epsilon, float(log_d)), index
    if best is None:
        return GroupPrivacyEpsilon(math.inf, delta, group_size, math.inf, 0.0)
    if best_index > 0:
        # The larger neighbour (smaller epsilon) was inadmissible: bisect towards it.
        admissible_log_d, inadmissible_log_d = best[1], float(grid[best_index - 1])
        for _ in range(30):
            middle = 0.5 * (admissible_log_d + inadmissible_log_d)
            ok, example_epsilon = admissible(middle)
            if ok:
                admissible_log_d = middle
                if example_epsilon < best[0]:
                    best = (example_epsilon, middle)
            else:
                inadmissible_log_d = middle
            if inadmissible_log_d - admissible_log_d < 1e-4:
                break
    example_epsilon, log_example_delta = best
    return GroupPrivacyEpsilon(
        epsilon=group_size * example_epsilon,
        delta=delta,
        group_size=group_size,
        example_epsilon=example_epsilon,
        example_delta=math.exp(log_example_delta),
    )
