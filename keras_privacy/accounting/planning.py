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
import math
from collections.abc import Sequence
from typing import Any

import dp_accounting

from keras_privacy.accounting import _checks, accountants, events, user_level
from keras_privacy.accounting.search import (
    _search_stages,
    _smallest_feasible_sigma,
    staged_count_search,
)

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
