"""Each clipping unit's loss in one batched call, for Keras's built-in losses.

The fast engine needs ``loss_u = compute_loss(y_u, y_pred_u, sw_u)`` for every unit ``u``
(the compiled loss of the unit's rows alone, with their masks). The general way maps the
compiled loss over units (:func:`~keras_privacy.training.fast.engine.vectorized_unit_losses`);
on TensorFlow that is ``tf.vectorized_map`` over the whole ``[rows, ..., classes]`` output,
which for a language model's logits costs more memory and time than the rest of the DP
step. For the common case this module computes the same ``[U]`` vector directly:

* each compiled loss is a built-in Keras loss function (``keras.losses.*``, or its
  ``Loss`` class) whose elementwise part ``fn(y_true, y_pred)`` only reduces the last
  axis (allow-list, and the check that its output keeps the rows as its leading axis):
  one batched call gives every row's values ``v``;
* its reduction is then taken per unit, exactly as ``Loss.__call__`` takes it on the
  unit alone (``reduce_weighted_values``): with the mask ``m`` of the outputs (weight
  ``total_u / valid_u`` on a unit's valid positions for ``"sum_over_batch_size"`` and
  ``"mean"``), the sample weights ``s``, and::

      "sum":                     loss_u = sum(v_u * s_u)
      "sum_over_batch_size":     loss_u = sum(v_u * s_u) / size(v_u)
      "mean_with_sample_weight": loss_u = sum(v_u * s_u) / sum(s_u)

  where ``size`` and the rank rules (``squeeze_or_expand_to_same_rank``, broadcasting)
  are those of the unit's own tensors ``[rows_per_unit, ...]``;
* Keras's ``CompileLoss`` does the rest as for one batch (the outputs' structure, the
  sample weights per output, the loss weights, the sum over outputs), with each of its
  losses replaced by its per-unit version for the call.

Anything else (a user's loss function, a ``Loss`` subclass of the user's, an ``axis``
other than the last, reduction ``"none"``, a model's own ``compute_loss``) returns
``None``: the caller maps the compiled loss over units instead.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import keras
from keras import ops
from keras.src.backend.common.masking import get_keras_mask
from keras.src.losses import loss as keras_loss
from keras.src.losses.losses import LossFunctionWrapper
from keras.src.trainers.compile_utils import CompileLoss
from keras.src.trainers.trainer import Trainer

#: Built-in loss functions that reduce only the last axis of their inputs (with their
#: default ``axis=-1``): each row's values depend on that row alone.
ROW_LOSSES = frozenset(
    getattr(keras.losses, name)
    for name in (
        "mean_squared_error",
        "mean_absolute_error",
        "mean_absolute_percentage_error",
        "mean_squared_logarithmic_error",
        "cosine_similarity",
        "huber",
        "log_cosh",
        "hinge",
        "squared_hinge",
        "categorical_hinge",
        "kl_divergence",
        "poisson",
        "binary_crossentropy",
        "binary_focal_crossentropy",
        "categorical_crossentropy",
        "categorical_focal_crossentropy",
        "sparse_categorical_crossentropy",
    )
)
REDUCTIONS = ("sum", "sum_over_batch_size", "mean", "mean_with_sample_weight")


class _NotDirect(Exception):
    """The loss is not one this module computes per unit: map it over units instead."""


def row_loss(loss: Any) -> bool:
    """Whether ``loss`` (a compiled loss) is a built-in row loss with a reduction that
    :func:`direct_unit_losses` takes per unit."""
    return (
        isinstance(loss, LossFunctionWrapper)
        and type(loss).call is LossFunctionWrapper.call
        and type(loss).__call__ is keras_loss.Loss.__call__
        and loss.fn in ROW_LOSSES
        and loss._fn_kwargs.get("axis", -1) == -1
        and keras_loss.standardize_reduction(loss.reduction) in REDUCTIONS
    )


def direct_unit_losses(
    model: Any,
    y: Any,
    y_pred: Any,
    sample_weight: Any,
    num_units: int | None,
    *,
    to_units: Callable[[Any, int | None], Any],
    scope: Callable[[], AbstractContextManager],
    errors: tuple[type[BaseException], ...] = (),
) -> Any | None:
    """``[U]`` float32: each unit's ``compute_loss`` on its rows alone, from one batched
    call of each loss (see the module docstring), or ``None`` where the model's loss is
    not made of built-in row losses or raises one of ``errors`` (the backend's shape and
    type errors): the mapped loss then decides, as it did before."""
    compile_loss = getattr(model, "_compile_loss", None)
    if (
        type(model).compute_loss is not Trainer.compute_loss
        or type(compile_loss) is not CompileLoss
    ):
        return None

    def per_unit(entries: list) -> list:
        return [e._replace(loss=_PerUnitLoss(e.loss, num_units, to_units)) for e in entries]

    built = compile_loss.built
    original_build, original_losses = (
        compile_loss.build,
        getattr(compile_loss, "_flat_losses", None),
    )

    def build(y_true: Any, y_pred_: Any) -> None:  # built lazily inside the call
        original_build(y_true, y_pred_)
        compile_loss._flat_losses = per_unit(compile_loss._flat_losses)

    try:
        if built:
            compile_loss._flat_losses = per_unit(original_losses)
        else:
            compile_loss.build = build
        with scope():
            loss = model._compute_loss(
                x=None, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
    except (_NotDirect, *errors):
        return None
    finally:
        if built:
            compile_loss._flat_losses = original_losses
        else:
            del compile_loss.build  # the class's method again
            if compile_loss.built:
                compile_loss._flat_losses = [
                    e._replace(loss=e.loss.loss) if isinstance(e.loss, _PerUnitLoss) else e
                    for e in compile_loss._flat_losses
                ]
    return ops.cast(loss, "float32")


class _PerUnitLoss:
    """A built-in row loss ``loss`` whose call gives each unit's reduced loss ``[U]``
    instead of the batch's (``Loss.__call__`` taken per unit)."""

    def __init__(self, loss: Any, num_units: int | None, to_units: Callable) -> None:
        self.loss, self.num_units, self.to_units = loss, num_units, to_units

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        loss = self.loss
        if not row_loss(loss):
            raise _NotDirect
        if keras.tree.is_nested(y_true) or keras.tree.is_nested(y_pred) or y_true is None:
            raise _NotDirect
        in_mask = get_keras_mask(y_pred)
        y_pred = ops.convert_to_tensor(y_pred, dtype=loss.dtype)
        y_true = ops.convert_to_tensor(y_true, dtype=loss.dtype)
        values = loss.call(y_true, y_pred)
        out_mask = get_keras_mask(values)
        # the check beside the allow-list: the rows stay the values' leading axis
        if len(values.shape) < 1 or values.shape[0] != y_pred.shape[0]:
            raise _NotDirect
        if in_mask is not None and out_mask is not None:
            mask = in_mask & out_mask
        else:
            mask = in_mask if in_mask is not None else out_mask
        if sample_weight is not None and len(ops.shape(sample_weight)) < 1:
            raise _NotDirect
        units = self._units
        return unit_reduce(
            units(ops.convert_to_tensor(values, dtype=loss.dtype)),
            None
            if sample_weight is None
            else units(ops.convert_to_tensor(sample_weight, dtype=loss.dtype)),
            None if mask is None else units(ops.convert_to_tensor(mask, dtype=loss.dtype)),
            keras_loss.standardize_reduction(loss.reduction),
            loss.dtype,
        )

    def _units(self, tensor: Any) -> Any:
        return self.to_units(tensor, self.num_units)


