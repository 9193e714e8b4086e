"""DP-SGD settings, validated once, shared by models and optimizers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from keras_privacy.training.adaptive_clip import AdaptiveClip
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.record import POISSON, SHUFFLE

#: Sampling a user can ask for when ``fit`` receives in-memory arrays.
ARRAY_SAMPLING = (POISSON, SHUFFLE)

#: Clipping engines: ``"auto"`` (the fast norm-only engine where it is exact for the model,
#: else the vectorized one), ``"fast"`` (refuse models it cannot train exactly),
#: ``"vectorized"`` (per-unit gradients; exact for any per-example model).
ENGINES = ("auto", "fast", "vectorized")


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """The settings of the DP-SGD mechanism.

    One optimizer update computes, for a logical batch ``S``::

        g = ( sum_{u in S} clip_C(grad_u) + N(0, (sigma * C)^2 I) ) / B

    where ``u`` ranges over clipping units (single examples, or microbatches when
    ``num_microbatches`` is set), ``clip_C(v) = v * min(1, C / ||v||_2)`` bounds each
    unit's whole gradient (all trainable variables together) to L2 norm ``C``, the
    Gaussian noise is drawn once per update, and ``B`` is the *expected* number of units
    per update (a public constant, never the realised Poisson batch size).

    Attributes:
      l2_norm_clip: C > 0, or an :class:`~keras_privacy.training.adaptive_clip.AdaptiveClip`
        (then ``C`` is its ``initial`` clip, :attr:`adaptive_clip` holds it, and each
        update clips at the step's current estimate ``C_t`` of a quantile of the norms).
      noise_multiplier: sigma >= 0 (0 gives clipping without privacy: accounting then
        reports an infinite epsilon).
      num_microbatches: ``None`` (default) clips every example on its own. An integer k
        splits each batch into k equal microbatches and clips each microbatch's mean
        gradient; k must divide the batch size. ``k == batch_size`` is per-example
        clipping.
      gradient_accumulation_steps: n >= 1 physical batches per optimizer update; their
        clipped sums are accumulated and noised once.
      sampling: how ``fit`` samples in-memory arrays: ``"poisson"`` (each example joins
        each update independently with probability q = B/N; what the accountant's
        amplification assumes) or ``"shuffle"`` (fixed-size batches from a per-epoch
        shuffle; accounted without amplification). ``None`` (default): Poisson, except
        when ``num_microbatches`` needs fixed-size batches (k > 1 and k != batch size),
        which Poisson batches of random size cannot split evenly; then shuffled fixed
        batches, as TF Privacy's models always used, with a :class:`SamplingWarning`
        (see :func:`keras_privacy.training.fit_input.array_sampling`).
      seed: seeds the noise and the Poisson sampler, for reproducible tests. Never used
        in production: a known seed makes the noise predictable. Not saved with the model.
        ``keras.utils.set_random_seed`` / ``tf.random.set_seed`` do not seed them (by
        design); without ``seed`` they draw from non-deterministic state.
      engine: how the clipped sum is computed (one of :data:`ENGINES`); every engine
        computes the same exact sum, they differ in speed and in the models they cover.
      adaptive_clip: set from ``l2_norm_clip=AdaptiveClip(...)`` (see ``l2_norm_clip``).
      secure_noise: draw the noise from the OS's cryptographically secure generator at
        every update (:func:`keras_privacy.training.noise.secure_standard_normals`);
        cannot be combined with ``seed``.
      sparsity_preserving: ``None`` or a
        :class:`~keras_privacy.training.sparsity.SparsityPreserving` (or its config
        dict): sparsity-preserving DP-SGD for embedding tables.
    """

    l2_norm_clip: float
    noise_multiplier: float
    num_microbatches: int | None = None
    gradient_accumulation_steps: int = 1
    sampling: str | None = None
    seed: int | None = None
    engine: str = "auto"
    adaptive_clip: AdaptiveClip | None = None
    secure_noise: bool = False
    sparsity_preserving: Any = None

    def __post_init__(self) -> None:
        from keras_privacy.training.sparsity import SparsityPreserving

        object.__setattr__(
            self, "sparsity_preserving", SparsityPreserving.from_config(self.sparsity_preserving)
        )
        if self.sparsity_preserving is not None and self.gradient_accumulation_steps > 1:
            raise PrivacyError(
                "sparsity_preserving does not support gradient_accumulation_steps > 1 yet: "
                "use a larger batch_size instead."
            )
        if isinstance(self.l2_norm_clip, AdaptiveClip):
            object.__setattr__(self, "adaptive_clip", self.l2_norm_clip)
            object.__setattr__(self, "l2_norm_clip", float(self.l2_norm_clip.initial))
        if self.adaptive_clip is not None:
            check_adaptive_clip(self.adaptive_clip, self.noise_multiplier, self.num_microbatches)
        if self.sparsity_preserving is not None and (
            self.adaptive_clip is not None or self.secure_noise
        ):
            # The selected rows' noise is sigma C at a fixed C from the model's generator.
            raise PrivacyError(
                "sparsity_preserving cannot be combined with adaptive clipping or "
                "secure_noise yet: use a fixed l2_norm_clip and the default noise generator."
            )
        validate_dp_arguments(
            l2_norm_clip=self.l2_norm_clip,
            noise_multiplier=self.noise_multiplier,
            num_microbatches=self.num_microbatches,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            sampling=self.sampling,
            seed=self.seed,
            engine=self.engine,
            secure_noise=self.secure_noise,
        )

    def to_config(self) -> dict[str, Any]:
        """The settings worth saving with a model: everything except the seed."""
        return {
            "l2_norm_clip": (
                self.l2_norm_clip if self.adaptive_clip is None else self.adaptive_clip.to_config()
            ),
            "noise_multiplier": self.noise_multiplier,
            "num_microbatches": self.num_microbatches,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "sampling": self.sampling,
            "engine": self.engine,
            "secure_noise": self.secure_noise,
            "sparsity_preserving": (
                None if self.sparsity_preserving is None else self.sparsity_preserving.to_config()
            ),
        }

    @property
    def noise_stddev(self) -> float:
        """Standard deviation of the noise added to the clipped sum: sigma * C (with
        adaptive clipping, at the initial clip; the step uses ``sigma_g C_t``)."""
        return self.gradient_noise_multiplier * self.l2_norm_clip

    @property
    def gradient_noise_multiplier(self) -> float:
        """The clipped sum's noise multiplier: ``noise_multiplier``, or with adaptive
        clipping the part ``sigma_g`` of it left after the clipped count's noise."""
        if self.adaptive_clip is None:
            return self.noise_multiplier
        return self.adaptive_clip.gradient_noise_multiplier(self.noise_multiplier)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_adaptive_clip(
    adaptive_clip: AdaptiveClip, noise_multiplier: Any, num_microbatches: Any
) -> None:
    """Refuse adaptive clipping where its accounting would not hold."""
    if num_microbatches is not None:
        raise PrivacyError(
            "l2_norm_clip=AdaptiveClip(...) clips each example on its own; it cannot be "
            f"combined with num_microbatches={num_microbatches!r}."
        )
    if (
        adaptive_clip.clipped_count_stddev is not None  # else set (and checked) by fit
        and _is_number(noise_multiplier)
        and math.isfinite(noise_multiplier)
        and noise_multiplier > 0
    ):
        adaptive_clip.gradient_noise_multiplier(noise_multiplier)  # raises if 2 s <= sigma


def validate_dp_arguments(
    *,
    l2_norm_clip: Any = 1.0,
    noise_multiplier: Any = 0.0,
    num_microbatches: Any = None,
    gradient_accumulation_steps: Any = 1,
    sampling: Any = None,
    seed: Any = None,
    engine: Any = "auto",
    secure_noise: Any = False,
) -> None:
    """Raise :class:`PrivacyError` (a ``ValueError``) naming any bad DP argument."""
    if isinstance(l2_norm_clip, AdaptiveClip):
        check_adaptive_clip(l2_norm_clip, noise_multiplier, num_microbatches)
        l2_norm_clip = l2_norm_clip.initial
    if not _is_number(l2_norm_clip) or not math.isfinite(l2_norm_clip) or l2_norm_clip <= 0:
        raise PrivacyError(
            f"l2_norm_clip must be a finite number > 0 or a keras_privacy.AdaptiveClip, "
            f"received {l2_norm_clip!r}. It bounds the L2 norm of each example's gradient; "
            "1.0 is a common start."
        )
    if (
        not _is_number(noise_multiplier)
        or not math.isfinite(noise_multiplier)
        or noise_multiplier < 0
    ):
        raise PrivacyError(
            f"noise_multiplier must be a finite number >= 0, received {noise_multiplier!r}. "
            "The noise standard deviation is noise_multiplier * l2_norm_clip; use "
            "keras_privacy.compute_noise_multiplier to pick it for a target epsilon."
        )
    if num_microbatches is not None and (
        not isinstance(num_microbatches, int)
        or isinstance(num_microbatches, bool)
        or num_microbatches < 1
    ):
        raise PrivacyError(
            f"num_microbatches must be None (per-example clipping) or an integer >= 1, "
            f"received {num_microbatches!r}."
        )
    if (
        not isinstance(gradient_accumulation_steps, int)
        or isinstance(gradient_accumulation_steps, bool)
        or gradient_accumulation_steps < 1
    ):
        raise PrivacyError(
            "gradient_accumulation_steps must be an integer >= 1, received "
            f"{gradient_accumulation_steps!r}."
        )
    if sampling is not None and sampling not in ARRAY_SAMPLING:
        raise PrivacyError(
            f"sampling must be None (the default) or one of {ARRAY_SAMPLING}, received "
            f"{sampling!r}."
        )
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise PrivacyError(f"seed must be None or a non-negative integer, received {seed!r}.")
    if not isinstance(engine, str) or engine not in ENGINES:
        raise PrivacyError(
            f"engine must be one of {ENGINES}, received {engine!r}: 'auto' uses the fast "
            "norm-only engine where it is exact for the model and the vectorized one "
            "otherwise."
        )
    if not isinstance(secure_noise, bool):
        raise PrivacyError(f"secure_noise must be True or False, received {secure_noise!r}.")
    if secure_noise and seed is not None:
        raise PrivacyError(
            "secure_noise=True draws the noise from the operating system's secure generator; "
            f"it cannot be combined with seed={seed!r}, which makes the noise predictable."
        )
