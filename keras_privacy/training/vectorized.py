"""The vectorized (reference) clipping engine's backend-neutral frame.

Every backend's ``VectorizedEngine`` (``keras_privacy/training/backend/<name>/engine.py``)
materialises each clipping unit's gradient ``g_u`` (over all trainable variables, float32,
leading unit axis) with its vectorizer over a stateless forward pass
(``unit_gradients``: ``tf.vectorized_map``, ``jax.vmap(jax.grad)``,
``torch.func.vmap(torch.func.grad)``); what follows is the same everywhere::

    sum_u c_u g_u,   c_u = min(1, C / ||g_u||)   (0 for a non-finite norm or a masked unit)

(:func:`keras_privacy.training.clipping.clipped_sum`).

Each unit (one example, or one microbatch) runs through the model on its own, in
training mode, inside a :class:`keras.StatelessScope`
(:func:`keras_privacy.training.engine.unit_forward`), so its loss -- including the losses
computed from its data (activity regularizers, ``add_loss``), excluding weight
regularization (added by the trainer after clipping and noising) -- and gradient depend
on that unit alone. Random layers get a per-unit seed (or, on PyTorch, a per-unit draw),
and their seed states advance once per call, as one plain call would advance them.
Layers that *update* non-trainable state in training mode (moving statistics, counters)
are refused: that state would be computed from private data without noise.
"""

from __future__ import annotations

import contextlib
import warnings
from contextlib import AbstractContextManager
from typing import Any

from keras_privacy.training import clipping
from keras_privacy.training.engine import ClippedBatch
from keras_privacy.training.fast.choice import warn_if_mixing


def queue_engine_note(model: Any, note: str) -> None:
    """Queue a sentence about how ``model`` is trained (TensorFlow: the fast engine's
    fallback, the vectorizer's loop fallback); the vectorized engine says all queued notes
    in one warning line when it has computed the batch's unit gradients."""
    notes = model.__dict__.setdefault("_dp_engine_notes", [])
    notes.append(note)


def _say_engine_notes(model: Any) -> None:
    notes = model.__dict__.pop("_dp_engine_notes", None)
    if notes:
        warnings.warn("keras-privacy: " + " ".join(notes), stacklevel=4)


class VectorizedEngine:
    """Materialises each unit's gradient and clips it; see the module docstring and the
    backend subclasses (which implement ``unit_gradients``)."""

    def clipped_gradient_sum(
        self,
        model: Any,
        *args: Any,
        num_units: int | None,
        l2_norm_clip: float,
        unit_offset: Any = 0,
        unit_mask: Any = None,
    ) -> Any:
        """``sum_u min(1, C / ||g_u||) g_u`` over the units at the given weights (units
        outside ``unit_mask`` and units with a non-finite gradient contribute exactly
        zero); the engine interface of :mod:`keras_privacy.training.engine`.

        ``args`` are ``unit_gradients``'s positional arguments after the model (the step's
        variable values on JAX), ending with the batch's ``x, y, sample_weight``. Returns
        the :class:`ClippedBatch`, followed (JAX) by whatever else ``unit_gradients``
        returned after the outputs: the new non-trainable values.
        """
        warn_if_mixing(model, args[-3])
        grads, unit_losses, y_pred, *state = self.unit_gradients(
            model, *args, num_units=num_units, unit_offset=unit_offset
        )
        _say_engine_notes(model)
        with self._clipping_scope():
            grad_sum, norms = clipping.clipped_sum(grads, l2_norm_clip, unit_mask)
        batch = ClippedBatch(grad_sum=grad_sum, unit_losses=unit_losses, y_pred=y_pred, norms=norms)
        return (batch, *state) if state else batch

    def unit_gradients(self, model: Any, *args: Any, **kwargs: Any) -> tuple:  # pragma: no cover
        """Each unit's gradient (float32, leading unit axis), loss, and the outputs (and,
        on JAX, the new non-trainable values)."""
        raise NotImplementedError

    def _clipping_scope(self) -> AbstractContextManager:
        """Entered around the clipping arithmetic (PyTorch: ``torch.no_grad``)."""
        return contextlib.nullcontext()
