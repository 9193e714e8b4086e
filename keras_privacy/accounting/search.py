"""The monotone searches behind planning: the smallest noise multiplier, and the largest
number of updates, that keep epsilon within a target.

Both evaluate the accountant only where needed and return only values whose epsilon was
computed and found within the target (never an interpolated guess). For PLD the search
runs in stages, from RDP (milliseconds per evaluation) to a coarse PLD to the final one;
each stage brackets the next and only the last decides the answer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from keras_privacy.accounting import accountants

#: Lowest noise multiplier the calibration search will try.
_SMALLEST_SIGMA = 1e-3
#: Largest noise multiplier the calibration search will try.
_LARGEST_SIGMA = 1e6
#: Largest step count the budget search will try.
_LARGEST_COUNT = 10**12


#: PLD discretization of the intermediate search stage (fast, slightly looser).
_SEARCH_PLD_DISCRETIZATION = 1e-3


def _search_stages(accountant: str) -> list[tuple[str, float, float]]:
    """(accountant, PLD discretization, bracket factor) from the cheapest to the final one.

    For PLD the answer is first found with RDP (milliseconds per evaluation), then with a
    coarse PLD, then with the real one; each stage brackets the next, whose search then
    only needs a few of the expensive evaluations. Only the last stage decides the result.
    """
    final = accountants.PLD_DISCRETIZATION
    if accountant == "rdp":
        return [("rdp", final, 2.0)]
    return [("rdp", final, 2.0), ("pld", _SEARCH_PLD_DISCRETIZATION, 1.2), ("pld", final, 1.01)]


def _smallest_feasible_sigma(
    epsilon_of_sigma: Callable[[float], float],
    target_epsilon: float,
    tolerance: float,
    guess: float | None = None,
    bracket_factor: float = 2.0,
) -> float:
    """Smallest sigma (to within ``tolerance``) with epsilon(sigma) <= target.

    Brackets the crossing (epsilon decreases with sigma) starting at ``guess`` and moving
    by ``bracket_factor``, finds it with Brent's method, and only returns a sigma whose
    epsilon was computed and found <= target.
    """
    from scipy import optimize

    @functools.cache
    def gap(sigma: float) -> float:
        return epsilon_of_sigma(sigma) - target_epsilon

    upper = guess if guess is not None else 1.0
    while gap(upper) > 0:
        upper *= bracket_factor
        if upper > _LARGEST_SIGMA:
            raise ValueError(
                f"target_epsilon={target_epsilon!r} cannot be reached with a noise "
                f"multiplier up to {_LARGEST_SIGMA:g}"
            )
    lower = upper / bracket_factor
    while gap(lower) <= 0:
        upper = lower
        if upper <= _SMALLEST_SIGMA:
            return upper
        lower = max(_SMALLEST_SIGMA, lower / bracket_factor)
    # Invariant: gap(lower) > 0 >= gap(upper).
    root = optimize.brentq(gap, lower, upper, xtol=tolerance / 4.0)
    for candidate in (root, root + tolerance / 4.0, root + tolerance / 2.0):
        if lower < candidate < upper and gap(candidate) <= 0:
            return candidate
    while upper - lower > tolerance:  # plain bisection keeping the invariant
        middle = 0.5 * (lower + upper)
        if gap(middle) <= 0:
            upper = middle
        else:
            lower = middle
    return upper


def _largest_feasible_count(
    epsilon_of_count: Callable[[int], float],
    target_epsilon: float,
    guess: int | None = None,
    bracket_factor: float = 2.0,
) -> int:
    """Largest integer n >= 0 with epsilon(n) <= target (epsilon increases with n).

    Brackets the answer starting at ``guess`` and growing by ``bracket_factor``, then
    narrows the bracket by false position (epsilon is smooth in n, so this needs few
    evaluations), falling back to bisection whenever an interpolated guess fails to halve
    the bracket. The answer n has been evaluated and found within the target, and n + 1
    has been evaluated and found over it.
    """
    epsilon_at = functools.cache(epsilon_of_count)
    if epsilon_at(1) > target_epsilon:
        return 0
    lower, upper = 1, 2
    if guess is not None and guess > 1:
        if epsilon_at(guess) <= target_epsilon:
            lower, upper = guess, max(guess + 1, math.ceil(guess * bracket_factor))
        else:
            upper = guess
            lower = max(1, math.floor(guess / bracket_factor))
            while lower > 1 and epsilon_at(lower) > target_epsilon:
                upper, lower = lower, max(1, math.floor(lower / bracket_factor))
    while epsilon_at(upper) <= target_epsilon:
        lower, upper = upper, max(upper + 1, math.ceil(upper * bracket_factor))
        if upper > _LARGEST_COUNT:
            return lower
    # Invariant: epsilon(lower) <= target < epsilon(upper).
    interpolate = True
    while upper - lower > 1:
        width = upper - lower
        middle = (lower + upper) // 2
        lower_epsilon, upper_epsilon = epsilon_at(lower), epsilon_at(upper)
        if interpolate and math.isfinite(upper_epsilon) and upper_epsilon > lower_epsilon:
            fraction = (target_epsilon - lower_epsilon) / (upper_epsilon - lower_epsilon)
            middle = min(upper - 1, max(lower + 1, lower + round(fraction * width)))
        if epsilon_at(middle) <= target_epsilon:
            lower = middle
            neighbour = middle + 1  # often the answer is right there
        else:
            upper = middle
            neighbour = middle - 1
        interpolate = 2 * (upper - lower) <= width
        if interpolate and lower < neighbour < upper:
            if epsilon_at(neighbour) <= target_epsilon:
                lower = neighbour
            else:
                upper = neighbour
    return lower


def staged_count_search(
    epsilon_of: Callable[[int, str, float], float],
    target_epsilon: float,
    accountant: str,
) -> int:
    """Largest count n with ``epsilon_of(n, accountant, pld_discretization) <= target``.

    Searched in stages (see ``_search_stages``); only the final stage, which uses the
    requested accountant at its default precision, decides the answer.
    """
    count = None
    for stage_accountant, discretization, bracket_factor in _search_stages(accountant):

        def epsilon_of_count(candidate: int, name=stage_accountant, disc=discretization):
            return epsilon_of(candidate, name, disc)

        count = _largest_feasible_count(epsilon_of_count, target_epsilon, count, bracket_factor)
        if count == 0:
            count = None  # let the next stage start from scratch
    return count or 0
