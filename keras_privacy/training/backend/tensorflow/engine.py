"""Per-unit gradients on TensorFlow: ``tf.vectorized_map`` over a stateless forward pass."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from keras_privacy.training import vectorized
from keras_privacy.training.backend.tensorflow.vectorization import (
    vectorizer_rules,
)
from keras_privacy.training.checks import seed_state_variables
from keras_privacy.training.engine import (
    SEED_STRIDE,
    check_units_divide,
    refuse_state_updates,
    seed_advances,
    state_mapping,
    unit_data,
    unit_forward,
)
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.vectorized import queue_engine_note


def _to_units(tensor: tf.Tensor, num_units: int | None) -> tf.Tensor:
    """[rows, ...] -> [units, rows_per_unit, ...]."""
    if num_units is None:
        return tensor[:, None]
    check_units_divide(tensor.shape[0], num_units)
    shape = tf.shape(tensor)
    tf.debugging.assert_equal(
        shape[0] % num_units,
        0,
        message=f"num_microbatches={num_units} must divide the batch size",
    )
    return tf.reshape(tensor, tf.concat([[num_units, -1], shape[1:]], axis=0))


def _from_units(tensor: tf.Tensor) -> tf.Tensor:
    """[units, rows_per_unit, ...] -> [rows, ...]."""
    shape = tf.shape(tensor)
    return tf.reshape(tensor, tf.concat([[-1], shape[2:]], axis=0))


def _dense(grad: Any, value: tf.Tensor) -> tf.Tensor:
    """An Embedding's sparse gradient (IndexedSlices) as a dense tensor, summing repeated
    rows (each unit's gradient is materialised anyway; this avoids TensorFlow's implicit,
    warning-emitting conversion)."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.math.unsorted_segment_sum(grad.values, grad.indices, tf.shape(value)[0])
    return grad


_warned_models: set[int] = set()


def _warn_loop_fallback(model: Any, error: Exception) -> None:
    if id(model) in _warned_models:
        return
    _warned_models.add(id(model))
    queue_engine_note(
        model,
        f"TensorFlow could not vectorize the per-example gradients of "
        f"{model.name!r} ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
        "computing them one example at a time instead. Results are the same, training is "
        "slower. (For recurrent layers, unroll=True usually vectorizes.)",
    )


def _is_vectorizer_record(record: logging.LogRecord) -> bool:
    """False (drop) for a log record from TensorFlow's vectorizer (``parallel_for``)."""
    return f"{os.sep}parallel_for{os.sep}" not in record.pathname


@contextlib.contextmanager
def _quiet_vectorizer_logs() -> Iterator[None]:
    """Drop TensorFlow's vectorizer log records while it tries a conversion, and only then.

    A failed conversion logs ~100 lines of ``ERROR:tensorflow`` with stack traces before it
    raises, and a conversion through a loop (random ops) logs a ``WARNING:tensorflow``;
    :func:`_warn_loop_fallback` says what matters in one line. Other records pass, and the
    ``tensorflow`` logger is left as it was found.
    """
    logger = logging.getLogger("tensorflow")
    logger.addFilter(_is_vectorizer_record)
    try:
        yield
    finally:
        logger.removeFilter(_is_vectorizer_record)


def _vectorized(fn, elems):
    """``tf.vectorized_map(fn, elems)``, traced as a nested function first.

    A conversion that fails half-way would otherwise leave unconvertible ops in the
    training graph; traced apart, a failure leaves nothing behind.
    """

    @tf.function(autograph=False)
    def vectorized():
        with vectorizer_rules(), _quiet_vectorizer_logs():
            return tf.vectorized_map(fn, elems)

    return vectorized.get_concrete_function()()


def _per_unit_loop(fn, elems):
    """``fn`` over the units in a ``tf.map_fn`` loop (the vectorizer's exact fallback)."""
    leaves, index = elems
    # Traced only for the output signature, on a unit of zeros: a Poisson batch can be
    # empty, and a real row would be out of bounds then.
    zeros = [tf.zeros(tf.shape(t)[1:], t.dtype) for t in leaves]
    first = fn((zeros, tf.zeros((), index.dtype)))
    signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), first)
    return tf.map_fn(fn, elems, fn_output_signature=signature, parallel_iterations=8)


class VectorizedEngine(vectorized.VectorizedEngine):
    """Materialises each unit's gradient with ``tf.vectorized_map`` (see
    :mod:`keras_privacy.training.vectorized`); exact for any layer the vectorizer
    handles, and in a ``tf.map_fn`` loop where it cannot convert the graph."""

    def unit_gradients(
        self,
        model: Any,
        x: Any,
        y: Any,
        sample_weight: Any,
        *,
        num_units: int | None,
        unit_offset: Any = 0,
    ) -> tuple[list, Any, Any]:
        """Each unit's gradient (float32, leading unit axis), loss, and the outputs."""
        trainable = model.trainable_variables
        non_trainable = model.non_trainable_variables
        seeds = {id(v) for v in seed_state_variables(model)}
        trainable_values = [v.value for v in trainable]
        non_trainable_values = [v.value for v in non_trainable]

        data, unit_leaves = unit_data(x, y, sample_weight, num_units, _to_units)
        count = tf.shape(unit_leaves[0])[0]
        unit_index = tf.range(count, dtype="int64") + tf.cast(unit_offset, "int64")
        stateful_updates: list[str] = []

        def unit_gradient(args):
            leaves_u, index = args
            offset = tf.stack([index * SEED_STRIDE, tf.constant(0, "int64")])
            unit_non_trainable = [
                value + tf.cast(offset, value.dtype) if id(var) in seeds else value
                for var, value in zip(non_trainable, non_trainable_values, strict=True)
            ]
            mapping = state_mapping(model, trainable_values, unit_non_trainable)
            with tf.GradientTape() as tape:
                tape.watch(trainable_values)
                loss, y_pred, before, after = unit_forward(
                    model, mapping, data, leaves_u, seeds, stateful_updates
                )
                loss = tf.reduce_mean(tf.cast(loss, "float32"))
            grads = tape.gradient(
                loss, trainable_values, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            grads = [
                tf.cast(_dense(g, value), "float32")
                for g, value in zip(grads, trainable_values, strict=True)
            ]
            seed_advance = seed_advances(non_trainable, before, after, seeds)
            return grads, loss, y_pred, seed_advance

        elems = (unit_leaves, unit_index)
        try:
            outputs = _vectorized(unit_gradient, elems)
        except PrivacyError:
            raise
        except (TypeError, ValueError, NotImplementedError) as error:
            # TensorFlow's vectorizer cannot convert every graph (e.g. the gradient of a
            # recurrent layer with respect to its input sequence, as after an Embedding).
            # The same per-unit function in a loop is exact, only slower.
            _warn_loop_fallback(model, error)
            stateful_updates.clear()
            outputs = _per_unit_loop(unit_gradient, elems)
        grads, unit_losses, y_pred, seed_advance = outputs
        refuse_state_updates(stateful_updates)
        # Random layers: advance the real seed state once, as one plain call would.
        seed_vars = [v for v in non_trainable if id(v) in seeds]
        for var, advance in zip(seed_vars, seed_advance, strict=True):
            var.assign(var.value + tf.cast(tf.reduce_sum(advance[:1], axis=0), var.dtype))
        return grads, unit_losses, keras.tree.map_structure(_from_units, y_pred)
