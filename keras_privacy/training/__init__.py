"""DP-SGD training for Keras 3 models (TensorFlow backend first).

Public names: :func:`make_private`, :class:`DPModel`, :class:`DPSequential`, the DP
optimizers ``DPKerasSGDOptimizer`` / ``DPKerasAdamOptimizer`` / ``DPKerasAdagradOptimizer``
(and :func:`make_keras_optimizer_class` for others), :class:`PrivacyError`,
:class:`SamplingWarning`, :class:`TrainingRecord`, :func:`clone_model`.

The record of what training did (:mod:`keras_privacy.training.record`) and the errors are
plain Python and load eagerly; every other name loads Keras and is imported on first use,
so that the accountant, the command line and the privacy report can read a training
record without a deep-learning framework.
"""

from __future__ import annotations

import importlib

from keras_privacy._lazy import lazy_getattr
from keras_privacy.training.adaptive_clip import AdaptiveClip
from keras_privacy.training.errors import BatchMixingWarning, PrivacyError, SamplingWarning
from keras_privacy.training.record import TrainingRecord, TrainingSegment

# public name -> submodule that defines it (each imports Keras)
_LAZY = {
    "DPConfig": "config",
    "DPModel": "model",
    "DPSequential": "model",
    "DPKerasAdagradOptimizer": "optimizers",
    "DPKerasAdamOptimizer": "optimizers",
    "DPKerasSGDOptimizer": "optimizers",
    "make_keras_optimizer_class": "optimizers",
    "PrivateModel": "private",
    "clone_model": "private",
    "make_private": "private",
}

#: The submodules whose classes register with Keras's serialization (for load_model).
SERIALIZABLE_MODULES = ("model", "private", "optimizers", "losses", "dp_training")

__all__ = [
    "AdaptiveClip",
    "BatchMixingWarning",
    "DPConfig",
    "DPKerasAdagradOptimizer",
    "DPKerasAdamOptimizer",
    "DPKerasSGDOptimizer",
    "DPModel",
    "DPSequential",
    "PrivacyError",
    "PrivateModel",
    "SamplingWarning",
    "TrainingRecord",
    "TrainingSegment",
    "clone_model",
    "make_keras_optimizer_class",
    "make_private",
]


def register_serializable_classes() -> None:
    """Import the modules whose DP models, optimizers and losses register with Keras."""
    for name in SERIALIZABLE_MODULES:
        importlib.import_module(f"{__name__}.{name}")


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return __all__
