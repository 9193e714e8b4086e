"""Backend-neutral pieces of the DP training step (``keras.ops``), shared by every backend's
trainer (``keras_privacy/training/backend/<name>/trainer.py``).

One call of a DP ``train_step`` makes one optimizer update from one logical batch::

    g = ( sum_u clip_C(grad_u) + N(0, (sigma C)^2 I) ) / B  +  grad R(w)

where ``grad_u`` is the gradient of unit ``u``'s loss without the weight-regularization
terms and ``R`` the sum of the weight regularizers, which depend on no data and are added
after clipping and noising (:mod:`keras_privacy.training.regularization`). The noise is
drawn once per update, and nothing of a call carries over to the next. A logical batch is

* a Poisson batch ``(x, y, sample_weight, mask)`` padded to a fixed capacity, sampled
  rows first (see :mod:`keras_privacy.training.sampling`); or
* an ordinary ``(x, y, sample_weight)`` batch: Keras's shuffled batching of arrays
  (``sampling="shuffle"``, batches of ``batch_size x gradient_accumulation_steps`` rows),
  one batch of a pipeline (``tf.data``, a generator), or a ``train_on_batch`` batch.

With ``gradient_accumulation_steps = n > 1`` the logical batch is processed in chunks
(``batch_size`` rows each for arrays; ``ceil(rows / n)`` rows for a pipeline batch) to
bound memory, and their clipped sums are added before the single noise draw. Because an
update never holds more than one logical batch, it can never span an epoch, a pass over
the data or a ``fit`` call: each example is in it at most once.

The backends differ in how they compute ``sum_u clip_C(grad_u)`` and draw the noise; what
is the same everywhere lives here: the public divisor ``B`` (:func:`public_divisor`), the
rows per chunk under gradient accumulation (:func:`chunk_rows`), the largest clipping unit
(:func:`unit_size`), the training metrics (:func:`dp_metrics`), the optimizer update
after noising (:func:`apply_private_update`) and the trainer methods that need no backend
primitive (:class:`DPTrainerBase`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops
from keras.src.trainers.data_adapters import data_adapter_utils

from keras_privacy.training import clipping
from keras_privacy.training.config import DPConfig
from keras_privacy.training.optimizers import private_update
from keras_privacy.training.regularization import add_regularization_gradient
from keras_privacy.training.users import clip_per_row

#: The counters every backend's DP step keeps in its per-model step state (read as Python
#: ints by ``_dp_counters``): ``updates``, the noised optimizer updates over the model's
#: life (counted where the noise is added: the accountant's events are these);
#: ``largest_batch`` and ``largest_unit``, the most examples one update and one clipping
#: unit held since the current record segment began; ``examples``, the rows trained on.
#: Only the DP step advances them: resetting ``optimizer.iterations``, restoring a
#: checkpoint or interrupting ``fit`` cannot rewind them. The step state is deliberately
#: not tracked by Keras, so nothing of it reaches a saved model or is restored by
#: ``load_weights``.
COUNTERS = ("updates", "largest_batch", "largest_unit", "examples")


class DPTrainerBase:
    """What every backend's DP trainer mixin (``backend/<name>/trainer.py``) shares.

    A backend sets ``_dp_engines`` (``"vectorized"``, ``"fast"``, ``"auto"`` -> engine) and
    ``_dp_step_state_class``, its per-model step state (noise generator and counters):
    ``cls(seed)`` from the DP ``seed`` (or ``None``), with ``counters()`` (:data:`COUNTERS`
    as Python ints) and ``reset_segment()`` (zero the segment's maxima); for adaptive
    clipping also ``start_adaptive_clip(initial)`` (the clip ``C_t`` becomes state that
    only the step advances) and ``clip_value()`` (``C_t`` as the backend's scalar).
    """

    _dp_engines: dict
    _dp_step_state_class: type

    def _dp_state(self) -> Any:
        """The model's step state, created on first use."""
        if self._dp_step_state is None:
            config = self._dp_require_config()
            state = self._dp_step_state_class(config.seed)
            if config.adaptive_clip is not None:
                state.start_adaptive_clip(self._dp_first_clip())
            self._dp_step_state = state
        return self._dp_step_state

    def _dp_first_clip(self) -> float:
        """Adaptive clipping's ``C_0``: a reloaded model's saved ``C_t``, else ``initial``."""
        resume = getattr(self, "_dp_resume_clip", None)
        return self._dp_require_config().adaptive_clip.initial if resume is None else resume

    def _dp_clip(self) -> Any:
        """The clip the next update uses: the fixed ``l2_norm_clip``, or with adaptive
        clipping the step state's current ``C_t`` (a backend scalar, read at run time)."""
        config = self._dp_require_config()
        if config.adaptive_clip is None:
            if self._dp_user_rows:  # user-level: the blocks' mean gradients, C / k
                return clip_per_row(config.l2_norm_clip, self._dp_user_rows)
            return config.l2_norm_clip
        return self._dp_state().clip_value()

    @property
    def dp_current_clip(self) -> float | None:
        """The clip the next update will use (``None`` before training with an adaptive
        clip; the fixed ``l2_norm_clip`` otherwise)."""
        config = self._dp_require_config()
        if config.adaptive_clip is None:
            return config.l2_norm_clip
        if self._dp_step_state is None:
            return getattr(self, "_dp_resume_clip", None)
        return float(self._dp_step_state.clip_value())

    def _dp_reset_segment_counters(self) -> None:
        self._dp_state().reset_segment()

    @property
    def dp_engine_used(self) -> str | None:
        """The clipping engine the last (traced or compiled) DP step used (``"fast"`` or
        ``"vectorized"``), or ``None`` before training."""
        used = getattr(self, "_dp_engine_used", None)
        return None if used is None else used[0]

    def _dp_counters(self) -> dict[str, int]:
        """What the DP step has done, as Python ints (zeros before any training)."""
        state = self._dp_step_state
        if state is None:
            return dict.fromkeys(COUNTERS, 0)
        return state.counters()

    def _dp_engine_for_step(self) -> Any:
        """The engine that ``engine=`` names (``model._dp_engine_used`` is set here for
        ``"vectorized"``; the fast engines record their own choice per batch)."""
        choice = self._dp_settings.get("engine", "auto")
        if choice == "vectorized":
            object.__setattr__(self, "_dp_engine_used", ("vectorized", "engine='vectorized'"))
        return self._dp_engines[choice]

    def _dp_clipped(
        self, x: Any, y: Any, sample_weight: Any, num_units: int | None, unit_offset: Any = 0
    ) -> Any:
        """The engine's :class:`~keras_privacy.training.engine.ClippedBatch` for a batch at
        the current weights (TensorFlow, PyTorch; the JAX trainer passes values)."""
        return self._dp_engine_for_step().clipped_gradient_sum(
            self,
            x,
            y,
            sample_weight,
            num_units=num_units,
            l2_norm_clip=self._dp_clip(),
            unit_offset=unit_offset,
        )


def adapted_clip(
    config: DPConfig, clip: Any, unclipped: Any, units: Any, count_noise: Any, divisor: Any
) -> Any:
    """The clip after an update that clipped at ``clip``: ``unclipped`` of its ``units``
    examples had norm <= ``clip``, ``count_noise`` ~ N(0, s^2) was drawn by the backend
    with the update's noise (:func:`~keras_privacy.training.clipping.next_adaptive_clip`)."""
    adaptive = config.adaptive_clip
    return clipping.next_adaptive_clip(
        clip,
        unclipped,
        units,
        count_noise,
        divisor,
        float(adaptive.target_quantile),
        float(adaptive.learning_rate),
    )


def rows_of(data: Any, start: Any, stop: Any) -> Any:
    """Rows ``start:stop`` of every tensor in the nest ``data`` (``None`` stays ``None``)."""
    return keras.tree.map_structure(lambda t: None if t is None else t[start:stop], data)


def apply_private_update(
    model: Any,
    grads: list,
    values: list,
    value_and_grad: Callable[[Callable, list], tuple[Any, list]],
    replicas: int = 1,
) -> Any:
    """Apply ``g + grad R(w)`` with the model's optimizer, where ``grads`` are the noised,
    divided gradients ``g`` (float32) and ``R`` the weight regularizers' loss at the
    trainable values ``values`` (data-independent: added after noising, at full strength,
    :func:`~keras_privacy.training.regularization.add_regularization_gradient`, with the
    backend's ``value_and_grad``). Each gradient is cast to its variable's dtype. A
    ``LossScaleOptimizer`` would unscale gradients that were never scaled (the DP gradient
    is computed, clipped and noised in float32 without loss scaling): its inner optimizer
    applies them. Returns ``R(w)`` before the update.

    ``replicas`` = R > 1: this is one of R replicas that all hold the same ``g + grad R(w)``
    and whose optimizer sums the replicas' gradients (TensorFlow's ``MirroredStrategy``):
    each passes ``(g + grad R(w)) / R``, so the update is applied once.
    """
    variables = model.trainable_variables
    grads, regularization_loss = add_regularization_gradient(model, grads, values, value_and_grad)
    if replicas > 1:
        grads = [g / float(replicas) for g in grads]
    grads = [ops.cast(g, v.dtype) for g, v in zip(grads, variables, strict=True)]
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    with private_update():
        optimizer.apply(grads, variables)
    return regularization_loss


def split_batch(
    data: Any, config: DPConfig, user_rows: int | None = None
) -> tuple[tuple, Any, int | None]:
    """A DP step's batch as ``((x, y, sample_weight), mask, num_units)``.

    A padded Poisson batch ``(x, y, sample_weight, mask)`` keeps its 0/1 row mask (sampled
    rows first) and is clipped per example (``num_units=None``), or with ``user_rows`` = k
    (user-level) in blocks of k rows, one per user (``num_units`` = rows / k); any other
    batch is unpacked as Keras unpacks it (``mask=None``) and clipped in
    ``config.num_microbatches`` units (``None``: per example).
    """
    if isinstance(data, (tuple, list)) and len(data) == 4:
        x, y, sample_weight, mask = data
        if user_rows:
            return (x, y, sample_weight), mask, int(mask.shape[0]) // user_rows
        return (x, y, sample_weight), mask, None
    return data_adapter_utils.unpack_x_y_sample_weight(data), None, config.num_microbatches


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


def mean_user_loss(user_losses: Any, row_mask: Any, user_rows: int) -> Any:
    """The logged loss of a user-level batch: the mean loss per real row,
    ``sum_u k loss_u / rows`` over the users with a finite loss (``loss_u``, the compiled
    loss of user ``u``'s block of ``k`` rows, is their summed loss over ``k``); NaN when
    there are users but none is finite, 0 for an empty batch."""
    per_user_rows = ops.sum(ops.reshape(ops.cast(row_mask, "float32"), (-1, user_rows)), axis=1)
    real = per_user_rows > 0
    keep = ops.logical_and(ops.isfinite(user_losses), real)
    total = ops.sum(ops.where(keep, user_losses, ops.zeros_like(user_losses))) * float(user_rows)
    count = ops.sum(ops.where(keep, per_user_rows, ops.zeros_like(per_user_rows)))
    mean = ops.divide_no_nan(total, count)
    users = ops.sum(ops.cast(real, "float32"))
    return ops.where(ops.logical_and(count == 0, users > 0), float("nan"), mean)


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
    user_rows = getattr(model, "_dp_user_rows", None)
    if user_rows and row_mask is not None:  # user-level: one loss per user's block
        mean_loss = mean_user_loss(unit_losses, row_mask, user_rows)
    else:
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
    "DPTrainerBase",
    "adapted_clip",
    "apply_private_update",
    "chunk_rows",
    "dp_metrics",
    "mean_unit_loss",
    "public_divisor",
    "rows_of",
    "split_batch",
    "unit_size",
]
