"""DP-SGD runs as ``dp_accounting`` DpEvents.

Every DP-SGD optimizer update releases ``sum_i clip_C(g_i) + N(0, (sigma C)^2 I)``, a Gaussian
mechanism whose L2 sensitivity is the clip norm ``C`` under the add-or-remove-one-example
neighbouring relation (one example adds or removes one clipped contribution of norm <= C).
A ``GaussianDpEvent(noise_multiplier)`` is that mechanism with noise standard deviation
``noise_multiplier x sensitivity``, so the event's noise multiplier is ``sigma`` divided by
how many multiples of ``C`` one neighbour can move the sum:

* **per-example clipping**: sensitivity ``C`` -> ``GaussianDpEvent(sigma)``;
* **microbatching** (the clipping unit is a microbatch of several examples, whose gradients
  are averaged before clipping): one example changes one microbatch's clipped gradient
  from one vector of norm <= C to another, so the sensitivity is ``2C`` ->
  ``GaussianDpEvent(sigma / 2)`` (TF Privacy's ``used_microbatching=True``);
* **a user with k examples, shuffled batches**: within one pass the user's examples touch
  the released sums at most k times, each by at most ``C`` (or ``2C``), so the pass has
  L2 sensitivity ``k C`` -> ``GaussianDpEvent(sigma / k)`` (or ``sigma / 2k``).

How the per-update mechanisms compose depends on how batches were drawn:

* **Poisson sampling** (each example joins each batch independently with probability
  ``q = expected_batch_size / N``): each update is ``PoissonSampledDpEvent(q,
  GaussianDpEvent(sigma_eff))``, self-composed over the number of optimizer updates. This
  is where amplification by subsampling comes from, and it is only valid if the data really
  were Poisson-sampled.
* **Shuffled fixed-size batches** (each example in exactly one batch per pass over the
  data): no amplification is claimed. Within one pass the batches are disjoint, so the
  whole pass is one Gaussian mechanism of the same sensitivity (parallel composition);
  passes compose: ``SelfComposedDpEvent(GaussianDpEvent(sigma_eff), passes)``, partial
  passes rounded up.

Under gradient accumulation several ``train_step`` calls make one optimizer update (one
noise draw); the event count is the number of optimizer updates and
``q = batch_size x accumulation_steps / N``.
"""

from __future__ import annotations

import math
from typing import Any

import dp_accounting

from keras_privacy.accounting import _checks

#: Name of the sampling assumption under which Poisson amplification applies.
POISSON = "poisson"
#: Shuffled (or otherwise fixed) batches, each example at most once per pass.
SHUFFLE = "shuffle"

#: The neighbouring relation each sampling's guarantee is stated for. Poisson sampling:
#: add/remove one example (each example's inclusion is independent of the others, so the
#: subsampled-Gaussian analysis applies). Fixed-size batches: adding one example would
#: shift every later batch boundary of the pass, so the bound "sensitivity C once per pass"
#: is proved for *zero-out* neighbours -- one example replaced by a null example whose
#: clipped gradient is 0 (Kairouz et al. 2021; Ponomareva et al. 2023, "How to DP-fy ML").
#: Replace-one neighbours would need sensitivity 2C (half the noise multiplier).
NEIGHBOURING_RELATIONS = {
    POISSON: "add-or-remove-one-example",
    SHUFFLE: "zero-out-one-example (one example replaced by a null example with zero gradient)",
}


class DatasetSizeUnknownError(ValueError):
    """Raised when epsilon is asked for a training segment whose dataset size is unknown.

    Without N neither the sampling probability (Poisson) nor the number of passes over the
    data (shuffled / fixed batches) is known, so no epsilon can be stated.
    """