def unit_reduce(values: Any, sample_weight: Any, mask: Any, reduction: str, dtype: Any) -> Any:
    """``[U]``: Keras's ``reduce_weighted_values`` of each unit, from tensors
    ``[U, rows_per_unit, ...]`` (one unit's tensor is ``t[u]``): the rank rules and
    sizes are each unit's own."""
    sample_weight = _apply_mask(sample_weight, mask, dtype, reduction)
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, values.dtype)
        values, sample_weight = _same_rank(values, sample_weight)
        values = _multiply(values, sample_weight)
    loss = ops.sum(values, axis=_unit_axes(values))
    if reduction == "sum":
        return loss
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = ops.cast(ops.sum(sample_weight, axis=_unit_axes(sample_weight)), loss.dtype)
    else:
        divisor = ops.cast(_unit_size(values), loss.dtype)
    return keras_loss.scale_loss_for_distribution(ops.divide_no_nan(loss, divisor))


def _apply_mask(sample_weight: Any, mask: Any, dtype: Any, reduction: str) -> Any:
    """Keras's ``apply_mask`` per unit: a unit's valid positions weigh
    ``total_u / valid_u`` for the mean reductions."""
    if mask is None:
        return sample_weight
    if reduction in ("mean", "sum_over_batch_size"):
        total = ops.cast(_unit_size(mask), dtype)
        valid = ops.sum(ops.cast(mask, dtype=dtype), axis=_unit_axes(mask))  # [U], may be 0
        weight = ops.divide_no_nan(total, valid)
        weight = ops.reshape(weight, (-1,) + (1,) * (len(mask.shape) - 1))
        float_mask = ops.where(ops.cast(mask, "bool"), weight, 0)
    else:
        float_mask = ops.cast(mask, dtype=dtype)
    if sample_weight is None:
        return float_mask
    sample_weight = ops.cast(sample_weight, dtype=dtype)
    float_mask, sample_weight = _same_rank(float_mask, sample_weight)
    if keras.backend.backend() == "torch" and not _fits_in_place(sample_weight, float_mask):
        raise _NotDirect  # Keras's in-place ``sample_weight *= float_mask`` fails on torch
    return _multiply(sample_weight, float_mask)


