"""The DP training step on JAX, jit-compiled as Keras's own JAX step is.

Keras's JAX trainer is stateless: ``train_step(state, data) -> (logs, new_state)`` with
``state = (trainable, non_trainable, optimizer, metrics)`` values. The DP step adds a
fifth element, the *DP step state*: the noise key and the step's counters. It is threaded
through every step like Keras's seed generators, but it is not a Keras variable: it lives
in an untracked :class:`_StepState` on the model, so nothing of it reaches a saved model
or is restored by ``load_weights``.

Every call makes exactly one optimizer update from one *logical batch*, as
:mod:`keras_privacy.training.step` says, with the noise drawn once, from a key split off
the state's key (never reused: the key lives as long as the model, across
steps, fits and recompiles). Poisson batches arrive padded to a fixed capacity with a 0/1
mask; the step computes over the whole capacity and gives padding rows clip factor 0, so
shapes are static and XLA compiles the step once.

Under ``keras.distribution.DataParallel`` (one process; see
:mod:`keras_privacy.training.distribution`) Keras replicates the variables and shards each
batch along its first axis; this step is unchanged: it is written on the global batch, so
XLA all-reduces the clipped sums, and the replicated key draws one global noise array.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import jax
import jax.numpy as jnp
import keras
from keras.src.backend.common.stateless_scope import StatelessScope

from keras_privacy.training import step as shared
from keras_privacy.training.backend.jax.fast_engine import FastEngine
from keras_privacy.training.backend.jax.noise import add_gaussian_noise
from keras_privacy.training.clipping import unclipped_count
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.fast.engine import engine_table
from keras_privacy.training.noise import secure_standard_normals, split_noise
from keras_privacy.training.optimizers import stateless_private_apply
from keras_privacy.training.regularization import add_regularization_gradient
from keras_privacy.training.sparsity import (
    SparseRows,
    coalesce,
    false_positive_capacity,
    false_positive_mask,
    per_table,
    sparse_tables,
    touched_selection,
)
from keras_privacy.training.users import user_unit_mask


def _private_rows(rows: SparseRows, variable: Any, config: Any, key: Any, tables: int) -> Any:
    """Sparsity-preserving DP-SGD on one table (:mod:`keras_privacy.training.sparsity`):
    the table's noised gradient, nonzero only on the selected rows (the clipped sums of
    the selected touched rows plus N(0, (sigma C)^2), and N(0, (sigma C)^2) alone on the
    false positives). Dense, as JAX's own gradient of a lookup is, but the noise is
    drawn only for the touched slots and for at most ``capacity`` false positives
    (static shapes; see :func:`~keras_privacy.training.sparsity.false_positive_capacity`
    for the probability, below 1e-40 per update, that there are more, and what it
    costs). A ``lax.cond`` to an exact dense branch for that case was measured instead:
    it cost ~0.9 s a step on one core for a 1M x 64 table (XLA copies the table through
    the conditional), which is the whole gain of sparse noise.
    """
    spec = per_table(config.sparsity_preserving, tables)  # sqrt(K) sigma_s c0 on counts
    vocabulary, dim = (int(d) for d in jnp.shape(variable))
    rows = coalesce(rows, lambda d, s, n: jax.ops.segment_sum(d, s, num_segments=n))
    k_count, k_extra, k_noise, k_more = jax.random.split(key, 4)
    normals = jax.random.normal(k_count, rows.counts.shape, "float32")
    selected = touched_selection(rows, spec, normals)
    uniforms = jax.random.uniform(k_extra, (vocabulary,), "float32")
    extra = false_positive_mask(rows, spec, uniforms, vocabulary)
    stddev = config.noise_stddev
    target = jnp.where(selected, rows.ids, vocabulary)
    values = rows.values
    if stddev > 0 and rows.ids.shape[0] >= vocabulary:
        # A small table (no more rows than touched slots): one masked draw over the
        # table is cheaper than noise per slot, and needs no false-positive cap.
        chosen = jnp.zeros((vocabulary + 1,), "bool").at[target].set(True)[:vocabulary]
        with jax.threefry_partitionable(True):
            noise = stddev * jax.random.normal(k_noise, (vocabulary, dim), "float32")
        table = jnp.where((chosen | extra)[:, None], noise, 0.0)
        return table.at[target].add(values, mode="drop")
    if stddev > 0:
        with jax.threefry_partitionable(True):  # ~2x faster on CPU, as for dense noise
            values = values + stddev * jax.random.normal(k_noise, values.shape, "float32")
        capacity = false_positive_capacity(vocabulary, spec.false_positive_probability)
        where = jnp.nonzero(extra, size=capacity, fill_value=vocabulary)[0]
        noise = stddev * jax.random.normal(k_more, (capacity, dim), "float32")
        target = jnp.concatenate([target, where.astype(target.dtype)])
        values = jnp.concatenate([values, noise])
    table = jnp.zeros((vocabulary, dim), "float32")
    return table.at[target].add(values, mode="drop")


class _StepState:
    """Per-model transient state of the DP step (:data:`~keras_privacy.training.step.COUNTERS`).

    ``values`` is what the jit-compiled step reads and returns: ``key`` (a raw uint32[2]
    threefry key, advanced every step) and the counters since they were last read
    (``updates``, ``examples``: int32 deltas; ``largest_batch``, ``largest_unit``: maxima).
    :meth:`counters` folds the deltas into Python integers, so they never overflow.
    """

    def __init__(self, seed: int | None) -> None:
        if seed is None:
            key = jnp.array([secrets.randbits(32), secrets.randbits(32)], dtype="uint32")
        else:
            key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
        zero = jnp.zeros((), "int32")
        self.values = {
            "key": key,
            "updates": zero,
            "examples": zero,
            "largest_batch": zero,
            "largest_unit": zero,
        }
        self.totals = {"updates": 0, "examples": 0}

    def counters(self) -> dict[str, int]:
        for name in self.totals:
            self.totals[name] += int(self.values[name])
            self.values[name] = jnp.zeros((), "int32")
        return {
            "updates": self.totals["updates"],
            "largest_batch": int(self.values["largest_batch"]),
            "largest_unit": int(self.values["largest_unit"]),
            "examples": self.totals["examples"],
        }

    def start_adaptive_clip(self, initial: float) -> None:
        self.values["clip"] = jnp.asarray(initial, "float32")

    def clip_value(self):
        return self.values["clip"]

    def reset_segment(self) -> None:
        self.values["largest_batch"] = jnp.zeros((), "int32")
        self.values["largest_unit"] = jnp.zeros((), "int32")


def _secure_normals(count: int):
    """``count`` N(0, 1) float32 numbers fresh from the OS's CSPRNG, inside the compiled
    step (a host callback: ``secure_noise``, see :mod:`keras_privacy.training.noise`)."""
    from jax.experimental import io_callback

    return io_callback(
        lambda: secure_standard_normals(count),
        jax.ShapeDtypeStruct((count,), jnp.float32),
        ordered=True,
    )


#: Most rows per piece of a padded Poisson batch (see ``_dp_clipped_poisson_pieces``).
POISSON_PIECE = 32


def poisson_piece(expected_rows: float | None) -> int:
    """Rows per piece of a padded Poisson batch of ``expected_rows`` expected rows: the
    largest power of two not above half of it, at most :data:`POISSON_PIECE` (that, when
    unknown).

    A piece is what the step holds in memory at once, so below the expected batch the
    step's peak memory follows the rows non-private ``fit`` would compute, not the padded
    capacity (an expected 8 of 128 is padded to 38 rows). The step computes the sampled
    rows rounded up to whole pieces: with pieces of half the expected batch or less, a
    draw a little above it costs at most half a batch more, not a second batch (BERT at an
    expected 32 on JAX: 0.69x the non-private speed with pieces of 32, 1.00x with 16).
    """
    if expected_rows is None:
        return POISSON_PIECE
    half = int(expected_rows) // 2
    return min(POISSON_PIECE, 1 << max(0, half.bit_length() - 1))


class JAXDPTrainer(shared.DPTrainerBase):
    """Mixin for ``keras.Model`` subclasses on the JAX backend (placed first in the
    bases): replaces ``train_step`` with the DP step and compiles it with ``jax.jit``."""

    _dp_engines = engine_table(FastEngine)
    _dp_engine = _dp_engines["vectorized"]  # the reference engine
    _dp_step_state_class = _StepState
    _dp_supports_jit = True  # compile() leaves jit_compile to Keras ("auto": on)

    # -- state shared with the backend-neutral model ----------------------------------

    def _dp_clipped(self, x, y, sample_weight, num_units, unit_offset=0):
        """The engine's clipped sum for a batch at the current weights, eagerly (tests and
        debugging); random layers' seed states advance as in a step."""
        non_trainable = self.non_trainable_variables
        batch, new_values = self._dp_engine_for_step().clipped_gradient_sum(
            self,
            [v.value for v in self.trainable_variables],
            [v.value for v in non_trainable],
            x,
            y,
            sample_weight,
            num_units=num_units,
            l2_norm_clip=self._dp_clip(),
            unit_offset=unit_offset,
        )
        for variable, value in zip(non_trainable, new_values, strict=True):
            variable.assign(value)
        return batch

    def make_train_function(self, force: bool = False):
        """The DP step, ``jax.jit``-compiled unless ``run_eagerly`` or ``jit_compile=False``,
        with the DP step state threaded through it (the state's arrays are donated)."""
        if self.train_function is not None and not force:
            return self.train_function
        dp_state = self._dp_state()
        step = self.train_step
        if not self.run_eagerly and self.jit_compile:
            step = jax.jit(step, donate_argnums=0)

        def one_step(state, data):
            logs, new_state = step((*state, dp_state.values), data)
            dp_state.values = new_state[4]
            return logs, tuple(new_state[:4])

        self.train_function = self._make_function(one_step)
        return self.train_function

    # -- the step ---------------------------------------------------------------------

    def train_step(self, state, data):
        """One DP update. ``state`` is Keras's 4-tuple plus the DP step state's values."""
        if len(state) != 5:
            raise PrivacyError(
                "The JAX DP train_step needs the DP step state as a fifth state element; "
                "call it through fit / train_on_batch (make_train_function)."
            )
        trainable, non_trainable, optimizer_values, metrics_values, dp = state
        config = self._dp_require_config()
        accumulation = config.gradient_accumulation_steps
        data, mask, num_units = shared.split_batch(data, config, self._dp_user_rows)
        poisson = mask is not None
        capacity = keras.tree.flatten(data[0])[0].shape[0]
        rows = jnp.sum(mask).astype("int32") if poisson else capacity
        divisor = shared.public_divisor(config, self._dp_expected_units, rows, poisson=poisson)
        chunk = capacity
        if accumulation > 1:
            chunk = min(shared.chunk_rows(self._dp_chunk_size, capacity, accumulation), capacity)
        adaptive = config.adaptive_clip is not None
        clip = dp["clip"] if adaptive else self._dp_clip()
        # User-level: the units are the users' blocks of k rows, masked per user.
        unit_mask = (
            mask
            if not (poisson and self._dp_user_rows)
            else user_unit_mask(mask, self._dp_user_rows)
        )
        grad_sum, unit_losses, y_pred, non_trainable, unclipped = self._dp_clipped_logical_batch(
            trainable, non_trainable, data, unit_mask, num_units, chunk, clip
        )
        if adaptive:
            key, noise_key, count_key = jax.random.split(dp["key"], 3)
            if config.secure_noise:
                count_normal = _secure_normals(1)[0]
            else:
                count_normal = jax.random.normal(count_key, (), "float32")
            count_noise = config.adaptive_clip.clipped_count_stddev * count_normal
            new_clip = shared.adapted_clip(config, clip, unclipped, rows, count_noise, divisor)
        else:
            key, noise_key = jax.random.split(dp["key"])
        trainable, optimizer_values, regularization_loss = self._dp_apply(
            trainable, optimizer_values, grad_sum, divisor, noise_key, clip
        )
        unit = shared.unit_size(num_units, chunk, capacity)
        dp = {
            **({"clip": new_clip} if adaptive else {}),
            "key": key,
            # Counted here, where the noise is added: the accountant's events are these.
            "updates": dp["updates"] + 1,
            "examples": dp["examples"] + rows,
            "largest_batch": jnp.maximum(dp["largest_batch"], rows),
            "largest_unit": jnp.maximum(dp["largest_unit"], unit),
        }
        logs, metrics_values = self._dp_stateless_metrics(
            metrics_values, data, y_pred, unit_losses, rows, mask, regularization_loss
        )
        if adaptive:
            logs = {**logs, "l2_norm_clip": clip}
        return logs, (trainable, non_trainable, optimizer_values, metrics_values, dp)

    def _dp_clipped_logical_batch(
        self, trainable, non_trainable, data, mask, num_units, chunk, clip
    ):
        """The clipped sum of one logical batch (clip ``clip``), in chunks of ``chunk`` rows
        (static) when accumulating: a ``lax.scan`` over the full chunks, then the remainder.

        Returns the summed clipped gradients, each unit's loss, the outputs, the new
        non-trainable values and the number of (real) units the clip left whole.
        """
        capacity = keras.tree.flatten(data[0])[0].shape[0]
        engine = self._dp_engine_for_step()

        def clipped(non_trainable, part, part_mask, offset):
            batch, non_trainable = engine.clipped_gradient_sum(
                self,
                trainable,
                non_trainable,
                *part,
                num_units=num_units,
                l2_norm_clip=clip,
                unit_offset=offset,
                unit_mask=part_mask,
            )
            batch.unclipped = unclipped_count(batch.norms, clip, part_mask)
            return batch, non_trainable

        full = capacity // chunk
        if full == 1 and capacity == chunk:
            piece = poisson_piece(self._dp_expected_units)
            if mask is not None and num_units is None and capacity > 2 * piece:
                return self._dp_clipped_poisson_pieces(
                    clipped, trainable, non_trainable, data, mask, piece
                )
            batch, non_trainable = clipped(non_trainable, data, mask, 0)
            return batch.grad_sum, batch.unit_losses, batch.y_pred, non_trainable, batch.unclipped
        units_per_chunk = chunk if num_units is None else num_units
        head = shared.rows_of((data, mask), 0, full * chunk)
        chunks = keras.tree.map_structure(
            lambda t: None if t is None else jnp.reshape(t, (full, chunk, *t.shape[1:])), head
        )

        def body(carry, inputs):
            sums, nt, unclipped = carry
            (part, part_mask), i = inputs
            batch, nt = clipped(nt, part, part_mask, i * units_per_chunk)
            sums = [s + g for s, g in zip(sums, batch.grad_sum, strict=True)]
            return (sums, nt, unclipped + batch.unclipped), (batch.unit_losses, batch.y_pred)

        zeros = [jnp.zeros(jnp.shape(v), "float32") for v in trainable]
        (grad_sum, non_trainable, unclipped), (losses, preds) = jax.lax.scan(
            body,
            (zeros, non_trainable, jnp.zeros((), "float32")),
            (chunks, jnp.arange(full, dtype="uint32")),
        )
        losses = jnp.reshape(losses, (-1,))
        preds = keras.tree.map_structure(lambda p: jnp.reshape(p, (-1, *p.shape[2:])), preds)
        if capacity > full * chunk:  # the remainder chunk (static size)
            part, part_mask = shared.rows_of((data, mask), full * chunk, capacity)
            batch, non_trainable = clipped(non_trainable, part, part_mask, full * units_per_chunk)
            grad_sum = [s + g for s, g in zip(grad_sum, batch.grad_sum, strict=True)]
            unclipped = unclipped + batch.unclipped
            losses = jnp.concatenate([losses, batch.unit_losses])
            preds = keras.tree.map_structure(
                lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), preds, batch.y_pred
            )
        return grad_sum, losses, preds, non_trainable, unclipped

    def _dp_clipped_poisson_pieces(self, clipped, trainable, non_trainable, data, mask, piece):
        """A padded Poisson batch in pieces of ``piece`` rows, computing only the pieces
        that hold sampled rows.

        The capacity leaves ~8 standard deviations of headroom (385 rows for an expected
        250 of 60,000; 38 for an expected 8 of 128), so computing every row wastes a large
        part of a step, and its memory, on padding. The sampled rows come first, so a
        ``lax.while_loop`` over the first ``ceil(n / piece)`` pieces (``n`` the sampled
        count, traced: one compile for every ``n``) computes ~E[ceil(n / piece)] * piece
        rows, and holds one piece's activations at a time. Exact: each example is its own
        clipping unit, so the clipped sum is the sum over pieces, and every sampled row is
        in a computed piece; the pieces not computed hold only padding, whose clip factor
        is 0 (their losses and outputs stay zero). The running sums, losses and outputs
        are the loop's carry, updated in place (no per-piece copies, no branch).
        """
        capacity = mask.shape[0]
        pieces = -(-capacity // piece)
        extra = pieces * piece - capacity

        def pad(t):
            if t is None:
                return None
            return jnp.pad(t, [(0, extra)] + [(0, 0)] * (t.ndim - 1))

        padded = keras.tree.map_structure(pad, (data, mask))
        count = (jnp.sum(mask).astype("int32") + (piece - 1)) // piece  # pieces to compute

        def compute(nt, i):
            start = i * piece
            part, part_mask = keras.tree.map_structure(
                lambda t: None if t is None else jax.lax.dynamic_slice_in_dim(t, start, piece),
                padded,
            )
            batch, nt = clipped(nt, part, part_mask, start)
            return batch.grad_sum, batch.unit_losses, batch.y_pred, batch.unclipped, nt

        shapes = jax.eval_shape(compute, non_trainable, jnp.int32(0))
        # Tables that come by row (sparsity-preserving DP-SGD) are not summed over the
        # pieces: their rows are stacked (ids may repeat; coalesced before selection);
        # a piece not computed keeps unused slots (id -1, zero values and counts).
        by_row = [j for j, g in enumerate(shapes[0]) if isinstance(g, SparseRows)]

        def stacked(a, fill=0):
            return jnp.full((pieces, *a.shape), fill, a.dtype)

        sums = [
            jnp.zeros((), "float32") if j in by_row else jnp.zeros(jnp.shape(v), "float32")
            for j, v in enumerate(trainable)
        ]
        rows_of = [
            SparseRows(stacked(g.ids, -1), *map(stacked, g[1:]))
            for g in (shapes[0][j] for j in by_row)
        ]
        losses = stacked(shapes[1])
        preds = jax.tree.map(stacked, shapes[2])

        def body(carry):
            i, sums, nt, unclipped, losses, preds, rows_of = carry
            grad, piece_losses, piece_preds, piece_unclipped, nt = compute(nt, i)
            pairs = enumerate(zip(sums, grad, strict=True))
            sums = [s if j in by_row else s + g for j, (s, g) in pairs]
            put = lambda buffer, value: buffer.at[i].set(value)  # noqa: E731
            rows_of = [
                SparseRows(*map(put, buffer, grad[j]))
                for j, buffer in zip(by_row, rows_of, strict=True)
            ]
            losses = put(losses, piece_losses)
            preds = jax.tree.map(put, preds, piece_preds)
            return i + 1, sums, nt, unclipped + piece_unclipped, losses, preds, rows_of

        carry = (
            jnp.int32(0),
            sums,
            non_trainable,
            jnp.zeros((), "float32"),
            losses,
            preds,
            rows_of,
        )
        _, grad_sum, non_trainable, unclipped, losses, preds, rows_of = jax.lax.while_loop(
            lambda carry: carry[0] < count, body, carry
        )
        for j, table in zip(by_row, rows_of, strict=True):
            grad_sum[j] = SparseRows(*(jnp.reshape(t, (-1, *t.shape[2:])) for t in table))
        losses = jnp.reshape(losses, (-1,))[:capacity]
        preds = keras.tree.map_structure(
            lambda p: jnp.reshape(p, (-1, *p.shape[2:]))[:capacity], preds
        )
        return grad_sum, losses, preds, non_trainable, unclipped

    def _dp_apply(self, trainable, optimizer_values, grad_sum, divisor, noise_key, clip):
        """Add N(0, (sigma C)^2) to the clipped sum once (adaptive clipping: ``sigma_g C_t``
        at the update's clip ``clip``), divide by B, add the weight regularizers' gradient
        (data-independent: after noising, at full strength), apply the update. Returns the
        new trainable and optimizer values and ``R(w)``."""
        config = self._dp_config
        keys = jax.random.split(noise_key, len(grad_sum))
        secure = None
        if config.secure_noise and config.gradient_noise_multiplier > 0:
            shapes = [g.shape for g in grad_sum]
            secure = split_noise(_secure_normals(sum(math.prod(s) for s in shapes)), shapes)
        # Sparsity-preserving tables (never with adaptive clipping or secure noise: refused
        # at set-up) are selected and noised on their selected rows only.
        tables = sparse_tables(config, grad_sum)
        grads = []
        for i, (g, k) in enumerate(zip(grad_sum, keys, strict=True)):
            if i in tables:
                table = _private_rows(g, trainable[i], config, k, len(tables))
                grads.append(table / jnp.asarray(divisor, "float32"))
                continue
            if config.gradient_noise_multiplier > 0:
                stddev = config.gradient_noise_multiplier * clip
                if secure is not None:
                    g = g + stddev * secure[i]
                else:
                    g = add_gaussian_noise(g, stddev, k)  # chunked when large
            grads.append(g / jnp.asarray(divisor, "float32"))
        grads, regularization_loss = add_regularization_gradient(
            self, grads, trainable, lambda fn, values: jax.value_and_grad(fn)(values)
        )
        grads = [g.astype(v.dtype) for g, v in zip(grads, trainable, strict=True)]
        trainable, optimizer_values = stateless_private_apply(
            self.optimizer, optimizer_values, grads, trainable
        )
        return trainable, optimizer_values, regularization_loss

    def _dp_stateless_metrics(
        self, metrics_values, data, y_pred, unit_losses, rows, mask, regularization_loss=None
    ):
        mapping = list(zip(self.metrics_variables, metrics_values, strict=True))
        with StatelessScope(state_mapping=mapping) as scope:
            logs = shared.dp_metrics(
                self, data, y_pred, unit_losses, rows, mask, regularization_loss
            )
        new_values = []
        for ref, value in zip(self.metrics_variables, metrics_values, strict=True):
            current = scope.get_current_value(ref)
            new_values.append(value if current is None else current)
        return logs, new_values
