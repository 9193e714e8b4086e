"""The batch-independence guard of the fast engine.

The vectorized engine runs every clipping unit through the model alone, so a layer that
mixes the rows of a batch (``x - ops.mean(x, axis=0)``, batch statistics) cannot carry
one example's influence into another's gradient. The fast engine runs the whole batch at
once and would let such influence escape the clip, silently. So before it is used, every
operation on the model's forward path must be *known* to treat rows independently:

* containers whose ``call`` is Keras's own graph walk (``Functional``, ``Sequential``) or
  a wrapper's declared forwarding (a class attribute ``_dp_forwarding_call`` that *is* its
  ``call``, as :class:`~keras_privacy.training.private.PrivateModel` declares) are opened
  and their operations checked one by one;
* a layer passes if its class, or the nearest registered class in its MRO, is on the
  allow-list (by type, never by name), the layer's class overrides none of that class's
  methods (except construction and configuration: ``__init__``, ``build``,
  ``get_config``, ...), and the class's extra check (e.g. an axis that is not the batch
  axis) passes;
* **every callable the layer holds runs on the batch and is checked too**: each callable
  attribute (``activation=``, ``recurrent_activation=``, an ``Activation(fn)``'s
  function, anything a subclass's ``__init__`` stores) must be a built-in per-row function
  of ``keras.activations`` or ``keras.ops`` *by identity* (a function that reduces over an
  axis -- softmax -- only where the tensor has a feature axis), and every sub-layer
  (``MultiHeadAttention``'s projections, an RNN's cell) must pass this guard itself;
* the element-wise arithmetic ops of the functional API (``x + y``, and ``ones_like`` /
  ``zeros_like``, whose entries are constants) pass, and so does indexing that keeps
  the batch axis whole (``x[:, 0, :]``);
* a subclassed ``keras.Model``'s own ``call`` is glue code between layers: every layer
  it holds must pass, and what the call computes with them is left to the numerical check
  below (which is always run before the fast engine);
* anything else -- a custom layer or activation, a lambda, ``Lambda``, an op like
  ``ops.mean(x, axis=0)`` -- fails, and the message names it.

:func:`register_per_example_layer` lets a user vouch for a custom layer class. The list is
never the only line of defence: before the fast engine is used, the numerical check of
:mod:`keras_privacy.training.fast.independence` runs the forward pass on a small batch with
one row perturbed and requires every other row's outputs to stay bit for bit the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras.src.models.functional import Functional
from keras.src.ops import numpy as knp

from keras_privacy.training.fast.rules import load_optional_rules, rule_for

_PER_EXAMPLE: dict[type, Callable[[Any], str | None] | None] = {}
# Functional-API ops that compute each output entry from the same entries of their
# inputs (a mask's ``x != 0``, ``x + y``); anything that reduces or reshapes is not here.
_ELEMENTWISE_OPS = tuple(
    getattr(knp, name)
    for name in (
        "Add",
        "Subtract",
        "Multiply",
        "Divide",
        "TrueDivide",
        "Maximum",
        "Minimum",
        "Equal",
        "NotEqual",
        "Greater",
        "GreaterEqual",
        "Less",
        "LessEqual",
        "LogicalAnd",
        "LogicalOr",
        "LogicalNot",
        "LogicalXor",
        "Negative",
        "Abs",
        "Square",
        "Sqrt",
        "Exp",
        "Log",
        # each output entry is a constant (the input's values are not read at all):
        # a padding mask of ones built from the token ids
        "OnesLike",
        "ZerosLike",
    )  # fmt: skip
    if hasattr(knp, name)
)

# Built-in functions that compute each entry from the same entry (or each row's vector
# along the last axis) only, recognised by identity: what a layer may run on the batch as
# its ``activation``. The axis-reducing ones (``_LAST_AXIS``) are per-row only where the
# tensor has an axis besides the batch axis.
_ELEMENTWISE_NAMES = (
    "relu", "leaky_relu", "relu6", "celu", "elu", "selu", "softplus", "softsign",
    "squareplus", "soft_shrink", "sparse_plus", "silu", "swish", "gelu", "tanh",
    "tanh_shrink", "sigmoid", "sparse_sigmoid", "exponential", "exp", "hard_sigmoid",
    "hard_silu", "hard_swish", "hard_tanh", "hard_shrink", "linear", "mish", "log_sigmoid",
    "threshold",
)  # fmt: skip
_LAST_AXIS_NAMES = ("softmax", "log_softmax", "sparsemax", "glu")


def _builtin_functions(names: tuple[str, ...]) -> set[int]:
    found = set()
    for module in (keras.activations, keras.ops):
        for name in names:
            fn = getattr(module, name, None)
            if callable(fn):
                found.add(id(fn))
    return found


_ELEMENTWISE_FUNCTIONS = _builtin_functions(_ELEMENTWISE_NAMES)
_LAST_AXIS_FUNCTIONS = _builtin_functions(_LAST_AXIS_NAMES)

# Methods a subclass may override without changing what ``call`` computes on the batch.
_CONSTRUCTION_METHODS = frozenset(
    {"__init__", "__new__", "build", "get_config", "from_config", "compute_output_shape",
     "compute_output_spec", "get_build_config", "build_from_config", "save_own_variables",
     "load_own_variables", "__repr__", "__str__"}
)  # fmt: skip
# Values a layer holds that are callable but never run on the batch.
_NOT_RUN_ON_BATCH = (
    keras.Variable,
    keras.initializers.Initializer,
    keras.regularizers.Regularizer,
    keras.constraints.Constraint,
    keras.DTypePolicy,
    type,
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


def register_per_example_function(function: Callable[[Any], Any]) -> None:
    """Declare that ``function`` (an activation a layer may hold) computes each entry of
    its output from the same entry of its input only (recognised by identity)."""
    if not callable(function):
        raise TypeError(f"expected a function, got {function!r}")
    _ELEMENTWISE_FUNCTIONS.add(id(function))
    _KEEP_ALIVE.append(function)


# Registered functions are kept alive, so that their ids stay theirs.
_KEEP_ALIVE: list = []


def _batch_preserving_index(op: Any) -> str | None:
    """Why a functional-API ``x[key]`` may mix or drop examples: its key must keep the
    batch axis whole (``x[:, 0]``, ``x[..., :4]`` with more than one axis)."""
    for node in getattr(op, "_inbound_nodes", []):
        args = node.arguments.args
        key = args[1] if len(args) > 1 else node.arguments.kwargs.get("key")
        first = key[0] if isinstance(key, tuple) and key else key
        if not (isinstance(first, slice) and first == slice(None)):
            return f"operation {op.name!r} (GetItem) indexes the batch axis with {first!r}"
    return None


def _input_rank(layer: Any) -> int | None:
    try:
        inputs = layer.input
        if isinstance(inputs, (list, tuple)):
            inputs = inputs[0]
        return len(inputs.shape)
    except (AttributeError, ValueError, TypeError, IndexError):
        pass
    # A layer called inside another layer's call has no graph node: the input shape it
    # was built with (recorded by Keras's ``__call__``) gives the rank.
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    first = next(iter(shapes.values()), None)
    if isinstance(first, (list, tuple)) and all(d is None or isinstance(d, int) for d in first):
        return len(first)
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


def _override_reason(layer: Any, registered: type) -> str | None:
    """Why ``layer``'s class may compute something else than ``registered``'s code: a
    method of ``registered`` (or of its bases) overridden between the two in the MRO."""
    if type(layer).call is not registered.call:
        return f"it overrides {registered.__name__}.call"
    for cls in type(layer).__mro__:
        if cls is registered:
            return None
        for name, value in vars(cls).items():
            if name in _CONSTRUCTION_METHODS or not callable(value):
                continue
            if hasattr(registered, name):
                return f"it overrides {registered.__name__}.{name}"
    return None


def _is_allowed_class(layer: Any) -> tuple[bool, str | None]:
    load_optional_rules()  # an optional library's entries, once the user imported it
    if "call" in vars(layer):
        return False, "its call is replaced on the instance"
    for cls in type(layer).__mro__:
        if cls in _PER_EXAMPLE:
            why = _override_reason(layer, cls)
            if why:
                return False, why
            check = _PER_EXAMPLE[cls]
            return True, None if check is None else check(layer)
    return rule_for(layer) is not None, None


def _output_rank(layer: Any) -> int | None:
    try:
        outputs = layer.output
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[0]
        return len(outputs.shape)
    except (AttributeError, ValueError, TypeError, IndexError):
        return None


def _keras_wrapper(value: Any) -> bool:
    """Keras installs ``build`` and ``quantize`` wrappers on every layer instance; they run
    on shapes and weights, never on the batch."""
    code = getattr(value, "__code__", None)
    return code is not None and code.co_filename.endswith(
        ("keras/src/layers/layer.py", "keras/src/ops/operation.py")
    )


def _callable_reason(layer: Any) -> str | None:
    """Why a callable ``layer`` holds may mix the batch (see the module docstring)."""
    for name, value in vars(layer).items():
        if not callable(value) or isinstance(value, _NOT_RUN_ON_BATCH):
            continue
        if isinstance(value, keras.layers.Layer):
            continue  # sub-layers are checked by _sublayer_reason
        if name in ("build", "quantize") and _keras_wrapper(value):
            continue
        if id(value) in _ELEMENTWISE_FUNCTIONS:
            continue
        label = getattr(value, "__name__", type(value).__name__)
        if id(value) in _LAST_AXIS_FUNCTIONS:
            ranks = {_input_rank(layer), _output_rank(layer)}
            if 1 in ranks:
                return f"its {name}={label} reduces over the batch axis of a rank-1 tensor"
            continue
        return (
            f"its {name}={label!r} is not a built-in per-example function (a custom "
            "function may mix the examples of a batch; use a keras.activations function "
            "or a layer registered with register_per_example_layer)"
        )
    return None


def _sublayer_reason(layer: Any, own_call_checked_numerically: bool = False) -> str | None:
    for sub in layer._flatten_layers(include_self=False, recursive=False):
        reason = batch_mixing_reason(sub)
        if reason:
            if own_call_checked_numerically:
                reason += (
                    f" (a subclassed model such as {type(layer).__name__} takes the fast "
                    "engine when every layer it holds passes this check: write the layer as "
                    "a Sequential/functional model, give it a rule with register_rule, or "
                    "vouch for it with register_per_example_layer)"
                )
            return f"in {layer.name!r}, {reason}"
    return None


def batch_mixing_reason(layer: Any) -> str | None:
    """``None`` if every operation on ``layer``'s forward path is known to be
    per-example; otherwise a sentence naming the first one that is not."""
    call = type(layer).call
    forwarding = getattr(type(layer), "_dp_forwarding_call", None)
    if forwarding is not None and call is forwarding and "call" not in vars(layer):
        return batch_mixing_reason(layer.wrapped_model)
    if isinstance(layer, Functional) and call is Functional.call:
        for op in layer.operations:
            if isinstance(op, keras.layers.InputLayer):
                continue
            if isinstance(op, keras.layers.Layer):
                reason = batch_mixing_reason(op)
            elif isinstance(op, _ELEMENTWISE_OPS):
                reason = None
            elif isinstance(op, knp.GetItem):
                reason = _batch_preserving_index(op)
            else:
                reason = (
                    f"operation {op.name!r} ({type(op).__name__}) is not known to treat the "
                    "examples of a batch independently"
                )
            if reason:
                return reason
        return None
    is_sequential = isinstance(layer, keras.Sequential) and call is keras.Sequential.call
    if isinstance(layer, keras.Model) and not isinstance(layer, Functional) and not is_sequential:
        if _is_allowed_class(layer)[0]:
            pass  # a registered model class: checked as a layer below
        else:
            # A subclassed model's own ``call`` is glue code between its layers: the list
            # checks every layer it holds, and the numerical check (always run before the
            # fast engine) checks what the call computes with them.
            return _sublayer_reason(layer, own_call_checked_numerically=True)
    if isinstance(layer, keras.Sequential) and call is keras.Sequential.call:
        for sub in layer.layers:
            reason = batch_mixing_reason(sub)
            if reason:
                return reason
        return None
    allowed, why = _is_allowed_class(layer)
    if allowed and why is None:
        why = _callable_reason(layer)
        if why is None:
            return _sublayer_reason(layer)
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
    for name in ("LSTMCell", "GRUCell", "SimpleRNNCell"):
        register_per_example_layer(getattr(L, name))


_register_builtins()
