"""Per-unit gradients on PyTorch: ``torch.func.vmap(torch.func.grad(...))`` over a
stateless forward pass.

Each unit (one example, or one microbatch) runs through the model on its own inside a
:class:`keras.StatelessScope` whose trainable values are the function's argument, so
``torch.func.grad`` differentiates the unit's loss with respect to them and ``vmap``
runs every unit at once. ``randomness="different"`` gives every unit its own draw from
random layers (dropout masks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import torch
from keras.src.backend.torch import nn as torch_nn

from keras_privacy.training import vectorized
from keras_privacy.training.checks import seed_state_variables
from keras_privacy.training.engine import (
    SEED_STRIDE,
    from_units,
    refuse_state_updates,
    state_mapping,
    unit_data,
    unit_forward,
)
from keras_privacy.training.engine import to_units as _static_to_units

# Seeded random layers: the chunk of a logical batch whose first unit is i draws with seed
# state (s0 + i * SEED_STRIDE, s1); within a chunk, vmap's randomness="different" gives
# every unit its own draw.


def to_units(tensor: torch.Tensor, num_units: int | None) -> torch.Tensor:
    """[rows, ...] -> [units, rows_per_unit, ...] (see
    :func:`keras_privacy.training.engine.to_units`)."""
    return _static_to_units(torch.as_tensor(tensor), num_units)


@contextlib.contextmanager
def vmappable_convolutions() -> Iterator[None]:
    """Keras's torch convolutions copy their inputs into channels-last memory format,
    which ``Tensor.clone(memory_format=...)`` does not support inside ``vmap`` (design
    note: Conv2D under vmap). The copy only changes the memory layout, never a value, so
    it is skipped while the vectorized engine runs."""
    original = torch_nn._maybe_convert_to_channels_last
    torch_nn._maybe_convert_to_channels_last = lambda tensor: tensor
    try:
        yield
    finally:
        torch_nn._maybe_convert_to_channels_last = original


class VectorizedEngine(vectorized.VectorizedEngine):
    """Materialises each unit's gradient with ``torch.func`` (see
    :mod:`keras_privacy.training.vectorized`); exact for any layer ``torch.func``
    handles."""

    def _clipping_scope(self) -> contextlib.AbstractContextManager:
        return torch.no_grad()

    def unit_gradients(
        self,
        model: Any,
        x: Any,
        y: Any,
        sample_weight: Any,
        *,
        num_units: int | None,
        unit_offset: int = 0,
    ) -> tuple[list, Any, Any]:
        """Each unit's gradient (float32, leading unit axis), loss, and the outputs;
        random layers' seed states are advanced once, as one plain call would."""
        trainable = model.trainable_variables
        non_trainable = model.non_trainable_variables
        seeds = {id(v) for v in seed_state_variables(model)}
        trainable_values = [v.value.detach() for v in trainable]
        # Seeded random layers: this chunk's seed state, shifted by its first unit's index.
        offset = int(unit_offset) * SEED_STRIDE
        non_trainable_values = [
            v.value + torch.tensor([offset, 0], dtype=v.value.dtype, device=v.value.device)
            if id(v) in seeds
            else v.value
            for v in non_trainable
        ]
        seed_starts = [
            value
            for v, value in zip(non_trainable, non_trainable_values, strict=True)
            if id(v) in seeds
        ]
        data, unit_leaves = unit_data(x, y, sample_weight, num_units, to_units)
        # The compiled loss updates its per-output loss trackers; per unit those updates
        # are discarded (the trainer logs metrics once per batch).
        scratch_metrics = [(v, torch.zeros_like(v.value)) for v in model.metrics_variables]
        stateful_updates: list[str] = []

        def unit_loss(train_values, leaves_u):
            mapping = state_mapping(model, train_values, non_trainable_values, scratch_metrics)
            loss, y_pred, _, after = unit_forward(
                model, mapping, data, leaves_u, seeds, stateful_updates
            )
            seed_after = [
                new for var, new in zip(non_trainable, after, strict=True) if id(var) in seeds
            ]
            loss = torch.mean(loss.to(torch.float32))
            return loss, (loss, y_pred, seed_after)

        per_unit = torch.func.vmap(
            torch.func.grad(unit_loss, has_aux=True), in_dims=(None, 0), randomness="different"
        )
        with vmappable_convolutions():
            grads, (unit_losses, y_pred, seed_after) = per_unit(trainable_values, unit_leaves)
        refuse_state_updates(stateful_updates)
        # Random layers: the seed state advances as one plain call would advance it (every
        # unit advanced the same unbatched state by the same amount).
        seed_vars = [v for v in non_trainable if id(v) in seeds]
        for var, start, new in zip(seed_vars, seed_starts, seed_after, strict=True):
            new = new[0] if new.ndim > start.ndim else new  # one row per unit, all equal
            var.assign(var.value + (new - start))
        grads = [g.to(torch.float32) for g in grads]
        return grads, unit_losses.detach(), keras.tree.map_structure(from_units, y_pred)
