"""The DP training step on TensorFlow.

One call of :meth:`TensorFlowDPTrainer.train_step` receives either

* a Poisson batch ``(x, y, sample_weight, mask)`` padded to a fixed capacity, sampled
  rows first (see :mod:`keras_privacy.training.sampling`); it makes exactly one
  optimizer update, processing the sampled rows in chunks when gradient accumulation is
  on; or
* an ordinary ``(x, y, sample_weight)`` batch from a pipeline (``tf.data``, a
  generator, or Keras's shuffled batching); every ``gradient_accumulation_steps``-th call
  makes one update.

In both cases the update is ``(sum of clipped unit gradients + N(0, (sigma C)^2)) / B``
with the noise drawn once per update.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras.src.trainers.data_adapters import data_adapter_utils

from keras_privacy.training.backend.tensorflow.engine import VectorizedEngine
from keras_privacy.training.backend.tensorflow.fast_engine import FastEngine
from keras_privacy.training.engine import ClippedBatch
from keras_privacy.training.optimizers import private_update


class _StepState:
    """Per-model transient state of the DP step. Deliberately not tracked by Keras, so
    nothing here (noise generator state, accumulators) ever reaches a saved model.

    The noise generator lives as long as the model: recompiling or retracing never
    restarts it, so no noise draw is ever repeated (repeated noise could be cancelled
    by differencing two updates).
    """

    def __init__(self, seed: int | None) -> None:
        if seed is None:
            self.noise = tf.random.Generator.from_non_deterministic_state()
        else:
            self.noise = tf.random.Generator.from_seed(seed)
        self.accumulators: list | None = None
        self.accumulated_units = tf.Variable(0.0, trainable=False)
        self.calls = tf.Variable(0, dtype="int64", trainable=False)

    def ensure_accumulators(self, trainable_variables: list) -> None:
        shapes = [tuple(v.shape) for v in trainable_variables]
        if self.accumulators is None or [tuple(a.shape) for a in self.accumulators] != shapes:
            self.accumulators = [
                tf.Variable(tf.zeros(shape, "float32"), trainable=False) for shape in shapes
            ]
            self.accumulated_units.assign(0.0)
            self.calls.assign(0)


def _rows(data: Any, start: Any, stop: Any) -> Any:
    return keras.tree.map_structure(lambda t: None if t is None else t[start:stop], data)


class TensorFlowDPTrainer:
    """Mixin for ``keras.Model`` subclasses on the TensorFlow backend (placed first in
    the bases): replaces ``train_step`` with the DP step."""

    _dp_engine = VectorizedEngine()  # the reference engine (engine="vectorized")
    _dp_engines = {
        "vectorized": _dp_engine,
        "fast": FastEngine(require=True),
        "auto": FastEngine(require=False),
    }

    def make_train_function(self, force: bool = False):
        config = self._dp_require_config()
        with tf.init_scope():
            if self._dp_step_state is None:
                seed = None if config.seed is None else config.seed + 1
                self._dp_step_state = _StepState(seed)
            if config.gradient_accumulation_steps > 1:
                self._dp_step_state.ensure_accumulators(self.trainable_variables)
        return super().make_train_function(force=force)

    # -- the step ---------------------------------------------------------------------

    def train_step(self, data):
        config = self._dp_require_config()
        if isinstance(data, (tuple, list)) and len(data) == 4:
            return self._dp_poisson_step(*data)
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        return self._dp_fixed_batch_step(x, y, sample_weight, config)

    @property
    def dp_engine_used(self) -> str | None:
        """The clipping engine the last traced DP step used (``"fast"`` or
        ``"vectorized"``), or ``None`` before training."""
        used = getattr(self, "_dp_engine_used", None)
        return None if used is None else used[0]

    def _dp_clipped(self, x, y, sample_weight, num_units, unit_offset=0) -> ClippedBatch:
        choice = self._dp_settings.get("engine", "auto")
        if choice == "vectorized":
            object.__setattr__(self, "_dp_engine_used", ("vectorized", "engine='vectorized'"))
        engine = self._dp_engines[choice]
        return engine.clipped_gradient_sum(
            self,
            x,
            y,
            sample_weight,
            num_units=num_units,
            l2_norm_clip=self._dp_config.l2_norm_clip,
            unit_offset=unit_offset,
        )

    def _dp_poisson_step(self, x, y, sample_weight, mask):
        """One optimizer update from one padded Poisson batch (per-example clipping)."""
        sampled = tf.cast(tf.reduce_sum(mask), "int32")
        data = _rows((x, y, sample_weight), 0, sampled)
        chunk = self._dp_chunk_size  # rows per vectorized pass, or None for all at once

        if chunk is None:
            batch = self._dp_clipped(*data, num_units=None)
            grad_sum, unit_losses, y_pred = batch.grad_sum, batch.unit_losses, batch.y_pred
        else:
            # Gradient accumulation: the sampled rows in chunks of `chunk`, one vectorized
            # pass each; the first chunk runs before the loop to fix the output structure.
            first = self._dp_clipped(*_rows(data, 0, tf.minimum(chunk, sampled)), num_units=None)

            def new_array(_):
                return tf.TensorArray("float32", size=0, dynamic_size=True, infer_shape=False)

            def body(i, sums, losses, preds):
                start = i * chunk
                part = _rows(data, start, tf.minimum(start + chunk, sampled))
                batch = self._dp_clipped(*part, num_units=None, unit_offset=start)
                sums = [s + g for s, g in zip(sums, batch.grad_sum, strict=True)]
                losses = losses.write(i, batch.unit_losses)
                preds = keras.tree.map_structure(
                    lambda ta, p: ta.write(i, tf.cast(p, "float32")), preds, batch.y_pred
                )
                return i + 1, sums, losses, preds

            losses = new_array(None).write(0, first.unit_losses)
            preds = keras.tree.map_structure(
                lambda p: new_array(None).write(0, tf.cast(p, "float32")), first.y_pred
            )
            _, grad_sum, losses, preds = tf.while_loop(
                lambda i, *_: i * chunk < sampled,
                body,
                (tf.constant(1), first.grad_sum, losses, preds),
            )
            unit_losses = losses.concat()
            y_pred = keras.tree.map_structure(lambda ta: ta.concat(), preds)

        self._dp_apply(grad_sum, self._dp_expected_units)
        return self._dp_metrics(data, y_pred, unit_losses, sampled)

    def _dp_fixed_batch_step(self, x, y, sample_weight, config):
        rows = tf.shape(keras.tree.flatten(x)[0])[0]
        batch = self._dp_clipped(x, y, sample_weight, num_units=config.num_microbatches)
        # The public divisor: microbatches per batch, the configured batch size, or (for
        # train_on_batch and generators of unknown batch size) the caller's batch.
        if config.num_microbatches:
            units = float(config.num_microbatches)
        elif self._dp_expected_units is not None:
            units = self._dp_expected_units
        else:
            units = rows
        units = tf.cast(units, "float32")
        state = self._dp_step_state
        if config.gradient_accumulation_steps == 1:
            self._dp_apply(batch.grad_sum, units)
        else:
            for acc, g in zip(state.accumulators, batch.grad_sum, strict=True):
                acc.assign_add(g)
            state.accumulated_units.assign_add(units)
            state.calls.assign_add(1)

            def update():
                self._dp_apply([a.value() for a in state.accumulators], state.accumulated_units)
                for acc in state.accumulators:
                    acc.assign(tf.zeros_like(acc))
                state.accumulated_units.assign(0.0)
                return tf.constant(True)

            tf.cond(
                state.calls % config.gradient_accumulation_steps == 0,
                update,
                lambda: tf.constant(False),
            )
        return self._dp_metrics((x, y, sample_weight), batch.y_pred, batch.unit_losses, rows)

    def _dp_apply(self, grad_sum: list, denominator: Any) -> None:
        """Add N(0, (sigma C)^2) to the clipped sum once, divide by B, update."""
        config = self._dp_config
        noise = self._dp_step_state.noise
        variables = self.trainable_variables
        grads = []
        for g, v in zip(grad_sum, variables, strict=True):
            if config.noise_multiplier > 0:
                g = g + noise.normal(tf.shape(g), stddev=config.noise_stddev, dtype="float32")
            grads.append(tf.cast(g / tf.cast(denominator, "float32"), v.dtype))
        optimizer = self.optimizer
        # A LossScaleOptimizer would unscale gradients we never scaled: the DP gradient
        # is computed, clipped and noised in float32 without loss scaling.
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        with private_update():
            optimizer.apply(grads, variables)

    def _dp_metrics(self, data, y_pred, unit_losses, rows):
        x, y, sample_weight = data
        finite = tf.math.is_finite(unit_losses)
        count = tf.reduce_sum(tf.cast(finite, "float32"))
        mean_loss = tf.math.divide_no_nan(tf.reduce_sum(tf.where(finite, unit_losses, 0.0)), count)
        self._loss_tracker.update_state(mean_loss, sample_weight=tf.cast(rows, "float32"))
        if not self._dp_user_sample_weight:
            sample_weight = None
        compile_loss = self._compile_loss
        if compile_loss is not None and compile_loss.metrics:
            # Multi-output models log each output's loss through trackers that the
            # per-unit (stateless) passes cannot update; one batched loss call does it.
            compile_loss(y, y_pred, sample_weight)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
