"""The fast (norm-only, book-keeping) clipping engine on TensorFlow.

One forward pass of the whole batch, in training mode, with every layer that has a rule
(:mod:`keras_privacy.training.fast.rules`) running its rule's forward, which keeps the
layer's inputs and names its output tensors; one backward pass for the gradients of the
sum of unit losses with respect to those outputs (this module's only backend-specific
part: ``tf.GradientTape``); then the rules compute per-unit norms and the clipped sum
(:mod:`keras_privacy.training.fast.clip`). No per-unit gradient is materialised unless a
rule finds that cheaper, and no second backward pass is run.

The engine is used only when it is exact for the model, and otherwise falls back to the
vectorized engine (``engine="auto"``) or refuses (``engine="fast"``):

* every operation on the forward path is known to treat rows independently
  (:func:`keras_privacy.training.fast.guard.batch_mixing_reason`);
* every trainable variable belongs to exactly one layer with a rule, and that layer is
  called exactly once per forward pass (shared or tied weights would need cross terms);
* the loss is the compiled per-example loss, with no losses computed from the data
  (activity regularizers, ``add_loss``: their per-unit gradient terms are not covered by
  the rules). Weight regularizers are allowed: they are left out of every unit's loss
  and the trainer adds their gradient after clipping and noising
  (:mod:`keras_privacy.training.regularization`).

Each unit's loss is computed exactly as the vectorized engine computes it (the compiled
loss on that unit's rows alone, vectorized over units), so the output gradients of the
summed unit losses are each unit's own.
"""

from __future__ import annotations

import logging
from typing import Any

import tensorflow as tf
from keras.src.backend.common.stateless_scope import StatelessScope

from keras_privacy.training.backend.tensorflow.engine import (
    VectorizedEngine,
    _to_units,
    queue_engine_note,
)
from keras_privacy.training.backend.tensorflow.vectorization import image_patches
from keras_privacy.training.engine import ClippedBatch, unit_loss_leaves
from keras_privacy.training.fast import clip as fast_clip
from keras_privacy.training.fast import units as fast_units
from keras_privacy.training.fast.capture import DATA_LOSSES, _Capture, _check_exact
from keras_privacy.training.fast.choice import fast_or_fallback
from keras_privacy.training.fast.rules import NotExact
from keras_privacy.training.fast.units import Units
from keras_privacy.training.regularization import excluding_weight_regularization

_log = logging.getLogger("keras_privacy")


fast_units.backend_ops["extract_patches"] = image_patches
# The engine choice runs while the step is being traced; the numerical
# batch-independence check runs eagerly, lifted out of the trace.
fast_units.backend_ops["eager"] = tf.init_scope


def _unit_losses(model: Any, y: Any, y_pred: Any, sample_weight: Any, num_units: int | None):
    """``[U]``: each unit's loss, as the vectorized engine computes it (the compiled loss
    of the unit's rows alone, with their output masks, averaged), vectorized over units."""
    leaves, rebuild = unit_loss_leaves(y, y_pred, sample_weight)
    unit_leaves = [_to_units(t, num_units) for t in leaves]

    def unit_loss(leaves_u):
        y_u, pred_u, sw_u = rebuild(leaves_u)
        with StatelessScope():
            loss = model._compute_loss(
                x=None, y=y_u, y_pred=pred_u, sample_weight=sw_u, training=True
            )
        return tf.reduce_mean(tf.cast(loss, "float32"))

    try:
        return tf.vectorized_map(unit_loss, unit_leaves)
    except (TypeError, ValueError, NotImplementedError) as error:
        raise NotExact(
            f"the loss could not be vectorized over units ({type(error).__name__})"
        ) from error


class FastEngine:
    """Norm-only clipping for the batch at once; see the module docstring.

    Args:
      require: ``True`` for ``engine="fast"`` (refuse models it cannot train exactly),
        ``False`` for ``engine="auto"`` (fall back to the vectorized engine).
    """

    def __init__(self, require: bool = False) -> None:
        self.require = require
        self.fallback = VectorizedEngine()

    def clipped_gradient_sum(
        self,
        model: Any,
        x: Any,
        y: Any,
        sample_weight: Any,
        *,
        num_units: int | None,
        l2_norm_clip: float,
        unit_offset: Any = 0,
    ) -> ClippedBatch:
        return fast_or_fallback(
            model,
            x,
            self.require,
            lambda: self._fast(model, x, y, sample_weight, num_units, l2_norm_clip),
            lambda: self.fallback.clipped_gradient_sum(
                model,
                x,
                y,
                sample_weight,
                num_units=num_units,
                l2_norm_clip=l2_norm_clip,
                unit_offset=unit_offset,
            ),
            record=_record,
        )

    def _fast(self, model, x, y, sample_weight, num_units, l2_norm_clip) -> ClippedBatch:
        units = Units(num_units)

        @tf.function(autograph=False)
        def run():
            # Every probe is computed from a trainable variable that the tape watches, so
            # its loss gradient is available (watching probes explicitly would cut the
            # paths between them).
            with (
                _Capture(model) as capture,
                excluding_weight_regularization(model),
                tf.GradientTape() as tape,
            ):
                training = {"training": True} if model._call_has_training_arg else {}
                y_pred = model(x, **training)
                if model.losses:  # weight regularization is excluded: added after noising
                    raise NotExact(DATA_LOSSES)
                unit_losses = _unit_losses(model, y, y_pred, sample_weight, num_units)
                total = tf.reduce_sum(unit_losses)
            _check_exact(model, capture)
            calls = capture.calls
            probes = [t for call in calls for t in call.probes.values()]
            grads = tape.gradient(total, probes, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            it = iter(grads)
            for call in calls:
                call.grads = {name: next(it) for name in call.probes}
            norms = fast_clip.unit_norms(calls, units)
            sums = fast_clip.clipped_sums(calls, units, norms, l2_norm_clip)
            grad_sum = [sums[id(v)] for v in model.trainable_variables]
            return grad_sum, unit_losses, y_pred, norms

        grad_sum, unit_losses, y_pred, norms = run.get_concrete_function()()
        return ClippedBatch(grad_sum=grad_sum, unit_losses=unit_losses, y_pred=y_pred, norms=norms)


def _record(model: Any, engine: str, reason: str | None) -> None:
    """Remember which engine trains the model; say it once per model and engine."""
    previous = getattr(model, "_dp_engine_used", None)
    object.__setattr__(model, "_dp_engine_used", (engine, reason))
    if previous is not None and previous[0] == engine:
        return
    if engine == "fast":
        _log.info("keras-privacy: %r trains with the fast (norm-only) clipping engine.", model.name)
    else:
        # Said together with anything the vectorized engine has to add, in one line.
        queue_engine_note(
            model,
            f"{model.name!r} trains with the vectorized clipping engine (exact, slower), "
            f"because the fast engine cannot be exact for it: {reason}.",
        )


__all__ = ["FastEngine"]
