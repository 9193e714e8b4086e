"""The DP training step on PyTorch (eager, as Keras's own torch step runs by default).

Every call makes exactly one optimizer update from one *logical batch*, as
:mod:`keras_privacy.training.step` says, with the noise drawn once per update from the
model's own :class:`torch.Generator`. That generator lives in an untracked
:class:`_StepState` on the model as long as the model does: its state is filled once (from
the operating system's entropy, or from the DP ``seed`` in tests), only ever advances, and
is never saved or restored, so no draw repeats across steps or ``fit`` calls. Poisson
batches arrive padded with a 0/1 mask (sampled rows first); the eager step drops the
padding rows before computing anything.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import keras
import torch
from keras.src.backend.torch.core import get_device

from keras_privacy.training import step as shared
from keras_privacy.training.backend.torch.fast_engine import FastEngine
from keras_privacy.training.clipping import unclipped_count
from keras_privacy.training.fast import units as fast_units
from keras_privacy.training.fast.engine import engine_table
from keras_privacy.training.fast.rules import row_tables
from keras_privacy.training.noise import secure_standard_normals
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
from keras_privacy.training.users import user_unit_mask

# torch's CPU generator state (``get_state``): the initial seed (uint64), ``left`` and
# ``seeded`` (int32 each), ``next`` (uint64), then the 624 Mersenne Twister words, each in
# the low half of a uint64, then the cached normals.
_MT_STATE_BYTES = 5056
_MT_WORDS_OFFSET = 24
_MT_WORDS = 624


def _entropy_seeded(generator: torch.Generator) -> torch.Generator:
    """Fill a CPU generator's whole Mersenne Twister state (624 x 32 bits) from the
    operating system's entropy. ``manual_seed`` keeps only 32 bits of any seed, which would
    leave 2^32 possible noise streams. A CUDA generator (Philox) takes a 64-bit seed."""
    if generator.device.type != "cpu":
        generator.manual_seed(secrets.randbits(64))
        return generator
    generator.manual_seed(1)  # a valid state to start from ("left" = 1: twist first)
    state = bytearray(generator.get_state().numpy().tobytes())
    if len(state) != _MT_STATE_BYTES:  # pragma: no cover - another torch layout
        raise RuntimeError(
            f"Unexpected torch generator state ({len(state)} bytes); keras-privacy cannot "
            "seed the noise generator from OS entropy with this torch version."
        )
    words = [secrets.randbits(32) for _ in range(_MT_WORDS)]
    for i, word in enumerate(words):
        start = _MT_WORDS_OFFSET + 8 * i
        state[start : start + 8] = word.to_bytes(8, "little")
    generator.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
    return generator


def _compress(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return tensor[mask]


def _sorted_segment_sum(
    data: torch.Tensor, segments: torch.Tensor, slots: int | None = None
) -> torch.Tensor:
    """``[slots, ...]``: ``data`` summed by its sorted ``segments`` (``slots`` None: the
    segments ``0..S-1`` are all present, ``S`` from the last one)."""
    if slots is None:
        slots = int(segments[-1]) + 1 if len(segments) else 0
    out = torch.zeros((int(slots), *data.shape[1:]), dtype=data.dtype, device=data.device)
    return out.index_add_(0, segments.long(), data)


def _private_rows(rows: SparseRows, variable: Any, config: Any, generator: Any, tables: int) -> Any:
    """Sparsity-preserving DP-SGD on one table (:mod:`keras_privacy.training.sparsity`):
    the table's noised gradient, nonzero only on the selected rows. The noise is drawn
    for the selected rows only (the optimizer gets a dense tensor: Keras's PyTorch
    optimizers take dense gradients)."""
    spec = per_table(config.sparsity_preserving, tables)  # sqrt(K) sigma_s c0 on counts
    vocabulary, dim = (int(d) for d in variable.shape)
    device = generator.device
    ids, counts, slot_values, segment = coalesce_counts(
        rows,
        _sorted_segment_sum,
        argsort=fast_units.argsort,
        in_order=bool(in_id_order(rows.ids)),  # one engine pass: sorted already
    )
    normals = torch.randn(counts.shape, generator=generator, device=device)
    selected = touched_selection(SparseRows(ids, None, counts), spec, normals)
    uniforms = torch.rand((vocabulary,), generator=generator, device=device)
    extra = false_positive_ids(ids, spec, uniforms, vocabulary, _compress).long()
    # Only the selected rows' clipped sums are summed (most touched rows are not).
    picked = selected_values(slot_values, segment, selected, _compress, _sorted_segment_sum)
    ids = torch.cat([ids[selected].long(), extra])
    values = torch.cat([picked.float(), picked.new_zeros((len(extra), dim))])
    if config.noise_multiplier > 0:
        values.add_(
            torch.randn(values.shape, generator=generator, device=device),
            alpha=config.noise_stddev,
        )
    return torch.zeros((vocabulary, dim), dtype=torch.float32, device=device).index_put_(
        (ids,), values
    )


class _StepState:
    """Per-model transient state of the DP step: the noise generator and the counters
    (:data:`~keras_privacy.training.step.COUNTERS`) as Python integers.

    ``generator`` draws the noise: its whole state comes from OS entropy
    (:func:`_entropy_seeded`), or from the DP ``seed`` in tests.
    """

    def __init__(self, seed: int | None) -> None:
        # On the device Keras computes on, so the noise is drawn where the gradients are.
        self.generator = torch.Generator(device=get_device())
        if seed is None:
            _entropy_seeded(self.generator)
        else:
            self.generator.manual_seed(seed + 1)
        self.counts = dict.fromkeys(shared.COUNTERS, 0)

    def start_adaptive_clip(self, initial: float) -> None:
        self.clip = torch.tensor(float(initial), dtype=torch.float32, device=get_device())

    def clip_value(self) -> torch.Tensor:
        return self.clip

    def counters(self) -> dict[str, int]:
        """The counters (a copy)."""
        return dict(self.counts)

    def reset_segment(self) -> None:
        self.counts["largest_batch"] = self.counts["largest_unit"] = 0


def _value_and_grad(fn, values: list) -> tuple[Any, list]:
    """``(fn(values), d fn / d values)`` by ``torch.func`` (whatever the grad mode)."""
    grads, value = torch.func.grad_and_value(fn)(values)
    return value, grads


class TorchDPTrainer(shared.DPTrainerBase):
    """Mixin for ``keras.Model`` subclasses on the PyTorch backend (placed first in the
    bases): replaces ``train_step`` with the DP step."""

    _dp_engines = engine_table(FastEngine)
    _dp_engine = _dp_engines["vectorized"]  # the reference engine
    _dp_step_state_class = _StepState

    # -- state shared with the backend-neutral model ----------------------------------

    def make_train_function(self, force: bool = False):
        self._dp_state()
        super().make_train_function(force=force)
        return self.train_function

    # -- the step ---------------------------------------------------------------------

    def train_step(self, data: Any) -> dict:
        """One DP update from one logical batch (eager)."""
        config = self._dp_require_config()
        user_rows = self._dp_user_rows
        data, mask, num_units = shared.split_batch(data, config, user_rows)
        poisson = mask is not None
        row_mask = None
        if poisson and user_rows:
            # User-level: the sampled users' blocks of k rows come first, one unit each.
            mask = torch.as_tensor(mask)
            rows = int(mask.sum().item())
            num_units = int(user_unit_mask(mask, user_rows).sum().item())
            data = shared.rows_of(data, 0, num_units * user_rows)
            row_mask = mask[: num_units * user_rows]
        elif poisson:
            rows = int(torch.as_tensor(mask).sum().item())
            data = shared.rows_of(data, 0, rows)  # sampled rows come first
        else:
            rows = int(keras.tree.flatten(data[0])[0].shape[0])
        divisor = shared.public_divisor(config, self._dp_expected_units, rows, poisson=poisson)
        accumulation = config.gradient_accumulation_steps
        chunk = rows
        if accumulation > 1:
            chunk = shared.chunk_rows(self._dp_chunk_size, rows, accumulation)
        clip = self._dp_clip()  # the clip of this update (adaptive: C_t)
        grad_sum, unit_losses, y_pred, unclipped = self._dp_clipped_logical_batch(
            data, rows, num_units, chunk, clip
        )
        regularization_loss = self._dp_apply(grad_sum, divisor, clip, unclipped, rows)
        counts = self._dp_step_state.counts
        counts["examples"] += rows
        counts["largest_batch"] = max(counts["largest_batch"], rows)
        counts["largest_unit"] = max(
            counts["largest_unit"], int(shared.unit_size(num_units, chunk, rows))
        )
        with torch.no_grad():
            logs = shared.dp_metrics(
                self, data, y_pred, unit_losses, rows, row_mask, regularization_loss
            )
        if config.adaptive_clip is not None:
            logs = {**logs, "l2_norm_clip": clip}
        return logs

    def _dp_clipped_logical_batch(self, data, rows, num_units, chunk, clip):
        """The clipped sum of one logical batch (clip ``clip``), in chunks of ``chunk`` rows
        when accumulating; returns the summed clipped gradients, each unit's loss, the
        outputs and the number of units the clip left whole."""
        if rows == 0:  # an empty Poisson draw: the update is noise alone
            with torch.no_grad():
                y_pred = self(data[0], training=False)
            by_row = row_tables(self) if self._dp_config.sparsity_preserving else set()
            zeros = [
                SparseRows(
                    torch.full((0,), -1, dtype=torch.int32, device=get_device()),
                    torch.zeros((0, v.shape[1]), device=get_device()),
                    torch.zeros((0,), device=get_device()),
                )
                if id(v) in by_row
                else torch.zeros_like(v.value, dtype=torch.float32)
                for v in self.trainable_variables
            ]
            return zeros, torch.zeros((0,), device=get_device()), y_pred, 0.0
        if chunk >= rows:
            batch = self._dp_clipped(*data, num_units=num_units)
            unclipped = unclipped_count(batch.norms, clip)
            return batch.grad_sum, batch.unit_losses, batch.y_pred, unclipped
        grad_sum, losses, preds, unclipped = None, [], [], 0.0
        for i, start in enumerate(range(0, rows, chunk)):
            part = shared.rows_of(data, start, min(start + chunk, rows))
            units_before = start if num_units is None else i * num_units
            batch = self._dp_clipped(*part, num_units=num_units, unit_offset=units_before)
            if grad_sum is None:
                grad_sum = batch.grad_sum
            else:
                grad_sum = [s + g for s, g in zip(grad_sum, batch.grad_sum, strict=True)]
            losses.append(batch.unit_losses)
            preds.append(batch.y_pred)
            unclipped = unclipped + unclipped_count(batch.norms, clip)
        y_pred = keras.tree.map_structure(lambda *parts: torch.cat(parts), *preds)
        return grad_sum, torch.cat(losses), y_pred, unclipped

    def _dp_standard_normals(self, count: int) -> torch.Tensor:
        """``count`` N(0, 1) float32 numbers where the gradients are: from the model's
        generator, or with ``secure_noise`` fresh from the OS's CSPRNG
        (:func:`~keras_privacy.training.noise.secure_standard_normals`)."""
        generator = self._dp_step_state.generator
        if self._dp_config.secure_noise:
            return torch.from_numpy(secure_standard_normals(count)).to(generator.device)
        return torch.randn(count, generator=generator, dtype=torch.float32, device=generator.device)

    def _dp_apply(self, grad_sum: list, divisor: Any, clip: Any, unclipped: Any, units: int) -> Any:
        """Add N(0, (sigma C)^2) to the clipped sum once, divide by B, add the weight
        regularizers' gradient (data-independent: after noising, at full strength), update,
        count; with adaptive clipping (``sigma_g C_t`` noise) also noise the unclipped
        count and advance the clip. Returns the regularization loss ``R(w)`` before the
        update. Consumes ``grad_sum`` (a list: its entries are let go one by one)."""
        config = self._dp_config
        variables = self.trainable_variables
        state = self._dp_step_state
        # Sparsity-preserving tables (never with adaptive clipping or secure noise: refused
        # at set-up) are selected and noised on their selected rows only.
        tables = sparse_tables(config, grad_sum)
        with torch.no_grad():
            # g = (sum + sigma C z) / B, z ~ N(0, I): in place on fresh float32 tensors.
            # Each clipped sum is let go as soon as its copy exists (the caller keeps no
            # use for it), and each variable's noise is drawn on its own, so that the
            # update holds one variable's sum or noise beside the gradients, not a second
            # copy of all of them (gpt2-small: 0.5 GB each).
            if not isinstance(grad_sum, list):
                grad_sum = list(grad_sum)
            grads = []
            for i, v in enumerate(variables):
                g, grad_sum[i] = grad_sum[i], None
                if i in tables:
                    grads.append(_private_rows(g, v, config, state.generator, len(tables)))
                else:
                    grads.append(torch.as_tensor(g, dtype=torch.float32).clone())
                del g
            dense = [i for i in range(len(grads)) if i not in tables]
            stddev = config.gradient_noise_multiplier * clip
            if config.gradient_noise_multiplier > 0 and dense:
                # Independent N(0, 1) draws from the model's generator, variable by
                # variable (the noise is added once: here).
                for i in dense:
                    shape = tuple(variables[i].shape)
                    z = self._dp_standard_normals(math.prod(shape)).reshape(shape)
                    if isinstance(stddev, torch.Tensor):
                        grads[i].add_(z.mul_(stddev))
                    else:
                        grads[i].add_(z, alpha=stddev)
                    del z
            if config.adaptive_clip is not None:
                count_noise = (
                    config.adaptive_clip.clipped_count_stddev * self._dp_standard_normals(1)[0]
                )
                state.clip = shared.adapted_clip(
                    config, clip, unclipped, units, count_noise, divisor
                )
            scale = 1.0 / float(divisor)
            grads = [g.mul_(scale) for g in grads]
            regularization_loss = shared.apply_private_update(
                self, grads, [v.value.detach() for v in variables], _value_and_grad
            )
        # Counted here, where the noise is added: the accountant's events are these.
        self._dp_step_state.counts["updates"] += 1
        return regularization_loss