def effective_noise_multiplier(
    noise_multiplier: float,
    used_microbatching: bool = False,
    sensitivity_in_clip_norms: int = 1,
) -> float:
    """Noise multiplier of the Gaussian mechanism relative to its true L2 sensitivity.

    Args:
      noise_multiplier: sigma, the ratio of the noise standard deviation to the clip norm C.
      used_microbatching: the clipping unit is a microbatch of more than one example, so
        one example moves one clipped gradient by up to 2C (sensitivity doubles).
      sensitivity_in_clip_norms: how many clipping units one neighbour can touch in one
        mechanism (k for a user with at most k examples in a pass; 1 otherwise).

    Returns:
      ``sigma / (sensitivity_in_clip_norms x (2 if used_microbatching else 1))``.
    """
    factor = sensitivity_in_clip_norms * (2 if used_microbatching else 1)
    return noise_multiplier / factor


def poisson_steps_for_epochs(epochs: float, number_of_examples: int, batch_size: int) -> int:
    """Optimizer updates in ``epochs`` passes with expected batch ``batch_size``: ceil(E N / B)."""
    return math.ceil(epochs * number_of_examples / batch_size - 1e-9)


def shuffle_passes_for_epochs(epochs: float) -> int:
    """Passes over the data in ``epochs`` epochs; a partial pass counts as a whole one."""
    return math.ceil(epochs - 1e-9)


def shuffle_passes_for_updates(updates: int, number_of_examples: int, batch_size: int) -> int:
    """Passes over the data touched by ``updates`` updates of fixed-size batches.

    A pass holds at least ``floor(N / B)`` full batches (whether or not the last, partial
    batch is kept), so ``updates`` consecutive updates starting at a pass boundary touch at
    most ``ceil(updates / floor(N / B))`` passes. Using the floor errs on the safe side: when
    a pass has ``ceil(N / B)`` batches this may count one pass more than happened.
    """
    if updates <= 0:
        return 0
    updates_per_pass = max(1, number_of_examples // batch_size)
    return math.ceil(updates / updates_per_pass)


def poisson_dp_sgd_event(
    sampling_probability: float,
    noise_multiplier: float,
    updates: int,
    used_microbatching: bool = False,
) -> dp_accounting.DpEvent:
    """``updates`` Poisson-subsampled Gaussian mechanisms (one per optimizer update)."""
    sigma = effective_noise_multiplier(noise_multiplier, used_microbatching)
    one_update = dp_accounting.PoissonSampledDpEvent(
        sampling_probability, dp_accounting.GaussianDpEvent(sigma)
    )
    return dp_accounting.SelfComposedDpEvent(one_update, updates)


def poisson_user_dp_sgd_event(
    sampling_probability: float,
    noise_multiplier: float,
    updates: int,
    examples_per_user: int,
    used_microbatching: bool = False,
) -> dp_accounting.DpEvent:
    """User-level event of Poisson-sampled DP-SGD: a mixture of Gaussians per update.

    A user with k examples, each Poisson-sampled with probability q, puts ``J ~ Binomial(k,
    q)`` of them into one update, moving its clipped sum by at most ``J`` clipping units.
    Ganesh (2024), "Tight Group-Level DP Guarantees for DP-SGD with Sampling via Mixture
    of Gaussians Mechanisms" (arXiv:2401.10294), Theorem 3.1: the add-or-remove-one-user
    privacy loss of one update is dominated by the mixture-of-Gaussians mechanism
    ``sum_j P(J = j) N(j, sigma_eff^2)`` against ``N(0, sigma_eff^2)``, with
    ``P(J = j) = C(k, j) q^j (1 - q)^(k - j)``. With microbatching each of the user's
    examples may sit in a different microbatch: sensitivity 2 per example (sigma / 2).
    """
    from scipy import stats

    k = _checks.check_positive_int(examples_per_user, "examples_per_user")
    sigma = effective_noise_multiplier(noise_multiplier, used_microbatching)
    sensitivities = list(range(k + 1))
    probabilities = [float(p) for p in stats.binom.pmf(sensitivities, k, sampling_probability)]
    one_update = dp_accounting.dp_event.MixtureOfGaussiansDpEvent(
        sigma, sensitivities, probabilities
    )
    return dp_accounting.SelfComposedDpEvent(one_update, updates)


def shuffle_dp_sgd_event(
    passes: int,
    noise_multiplier: float,
    used_microbatching: bool = False,
    examples_per_user: int = 1,
) -> dp_accounting.DpEvent:
    """``passes`` Gaussian mechanisms, one per pass over shuffled fixed-size batches.

    ``examples_per_user = k > 1`` gives the add-or-remove-one-user guarantee exactly: the
    user's k examples move one pass's released sums by at most ``k`` clipping units.
    """
    sigma = effective_noise_multiplier(noise_multiplier, used_microbatching, examples_per_user)
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), passes)


