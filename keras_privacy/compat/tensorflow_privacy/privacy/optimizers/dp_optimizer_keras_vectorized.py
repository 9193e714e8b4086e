"""``tensorflow_privacy.privacy.optimizers.dp_optimizer_keras_vectorized``.

keras-privacy's clipping is always vectorized (or faster), so the vectorized optimizers
are the same classes as the plain ones.
"""

from __future__ import annotations

from keras_privacy.training import (
    DPKerasAdagradOptimizer,
    DPKerasAdamOptimizer,
    DPKerasSGDOptimizer,
)

VectorizedDPKerasSGDOptimizer = DPKerasSGDOptimizer
VectorizedDPKerasAdamOptimizer = DPKerasAdamOptimizer
VectorizedDPKerasAdagradOptimizer = DPKerasAdagradOptimizer

__all__ = [
    "VectorizedDPKerasAdagradOptimizer",
    "VectorizedDPKerasAdamOptimizer",
    "VectorizedDPKerasSGDOptimizer",
]
