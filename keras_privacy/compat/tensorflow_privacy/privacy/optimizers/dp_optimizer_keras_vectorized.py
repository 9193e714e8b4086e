"""``tensorflow_privacy.privacy.optimizers.dp_optimizer_keras_vectorized``.

keras-privacy's clipping is always vectorized (or faster); the vectorized optimizers differ
from the plain ones only in taking TF Privacy's fourth argument,
``unconnected_gradients_to_zero`` (see
:class:`keras_privacy.training.optimizers.VectorizedDPOptimizerMixin`).
"""

from __future__ import annotations

from keras_privacy.training.optimizers import (  # noqa: F401
    VectorizedDPKerasAdagradOptimizer,
    VectorizedDPKerasAdamOptimizer,
    VectorizedDPKerasSGDOptimizer,
    make_vectorized_keras_optimizer_class,
)

__all__ = [
    "VectorizedDPKerasAdagradOptimizer",
    "VectorizedDPKerasAdamOptimizer",
    "VectorizedDPKerasSGDOptimizer",
    "make_vectorized_keras_optimizer_class",
]
