"""Per-unit gradients on JAX: ``jax.vmap(jax.grad(...))`` over a stateless forward pass.

Everything here is a pure function of the values it is given (the JAX way): the trainer
passes the trainable and non-trainable values of its step state and gets back the clipped
sum and the new non-trainable values (the random layers' advanced seed states).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import keras

from keras_privacy.training import vectorized
from keras_privacy.training.checks import seed_state_variables
from keras_privacy.training.engine import (
    from_units,
    refuse_state_updates,
    to_units,
    unit_forward,
)

# Spreads the seeds of random layers (dropout) over units: unit i of a step draws with
# seed state (s0 + i * _SEED_STRIDE, s1), distinct for every unit of every step.
_SEED_STRIDE = 1_000_003


class VectorizedEngine(vectorized.VectorizedEngine):
    """Materialises each unit's gradient with ``jax.vmap(jax.grad(unit_loss))``.

    Each unit (one example, or one microbatch) runs through the model on its own, in
    training mode, inside a :class:`keras.StatelessScope`, so its loss -- including the
    losses computed from its data (activity regularizers, ``add_loss``), excluding
    weight regularization (added by the trainer after clipping and noising) -- and
    gradient depend on that unit alone. Random layers get a per-unit seed (the unit
    index folded into the seed state), so every unit draws its own dropout mask. Layers
    that *update* non-trainable state in training mode (moving statistics, counters) are
    refused: that state would be computed from private data without noise.
    """

    def unit_gradients(
        self,
        model: Any,
        trainable_values: list,
        non_trainable_values: list,
        x: Any,
        y: Any,
        sample_weight: Any,
        *,
        num_units: int | None,
        unit_offset: Any = 0,
    ) -> tuple[list, Any, Any, list]:
        """Each unit's gradient (float32, leading unit axis), loss, the outputs, and the
        non-trainable values after the step (seed states advanced once)."""
        trainable = model.trainable_variables
        non_trainable = model.non_trainable_variables
        seeds = {id(v) for v in seed_state_variables(model)}
        data = (x, y, sample_weight)
        leaves = [t for t in keras.tree.flatten(data) if t is not None]
        unit_leaves = [to_units(jnp.asarray(t), num_units) for t in leaves]
        count = unit_leaves[0].shape[0]
        unit_index = jnp.arange(count, dtype="uint32") + jnp.asarray(unit_offset, "uint32")
        stateful_updates: list[str] = []
        # The compiled loss updates its per-output loss trackers; per unit those updates
        # are discarded (the trainer logs metrics once per batch), so they get scratch
        # values (Keras's fit detaches the real ones from the variables while training).
        scratch_metrics = [(v, jnp.zeros(v.shape, v.dtype)) for v in model.metrics_variables]

        def unit_loss(train_values, leaves_u, index):
            unit_non_trainable = [
                value + (index * _SEED_STRIDE).astype(value.dtype) * jnp.array([1, 0], value.dtype)
                if id(var) in seeds
                else value
                for var, value in zip(non_trainable, non_trainable_values, strict=True)
            ]
            mapping = (
                list(zip(trainable, train_values, strict=True))
                + list(zip(non_trainable, unit_non_trainable, strict=True))
                + scratch_metrics
            )
            loss, y_pred, before, after = unit_forward(
                model, mapping, data, leaves_u, seeds, stateful_updates
            )
            seed_advance = [
                new - old
                for var, old, new in zip(non_trainable, before, after, strict=True)
                if id(var) in seeds
            ]
            loss = jnp.mean(jnp.asarray(loss, "float32"))
            return loss, (loss, y_pred, seed_advance)

        grad_fn = jax.grad(unit_loss, has_aux=True)
        grads, (unit_losses, y_pred, seed_advance) = jax.vmap(grad_fn, in_axes=(None, 0, 0))(
            list(trainable_values), unit_leaves, unit_index
        )
        refuse_state_updates(stateful_updates)
        grads = [jnp.asarray(g, "float32") for g in grads]
        # Random layers: advance the real seed state once, as one plain call would.
        advances = iter(seed_advance)
        new_non_trainable = [
            value + next(advances)[0] if id(var) in seeds else value
            for var, value in zip(non_trainable, non_trainable_values, strict=True)
        ]
        return grads, unit_losses, keras.tree.map_structure(from_units, y_pred), new_non_trainable
