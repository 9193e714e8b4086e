"""Adaptive clipping settings (plain Python): the clip norm follows a private quantile.

Andrew, Thakkar, McMahan and Ramaswamy (2021), "Differentially Private Learning with
Adaptive Clipping" (NeurIPS), estimate the ``gamma``-quantile of the per-example gradient
norms privately while training, and clip at that estimate. At update ``t`` with clip
``C_t`` and logical batch ``S_t`` (expected size ``B``, the public divisor of the step)::

    grad   = ( sum_{i in S_t} clip_{C_t}(g_i) + N(0, (sigma_g C_t)^2 I) ) / B
    b_t    = 1/2 + ( sum_{i in S_t} (1[||g_i|| <= C_t] - 1/2) + N(0, s^2) ) / B
    C_t+1  = C_t * exp(-eta (clamp(b_t, 0, 1) - gamma))

``b_t`` is the noisy fraction of examples that were *not* clipped; the geometric update
raises the clip when fewer than ``gamma`` of the examples fit under it and lowers it
otherwise, so ``C_t`` tracks the ``gamma``-quantile of the norms. Each example enters the
count as ``1[...] - 1/2``, in ``{-1/2, +1/2}``: the count's sensitivity to adding or
removing one example is ``1/2`` whether or not that example was clipped (the public
``B / 2`` is added back), so its Gaussian noise ``s`` is a noise multiplier of ``2 s``.

The two Gaussian releases of the same batch compose exactly to one Gaussian mechanism
whose noise multiplier ``sigma`` satisfies ``sigma^-2 = sigma_g^-2 + (2 s)^-2`` (the 2-D
Gaussian with sensitivities ``(C_t, 1/2)`` and standard deviations ``(sigma_g C_t, s)``
has the privacy loss of a 1-D Gaussian of that multiplier, with or without subsampling,
as both releases use the same sample). The user's ``noise_multiplier`` is ``sigma``;
the gradient gets ``sigma_g = (sigma^-2 - (2 s)^-2)^(-1/2)``
(:func:`keras_privacy.queries.split_noise_multiplier`), so an adaptive run costs exactly
the epsilon of a fixed-clip run with ``sigma``: the accountant is told ``sigma``, and the
record shows both parts. ``C_t`` depends on earlier noisy releases only, so it is a
public (post-processed) quantity.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from keras_privacy.training.errors import PrivacyError


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class AdaptiveClip:
    """``l2_norm_clip=AdaptiveClip(...)``: clip at a private running estimate of the
    ``target_quantile`` of the per-example gradient norms (see the module docstring).

    Attributes:
      initial: ``C_0 > 0``, the clip of the first update.
      target_quantile: ``gamma`` in ``[0, 1]``: the fraction of examples meant to fit under
        the clip (the paper's default 0.5: the median norm).
      learning_rate: ``eta >= 0`` of the geometric update ``C <- C exp(-eta (b - gamma))``
        (the paper uses 0.2).
      clipped_count_stddev: ``s > 0``, the standard deviation of the Gaussian noise on the
        count of unclipped examples; it must satisfy ``2 s > noise_multiplier``, or the
        count would use the whole privacy budget. ``None`` (the default): the paper's
        choice ``s = B / 20`` for the expected batch ``B`` of each ``fit`` (the logical
        batch of ``train_on_batch``), set when training starts (:meth:`for_batch`) and
        recorded in the segment.
    """

    initial: float = 1.0
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    clipped_count_stddev: float | None = None

    def __post_init__(self) -> None:
        if not _number(self.initial) or self.initial <= 0:
            raise PrivacyError(
                f"AdaptiveClip: initial must be a finite number > 0, received {self.initial!r}."
            )
        if not _number(self.target_quantile) or not 0 <= self.target_quantile <= 1:
            raise PrivacyError(
                "AdaptiveClip: target_quantile must be a number in [0, 1], received "
                f"{self.target_quantile!r}."
            )
        if not _number(self.learning_rate) or self.learning_rate < 0:
            raise PrivacyError(
                "AdaptiveClip: learning_rate must be a finite number >= 0, received "
                f"{self.learning_rate!r}."
            )
        s = self.clipped_count_stddev
        if s is not None and (not _number(s) or s <= 0):
            raise PrivacyError(
                f"AdaptiveClip: clipped_count_stddev must be a finite number > 0, received {s!r}."
            )

    def for_batch(self, expected_batch_size: float | None) -> AdaptiveClip:
        """This setting with ``clipped_count_stddev`` set: as given, or by default
        ``expected_batch_size / 20`` (the paper's choice)."""
        if self.clipped_count_stddev is not None:
            return self
        if not expected_batch_size:
            raise PrivacyError(
                "AdaptiveClip(clipped_count_stddev=None) takes expected_batch_size / 20, but "
                "this input's batch size is not known before training: pass "
                "clipped_count_stddev."
            )
        return dataclasses.replace(self, clipped_count_stddev=float(expected_batch_size) / 20)

    def _stddev(self) -> float:
        if self.clipped_count_stddev is None:
            raise PrivacyError(
                "AdaptiveClip: clipped_count_stddev is set from the expected batch when "
                "training starts (for_batch); it is not known yet."
            )
        return float(self.clipped_count_stddev)

    @property
    def count_noise_multiplier(self) -> float:
        """``2 s``: the count's noise over its sensitivity (1/2 per example)."""
        return 2.0 * self._stddev()

    def gradient_noise_multiplier(self, noise_multiplier: float) -> float:
        """``sigma_g``, the gradient sum's noise multiplier for which the pair composes to
        ``noise_multiplier`` (0 for 0: clipping without privacy)."""
        from keras_privacy.queries.quantile import split_noise_multiplier

        if noise_multiplier == 0:
            return 0.0
        try:
            return split_noise_multiplier(noise_multiplier, self._stddev())
        except ValueError as error:
            raise PrivacyError(f"AdaptiveClip: {error}") from None

    def to_config(self) -> dict[str, Any]:
        return {"adaptive_clip": dataclasses.asdict(self)}

    @classmethod
    def from_config(cls, config: Any) -> Any:
        """An :class:`AdaptiveClip` from :meth:`to_config`'s dict; anything else as is."""
        if isinstance(config, dict) and set(config) == {"adaptive_clip"}:
            return cls(**config["adaptive_clip"])
        return config


def initial_clip(l2_norm_clip: Any) -> Any:
    """The first update's clip: ``AdaptiveClip.initial``, or a fixed clip as given."""
    return l2_norm_clip.initial if isinstance(l2_norm_clip, AdaptiveClip) else l2_norm_clip


class ClipHistory:
    """Appends each update's clip ``C_t`` (logged by the DP step under ``l2_norm_clip``)
    to the training segment's ``clip_values``; ``fit`` adds it as a Keras callback
    (:func:`clip_history_callback`), ``train_on_batch`` calls :meth:`add` itself."""

    def __init__(self, segment: Any) -> None:
        self.segment = segment

    def add(self, logs: Any) -> None:
        if logs and "l2_norm_clip" in logs and self.segment.clip_values is not None:
            self.segment.clip_values.append(float(logs["l2_norm_clip"]))


def clip_history_callback(segment: Any) -> Any:
    """A ``keras.callbacks.Callback`` recording ``segment``'s per-update clips."""
    import keras

    history = ClipHistory(segment)

    class _ClipHistory(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            history.add(logs)

    return _ClipHistory()
