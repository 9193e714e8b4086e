"""The fast (norm-only, book-keeping) clipping engine on TensorFlow (see
:mod:`keras_privacy.training.fast.engine` for the engine and when it is exact).

The backend-specific part: the forward pass of the whole batch and the unit losses
(``tf.vectorized_map``) run under a ``tf.GradientTape``, which gives the gradients of the
summed unit losses with respect to the rules' probe tensors in one backward pass, all in
one ``tf.function``.
"""

from __future__ import annotations

import functools

import tensorflow as tf
from keras.src.backend.common.stateless_scope import StatelessScope

from keras_privacy.training.backend.tensorflow.engine import (
    VectorizedEngine,
    _to_units,
)
from keras_privacy.training.backend.tensorflow.vectorization import image_patches
from keras_privacy.training.engine import ClippedBatch
from keras_privacy.training.fast import clip as fast_clip
from keras_privacy.training.fast import engine as fast_engine
from keras_privacy.training.fast import units as fast_units
from keras_privacy.training.fast.capture import _Capture, _check_exact
from keras_privacy.training.fast.choice import record_engine
from keras_privacy.training.fast.engine import rules_forward, vectorized_unit_losses
from keras_privacy.training.fast.units import Units
from keras_privacy.training.regularization import excluding_weight_regularization
from keras_privacy.training.vectorized import queue_engine_note

fast_units.backend_ops["extract_patches"] = image_patches
# The engine choice runs while the step is being traced; the numerical
# batch-independence check runs eagerly, lifted out of the trace.
fast_units.backend_ops["eager"] = tf.init_scope
# The check's variable values as eager tensors (reads that share the variables' buffers),
# not NumPy copies: a copy of a 1,000,000 x 64 table, and its conversion back for each
# probe pass, was +0.5 GB of peak memory, more than the whole DP step's own overhead.
fast_units.backend_ops["variable_values"] = lambda variables: [v.value for v in variables]


#: ``[U]``: each unit's loss, vectorized over units with ``tf.vectorized_map``.
_unit_losses = functools.partial(
    vectorized_unit_losses,
    to_units=_to_units,
    vmap=tf.vectorized_map,
    scope=StatelessScope,
    errors=(TypeError, ValueError, NotImplementedError),
)


class FastEngine(fast_engine.FastEngine):
    """The fast engine (:class:`keras_privacy.training.fast.engine.FastEngine`) on TensorFlow;
    see the module docstring."""

    vectorized = VectorizedEngine

    # The fallback's warning is said together with anything the vectorized engine has to
    # add, in one line.
    record = staticmethod(functools.partial(record_engine, note=queue_engine_note))

    def _fast(self, model, x, y, sample_weight, *, num_units, l2_norm_clip) -> ClippedBatch:
        units = Units(num_units)
        config = getattr(model, "_dp_config", None)

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
                y_pred, unit_losses = rules_forward(
                    model, x, y, sample_weight, num_units, _unit_losses
                )
                total = tf.reduce_sum(unit_losses)
            _check_exact(model, capture)
            calls = capture.calls
            probes = [t for call in calls for t in call.probes.values()]
            grads = tape.gradient(total, probes, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            it = iter(grads)
            for call in calls:
                call.grads = {name: next(it) for name in call.probes}
            grad_sum, norms = fast_clip.clipped_gradient_sum(
                calls,
                units,
                model.trainable_variables,
                l2_norm_clip,
                sparsity=None if config is None else config.sparsity_preserving,
            )
            return grad_sum, unit_losses, y_pred, norms

        grad_sum, unit_losses, y_pred, norms = run.get_concrete_function()()
        return ClippedBatch(grad_sum=grad_sum, unit_losses=unit_losses, y_pred=y_pred, norms=norms)


__all__ = ["FastEngine"]
