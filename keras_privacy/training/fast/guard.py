"""The batch-independence guard of the fast engine.

The vectorized engine runs every clipping unit through the model alone, so a layer that
mixes the rows of a batch (``x - ops.mean(x, axis=0)``, batch statistics) cannot carry
one example's influence into another's gradient. The fast engine runs the whole batch at
once and would let such influence escape the clip, silently. So before it is used, every
operation on the model's forward path must be *known* to treat rows independently:

* containers whose ``call`` is Keras's own graph walk (``Functional``, ``Sequential``) or
  :class:`~keras_privacy.training.private.PrivateModel`'s forwarding are opened and their
  operations checked one by one;
* a layer passes if its class, or the nearest registered class in its MRO *whose ``call``
  it does not override*, is on the allow-list (by type, never by name), and the class's
  extra check (e.g. an axis that is not the batch axis) passes;
* the element-wise arithmetic ops of the functional API (``x + y``) pass;
* anything else -- a custom layer, a subclassed model's own ``call``, ``Lambda``, an op
  like ``ops.mean(x, axis=0)`` -- fails, and the message names it.

:func:`register_per_example_layer` lets a user vouch for a custom layer class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras.src.models.functional import Functional
from keras.src.ops import numpy as knp

from keras_privacy.training.fast.rules import rule_for

_PER_EXAMPLE: dict[type, Callable[[Any], str | None] | None] = {}
_ELEMENTWISE_OPS = tuple(
    getattr(knp, name) for name in ("Add", "Subtract", "Multiply", "Divide", "TrueDivide")
)


def register_per_example_layer(
    layer_class: type, check: Callable[[Any], str | None] | None = None
) -> None:
    """Declare that ``layer_class``'s training-mode ``call`` treats every row of its
    inputs on its own (row ``i`` of the outputs depends on row ``i`` of the inputs only)
    and updates no state from the data. ``check(layer)`` may return a reason why a
    particular instance does not (or ``None``)."""
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"expected a keras Layer class, got {layer_class!r}")
    _PER_EXAMPLE[layer_class] = check


def _input_rank(layer: Any) -> int | None:
    try:
        inputs = layer.input
        if isinstance(inputs, (list, tuple)):
            inputs = inputs[0]
        return len(inputs.shape)
    except (AttributeError, ValueError, TypeError, IndexError):
        return None


def _axis_check(attribute: str) -> Callable[[Any], str | None]:
    def check(layer: Any) -> str | None:
        axis = getattr(layer, attribute)
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        rank = _input_rank(layer)
        for a in axes:
            if not isinstance(a, int):
                return f"its {attribute}={axis!r} is not a plain axis"
            if a == 0 or (a < 0 and (rank is None or a % rank == 0)):
                return f"its {attribute}={axis!r} is (or may be) the batch axis"
        return None

    return check


def _not_trainable(layer: Any) -> str | None:
    if layer.trainable:
        return "it normalizes with batch statistics in training mode"
    return None


def _not_stateful(layer: Any) -> str | None:
    if getattr(layer, "stateful", False):
        return "stateful=True carries state from one batch's rows to the next"
    return None


def _is_allowed_class(layer: Any) -> tuple[bool, str | None]:
    if "call" in vars(layer):
        return False, "its call is replaced on the instance"
    for cls in type(layer).__mro__:
        if cls in _PER_EXAMPLE:
            if type(layer).call is not cls.call:
                return False, f"it overrides {cls.__name__}.call"
            check = _PER_EXAMPLE[cls]
            return True, None if check is None else check(layer)
    return rule_for(layer) is not None, None


def batch_mixing_reason(layer: Any) -> str | None:
    """``None`` if every operation on ``layer``'s forward path is known to be
    per-example; otherwise a sentence naming the first one that is not."""
    from keras_privacy.training.private import PrivateModel

    call = type(layer).call
    if isinstance(layer, PrivateModel) and call is PrivateModel.call:
        return batch_mixing_reason(layer.wrapped_model)
    if isinstance(layer, Functional) and call is Functional.call:
        for op in layer.operations:
            if isinstance(op, keras.layers.InputLayer):
                continue
            if isinstance(op, keras.layers.Layer):
                reason = batch_mixing_reason(op)
            elif isinstance(op, _ELEMENTWISE_OPS):
                reason = None
            else:
                reason = (
                    f"operation {op.name!r} ({type(op).__name__}) is not known to treat the "
                    "examples of a batch independently"
                )
            if reason:
                return reason
        return None
    if isinstance(layer, keras.Sequential) and call is keras.Sequential.call:
        for sub in layer.layers:
            reason = batch_mixing_reason(sub)
            if reason:
                return reason
        return None
    allowed, why = _is_allowed_class(layer)
    if allowed and why is None:
        return None
    if why is None:
        why = "it is not known to treat the examples of a batch independently"
    return f"layer {layer.name!r} ({type(layer).__name__}): {why}"


def _register_builtins() -> None:
    L = keras.layers
    plain = [
        "InputLayer", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
        "GaussianDropout", "GaussianNoise", "AlphaDropout", "Activation", "ReLU",
        "LeakyReLU", "ELU", "PReLU", "Flatten", "Reshape", "Permute", "RepeatVector",
        "Identity", "Masking", "Rescaling", "GlobalAveragePooling1D",
        "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
        "GlobalMaxPooling2D", "GlobalMaxPooling3D", "AveragePooling1D", "AveragePooling2D",
        "AveragePooling3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "Conv1D",
        "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
        "SeparableConv2D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
        "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Add",
        "Subtract", "Multiply", "Average", "Maximum", "Minimum", "MultiHeadAttention",
    ]  # fmt: skip
    for name in plain:
        if hasattr(L, name):
            register_per_example_layer(getattr(L, name))
    register_per_example_layer(L.Softmax, _axis_check("axis"))
    register_per_example_layer(L.Concatenate, _axis_check("axis"))
    for name in ("UnitNormalization", "GroupNormalization", "LayerNormalization"):
        register_per_example_layer(getattr(L, name), _axis_check("axis"))
    if hasattr(L, "RMSNormalization"):
        register_per_example_layer(L.RMSNormalization, _axis_check("axis"))
    register_per_example_layer(L.BatchNormalization, _not_trainable)
    for name in ("LSTM", "GRU", "SimpleRNN"):
        register_per_example_layer(getattr(L, name), _not_stateful)


_register_builtins()
