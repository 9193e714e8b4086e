"""Weight regularization in the DP step: outside the clipped loss, at full strength.

A variable's ``regularizer`` (``kernel_regularizer=``, ``bias_regularizer=``,
``embeddings_regularizer=``, ``add_weight(regularizer=...)``) adds a loss ``R(w)`` that is a
function of the weights alone, never of the data. The DP step therefore keeps it out of
every clipping unit's loss and adds its gradient after clipping and noising::

    g = ( sum_u clip_C(grad l_u(w)) + N(0, sigma^2 C^2 I) ) / B  +  grad R(w)
    R(w) = sum over trainable variables v with a regularizer of regularizer_v(w_v)

where ``l_u`` is unit ``u``'s loss *without* the weight-regularization terms (its compiled
loss plus any loss computed from its data: activity regularizers, ``add_loss``).

Privacy: adding or removing one example changes one unit's term of the clipped sum, by at
most C; ``grad R(w)`` depends on the current weights only (themselves the output of the
earlier DP releases), so adding it is post-processing and the sensitivity of what is
released stays at most C. Keeping ``R`` inside the clipped loss instead (what this library
did before) spends clipping budget on a term that needs none: with a small C the
regularizer's pull shrank with the clip factor (issue 18: with C = 0.01 and an L2 pull of
0.05, one SGD step moved a kernel of ones to 0.9997; now 0.9500, what TF Privacy's Keras
models give). Opacus's weight decay, applied by the optimizer to the noised gradient, is
the same thing.

Activity regularizers and ``add_loss`` losses are computed from the data and are *not*
data-independent: they stay inside each unit's clipped loss (vectorized engine), and a
model with any of them stays off the fast engine, whose rules do not cover them.

Backend-neutral (``keras.ops``); each backend supplies only its autodiff
(``value_and_grad``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
from keras import ops


def _no_weight_regularization() -> list:
    return []


@contextlib.contextmanager
def excluding_weight_regularization(model: Any) -> Iterator[None]:
    """While active, ``model.losses`` (and every sub-layer's ``losses``) leaves out the
    weight-regularization terms, so ``compute_loss`` gives a unit's loss without them; the
    data-dependent losses (activity regularizers, ``add_loss``) stay. Reentrant; the model
    is left as it was on exit (also on error)."""
    installed = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if "_get_regularization_losses" in vars(layer):
            continue  # already excluded by an enclosing context (or set by the user)
        object.__setattr__(layer, "_get_regularization_losses", _no_weight_regularization)
        installed.append(layer)
    try:
        yield
    finally:
        for layer in installed:
            object.__delattr__(layer, "_get_regularization_losses")


def regularized_positions(model: Any) -> list[int]:
    """Positions in ``model.trainable_variables`` of the variables with a regularizer (the
    variables Keras regularizes: trainable ones only)."""
    return [
        i
        for i, v in enumerate(model.trainable_variables)
        if getattr(v, "regularizer", None) is not None
    ]


def weight_regularization_loss(model: Any, values: list) -> Any:
    """``R(w)`` as a float32 scalar, for ``values`` of the variables at
    :func:`regularized_positions` (in that order); as Keras sums it into the loss."""
    variables = model.trainable_variables
    total = ops.zeros((), "float32")
    for i, value in zip(regularized_positions(model), values, strict=True):
        loss = variables[i].regularizer(value)
        if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(loss.dtype)):
            loss = ops.cast(loss, keras.config.floatx())
        total = total + ops.cast(ops.sum(loss), "float32")
    return total


def add_regularization_gradient(
    model: Any,
    grads: list,
    trainable_values: list,
    value_and_grad: Callable[[Callable, list], tuple[Any, list]],
) -> tuple[list, Any]:
    """``grads[i] + dR/dw_i`` for every trainable variable, and ``R(w)`` (float32; 0 when
    no variable has a regularizer).

    ``grads`` is the DP gradient ``(sum_u clip_C(grad l_u) + noise) / B`` in float32, one
    per trainable variable; ``trainable_values`` the variables' current values;
    ``value_and_grad(fn, values)`` the backend's autodiff, returning ``(fn(values),
    d fn / d values)``.
    """
    positions = regularized_positions(model)
    if not positions:
        return grads, ops.zeros((), "float32")
    values = [trainable_values[i] for i in positions]
    loss, reg_grads = value_and_grad(lambda vals: weight_regularization_loss(model, vals), values)
    grads = list(grads)
    for i, g in zip(positions, reg_grads, strict=True):
        grads[i] = grads[i] + ops.cast(g, "float32")
    return grads, loss


__all__ = [
    "add_regularization_gradient",
    "excluding_weight_regularization",
    "regularized_positions",
    "weight_regularization_loss",
]
