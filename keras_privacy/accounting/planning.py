"""Planning a DP-SGD run: epsilon before training, noise calibration, budget inverses.

All functions take the run's public parameters (dataset size N, expected batch size B per
optimizer update, noise multiplier sigma, epochs or optimizer steps) and a sampling
assumption:

* ``"poisson"``: each example joins each batch independently with probability
  ``q = B / N``; ``ceil(epochs x N / B)`` updates, each a Poisson-subsampled Gaussian.
* ``"shuffle"``: shuffled fixed-size batches, each example in one batch per pass; one
  Gaussian mechanism per pass, ``ceil(epochs)`` passes (no amplification by sampling).

Guarantees are for the add-or-remove-one-example relation (or one user, with
``max_examples_per_user``) and cover the release of every intermediate model. The
epsilon values come from dp_accounting's accountants; the searches in this module
(noise calibration, largest step count) only evaluate them, and every value they return
has been checked against the target.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import dp_accounting

from keras_privacy.accounting import _checks, accountants, events, user_level

#: Lowest noise multiplier the calibration search will try.
_SMALLEST_SIGMA = 1e-3
#: Largest noise multiplier the calibration search will try.
_LARGEST_SIGMA = 1e6
#: Largest step count the budget search will try.
_LARGEST_COUNT = 10**12

SAMPLING_DESCRIPTIONS = {
    events.POISSON: (
        "Poisson sampling: each example joins each batch independently with probability "
        "q = batch_size / N (amplification by subsampling)"
    ),
    events.SHUFFLE: (
        "shuffled fixed-size batches: each example is used once per epoch "
        "(no amplification by sampling is claimed)"
    ),
}


@dataclasses.dataclass(frozen=True)
class DpSgdPlan:
    """The public parameters of a DP-SGD run, validated.

    Attributes:
      number_of_examples: N.
      batch_size: expected examples per optimizer update (batch x accumulation steps).
      noise_multiplier: sigma (noise standard deviation / clip norm).
      epochs: passes over the data, or None when ``steps`` is given.
      steps: optimizer updates, or None when ``epochs`` is given.
      used_microbatching: clipping unit is a microbatch of > 1 example (sensitivity 2C).
      max_examples_per_user: k for a user-level guarantee, None for example-level.
      other_releases: DpEvents of other mechanisms run on the same examples (for instance
        private statistics computed before training); each is composed with the training
        run's event, in the order given. Example-level only.
      allow_large_delta: accept ``delta >= 1/N`` (refused by default: such a guarantee
        is met by publishing a random example; see ``_checks.check_delta_below_one_over_n``).
    """

    number_of_examples: int
    batch_size: int
    noise_multiplier: float
    epochs: float | None = None
    steps: int | None = None
    used_microbatching: bool = False
    max_examples_per_user: int | None = None
    other_releases: tuple[dp_accounting.DpEvent, ...] = ()
    allow_large_delta: bool = False

    @classmethod
    def create(
        cls,
        number_of_examples: Any,
        batch_size: Any,
        noise_multiplier: Any,
        epochs: Any = None,
        steps: Any = None,
        used_microbatching: bool = False,
        max_examples_per_user: Any = None,
        other_releases: Any = (),
        *,
        allow_large_delta: bool = False,
    ) -> DpSgdPlan:
        """Validate the arguments (ValueError naming the bad one) and build a plan."""
        n = _checks.check_positive_int(number_of_examples, "number_of_examples")
        releases = _checks.check_other_releases(other_releases)
        k = _checks.check_examples_per_user(max_examples_per_user)
        if releases and k not in (None, 1):
            raise ValueError(
                "other_releases are composed with an example-level guarantee only; "
                f"received max_examples_per_user={k!r}"
            )
        epochs, steps = _checks.check_epochs_or_steps(epochs, steps)
        return cls(
            number_of_examples=n,
            batch_size=_checks.check_batch_size(batch_size, n),
            noise_multiplier=_checks.check_noise_multiplier(noise_multiplier),
            epochs=epochs,
            steps=steps,
            used_microbatching=bool(used_microbatching),
            max_examples_per_user=k,
            other_releases=releases,
            allow_large_delta=bool(allow_large_delta),
        )

    @property
    def sampling_probability(self) -> float:
        """q = B / N."""
        return self.batch_size / self.number_of_examples

    @property
    def poisson_updates(self) -> int:
        """Optimizer updates: ``steps``, or ``ceil(epochs x N / B)``."""
        if self.steps is not None:
            return self.steps
        return events.poisson_steps_for_epochs(
            self.epochs, self.number_of_examples, self.batch_size
        )

    @property
    def shuffle_passes(self) -> int:
        """Passes over the data: ``ceil(epochs)``, or the passes ``steps`` updates touch."""
        if self.steps is None:
            return events.shuffle_passes_for_epochs(self.epochs)
        return events.shuffle_passes_for_updates(
            self.steps, self.number_of_examples, self.batch_size
        )

    def example_event(self, sampling: str) -> dp_accounting.DpEvent:
        """Example-level DpEvent under the given sampling assumption."""
        if _checks.check_sampling(sampling) == events.POISSON:
            return events.poisson_dp_sgd_event(
                self.sampling_probability,
                self.noise_multiplier,
                self.poisson_updates,
                self.used_microbatching,
            )
        return events.shuffle_dp_sgd_event(
            self.shuffle_passes, self.noise_multiplier, self.used_microbatching
        )

    def epsilon(self, delta: float, sampling: str = "poisson", accountant: str = "pld") -> float:
        """Epsilon at ``delta``: example-level, or user-level when k is set.

        User-level: under shuffling, exactly (the pass has sensitivity k clipping units);
        under Poisson sampling, see :mod:`~keras_privacy.accounting.user_level`.
        """
        return self.epsilon_details(delta, sampling, accountant)["epsilon"]

    def epsilon_details(
        self,
        delta: float,
        sampling: str = "poisson",
        accountant: str = "pld",
        *,
        pld_discretization: float = accountants.PLD_DISCRETIZATION,
        fallback: bool = True,
    ) -> dict[str, Any]:
        """Epsilon plus how it was obtained (method, accountant; see ``user_level``).

        User-level under Poisson sampling: :func:`~keras_privacy.accounting.user_level.
        poisson_user_epsilon`; with ``fallback`` the other accountant answers when the
        requested one gives ``inf`` (``"accountant"`` names the one that answered).
        """
        delta = _checks.check_delta_below_one_over_n(
            _checks.check_delta(delta), self.number_of_examples, self.allow_large_delta
        )
        sampling = _checks.check_sampling(sampling)
        accountant = _checks.check_accountant(accountant)
        k = self.max_examples_per_user
        if k is None or k == 1:
            event = self.example_event(sampling)
            if self.other_releases:
                event = dp_accounting.ComposedDpEvent([*self.other_releases, event])
            epsilon = accountants.epsilon_curve(
                event, accountant, pld_discretization=pld_discretization
            )(delta)
            return {"epsilon": epsilon, "method": "example-level", "accountant": accountant}
        if sampling == events.SHUFFLE:
            event = events.shuffle_dp_sgd_event(
                self.shuffle_passes, self.noise_multiplier, self.used_microbatching, k
            )
            epsilon = accountants.epsilon_curve(
                event, accountant, pld_discretization=pld_discretization
            )(delta)
            return {
                "epsilon": epsilon,
                "method": f"Gaussian mechanism with L2 sensitivity {k} clipping units per pass",
                "accountant": accountant,
            }
        return user_level.poisson_user_epsilon(
            self.sampling_probability,
            self.noise_multiplier,
            self.poisson_updates,
            k,
            delta,
            accountant,
            used_microbatching=self.used_microbatching,
            pld_discretization=pld_discretization,
            fallback=fallback,
        )


def compute_epsilon(
    number_of_examples: int,
    batch_size: int,
    noise_multiplier: float,
    *,
    delta: float,
    epochs: float | None = None,
    steps: int | None = None,
    sampling: str = "poisson",
    accountant: str = "pld",
    used_microbatching: bool = False,
    max_examples_per_user: int | None = None,
    other_releases: Sequence[dp_accounting.DpEvent] = (),
    allow_large_delta: bool = False,
) -> float:
    """Epsilon of a DP-SGD run at ``delta`` (add-or-remove-one example, or user).

    Args:
      number_of_examples: N, the training set size.
      batch_size: expected examples per optimizer update (with gradient accumulation,
        batch size x accumulation steps).
      noise_multiplier: sigma, noise standard deviation divided by the clip norm C.
      delta: target delta, 0 < delta < 1 (commonly < 1/N).
      epochs: passes over the data (fractional allowed); exclusive with ``steps``.
      steps: number of optimizer updates; exclusive with ``epochs``.
      sampling: ``"poisson"`` (each update a Poisson-subsampled Gaussian, q = B/N) or
        ``"shuffle"`` (one Gaussian per pass; no sampling amplification).
      accountant: ``"pld"`` (default, tighter) or ``"rdp"``.
      used_microbatching: the clipping unit held more than one example; L2 sensitivity
        2C, accounted with noise multiplier sigma / 2.
      max_examples_per_user: if given (k), the user-level epsilon for users with at most
        k examples.
      other_releases: DpEvents of other mechanisms run on the same examples (for example
        ``dp_accounting.GaussianDpEvent(s)`` for statistics released with Gaussian noise
        of s times their L2 sensitivity before training); the epsilon is that of their
        composition with the run. Example-level only.
      allow_large_delta: accept ``delta >= 1/N``, which is refused by default (a
        guarantee with delta >= 1/N is met by publishing a random example whole).

    Returns:
      epsilon (``inf`` when ``noise_multiplier`` is 0).

    Raises:
      ValueError: an argument is out of range (the message names it and its value).
    """
    plan = DpSgdPlan.create(
        number_of_examples,
        batch_size,
        noise_multiplier,
        epochs,
        steps,
        used_microbatching,
        max_examples_per_user,
        other_releases,
        allow_large_delta=allow_large_delta,
    )
    return plan.epsilon(delta, sampling, accountant)


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


def compute_noise_multiplier(
    target_epsilon: float,
    delta: float,
    number_of_examples: int,
    batch_size: int,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    sampling: str = "poisson",
    accountant: str = "pld",
    used_microbatching: bool = False,
    max_examples_per_user: int | None = None,
    other_releases: Sequence[dp_accounting.DpEvent] = (),
    tolerance: float = 1e-4,
    allow_large_delta: bool = False,
) -> float:
    """Smallest noise multiplier sigma whose epsilon is at most ``target_epsilon``.

    The run is modelled as in :func:`compute_epsilon`; with ``other_releases`` the target
    covers their composition with the run (the run gets what they leave). The returned
    sigma is within ``tolerance`` of the smallest admissible one, and its epsilon has been
    computed with the chosen accountant and checked to be <= ``target_epsilon``: it never
    overshoots.
    With ``used_microbatching`` the returned value is the sigma to configure (the mechanism
    is accounted with sigma / 2).

    ``delta >= 1/N`` is refused unless ``allow_large_delta`` (see :func:`compute_epsilon`).

    Raises:
      ValueError: an argument is out of range, or no sigma up to 1e6 reaches the target.
    """
    target_epsilon = _checks.check_positive_real(target_epsilon, "target_epsilon")
    delta = _checks.check_delta(delta)
    sampling = _checks.check_sampling(sampling)
    accountant = _checks.check_accountant(accountant)
    tolerance = _checks.check_positive_real(tolerance, "tolerance")
    plan = DpSgdPlan.create(
        number_of_examples,
        batch_size,
        1.0,
        epochs,
        steps,
        used_microbatching,
        max_examples_per_user,
        other_releases,
        allow_large_delta=allow_large_delta,
    )
    sigma = None
    for stage_accountant, discretization, bracket_factor in _search_stages(accountant):

        def epsilon_of_sigma(candidate: float, name=stage_accountant, disc=discretization):
            return dataclasses.replace(plan, noise_multiplier=candidate).epsilon_details(
                delta, sampling, name, pld_discretization=disc, fallback=False
            )["epsilon"]

        sigma = _smallest_feasible_sigma(
            epsilon_of_sigma, target_epsilon, tolerance, sigma, bracket_factor
        )
    return sigma


def compute_max_steps(
    target_epsilon: float,
    delta: float,
    number_of_examples: int,
    batch_size: int,
    noise_multiplier: float,
    *,
    sampling: str = "poisson",
    accountant: str = "pld",
    used_microbatching: bool = False,
    max_examples_per_user: int | None = None,
    allow_large_delta: bool = False,
) -> int:
    """Largest number of optimizer updates whose epsilon is at most ``target_epsilon``.

    Returns 0 when even one update exceeds the budget. Under ``sampling="shuffle"`` the
    answer is a whole number of passes times ``floor(N / B)`` updates per pass.
    """
    target_epsilon = _checks.check_positive_real(target_epsilon, "target_epsilon")
    delta = _checks.check_delta(delta)
    sampling = _checks.check_sampling(sampling)
    accountant = _checks.check_accountant(accountant)
    plan = DpSgdPlan.create(
        number_of_examples,
        batch_size,
        noise_multiplier,
        None,
        1,
        used_microbatching,
        max_examples_per_user,
        allow_large_delta=allow_large_delta,
    )
    if plan.noise_multiplier == 0:
        return 0
    if sampling == events.SHUFFLE:
        passes = compute_max_epochs(
            target_epsilon,
            delta,
            number_of_examples,
            batch_size,
            noise_multiplier,
            sampling=sampling,
            accountant=accountant,
            used_microbatching=used_microbatching,
            max_examples_per_user=max_examples_per_user,
            allow_large_delta=allow_large_delta,
        )
        return passes * max(1, plan.number_of_examples // plan.batch_size)

    return staged_count_search(
        lambda count, name, disc: dataclasses.replace(plan, steps=count).epsilon_details(
            delta, sampling, name, pld_discretization=disc, fallback=False
        )["epsilon"],
        target_epsilon,
        accountant,
    )


def compute_max_epochs(
    target_epsilon: float,
    delta: float,
    number_of_examples: int,
    batch_size: int,
    noise_multiplier: float,
    *,
    sampling: str = "poisson",
    accountant: str = "pld",
    used_microbatching: bool = False,
    max_examples_per_user: int | None = None,
    allow_large_delta: bool = False,
) -> int:
    """Largest whole number of epochs whose epsilon is at most ``target_epsilon``.

    Poisson: the largest E with ``ceil(E N / B)`` updates within budget. Shuffle: the
    largest number of passes within budget. 0 when not even one epoch fits.
    """
    target_epsilon = _checks.check_positive_real(target_epsilon, "target_epsilon")
    delta = _checks.check_delta(delta)
    sampling = _checks.check_sampling(sampling)
    accountant = _checks.check_accountant(accountant)
    plan = DpSgdPlan.create(
        number_of_examples,
        batch_size,
        noise_multiplier,
        1.0,
        None,
        used_microbatching,
        max_examples_per_user,
        allow_large_delta=allow_large_delta,
    )
    if plan.noise_multiplier == 0:
        return 0
    if sampling == events.POISSON:
        max_steps = compute_max_steps(
            target_epsilon,
            delta,
            number_of_examples,
            batch_size,
            noise_multiplier,
            sampling=sampling,
            accountant=accountant,
            used_microbatching=used_microbatching,
            max_examples_per_user=max_examples_per_user,
            allow_large_delta=allow_large_delta,
        )
        # ceil(E N / B) <= S  <=>  E <= S B / N
        return math.floor(max_steps * plan.batch_size / plan.number_of_examples + 1e-12)
    return staged_count_search(
        lambda passes, name, disc: dataclasses.replace(plan, epochs=float(passes)).epsilon_details(
            delta, sampling, name, pld_discretization=disc, fallback=False
        )["epsilon"],
        target_epsilon,
        accountant,
    )


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
