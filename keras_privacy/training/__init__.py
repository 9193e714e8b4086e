"""DP-SGD training for Keras 3 models (TensorFlow backend first).

Public names: :func:`make_private`, :class:`DPModel`, :class:`DPSequential`, the DP
optimizers ``DPKerasSGDOptimizer`` / ``DPKerasAdamOptimizer`` / ``DPKerasAdagradOptimizer``
(and :func:`make_keras_optimizer_class` for others), :class:`PrivacyError`,
:class:`SamplingWarning`, :class:`TrainingRecord`, :func:`clone_model`.
"""

from keras_privacy.training.adaptive_clip import AdaptiveClip
from keras_privacy.training.config import DPConfig
from keras_privacy.training.errors import BatchMixingWarning, PrivacyError, SamplingWarning
from keras_privacy.training.model import DPModel, DPSequential
from keras_privacy.training.optimizers import (
    DPKerasAdagradOptimizer,
    DPKerasAdamOptimizer,
    DPKerasSGDOptimizer,
    make_keras_optimizer_class,
)
from keras_privacy.training.private import PrivateModel, clone_model, make_private
from keras_privacy.training.record import TrainingRecord, TrainingSegment

__all__ = [
    "AdaptiveClip",
    "DPConfig",
    "DPKerasAdagradOptimizer",
    "DPKerasAdamOptimizer",
    "DPKerasSGDOptimizer",
    "DPModel",
    "DPSequential",
    "BatchMixingWarning",
    "PrivacyError",
    "PrivateModel",
    "SamplingWarning",
    "TrainingRecord",
    "TrainingSegment",
    "clone_model",
    "make_keras_optimizer_class",
    "make_private",
]
