"""Backend-neutral pieces of the DP training step (``keras.ops``), shared by every backend's
trainer (``keras_privacy/training/backend/<name>/trainer.py``).

One call of a DP ``train_step`` makes one optimizer update from one logical batch::

    g = ( sum_u clip_C(grad_u) + N(0, (sigma C)^2 I) ) / B  +  grad R(w)

where ``grad_u`` is the gradient of unit ``u``'s loss without the weight-regularization
terms and ``R`` the sum of the weight regularizers, which depend on no data and are added
after clipping and noising (:mod:`keras_privacy.training.regularization`).

The backends differ in how they compute ``sum_u clip_C(grad_u)`` and draw the noise; what
is the same everywhere lives here: the public divisor ``B`` (:func:`public_divisor`), the
rows per chunk under gradient accumulation (:func:`chunk_rows`), the largest clipping unit
(:func:`unit_size`) and the training metrics (:func:`dp_metrics`).
"""

from __future__ import annotations

from typing import Any

from keras import ops

from keras_privacy.training.config import DPConfig

#: The names of the counters every backend's DP step keeps (see ``_dp_counters``).
COUNTERS = ("updates", "largest_batch", "largest_unit", "examples")


def public_divisor(
    config: DPConfig, expected_units: float | None, rows: Any, *, poisson: bool
) -> Any:
    """``B``, the public constant the noised sum is divided by.

    Poisson batches: the expected batch size (never the realised one). Otherwise the
    number of microbatches per update with ``num_microbatches``, the configured batch
    size, or -- for ``train_on_batch`` and pipelines of unknown batch size -- the caller's
    batch (``rows``).
    """
    if poisson:
        return expected_units
    if config.num_microbatches:
        return float(config.num_microbatches * config.gradient_accumulation_steps)
    if expected_units is not None:
        return expected_units
    return rows


def chunk_rows(chunk_size: int | None, rows: Any, accumulation_steps: int) -> Any:
    """Rows per chunk of a logical batch under gradient accumulation: the configured
    ``batch_size`` for arrays, or ``ceil(rows / n)`` for a pipeline / ``train_on_batch``
    batch; at least 1."""
    if chunk_size is None:
        chunk_size = (rows + accumulation_steps - 1) // accumulation_steps
    return ops.maximum(chunk_size, 1) if not isinstance(chunk_size, int) else max(chunk_size, 1)


def unit_size(num_microbatches: int | None, chunk: Any, rows: Any) -> Any:
    """Examples in the largest clipping unit: 1 per example, else rows per microbatch
    (every chunk splits evenly into ``num_microbatches``; the engines check it)."""
    if not num_microbatches:
        return 1
    return ops.minimum(chunk, rows) // num_microbatches


def mean_unit_loss(unit_losses: Any, unit_mask: Any = None) -> Any:
    """The mean of the finite unit losses (of the units in ``unit_mask``), for the logged
    ``loss``: the units that reached the update (a non-finite unit has clip factor 0).
    NaN when there are units but none is finite (as plain Keras would log; the DP model's
    ``fit`` then warns that examples were dropped); 0 for an empty (Poisson) batch."""
    real = ops.ones_like(unit_losses, dtype="bool")
    if unit_mask is not None:
        real = ops.cast(unit_mask, "bool")
    keep = ops.logical_and(ops.isfinite(unit_losses), real)
    count = ops.sum(ops.cast(keep, "float32"))
    total = ops.sum(ops.where(keep, unit_losses, ops.zeros_like(unit_losses)))
    units = ops.sum(ops.cast(real, "float32"))
    mean = ops.divide_no_nan(total, count)
    return ops.where(ops.logical_and(count == 0, units > 0), float("nan"), mean)


def dp_metrics(
    model: Any,
    data: Any,
    y_pred: Any,
    unit_losses: Any,
    rows: Any,
    row_mask: Any = None,
    regularization_loss: Any = None,
) -> dict:
    """Update the model's loss tracker and compiled metrics from one DP step; return logs.

    ``row_mask`` (``[rows]``, 0/1) excludes padding rows of a fixed-capacity Poisson batch:
    they are given sample weight 0 (and their units are left out of the loss mean).
    ``regularization_loss`` (the weight regularizers' ``R(w)``, which the unit losses leave
    out) is added to the logged loss, as Keras logs it. Not private: the logged loss and
    metrics are computed from the training rows without noise.
    """
    x, y, sample_weight = data
    mean_loss = mean_unit_loss(unit_losses, row_mask)
    if regularization_loss is not None:
        mean_loss = mean_loss + ops.cast(regularization_loss, mean_loss.dtype)
    model._loss_tracker.update_state(mean_loss, sample_weight=ops.cast(rows, "float32"))
    if not model._dp_user_sample_weight:
        sample_weight = None
    if row_mask is not None:
        mask = ops.cast(row_mask, "float32")
        sample_weight = mask if sample_weight is None else ops.cast(sample_weight, "float32") * mask
    compile_loss = model._compile_loss
    if compile_loss is not None and compile_loss.metrics:
        # Multi-output models log each output's loss through trackers that the
        # per-unit (stateless) passes cannot update; one batched loss call does it.
        compile_loss(y, y_pred, sample_weight)
    if row_mask is not None and _default_compute_metrics(model):
        _update_compiled_metrics(model, y, y_pred, sample_weight, mask)
        return model.get_metrics_result()
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _default_compute_metrics(model: Any) -> bool:
    import keras

    return getattr(type(model).compute_metrics, "__func__", type(model).compute_metrics) is (
        keras.Model.compute_metrics
    )


def _update_compiled_metrics(
    model: Any, y: Any, y_pred: Any, sample_weight: Any, row_mask: Any
) -> None:
    """Update ``compile(metrics=..., weighted_metrics=...)`` over the real rows only.

    Keras passes ``sample_weight`` to ``weighted_metrics`` but not to ``metrics``, so a
    padded Poisson batch (JAX: fixed capacity, padding rows last) would count its padding
    rows in every unweighted metric. Here each unweighted metric gets the 0/1 row mask as
    its sample weight and each weighted one ``mask * sample_weight``: a metric's weighted
    mean over the capacity then equals its plain mean over the sampled rows.
    """
    metrics = model._compile_metrics
    if metrics is None:
        return
    if not metrics.built:
        metrics.build(y, y_pred)
    y_true = metrics._flatten_y(y)
    y_hat = metrics._flatten_y(y_pred)
    weights = metrics._flatten_y(sample_weight)
    if len(weights) < len(y_true):
        weights = [weights[0] for _ in y_true]
    for m, y_t, y_p in zip(metrics._flat_metrics, y_true, y_hat, strict=False):
        if m:
            m.update_state(y_t, y_p, sample_weight=row_mask)
    weighted = metrics._flat_weighted_metrics
    for m, y_t, y_p, s_w in zip(weighted, y_true, y_hat, weights, strict=False):
        if m:
            m.update_state(y_t, y_p, sample_weight=s_w)


__all__ = [
    "COUNTERS",
    "chunk_rows",
    "dp_metrics",
    "mean_unit_loss",
    "public_divisor",
    "unit_size",
]
