"""DP optimizers with TensorFlow Privacy's names and arguments.

In Keras 3 an optimizer only ever sees the *summed* gradient, so it cannot clip per
example. These classes therefore do not implement DP themselves: they carry the DP
settings (``l2_norm_clip``, ``noise_multiplier``, ``num_microbatches``,
``gradient_accumulation_steps``) to a DP model (:class:`~keras_privacy.DPModel`,
:class:`~keras_privacy.DPSequential`, :func:`~keras_privacy.make_private`), whose training
step does the clipping and noising. Used with a plain Keras model they refuse to update
anything, so a model is never trained without privacy by mistake.

Any ordinary Keras optimizer also works with a DP model.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import keras

from keras_privacy.training.config import DPConfig
from keras_privacy.training.errors import PrivacyError

_local = threading.local()


@contextlib.contextmanager
def private_update() -> Iterator[None]:
    """Marks the optimizer call made by a DP training step (with clipped, noised grads)."""
    previous = getattr(_local, "active", False)
    _local.active = True
    try:
        yield
    finally:
        _local.active = previous


def in_private_update() -> bool:
    return getattr(_local, "active", False)


def stateless_private_apply(
    optimizer: keras.optimizers.Optimizer, optimizer_values: list, grads: list, values: list
) -> tuple[list, list]:
    """``optimizer.stateless_apply`` of the DP step's noised gradients (JAX), marked as a
    private update. Returns the new trainable and optimizer values.

    A ``LossScaleOptimizer`` would unscale gradients that were never scaled (the DP
    gradient is computed, clipped and noised in float32 without loss scaling), so its inner
    optimizer applies them, to its own variables' values only (the loss scale is left)."""
    inner = getattr(optimizer, "inner_optimizer", None)
    positions = list(range(len(optimizer_values)))
    if inner is not None:
        inner_ids = {id(v) for v in inner.variables}
        positions = [i for i, v in enumerate(optimizer.variables) if id(v) in inner_ids]
    with private_update():
        values, applied = (inner or optimizer).stateless_apply(
            [optimizer_values[i] for i in positions], grads, list(values)
        )
    optimizer_values = list(optimizer_values)
    for i, value in zip(positions, applied, strict=True):
        optimizer_values[i] = value
    return values, optimizer_values


class DPOptimizerMixin:
    """Holds the DP settings; refuses updates that do not come from a DP training step."""

    def __init__(
        self,
        l2_norm_clip: float,
        noise_multiplier: float,
        num_microbatches: int | None = None,
        *args: Any,
        gradient_accumulation_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        # Validates every argument (PrivacyError naming the bad one).
        dp_config = DPConfig(
            l2_norm_clip=l2_norm_clip,
            noise_multiplier=noise_multiplier,
            num_microbatches=num_microbatches,
            gradient_accumulation_steps=gradient_accumulation_steps,
        )
        # Keras's own accumulation would average several *noised* updates; the DP model
        # accumulates clipped sums and noises once instead, so it is never passed on.
        super().__init__(*args, **kwargs)
        self.dp_config = dp_config

    @property
    def l2_norm_clip(self) -> float:
        return self.dp_config.l2_norm_clip

    @property
    def noise_multiplier(self) -> float:
        return self.dp_config.noise_multiplier

    @property
    def num_microbatches(self) -> int | None:
        return self.dp_config.num_microbatches

    def build(self, variables):
        # Refused here, before any step: on JAX a plain model's first step would otherwise
        # fail inside Keras's compiled step, after Keras detached the model's weights.
        if not getattr(self, "_dp_model_owned", False):
            self._refuse()
        return super().build(variables)

    def _refuse(self):
        raise PrivacyError(
            f"{type(self).__name__} is being used by a model that is not a DP model, "
            "which would train WITHOUT differential privacy (Keras 3 optimizers never see "
            "per-example gradients). Build the model with keras_privacy.DPSequential / "
            "keras_privacy.DPModel, or wrap it with keras_privacy.make_private(model, ...)."
        )

    def apply(self, grads, trainable_variables=None):
        if not in_private_update():
            self._refuse()
        return super().apply(grads, trainable_variables)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            l2_norm_clip=self.dp_config.l2_norm_clip,
            noise_multiplier=self.dp_config.noise_multiplier,
            num_microbatches=self.dp_config.num_microbatches,
            gradient_accumulation_steps=self.dp_config.gradient_accumulation_steps,
        )
        return config


