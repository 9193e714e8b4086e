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

User-level privacy under Poisson sampling is computed in
:mod:`~keras_privacy.accounting.user_level`: with PLD from the mixture-of-Gaussians event
that dominates a user's k examples (Ganesh 2024), with RDP by the (epsilon, delta)
group-privacy lemma (:func:`group_privacy_epsilon`; Vadhan 2017, "The Complexity of
Differential Privacy", Lemma 2.2, in the tighter form of its proof).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator

import dp_accounting
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


class _SkippedOrderFilter(logging.Filter):
    """Drops dp_accounting's "_compute_log_a_frac failed to converge" records only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in str(record.msg)


@contextlib.contextmanager
def _without_skipped_order_notices() -> Iterator[None]:
    """Hold back dp_accounting's notice that an RDP order did not converge, while we
    compose an event; nothing else is filtered, and the filter is removed afterwards.

    The RDP accountant then excludes that order from the minimum over orders, which only
    makes epsilon an upper bound over fewer orders (never optimistic): the answer stays
    valid and the user cannot act on the notice (a search logged it six times per call).
    """
    logger = logging.getLogger("absl")
    notice_filter = _SkippedOrderFilter()
    logger.addFilter(notice_filter)
    try:
        yield
    finally:
        logger.removeFilter(notice_filter)


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
    with _without_skipped_order_notices():
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
        ``example_delta (e^{k example_epsilon} - 1) / (e^{example_epsilon} - 1) <= delta``.
      reason: why ``epsilon`` is infinite (empty when it is finite).
    """

    epsilon: float
    delta: float
    group_size: int
    example_epsilon: float
    example_delta: float
    reason: str = ""


#: Smallest example-level delta the group-privacy search will try (about the smallest
#: positive normal double); below it the accountants' answers are not meaningful.
SMALLEST_EXAMPLE_DELTA = 1e-300


def _log_expm1(x: float) -> float:
    """log(e^x - 1) for x > 0, without overflow."""
    return x + math.log(-math.expm1(-x))


def group_delta_log(group_size: int, example_epsilon: float, example_delta: float) -> float:
    """log of the user-level delta of the group-privacy lemma (Vadhan 2017, Lemma 2.2).

    An (eps, d)-DP mechanism is (k eps, d_k)-DP for datasets differing in k examples,
    with ``d_k = d (1 + e^eps + ... + e^{(k-1) eps}) = d (e^{k eps} - 1) / (e^eps - 1)``
    (the sum in the lemma's proof; the lemma states the looser ``k e^{(k-1) eps} d``).
    """
    if example_epsilon <= 0:
        return math.log(group_size) + math.log(example_delta)
    return (
        math.log(example_delta)
        + _log_expm1(group_size * example_epsilon)
        - _log_expm1(example_epsilon)
    )


def group_privacy_epsilon(
    event: dp_accounting.DpEvent,
    group_size: int,
    delta: float,
    accountant: str = "pld",
    *,
    smallest_example_delta: float = SMALLEST_EXAMPLE_DELTA,
    pld_discretization: float = PLD_DISCRETIZATION,
) -> GroupPrivacyEpsilon:
    """User-level epsilon at user-level ``delta`` via the (epsilon, delta) group-privacy lemma.

    The example-level delta ``d`` is admissible when ``d_k(eps(d), d) <= delta``
    (:func:`group_delta_log`, computed, not assumed); the smallest user-level epsilon
    ``k eps(d)`` comes from the largest admissible ``d``. Search: start at ``log delta``
    and step down. If ``log d`` is inadmissible by a gap ``g = log d_k - log delta > 0``,
    every ``log d' > log d - g`` is inadmissible too (``eps`` only grows as ``d`` shrinks
    and ``d_k`` grows with ``eps``), so the next probe is at least a decade below
    ``log d - g``; no admissible point is skipped. The first admissible probe and the
    bound above it are then bisected. The search goes down to ``smallest_example_delta``
    (the answer often needs 1e-40 or less); ``inf`` with a reason if nothing is admissible.
    Every returned value is admissible, so it is a valid bound.
    """
    delta = _checks.check_delta(delta)
    group_size = _checks.check_positive_int(group_size, "group_size")
    epsilon_at = epsilon_curve(event, accountant, pld_discretization=pld_discretization)
    if group_size == 1:
        example_epsilon = epsilon_at(delta)
        return GroupPrivacyEpsilon(example_epsilon, delta, 1, example_epsilon, delta)

    log_user_delta = math.log(delta)
    log_floor = math.log(smallest_example_delta)

    def gap(log_example_delta: float) -> tuple[float, float]:
        """(log d_k - log delta, example epsilon) at example-level delta e^log_d."""
        example_epsilon = epsilon_at(math.exp(log_example_delta))
        if not math.isfinite(example_epsilon):
            return math.inf, example_epsilon
        return (
            group_delta_log(group_size, example_epsilon, math.exp(log_example_delta))
            - log_user_delta,
            example_epsilon,
        )

    upper = log_user_delta  # proven inadmissible or the start (d = delta never works, k > 1)
    probe_gap, probe_epsilon = gap(upper)
    probe = upper
    while probe_gap > 0:
        if not math.isfinite(probe_gap) and probe < upper:
            break  # epsilon itself is infinite here; smaller d cannot help
        upper = probe - (probe_gap if math.isfinite(probe_gap) else 0.0)
        probe = upper - math.log(10.0)
        if probe < log_floor:
            break
        probe_gap, probe_epsilon = gap(probe)
    if not probe_gap <= 0:
        reason = (
            f"the group-privacy lemma found no example-level delta >= "
            f"{smallest_example_delta:g} whose example-level epsilon ({accountant} "
            f"accountant) gives user-level delta <= {delta:g} for {group_size} examples per user"
        )
        return GroupPrivacyEpsilon(math.inf, delta, group_size, math.inf, 0.0, reason)
    best_log_d, best_epsilon = probe, probe_epsilon
    low, high = probe, upper  # low admissible, high inadmissible
    for _ in range(60):
        if high - low < 1e-6:
            break
        middle = 0.5 * (low + high)
        middle_gap, middle_epsilon = gap(middle)
        if middle_gap <= 0:
            low = middle
            if middle_epsilon < best_epsilon:
                best_log_d, best_epsilon = middle, middle_epsilon
        else:
            high = middle
    return GroupPrivacyEpsilon(
        epsilon=group_size * best_epsilon,
        delta=delta,
        group_size=group_size,
        example_epsilon=best_epsilon,
        example_delta=math.exp(best_log_d),
    )
