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
from keras_privacy.training.clipping import unclipped_count
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.fast.engine import engine_table
from keras_privacy.training.noise import (
    gaussians_from_uniforms,
    pairs_needed,
    secure_standard_normals,
    split_noise,
)
from keras_privacy.training.sampling import PoissonBatches, ShuffledPasses
from keras_privacy.training.sparsity import (
    SparseRows,
    coalesce_counts,
    false_positive_ids,
    in_id_order,
    per_table,
    selected_values,
    sparse_tables,
    touched_selection,
)
from keras_privacy.training.step import (
    COUNTERS,
    DPTrainerBase,
    adapted_clip,
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

    Under a ``MirroredStrategy`` (``strategy``) the variables are mirrored: the key and
    the counters are the same on every replica (initialised from the first replica's
    values), and only the first replica's writes count (``ONLY_FIRST_REPLICA``), so every
    replica draws the same noise and an update is counted once.
    """

    def __init__(self, seed: int | None, strategy: Any = None) -> None:
        self.strategy = strategy
        # Lifted out of any trace in progress: the variables outlive the traced step.
        with tf.init_scope(), (strategy or tf.distribute.get_strategy()).scope():

            def variable(value):
                return tf.Variable(
                    value,
                    dtype="int64",
                    trainable=False,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )

            base = secrets.randbits(62) if seed is None else seed + 1
            self.noise_key = variable([base, 0])
            self.uniforms = _uniform_sampler()
            self.updates = variable(0)
            self.largest_batch = variable(0)
            self.largest_unit = variable(0)
            self.examples = variable(0)

    def start_adaptive_clip(self, initial: float) -> None:
        with tf.init_scope():
            self.clip = tf.Variable(float(initial), dtype="float32", trainable=False)

    def clip_value(self) -> Any:
        return self.clip

    def reset_segment(self) -> None:
        self.largest_batch.assign(0)
        self.largest_unit.assign(0)

    def counters(self) -> dict[str, int]:
        """The counters as Python ints."""
        return {name: int(getattr(self, name).numpy()) for name in COUNTERS}


def _sorted_segment_sum(data: Any, segments: Any, slots: Any) -> Any:
    """``[slots, ...]``: ``data`` summed by its sorted ``segments`` (TensorFlow's sorted
    kernel, 2-3x faster than ``unsorted_segment_sum`` on 16,000 rows of 64), padded with
    zero rows to ``slots``."""
    part = tf.math.segment_sum(data, segments)
    missing = tf.cast(slots, "int32") - tf.shape(part)[0]
    return tf.pad(part, [[0, missing]] + [[0, 0]] * (data.shape.rank - 1))


def _private_rows(
    rows: SparseRows, variable: Any, config: Any, key: Any, tables: int
) -> tf.IndexedSlices:
    """Sparsity-preserving DP-SGD on one table (:mod:`keras_privacy.training.sparsity`):
    the selected rows' clipped sums plus N(0, (sigma C)^2), as ``tf.IndexedSlices``
    (rows outside the selection are not in it: the optimizer leaves them alone)."""
    spec = per_table(config.sparsity_preserving, tables)  # sqrt(K) sigma_s c0 on counts
    vocabulary, dim = (int(d) for d in variable.shape)
    # One pass of the engine (no accumulation) gives the rows in id order: not sorted
    # again, and checked (a step with rows out of order fails instead of leaving equal
    # ids in separate slots).
    in_order = config.gradient_accumulation_steps == 1
    if in_order:
        check = tf.debugging.Assert(
            in_id_order(rows.ids), ["sparsity_preserving: a table's rows are not in id order"]
        )
        with tf.control_dependencies([check]):
            rows = SparseRows(*(tf.identity(t) for t in rows))
    ids, counts, slot_values, segment = coalesce_counts(
        rows, _sorted_segment_sum, in_order=in_order
    )
    seeds = [key + tf.constant([0, k * 2**50], "int64") for k in range(3)]
    normals = tf.random.stateless_normal(tf.shape(counts), seeds[0], alg="philox")
    selected = touched_selection(SparseRows(ids, None, counts), spec, normals)
    uniforms = tf.random.stateless_uniform([vocabulary], seeds[1], alg="philox")
    extra = false_positive_ids(ids, spec, uniforms, vocabulary, tf.boolean_mask)
    # Only the selected rows' clipped sums are summed (most touched rows are not).
    picked = selected_values(slot_values, segment, selected, tf.boolean_mask, tf.math.segment_sum)
    ids = tf.concat([tf.boolean_mask(ids, selected), extra], axis=0)
    values = tf.concat([picked, tf.zeros([tf.shape(extra)[0], dim])], axis=0)
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


def _replica_context() -> Any:
    """The replica context of a step run by a ``MirroredStrategy`` or a
    ``MultiWorkerMirroredStrategy`` on several replicas,
    else ``None`` (one device: nothing to all-reduce)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


class TensorFlowDPTrainer(DPTrainerBase):
    """Mixin for ``keras.Model`` subclasses on the TensorFlow backend (placed first in
    the bases): replaces ``train_step`` with the DP step."""

    _dp_engines = engine_table(FastEngine)
    _dp_engine = _dp_engines["vectorized"]  # the reference engine
    _dp_step_state_class = _StepState

    # -- state shared with the backend-neutral model ----------------------------------

    def _dp_state(self) -> _StepState:
        """The step state, its variables created under the model's strategy (mirrored
        across replicas under a ``MirroredStrategy``); a model cannot move to another."""
        strategy = self.distribute_strategy
        state = self._dp_step_state
        if state is None:
            config = self._dp_require_config()
            state = _StepState(config.seed, strategy)
            if config.adaptive_clip is not None:
                state.start_adaptive_clip(self._dp_first_clip())
            self._dp_step_state = state
        elif state.strategy is not strategy:
            raise PrivacyError(
                "This DP model's noise key and counters were created under another "
                "tf.distribute strategy; build, compile and train a model under one "
                "strategy (create it inside strategy.scope())."
            )
        return state

    def make_train_function(self, force: bool = False):
        self._dp_state()
        return super().make_train_function(force=force)

    def _symbolic_build(self, *args, **kwargs):
        # The DP fit builds the model, optimizer and metrics from two real rows before the
        # step is traced (fit_input.py): under a strategy its variables must be its own.
        with self.distribute_strategy.scope():
            return super()._symbolic_build(*args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._dp_distribution.replicas == 1 or iterator is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        # Keras would average the replicas' first batches to get shapes to build from,
        # which fails when the shapes differ (a batch split unevenly across replicas) or
        # there is one device per worker; the first local replica's batch serves as well.
        strategy = self.distribute_strategy
        for _, _, batches in iterator:
            batch = next(batches)
            break
        else:  # pragma: no cover - an empty input
            return None
        local = keras.tree.map_structure(
            lambda v: (
                strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v
            ),
            batch,
        )
        _, mask, _ = split_batch(local, self._dp_config)
        if mask is not None:  # a Poisson batch: the model was built from rows by fit
            local = local[:3]
        return self._symbolic_build(data_batch=local)

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

        def gather(indices, count):
            mask = tf.cast(tf.range(capacity) < count, "float32")
            x, y, sample_weight = keras.tree.map_structure(
                lambda t: None if t is None else tf.gather(t, indices), data
            )
            return x, y, sample_weight * mask, mask

        def stream(context=None):
            draws = tf.data.Dataset.from_generator(
                lambda: sampler.index_blocks(block), output_signature=spec
            )
            return draws.unbatch().map(gather).prefetch(2)

        if self._dp_distribution.workers > 1:
            # Each worker's batches are its own shard's draws, one per update, for its one
            # device: handed to the strategy as they are (no re-sharding, no re-batching).
            self._dp_check_workers_agree(sampler)
            return self.distribute_strategy.distribute_datasets_from_function(stream)
        return stream()

    def _dp_user_stream(self, sampler: Any) -> tf.data.Dataset:
        """A user-level sampler's batches (:class:`~keras_privacy.training.users.
        UserPoissonBatches`) as a ``tf.data`` pipeline: the sampler draws row indices and
        masks, the rows are gathered here (padding rows zeroed, sample weight 0)."""
        block, capacity = 16, sampler.capacity
        data = _tensors(sampler.x, sampler.y, sampler.sample_weight)
        spec = (
            tf.TensorSpec([block, capacity], tf.int32),
            tf.TensorSpec([block, capacity], tf.float32),
        )

        def gather(indices, mask):
            def rows(t):
                if t is None:
                    return None
                real = tf.reshape(mask > 0, [capacity] + [1] * (t.shape.rank - 1))
                picked = tf.gather(t, indices)
                return tf.where(real, picked, tf.zeros_like(picked))

            x, y, sample_weight = keras.tree.map_structure(rows, data)
            return x, y, sample_weight * mask, mask

        draws = tf.data.Dataset.from_generator(
            lambda: sampler.index_blocks(block), output_signature=spec
        )
        return draws.unbatch().map(gather).prefetch(2)

    def _dp_check_workers_agree(self, sampler: PoissonBatches) -> None:
        """Multi-worker: refuse unless every worker has the same N, expected batch and
        capacity (one all-reduce): the sampling rate and the record are global figures."""
        figures = tf.constant(
            [sampler.dataset_size, sampler.expected_batch_size, sampler.capacity], "float64"
        )
        strategy = self.distribute_strategy

        def sums():
            context = tf.distribute.get_replica_context()
            return context.all_reduce("sum", figures), context.all_reduce("sum", figures**2)

        total, squares = (
            strategy.experimental_local_results(v)[0] for v in strategy.run(tf.function(sums))
        )
        workers = float(self._dp_distribution.workers)
        # All equal exactly when the variance across workers is 0: W * sum(v^2) = sum(v)^2.
        if not bool(tf.reduce_all(tf.abs(workers * squares - total**2) < 0.5)):
            raise PrivacyError(
                "The workers of a multi-worker DP fit disagree on the number of examples N or "
                f"the batch size (this worker: N={sampler.dataset_size}, batch_size="
                f"{sampler.expected_batch_size}). Give every worker all N rows and the same "
                "global batch_size: each samples its own shard with q = batch_size / N."
            )

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
        """One DP update from one logical batch, or -- under a ``MirroredStrategy``, which
        runs this on each of R replicas with an equal shard of the batch -- from this
        replica's shard: the shards' clipped sums (and row counts) are all-reduced before
        the noise, so each replica holds the same global clipped sum ``S``."""
        config = self._dp_require_config()
        data, mask, num_units = split_batch(data, config, self._dp_user_rows)
        row_mask = None
        if self._dp_user_rows and mask is not None:
            # User-level: every user's block of k rows is one unit (padding users and rows
            # have sample weight 0: their gradient is 0, or non-finite and clipped to 0).
            rows, row_mask = tf.cast(tf.reduce_sum(mask), "int32"), mask
        elif mask is not None:  # a Poisson batch (or a replica's shard): sampled rows first
            rows = tf.cast(tf.reduce_sum(mask), "int32")
            data = rows_of(data, 0, rows)
        else:
            rows = tf.shape(keras.tree.flatten(data[0])[0])[0]
        poisson = mask is not None
        replica = _replica_context()
        global_rows = rows if replica is None else replica.all_reduce("sum", rows)
        divisor = public_divisor(config, self._dp_expected_units, global_rows, poisson=poisson)
        clip = self._dp_clip()  # the fixed clip, or C_t read before the update
        if config.adaptive_clip is not None:
            clip = tf.convert_to_tensor(clip, "float32")
        grad_sum, unit_losses, y_pred, chunk, unclipped = self._dp_clipped_logical_batch(
            data, rows, num_units, config.gradient_accumulation_steps, clip
        )
        if replica is not None:  # every example was clipped once, on its own replica
            grad_sum = replica.all_reduce("sum", grad_sum)
        regularization_loss = self._dp_apply(grad_sum, divisor, clip, unclipped, rows, replica)
        state = self._dp_step_state
        global_rows = tf.cast(global_rows, "int64")
        state.largest_batch.assign(tf.maximum(state.largest_batch, global_rows))
        state.examples.assign_add(global_rows)
        unit = tf.cast(unit_size(num_units, chunk, rows), "int64")
        state.largest_unit.assign(tf.maximum(state.largest_unit, unit))
        logs = dp_metrics(self, data, y_pred, unit_losses, rows, row_mask, regularization_loss)
        if config.adaptive_clip is not None:
            logs = {**logs, "l2_norm_clip": clip}
        if self._dp_distribution.workers > 1:
            # Keras reduces multi-worker logs with reduce("MEAN", v, axis=0), which fails
            # for scalars: as [1] tensors they reduce to the scalar mean over replicas.
            logs = keras.tree.map_structure(lambda t: tf.reshape(t, [1]), logs)
        return logs

    def _dp_clipped_logical_batch(self, data, rows, num_units, accumulation_steps, clip):
        """The clipped sum of one logical batch (clip ``clip``), in chunks when accumulating.

        Returns the summed clipped gradients, each unit's loss, the outputs, the chunk
        size (rows per vectorized pass) and the number of units the clip left whole.
        """
        chunk = self._dp_chunk_size  # rows per chunk for arrays, or None
        if accumulation_steps == 1:
            batch = self._dp_clipped(*data, num_units=num_units)
            unclipped = unclipped_count(batch.norms, clip)
            return batch.grad_sum, batch.unit_losses, batch.y_pred, rows, unclipped
        # Arrays: batch_size rows; a pipeline / train_on_batch batch: n nearly equal chunks.
        chunk = tf.cast(chunk_rows(chunk, rows, accumulation_steps), "int32")
        # The first chunk runs before the loop to fix the output structure.
        first = self._dp_clipped(*rows_of(data, 0, tf.minimum(chunk, rows)), num_units=num_units)

        def new_array():
            return tf.TensorArray("float32", size=0, dynamic_size=True, infer_shape=False)

        def body(i, sums, losses, preds, unclipped):
            start = i * chunk
            part = rows_of(data, start, tf.minimum(start + chunk, rows))
            units_before = start if num_units is None else i * num_units
            batch = self._dp_clipped(*part, num_units=num_units, unit_offset=units_before)
            sums = [s + g for s, g in zip(sums, batch.grad_sum, strict=True)]
            unclipped = unclipped + unclipped_count(batch.norms, clip)
            losses = losses.write(i, batch.unit_losses)
            preds = keras.tree.map_structure(
                lambda ta, p: ta.write(i, tf.cast(p, "float32")), preds, batch.y_pred
            )
            return i + 1, sums, losses, preds, unclipped

        losses = new_array().write(0, first.unit_losses)
        preds = keras.tree.map_structure(
            lambda p: new_array().write(0, tf.cast(p, "float32")), first.y_pred
        )
        _, grad_sum, losses, preds, unclipped = tf.while_loop(
            lambda i, *_: i * chunk < rows,
            body,
            (tf.constant(1), first.grad_sum, losses, preds, unclipped_count(first.norms, clip)),
        )
        y_pred = keras.tree.map_structure(lambda ta: ta.concat(), preds)
        return grad_sum, losses.concat(), y_pred, chunk, unclipped

    def _dp_gaussians(self, pairs: int, stddev: Any, count_stddev: float | None) -> tuple:
        """``2 pairs`` N(0, stddev^2) numbers (``None`` for no pairs) and, with a
        ``count_stddev``, one N(0, count_stddev^2) for adaptive clipping's count.

        Default: ThreeFry uniforms at the model's key ``(seed, n)``, made Gaussian by
        Box-Muller (keras_privacy.training.noise: 2-3x faster than Generator.normal on
        CPU). ``secure_noise``: fresh OS-CSPRNG normals
        (:func:`~keras_privacy.training.noise.secure_standard_normals`), on the host."""
        extra = 0 if count_stddev is None else 1
        if self._dp_config.secure_noise:
            total = 2 * pairs + extra
            normals = tf.numpy_function(
                secure_standard_normals, [tf.constant(total, "int64")], tf.float32, stateful=True
            )
            normals = tf.reshape(normals, [total])
            flat = normals[: 2 * pairs] * stddev if pairs else None
            return flat, (normals[2 * pairs] * count_stddev if extra else None)
        state = self._dp_step_state
        # Read, then advance (mirrored: every replica reads the same key).
        key = state.noise_key.read_value() + tf.constant([0, 1], "int64")
        state.noise_key.assign(key)
        uniforms = state.uniforms(key, pairs + extra)
        flat = None
        if pairs:
            flat = gaussians_from_uniforms(uniforms[:, :pairs] if extra else uniforms, stddev)
        if not extra:
            return flat, None
        return flat, gaussians_from_uniforms(uniforms[:, pairs:], count_stddev)[0]

    def _dp_apply(
        self,
        grad_sum: list,
        denominator: Any,
        clip: Any,
        unclipped: Any,
        units: Any,
        replica: Any = None,
    ) -> Any:
        """Add N(0, (sigma C)^2) to the clipped sum once, divide by B, add the weight
        regularizers' gradient (data-independent: after noising, at full strength), update,
        count; with adaptive clipping (``sigma_g C_t`` noise) also noise the unclipped
        count and advance the clip. Returns the regularization loss ``R(w)`` before the
        update.

        Under a ``MirroredStrategy`` (``replica``) every replica holds the same ``S``
        and draws the same noise (the mirrored key), so each computes the same ``g``; the
        optimizer's all-reduce then sums the R replicas' gradients, so each passes
        ``g / R``: the update is ``g``, its noise ``N(0, (sigma C / B)^2)`` exactly once."""
        config = self._dp_config
        variables = self.trainable_variables
        adaptive = config.adaptive_clip is not None
        # Sparsity-preserving tables (never with adaptive clipping, secure noise or several
        # replicas: refused at set-up) are noised on their selected rows only, below.
        tables = sparse_tables(config, grad_sum)
        dense = [i for i in range(len(grad_sum)) if i not in tables]
        grad_sum = list(grad_sum)
        if (config.noise_multiplier > 0 and dense) or adaptive:
            # One draw for the whole update (adaptive clipping's count takes one more pair).
            shapes = [tuple(variables[i].shape) for i in dense]
            pairs = pairs_needed([math.prod(s) for s in shapes])
            if config.gradient_noise_multiplier == 0:
                pairs = 0
            count_stddev = float(config.adaptive_clip.clipped_count_stddev) if adaptive else None
            stddev = config.gradient_noise_multiplier * clip
            flat, count_noise = self._dp_gaussians(pairs, stddev, count_stddev)
            if pairs:
                for i, n in zip(dense, split_noise(flat, shapes), strict=True):
                    grad_sum[i] = grad_sum[i] + n
            if adaptive:
                self._dp_step_state.clip.assign(
                    adapted_clip(config, clip, unclipped, units, count_noise, denominator)
                )
        divisor = tf.cast(denominator, "float32")
        grads = []
        if tables:
            key = self._dp_step_state.noise_key.assign_add(tf.constant([0, 1], "int64"))
        for i, g in enumerate(grad_sum):
            if i in tables:
                # Derived keys, never equal to a dense draw's (those are (seed, n)).
                table_key = key + tf.constant([0, 2**62 + tables.index(i) * 2**56], "int64")
                g = _private_rows(g, variables[i], config, table_key, len(tables))
                grads.append(tf.IndexedSlices(g.values / divisor, g.indices, g.dense_shape))
            else:
                grads.append(g / divisor)
        regularization_loss = apply_private_update(
            self,
            grads,
            [v.value for v in variables],
            _value_and_grad,
            replicas=1 if replica is None else replica.num_replicas_in_sync,
        )
        # Counted here, where the noise is added: the accountant's events are these.
        self._dp_step_state.updates.assign_add(1)
        return regularization_loss