def make_keras_optimizer_class(cls: type[keras.optimizers.Optimizer]) -> type:
    """A DP variant of a Keras optimizer class (TF Privacy's name for this factory).

    The new class takes ``(l2_norm_clip, noise_multiplier, num_microbatches=None, *args,
    gradient_accumulation_steps=1, **kwargs)``, the rest going to ``cls``.
    """
    return _dp_optimizer_class(cls, DPOptimizerMixin, "DPKeras")


def _dp_optimizer_class(cls: type, mixin: type, prefix: str) -> type:
    """``{prefix}{cls.__name__}Optimizer``: ``mixin`` over ``cls``, serializable."""
    if not (isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer)):
        raise TypeError(f"expected a keras.optimizers.Optimizer subclass, received {cls!r}")
    dp_cls = type(
        f"{prefix}{cls.__name__}Optimizer",
        (mixin, cls),
        {
            "__doc__": f"{cls.__name__} carrying DP-SGD settings for a DP model.\n\n"
            + (mixin.__doc__ or ""),
            "__module__": __name__,
        },
    )
    return keras.saving.register_keras_serializable(package="keras_privacy")(dp_cls)


DPKerasSGDOptimizer = make_keras_optimizer_class(keras.optimizers.SGD)
DPKerasAdamOptimizer = make_keras_optimizer_class(keras.optimizers.Adam)
DPKerasAdagradOptimizer = make_keras_optimizer_class(keras.optimizers.Adagrad)


class VectorizedDPOptimizerMixin(DPOptimizerMixin):
    """TF Privacy's vectorized DP optimizer arguments: ``unconnected_gradients_to_zero`` comes
    fourth (``gradient_accumulation_steps`` is keyword-only).

    ``unconnected_gradients_to_zero`` is accepted for compatibility and recorded; a DP
    model's step always gives a trainable variable that the loss does not depend on a zero
    per-example gradient (its update is then the noise alone), which is what TF Privacy does
    with ``True``.
    """

    def __init__(
        self,
        l2_norm_clip: float,
        noise_multiplier: float,
        num_microbatches: int | None = None,
        unconnected_gradients_to_zero: bool = False,
        *args: Any,
        gradient_accumulation_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            l2_norm_clip,
            noise_multiplier,
            num_microbatches,
            *args,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self.unconnected_gradients_to_zero = bool(unconnected_gradients_to_zero)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["unconnected_gradients_to_zero"] = self.unconnected_gradients_to_zero
        return config


def make_vectorized_keras_optimizer_class(cls: type[keras.optimizers.Optimizer]) -> type:
    """TF Privacy's vectorized variant of :func:`make_keras_optimizer_class`.

    The new class takes ``(l2_norm_clip, noise_multiplier, num_microbatches=None,
    unconnected_gradients_to_zero=False, *args, gradient_accumulation_steps=1, **kwargs)``.
    keras-privacy's DP step is always vectorized (or faster), so the class differs from the
    plain one only in accepting ``unconnected_gradients_to_zero``.
    """
    return _dp_optimizer_class(cls, VectorizedDPOptimizerMixin, "VectorizedDPKeras")


VectorizedDPKerasSGDOptimizer = make_vectorized_keras_optimizer_class(keras.optimizers.SGD)
VectorizedDPKerasAdamOptimizer = make_vectorized_keras_optimizer_class(keras.optimizers.Adam)
VectorizedDPKerasAdagradOptimizer = make_vectorized_keras_optimizer_class(keras.optimizers.Adagrad)


# Keras may have been imported first by this module's own imports, too early for the DP
# classes to register with it (see ``keras_privacy._AfterKerasImport``): now that this
# module is complete, register them if that registration is still waiting.
sys.modules["keras_privacy"].finish_deferred_registration()