def _fits_in_place(x1: Any, x2: Any) -> bool:
    """Whether each unit's ``x1 *= x2`` keeps ``x1``'s shape (torch's in-place rule)."""
    if len(x2.shape) > len(x1.shape):
        return False
    pairs = zip(reversed(x1.shape[1:]), reversed(x2.shape[1:]), strict=False)
    return all(q == p or q == 1 for p, q in pairs)


def _unit_axes(tensor: Any) -> tuple[int, ...]:
    return tuple(range(1, len(tensor.shape)))


def _unit_size(tensor: Any) -> Any:
    """The number of entries of one unit's tensor ``tensor[u]``."""
    return ops.prod(ops.convert_to_tensor(ops.shape(tensor)[1:], dtype="int32"))


def _same_rank(x1: Any, x2: Any) -> tuple[Any, Any]:
    """Keras's ``squeeze_or_expand_to_same_rank`` on each unit's tensors (the ranks
    compared are the units' own: one less than ``[U, ...]``'s)."""
    rank1, rank2 = len(x1.shape) - 1, len(x2.shape) - 1
    if rank1 == rank2:
        return x1, x2
    if rank1 == rank2 + 1 and x1.shape[-1] == 1:
        if rank2 == 1:
            x2 = ops.expand_dims(x2, axis=-1)
        else:
            x1 = ops.squeeze(x1, axis=-1)
    if rank2 == rank1 + 1 and x2.shape[-1] == 1:
        if rank1 == 1:
            x1 = ops.expand_dims(x1, axis=-1)
        else:
            x2 = ops.squeeze(x2, axis=-1)
    return x1, x2


def _multiply(x1: Any, x2: Any) -> Any:
    """``x1 * x2`` broadcast as each unit's tensors broadcast: the lower-rank one gains
    its leading unit axes after the unit axis, not before it. Shapes a unit's tensors
    could not be broadcast to (Keras would fail on the unit) are left to the mapped
    loss."""
    for p, q in zip(reversed(x1.shape[1:]), reversed(x2.shape[1:]), strict=False):
        if p != q and p != 1 and q != 1:
            raise _NotDirect
    while len(x1.shape) < len(x2.shape):
        x1 = ops.expand_dims(x1, axis=1)
    while len(x2.shape) < len(x1.shape):
        x2 = ops.expand_dims(x2, axis=1)
    return x1 * x2
