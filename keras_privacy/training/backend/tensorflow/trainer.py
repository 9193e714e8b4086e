"""The DP training step on TensorFlow, traced by ``tf.function`` as Keras's own step is.

The update and the logical batches are those of :mod:`keras_privacy.training.step`; the
noise is drawn once per update from a counter-based generator keyed by the model's own
key (:class:`_StepState`), and the step counts what it did (noised updates, the largest
logical batch, the largest clipping unit) in variables only it advances; the model's
privacy record is read from them.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import keras
import tensorflow as tf

from keras_privacy.training.backend.tensorflow.fast_engine import FastEngine
from keras_privacy.training.fast.engine import engine_table
from keras_privacy.training.noise import gaussians_from_uniforms, pairs_needed, split_noise
from keras_privacy.training.sampling import PoissonBatches, ShuffledPasses
from keras_privacy.training.sparsity import (
    SparseRows,
    coalesce,
    false_positive_mask,
    sparse_tables,
    touched_selection,
)
from keras_privacy.training.step import (
    COUNTERS,
    DPTrainerBase,
    apply_private_update,
    chunk_rows,
    dp_metrics,
    public_divisor,
    rows_of,
    split_batch,
    unit_size,
)


@tf.function(jit_compile=True)
def _threefry_uniforms(key, pairs: int):
    """``[2, pairs]`` U[0, 1) float32 numbers from the counter-based ThreeFry generator,
    compiled by XLA: 1.1-1.3 ms for the 670k coordinates of a 784-512-512-10 MLP on one
    CPU core, against 3.2-3.4 ms for TensorFlow's own (Philox) kernel."""
    return tf.random.stateless_uniform((2, pairs), seed=key, alg="threefry")


def _philox_uniforms(key, pairs: int):
    """The same without XLA (TensorFlow's Philox kernel), where XLA is unavailable."""
    return tf.random.stateless_uniform((2, pairs), seed=key, alg="philox")


def _uniform_sampler():
    try:
        _threefry_uniforms(tf.constant([0, 0], "int64"), 1)
    except Exception:  # pragma: no cover - a TensorFlow build without XLA on the CPU
        return _philox_uniforms
    return _threefry_uniforms


class _StepState:
    """Per-model transient state of the DP step: the noise key and, in variables,
    the counters (:data:`~keras_privacy.training.step.COUNTERS`).

    The noise key ``(seed, n)`` lives as long as the model: the n-th update's noise comes
    from the counter-based generator at key ``(seed, n)``, and ``n`` only ever grows, so
    recompiling or retracing never repeats a draw (repeated noise could be cancelled by
    differencing two updates). ``seed`` is the DP ``seed`` + 1 when one is given (tests),
    else 62 bits from the operating system's entropy.
    """

    def __init__(self, seed: int | None) -> None:
        # Lifted out of any trace in progress: the variables outlive the traced step.
        with tf.init_scope():
            base = secrets.randbits(62) if seed is None else seed + 1
            self.noise_key = tf.Variable([base, 0], dtype="int64", trainable=False)
            self.uniforms = _uniform_sampler()
            self.updates = tf.Variable(0, dtype="int64", trainable=False)
            self.largest_batch = tf.Variable(0, dtype="int64", trainable=False)
            self.largest_unit = tf.Variable(0, dtype="int64", trainable=False)
            self.examples = tf.Variable(0, dtype="int64", trainable=False)

    def reset_segment(self) -> None:
        self.largest_batch.assign(0)
        self.largest_unit.assign(0)

    def counters(self) -> dict[str, int]:
        """The counters as Python ints."""
        return {name: int(getattr(self, name).numpy()) for name in COUNTERS}


def _private_rows(rows: SparseRows, variable: Any, config: Any, key: Any) -> tf.IndexedSlices:
    """Sparsity-preserving DP-SGD on one table (:mod:`keras_privacy.training.sparsity`):
    the selected rows' clipped sums plus N(0, (sigma C)^2), as ``tf.IndexedSlices``
    (rows outside the selection are not in it: the optimizer leaves them alone)."""
    spec = config.sparsity_preserving
    vocabulary, dim = (int(d) for d in variable.shape)
    rows = coalesce(rows, lambda d, s, n: tf.math.unsorted_segment_sum(d, s, tf.cast(n, "int32")))
    seeds = [key + tf.constant([0, k * 2**50], "int64") for k in range(3)]
    normals = tf.random.stateless_normal(tf.shape(rows.counts), seeds[0], alg="philox")
    selected = touched_selection(rows, spec, normals)
    uniforms = tf.random.stateless_uniform([vocabulary], seeds[1], alg="philox")
    extra = tf.cast(tf.where(false_positive_mask(rows, spec, uniforms, vocabulary))[:, 0], "int32")
    ids = tf.concat([tf.boolean_mask(rows.ids, selected), extra], axis=0)
    values = tf.concat(
        [tf.boolean_mask(rows.values, selected), tf.zeros([tf.shape(extra)[0], dim])], axis=0
    )
    if config.noise_multiplier > 0:
        values += tf.random.stateless_normal(
            tf.shape(values), seeds[2], stddev=config.noise_stddev, alg="philox"
        )
    return tf.IndexedSlices(values, ids, tf.constant([vocabulary, dim], "int64"))


