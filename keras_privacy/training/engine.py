"""The engine interface: how a backend turns a batch into a sum of clipped gradients.

An engine answers one question for a batch of *clipping units* (single examples, or
microbatches): what is ``sum_u clip_C(grad_u)``, the sum of each unit's whole gradient
(over all trainable variables) clipped to L2 norm C? ``grad_u`` is the gradient of the
unit's loss without the weight-regularization terms, which depend on no data: the trainer
adds their gradient after clipping and noising
(:mod:`keras_privacy.training.regularization`). Everything around it -- sampling, noise,
accumulation, the optimizer update, metrics -- is the trainer's job and is shared.

The always-correct engine (``VectorizedEngine`` in each backend package) materialises
every unit's gradient with the backend's vectorizer over a stateless forward pass.
Faster engines (norm-only "ghost" clipping, which computes per-unit norms from layer
inputs and output-gradients without materialising per-unit gradients) implement the
same method and are chosen per model; the vectorized one stays the reference in tests.
Their backend-neutral frames are :class:`keras_privacy.training.vectorized.VectorizedEngine`
and :class:`keras_privacy.training.fast.engine.FastEngine`.

The interface: ``engine.clipped_gradient_sum(model, x, y, sample_weight, *, num_units,
l2_norm_clip, unit_offset=0) -> ClippedBatch`` where

* ``model`` is the DP model (built);
* ``x, y, sample_weight`` are the batch's rows (nests of tensors; ``y`` and
  ``sample_weight`` may be ``None``);
* ``num_units`` is ``None`` for per-example clipping, otherwise the number of equal
  microbatches the rows are split into;
* ``l2_norm_clip`` is C;
* ``unit_offset`` is the index of the batch's first unit within the logical batch, so
  that random layers (dropout) give every unit its own randomness.

On JAX the step's trainable and non-trainable values come before ``x``, ``unit_mask``
(0 for the padding rows of a Poisson batch) is a further keyword argument, and the result
is ``(ClippedBatch, new non-trainable values)``: everything is a function of the values
it is given.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import ops
from keras.src.backend.common.masking import get_keras_mask, set_keras_mask
from keras.src.backend.common.stateless_scope import StatelessScope

from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.regularization import excluding_weight_regularization


@dataclasses.dataclass
class ClippedBatch:
    """What an engine returns for one batch.

    Attributes:
      grad_sum: one tensor per trainable variable: ``sum_u factor_u * grad_u``.
      unit_losses: shape ``[units]``: each unit's loss (per-example loss, or a
        microbatch's mean loss), for the loss metric.
      y_pred: the model's training-mode outputs for the batch's rows (for metrics).
      norms: shape ``[units]``: each unit's unclipped gradient norm (NaN/inf if it was
        not finite, in which case that unit contributed zero).
      unclipped: set by a trainer that clips adaptively: how many real units have
        ``norm <= C`` (:func:`~keras_privacy.training.clipping.unclipped_count`).
    """

    grad_sum: list
    unit_losses: Any
    y_pred: Any
    norms: Any
    unclipped: Any = None


#: Spreads the seed states of random layers (dropout) over clipping units: unit ``i`` of a
#: step (counted from the logical batch's first unit) draws with seed state
#: ``(s0 + i * SEED_STRIDE, s1)``, distinct for every unit of every step.
SEED_STRIDE = 1_000_003


def state_mapping(
    model: Any, trainable_values: list, non_trainable_values: list, extra: list = ()
) -> list[tuple[Any, Any]]:
    """A :class:`keras.StatelessScope` mapping: each trainable and non-trainable variable
    of ``model`` to the given value, in the models' variable order, then ``extra`` pairs
    (e.g. scratch values for the metrics' variables)."""
    return (
        list(zip(model.trainable_variables, trainable_values, strict=True))
        + list(zip(model.non_trainable_variables, non_trainable_values, strict=True))
        + list(extra)
    )


def check_units_divide(rows: int | None, num_units: int) -> None:
    """Raise :class:`PrivacyError` unless ``num_units`` microbatches split ``rows`` rows
    evenly (nothing to check while the row count is unknown, as in a TensorFlow trace)."""
    if rows is not None and rows % num_units:
        raise PrivacyError(
            f"num_microbatches={num_units} must divide the batch size, but a batch has "
            f"{rows} examples. Choose a batch size that is a multiple of num_microbatches."
        )


def to_units(tensor: Any, num_units: int | None) -> Any:
    """``[rows, ...] -> [units, rows_per_unit, ...]`` for a tensor of static shape (JAX,
    PyTorch): unit ``u`` holds rows ``u R .. (u + 1) R - 1`` with ``R = rows / units``;
    one row per unit for per-example clipping (``num_units=None``)."""
    if num_units is None:
        return tensor[:, None]
    rows = tensor.shape[0]
    check_units_divide(rows, num_units)
    return ops.reshape(tensor, (num_units, rows // num_units, *tensor.shape[1:]))


def from_units(tensor: Any) -> Any:
    """``[units, rows_per_unit, ...] -> [rows, ...]`` (static shape), the inverse of
    :func:`to_units`."""
    return ops.reshape(tensor, (-1, *tensor.shape[2:]))


def unit_loss_leaves(y: Any, y_pred: Any, sample_weight: Any) -> tuple[list, Any]:
    """What a fast engine maps over clipping units to compute each unit's loss from the
    whole batch's outputs, exactly as ``compute_loss`` computes it on the unit alone.

    Returns ``(leaves, rebuild)``: ``leaves`` are the non-``None`` tensors of
    ``(y, y_pred, sample_weight)`` followed by the Keras masks of ``y_pred``'s tensors
    (set by ``Embedding(mask_zero=True)``, ``Masking``, ...), all with the batch's rows as
    their leading axis; ``rebuild(unit_leaves)`` gives one unit's ``(y, y_pred,
    sample_weight)`` with each output's mask re-attached, so that the compiled loss masks
    the unit's padded positions (weight ``total / valid`` on its valid ones, 0 elsewhere)
    as it would for the unit's own forward pass. Without the masks a slice of ``y_pred``
    carries none and padded positions would be trained on.
    """
    data = (y, y_pred, sample_weight)
    leaves = [t for t in keras.tree.flatten(data) if t is not None]
    masks = [get_keras_mask(t) for t in keras.tree.flatten(y_pred)]
    count = len(leaves)

    def rebuild(unit_leaves: list) -> tuple[Any, Any, Any]:
        it = iter(unit_leaves[:count])
        y_u, pred_u, sw_u = keras.tree.map_structure(
            lambda t: None if t is None else next(it), data
        )
        mask_it = iter(unit_leaves[count:])
        for tensor, mask in zip(keras.tree.flatten(pred_u), masks, strict=True):
            if mask is not None:
                set_keras_mask(tensor, next(mask_it))
        return y_u, pred_u, sw_u

    return leaves + [m for m in masks if m is not None], rebuild


def unit_data(
    x: Any, y: Any, sample_weight: Any, num_units: int | None, to_units: Any
) -> tuple[tuple, list]:
    """``((x, y, sample_weight), unit_leaves)``: the batch's structure and its non-``None``
    leaves split into units by the backend's ``to_units`` (``[rows, ...] -> [units,
    rows_per_unit, ...]``), what a vectorized engine maps over (see :func:`unit_forward`)."""
    data = (x, y, sample_weight)
    leaves = [t for t in keras.tree.flatten(data) if t is not None]
    return data, [to_units(t, num_units) for t in leaves]


def seed_advances(non_trainable: list, before: list, after: list, seeds: set[int]) -> list:
    """``after - before`` for each random layer's seed state (``seeds``: ids) among the
    non-trainable variables, in order: how far one unit's forward pass advanced it."""
    return [
        new - old
        for var, old, new in zip(non_trainable, before, after, strict=True)
        if id(var) in seeds
    ]


def unit_forward(
    model: Any,
    mapping: list,
    data: Any,
    unit_leaves: list,
    seeds: set[int],
    stateful_updates: list[str],
) -> tuple[Any, Any, list, list]:
    """One clipping unit's training-mode forward pass and loss, stateless (the body that
    every backend's vectorized engine maps over units, differentiating the loss).

    ``mapping`` gives every variable's value for this unit; ``data`` is the batch's
    ``(x, y, sample_weight)`` structure and ``unit_leaves`` this unit's non-``None``
    leaves of it, in order. Returns the loss (unreduced), the outputs and the
    non-trainable values before and after the pass. The loss leaves out the weight
    regularization terms (added after clipping and noising, see
    :mod:`keras_privacy.training.regularization`) and keeps the losses computed from the
    unit's data (activity regularizers, ``add_loss``). A non-trainable variable that the
    pass changed and that is not a random layer's seed state (``seeds``: ids) is
    appended to ``stateful_updates`` (see :func:`refuse_state_updates`).
    """
    it = iter(unit_leaves)
    x_u, y_u, sw_u = keras.tree.map_structure(lambda t: None if t is None else next(it), data)
    training = {"training": True} if model._call_has_training_arg else {}
    non_trainable = model.non_trainable_variables
    with (
        excluding_weight_regularization(model),
        StatelessScope(state_mapping=mapping, collect_losses=True) as scope,
    ):
        before = [scope.get_current_value(v) for v in non_trainable]
        y_pred = model(x_u, **training)
        loss = model._compute_loss(x=x_u, y=y_u, y_pred=y_pred, sample_weight=sw_u, training=True)
        after = [scope.get_current_value(v) for v in non_trainable]
    for var, old, new in zip(non_trainable, before, after, strict=True):
        if id(var) not in seeds and new is not old:
            stateful_updates.append(var.path)
    return loss, y_pred, before, after


def refuse_state_updates(stateful_updates: list[str]) -> None:
    """Raise :class:`PrivacyError` if a training-mode forward pass updated non-trainable
    state (moving averages, counters): that state is computed from the training data
    and DP-SGD does not privatize it."""
    if stateful_updates:
        raise PrivacyError(
            "These non-trainable variables are updated in a training-mode forward pass: "
            f"{sorted(set(stateful_updates))}. DP-SGD only privatizes gradients, so state "
            "computed from the training data (moving averages, counters) would leak it. "
            "Freeze those layers (layer.trainable = False) or replace them."
        )