def dp_sgd_event(
    number_of_examples: int,
    batch_size: int,
    noise_multiplier: float,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    sampling: str = POISSON,
    used_microbatching: bool = False,
    examples_per_user: int = 1,
) -> dp_accounting.DpEvent:
    """The DpEvent of a planned DP-SGD run (see the module docstring for the model).

    Args:
      number_of_examples: N.
      batch_size: expected examples per optimizer update (batch x accumulation steps).
      noise_multiplier: sigma.
      epochs: passes over the data (may be fractional); give this or ``steps``.
      steps: optimizer updates; give this or ``epochs``.
      sampling: ``"poisson"`` or ``"shuffle"``.
      used_microbatching: clipping unit holds more than one example (sensitivity 2C).
      examples_per_user: only for ``sampling="shuffle"``; for Poisson sampling user-level
        privacy needs group privacy (see :mod:`keras_privacy.accounting.accountants`).
    """
    number_of_examples = _checks.check_positive_int(number_of_examples, "number_of_examples")
    batch_size = _checks.check_batch_size(batch_size, number_of_examples)
    noise_multiplier = _checks.check_noise_multiplier(noise_multiplier)
    epochs, steps = _checks.check_epochs_or_steps(epochs, steps)
    sampling = _checks.check_sampling(sampling)
    if sampling == POISSON:
        if examples_per_user != 1:
            raise ValueError(
                "examples_per_user must be 1 for sampling='poisson' (user-level privacy "
                f"under Poisson sampling uses group privacy), received {examples_per_user!r}"
            )
        if steps is None:
            steps = poisson_steps_for_epochs(epochs, number_of_examples, batch_size)
        return poisson_dp_sgd_event(
            batch_size / number_of_examples, noise_multiplier, steps, used_microbatching
        )
    if steps is None:
        passes = shuffle_passes_for_epochs(epochs)
    else:
        passes = shuffle_passes_for_updates(steps, number_of_examples, batch_size)
    return shuffle_dp_sgd_event(passes, noise_multiplier, used_microbatching, examples_per_user)


