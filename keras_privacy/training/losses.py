"""Per-example losses: what DP-SGD needs, and a guard for functions that are not."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import keras

from keras_privacy.training.errors import PrivacyError


@keras.saving.register_keras_serializable(package="keras_privacy")
class PerExampleLoss(keras.losses.Loss):
    """Wraps a plain loss function and checks that it returns one value per example.

    DP-SGD clips every example's gradient, so the loss of an example must depend on that
    example alone. A function that averages over the batch itself returns a scalar; it is
    refused with an error instead of being silently treated as per-example.
    """

    def __init__(self, fn: Callable, name: str | None = None, **kwargs: Any) -> None:
        if name is None:
            name = getattr(fn, "__name__", "")
            # A lambda's name '<lambda>' is not a valid Keras name scope.
            name = name if name.isidentifier() else "loss"
        super().__init__(name=name, **kwargs)
        self.fn = fn

    def call(self, y_true, y_pred):
        values = self.fn(y_true, y_pred)
        if len(keras.ops.shape(values)) == 0:
            raise PrivacyError(
                f"The loss function {self.name!r} returned a scalar: it reduces over the "
                "batch. DP-SGD needs one loss value per example (e.g. a Keras loss, or a "
                "function returning shape [batch]); remove the batch mean/sum from it."
            )
        return values

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["fn"] = keras.saving.serialize_keras_object(self.fn)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PerExampleLoss:
        config = dict(config)
        config["fn"] = keras.saving.deserialize_keras_object(config["fn"])
        return cls(**config)


def check_per_example_losses(loss: Any) -> Any:
    """Wrap plain functions in :class:`PerExampleLoss`; leave Keras losses and names."""
    if loss is None or isinstance(loss, (str, keras.losses.Loss)):
        return loss
    if isinstance(loss, dict):
        return {k: check_per_example_losses(v) for k, v in loss.items()}
    if isinstance(loss, (list, tuple)):
        return type(loss)(check_per_example_losses(v) for v in loss)
    if callable(loss):
        return PerExampleLoss(loss)
    return loss


# Keras may have been imported first by this module's own imports, too early for the DP
# classes to register with it (see ``keras_privacy._AfterKerasImport``): now that this
# module is complete, register them if that registration is still waiting.
sys.modules["keras_privacy"].finish_deferred_registration()
