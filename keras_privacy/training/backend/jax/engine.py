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
    SEED_STRIDE,
    from_units,
    refuse_state_updates,
    seed_advances,
    state_mapping,
    to_units,
    unit_data,
    unit_forward,
)


class VectorizedEngine(vectorized.VectorizedEngine):
    """Materialises each unit's gradient with ``jax.vmap(jax.grad(unit_loss))`` (see
    :mod:`keras_privacy.training.vectorized`); random layers get the unit index folded
    into their seed state, so every unit draws its own dropout mask."""

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
        non_trainable = model.non_trainable_variables
        seeds = {id(v) for v in seed_state_variables(model)}
        data, unit_leaves = unit_data(
            x, y, sample_weight, num_units, lambda t, n: to_units(jnp.asarray(t), n)
        )
        count = unit_leaves[0].shape[0]
        unit_index = jnp.arange(count, dtype="uint32") + jnp.asarray(unit_offset, "uint32")
        stateful_updates: list[str] = []
        # The compiled loss updates its per-output loss trackers; per unit those updates
        # are discarded (the trainer logs metrics once per batch), so they get scratch
        # values (Keras's fit detaches the real ones from the variables while training).
        scratch_metrics = [(v, jnp.zeros(v.shape, v.dtype)) for v in model.metrics_variables]

        def unit_loss(train_values, leaves_u, index):
            unit_non_trainable = [
                value + (index * SEED_STRIDE).astype(value.dtype) * jnp.array([1, 0], value.dtype)
                if id(var) in seeds
                else value
                for var, value in zip(non_trainable, non_trainable_values, strict=True)
            ]
            mapping = state_mapping(model, train_values, unit_non_trainable, scratch_metrics)
            loss, y_pred, before, after = unit_forward(
                model, mapping, data, leaves_u, seeds, stateful_updates
            )
            seed_advance = seed_advances(non_trainable, before, after, seeds)
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