def segment_event(segment: Any) -> dp_accounting.DpEvent:
    """The DpEvent of one :class:`~keras_privacy.training.record.TrainingSegment`.

    ``"poisson"`` segments: one Poisson-subsampled Gaussian per optimizer update with
    ``q = expected_batch_size / dataset_size``. ``"shuffle"`` and ``"fixed_batches"``
    segments: one Gaussian per pass over the data, passes from
    :func:`shuffle_passes_for_updates`. Microbatching halves the effective noise multiplier.

    What each event assumes, and where the training code enforces it:

    * Poisson: each example joins each update independently with probability q -- the DP
      model's own sampler (``training/sampling.py``) draws every batch, never truncates
      one, and ``updates`` is counted by the DP step where the noise is added.
    * Shuffle / fixed batches: each example at most once per pass and each update inside
      one pass (zero-out neighbours, :data:`NEIGHBOURING_RELATIONS`) -- the DP step makes
      one update from one logical batch and keeps nothing for the next call, so no update
      spans a pass or a ``fit``; ``expected_batch_size`` is the largest batch the step
      actually saw, so ``floor(N / B)`` never overstates the updates in a pass;
      ``examples_per_clipping_unit`` is the largest microbatch it saw; for a finite
      pipeline each epoch is checked to hold ``dataset_size`` rows.

    Raises:
      DatasetSizeUnknownError: the segment has updates but no dataset size (or no batch
        size), so epsilon cannot be computed.
    """
    updates = int(segment.updates)
    if updates <= 0:
        return dp_accounting.NoOpDpEvent()
    sampling = segment.sampling
    dataset_size = segment.dataset_size
    batch_size = segment.expected_batch_size
    if not dataset_size or not batch_size:
        raise DatasetSizeUnknownError(
            f"cannot compute epsilon: a training segment ({sampling}, {updates} updates) has "
            f"dataset_size={dataset_size!r} and expected_batch_size={batch_size!r}; both are "
            "needed. For a tf.data pipeline or generator, pass fit(..., dataset_size=N), the "
            "number of training examples. train_on_batch takes no dataset size: if your "
            "batches used each of N examples at most once per pass, set "
            "model.privacy_record.current.dataset_size = N (or .segments[i] for an earlier "
            "segment); otherwise no epsilon can be stated"
        )
    # Sparsity-preserving DP-SGD: the selection's Gaussian and the gradient's, on the same
    # sampled batch, are one Gaussian (keras_privacy.training.sparsity); adaptive clipping's
    # count and gradient queries likewise (keras_privacy.training.adaptive_clip).
    noise_multiplier = float(
        getattr(segment, "accounted_noise_multiplier", segment.noise_multiplier)
    )
    adaptive = getattr(segment, "adaptive_clip", None)
    if adaptive:
        noise_multiplier = adaptive_noise_multiplier(adaptive)
    used_microbatching = int(segment.examples_per_clipping_unit) > 1
    if sampling == POISSON:
        q = min(1.0, batch_size / dataset_size)
        return poisson_dp_sgd_event(q, noise_multiplier, updates, used_microbatching)
    passes = shuffle_passes_for_updates(updates, dataset_size, min(batch_size, dataset_size))
    return shuffle_dp_sgd_event(passes, noise_multiplier, used_microbatching)


def adaptive_noise_multiplier(adaptive: dict) -> float:
    """One adaptive-clipping update's releases -- the clipped sum (sensitivity C_t, noise
    multiplier ``sigma_g``) and the shifted clipped count (sensitivity 1/2, noise
    multiplier ``2 s``), both of the same sample -- as the one Gaussian they compose to
    exactly: noise multiplier ``(sigma_g^-2 + (2 s)^-2)^(-1/2)`` (Andrew et al. 2021; the
    2-D Gaussian's privacy loss is a 1-D Gaussian's, so RDP and PLD both stay exact)."""
    gradient = float(adaptive["gradient_noise_multiplier"])
    count = float(adaptive["count_noise_multiplier"])
    if gradient == 0:
        return 0.0
    return (gradient**-2 + count**-2) ** -0.5


def training_record_event(record: Any) -> dp_accounting.DpEvent:
    """Composition, in order, of a TrainingRecord's other releases (see
    ``TrainingRecord.add_release``) and the events of all its segments.

    The segments' events are over their privacy unit (``segment.privacy_unit``: an
    example, or with ``fit(user_ids=...)`` a user, N counting users); a record whose
    segments protect different units, or user-level training with other releases (which
    are example-level), is refused: no single guarantee covers it."""
    units = {getattr(s, "privacy_unit", "example") for s in record.segments if int(s.updates)}
    if len(units) > 1:
        raise ValueError(
            "This record mixes user-level (fit(user_ids=...)) and example-level training; "
            "their guarantees are for different neighbouring relations and are not "
            "composed. Train a model at one level only."
        )
    if units == {"user"} and getattr(record, "other_releases", ()):
        raise ValueError(
            "This record holds user-level training and other releases, which are "
            "accounted per example; no user-level guarantee covers them together."
        )
    events = [event for _, event in getattr(record, "other_releases", ())]
    events += [segment_event(s) for s in record.segments if int(s.updates) > 0]
    if not events:
        return dp_accounting.NoOpDpEvent()
    if len(events) == 1:
        return events[0]
    return dp_accounting.ComposedDpEvent(events)
