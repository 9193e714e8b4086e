"""``tensorflow_privacy.privacy.keras_models.dp_keras_model``: DP Keras models."""

from __future__ import annotations

from keras_privacy.training import (  # noqa: F401
    DPModel,
    DPSequential,
)

__all__ = [
    "DPModel",
    "DPSequential",
]