def _value_and_grad(fn, values: list) -> tuple[Any, list]:
    """``(fn(values), d fn / d values)`` by ``tf.GradientTape`` (zeros where unconnected)."""
    with tf.GradientTape() as tape:
        tape.watch(values)
        value = fn(values)
    grads = tape.gradient(value, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, grads


def _tensors(x: Any, y: Any, sample_weight: Any) -> tuple:
    """In-memory arrays as tensors for a ``tf.data`` pipeline (lists become tuples)."""
    return keras.tree.map_structure(
        lambda a: None if a is None else tf.convert_to_tensor(a),
        keras.tree.lists_to_tuples((x, y, sample_weight)),
    )


class TensorFlowDPTrainer(DPTrainerBase):
    """Mixin for ``keras.Model`` subclasses on the TensorFlow backend (placed first in
    the bases): replaces ``train_step`` with the DP step."""

    _dp_engines = engine_table(FastEngine)
    _dp_engine = _dp_engines["vectorized"]  # the reference engine
    _dp_step_state_class = _StepState

    # -- state shared with the backend-neutral model ----------------------------------

    def make_train_function(self, force: bool = False):
        self._dp_state()
        return super().make_train_function(force=force)

    def _dp_poisson_stream(self, sampler: PoissonBatches) -> tf.data.Dataset:
        """The sampler's Poisson batches as a ``tf.data`` pipeline: the same draws as
        ``iter(sampler)`` (``(x, y, sample_weight, mask)`` padded to the capacity), but
        the sampler only draws indices, 16 batches per Python call, and the rows are
        gathered in the pipeline. Handing Keras a Python generator of padded arrays
        instead cost ~1.6 ms per step on one CPU core (converting each batch)."""
        block, capacity = 16, sampler.capacity
        # tf.data has no lists: lists of inputs or targets (multi-output models) become
        # tuples, as Keras's own array adapter makes them.
        data = _tensors(sampler.x, sampler.y, sampler.sample_weight)
        spec = tf.TensorSpec([block, capacity], tf.int32), tf.TensorSpec([block], tf.int32)
        draws = tf.data.Dataset.from_generator(
            lambda: sampler.index_blocks(block), output_signature=spec
        )

        def gather(indices, count):
            mask = tf.cast(tf.range(capacity) < count, "float32")
            x, y, sample_weight = keras.tree.map_structure(
                lambda t: None if t is None else tf.gather(t, indices), data
            )
            return x, y, sample_weight * mask, mask

        return draws.unbatch().map(gather).prefetch(2)

    def _dp_shuffle_stream(self, passes: ShuffledPasses) -> tf.data.Dataset:
        """``sampling="shuffle"``: the passes' logical batches as one ``tf.data``
        pipeline for the whole ``fit`` (rows gathered in the pipeline). Keras's own array
        pipeline is rebuilt every epoch, and tearing down its iterator (parallel-map
        threads) left the core idle ~0.45 s at every epoch boundary here."""
        data = _tensors(passes.x, passes.y, passes.sample_weight)
        indices = tf.data.Dataset.from_generator(
            passes.index_batches, output_signature=tf.TensorSpec([None], tf.int32)
        )

        def gather(rows):
            batch = keras.tree.map_structure(
                lambda t: None if t is None else tf.gather(t, rows), data
            )
            return tuple(part for part in batch if part is not None)

        return indices.map(gather).prefetch(2)

    # -- the step ---------------------------------------------------------------------

    def train_step(self, data):
        config = self._dp_require_config()
        data, mask, num_units = split_batch(data, config)
        if mask is not None:  # a Poisson batch: sampled rows first
            rows = tf.cast(tf.reduce_sum(mask), "int32")
            data = rows_of(data, 0, rows)
        else:
            rows = tf.shape(keras.tree.flatten(data[0])[0])[0]
        poisson = mask is not None
        divisor = public_divisor(config, self._dp_expected_units, rows, poisson=poisson)
        grad_sum, unit_losses, y_pred, chunk = self._dp_clipped_logical_batch(
            data, rows, num_units, config.gradient_accumulation_steps
        )
        regularization_loss = self._dp_apply(grad_sum, divisor)
        state = self._dp_step_state
        state.largest_batch.assign(tf.maximum(state.largest_batch, tf.cast(rows, "int64")))
        state.examples.assign_add(tf.cast(rows, "int64"))
        unit = tf.cast(unit_size(num_units, chunk, rows), "int64")
        state.largest_unit.assign(tf.maximum(state.largest_unit, unit))
        return dp_metrics(
            self, data, y_pred, unit_losses, rows, regularization_loss=regularization_loss
        )

    def _dp_clipped_logical_batch(self, data, rows, num_units, accumulation_steps):
        """The clipped sum of one logical batch, in chunks when accumulating.

        Returns the summed clipped gradients, each unit's loss, the outputs, and the chunk
        size (rows per vectorized pass).
        """
        chunk = self._dp_chunk_size  # rows per chunk for arrays, or None
        if accumulation_steps == 1:
            batch = self._dp_clipped(*data, num_units=num_units)
            return batch.grad_sum, batch.unit_losses, batch.y_pred, rows
        # Arrays: batch_size rows; a pipeline / train_on_batch batch: n nearly equal chunks.
        chunk = tf.cast(chunk_rows(chunk, rows, accumulation_steps), "int32")
        # The first chunk runs before the loop to fix the output structure.
        first = self._dp_clipped(*rows_of(data, 0, tf.minimum(chunk, rows)), num_units=num_units)

        def new_array():
            return tf.TensorArray("float32", size=0, dynamic_size=True, infer_shape=False)

        def body(i, sums, losses, preds):
            start = i * chunk
            part = rows_of(data, start, tf.minimum(start + chunk, rows))
            units_before = start if num_units is None else i * num_units
            batch = self._dp_clipped(*part, num_units=num_units, unit_offset=units_before)
            sums = [s + g for s, g in zip(sums, batch.grad_sum, strict=True)]
            losses = losses.write(i, batch.unit_losses)
            preds = keras.tree.map_structure(
                lambda ta, p: ta.write(i, tf.cast(p, "float32")), preds, batch.y_pred
            )
            return i + 1, sums, losses, preds

        losses = new_array().write(0, first.unit_losses)
        preds = keras.tree.map_structure(
            lambda p: new_array().write(0, tf.cast(p, "float32")), first.y_pred
        )
        _, grad_sum, losses, preds = tf.while_loop(
            lambda i, *_: i * chunk < rows,
            body,
            (tf.constant(1), first.grad_sum, losses, preds),
        )
        y_pred = keras.tree.map_structure(lambda ta: ta.concat(), preds)
        return grad_sum, losses.concat(), y_pred, chunk

    def _dp_apply(self, grad_sum: list, denominator: Any) -> Any:
        """Add N(0, (sigma C)^2) to the clipped sum once, divide by B, add the weight
        regularizers' gradient (data-independent: after noising, at full strength), update,
        count. Returns the regularization loss ``R(w)`` before the update."""
        config = self._dp_config
        variables = self.trainable_variables
        tables = sparse_tables(config, grad_sum)
        state = self._dp_step_state
        key = state.noise_key.assign_add(tf.constant([0, 1], "int64"))
        dense = [i for i in range(len(grad_sum)) if i not in tables]
        grad_sum = list(grad_sum)
        if config.noise_multiplier > 0 and dense:
            # One draw of uniforms for the whole update, made Gaussian by Box-Muller
            # (keras_privacy.training.noise: 2-3x faster than Generator.normal on CPU).
            shapes = [tuple(variables[i].shape) for i in dense]
            uniforms = state.uniforms(key, pairs_needed([math.prod(s) for s in shapes]))
            flat = gaussians_from_uniforms(uniforms, config.noise_stddev)
            for i, n in zip(dense, split_noise(flat, shapes), strict=True):
                grad_sum[i] = grad_sum[i] + n
        divisor = tf.cast(denominator, "float32")
        grads = []
        for i, g in enumerate(grad_sum):
            if i in tables:
                # Derived keys, never equal to a dense draw's (those are (seed, n)).
                table_key = key + tf.constant([0, 2**62 + tables.index(i) * 2**56], "int64")
                g = _private_rows(g, variables[i], config, table_key)
                grads.append(tf.IndexedSlices(g.values / divisor, g.indices, g.dense_shape))
            else:
                grads.append(g / divisor)
        regularization_loss = apply_private_update(
            self, grads, [v.value for v in variables], _value_and_grad
        )
        # Counted here, where the noise is added: the accountant's events are these.
        self._dp_step_state.updates.assign_add(1)
        return regularization_loss
