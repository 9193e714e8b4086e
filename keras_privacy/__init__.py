"""keras-privacy: differentially private training, accounting and privacy testing for Keras 3.

The top-level names are imported lazily, so that ``keras_privacy.accounting`` and
``keras_privacy.privacy_tests`` can be used without importing Keras or any deep-learning
framework.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0.dev0"

# public name -> module that defines it
_LAZY = {
    # training
    "make_private": "keras_privacy.training",
    "AdaptiveClip": "keras_privacy.training.adaptive_clip",
    "clone_model": "keras_privacy.training",
    "DPModel": "keras_privacy.training",
    "DPSequential": "keras_privacy.training",
    "DPKerasSGDOptimizer": "keras_privacy.training",
    "DPKerasAdamOptimizer": "keras_privacy.training",
    "DPKerasAdagradOptimizer": "keras_privacy.training",
    "BatchMixingWarning": "keras_privacy.training",
    "PrivacyError": "keras_privacy.training",
    "SamplingWarning": "keras_privacy.training",
    "TrainingRecord": "keras_privacy.training.record",
    "SparsityPreserving": "keras_privacy.training.sparsity",
    # accounting (framework-free)
    "compute_dp_sgd_privacy_statement": "keras_privacy.accounting",
    "compute_epsilon": "keras_privacy.accounting",
    "compute_noise_multiplier": "keras_privacy.accounting",
    "compute_max_epochs": "keras_privacy.accounting",
    "compute_max_steps": "keras_privacy.accounting",
    "PrivacyLedger": "keras_privacy.accounting",
    # accounting during training (Keras)
    "PrivacyBudget": "keras_privacy.training.callbacks",
    "privacy_spent": "keras_privacy.training.callbacks",
    # the privacy report (framework-free)
    "privacy_report": "keras_privacy.reporting",
    # DP logistic regression (scikit-learn, framework-free)
    "DPLogisticRegression": "keras_privacy.logistic_regression",
}

__all__ = sorted(_LAZY) + ["__version__"]


def _register_serializable_classes() -> None:
    """Register the DP models, optimizers and losses with Keras's serialization (importing
    ``keras_privacy.training`` does it), so that ``keras.models.load_model`` finds a saved
    DP model's classes after a plain ``import keras_privacy``."""
    importlib.import_module("keras_privacy.training").register_serializable_classes()


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Registers the classes right after Keras is imported, for ``import keras_privacy``
    before ``import keras``; accounting-only use never imports Keras."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "keras":
            return None
        # Asked by PathFinder (not importlib.util.find_spec, which would ask us again).
        # The finder stays installed until Keras is actually executed: TensorFlow asks
        # importlib.util.find_spec("keras") without importing it, and a spec found then
        # is not the one the later import executes.
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        keras_exec_module = loader.exec_module
        finder = self

        def exec_module(module: Any) -> None:
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            keras_exec_module(module)
            _register_serializable_classes()

        loader.exec_module = exec_module
        return spec


# Why a hook on Keras's import: load_model finds only classes registered before it runs,
# and importing Keras here would load a framework for accounting-only use (both import
# orders are tested in tests/test_package.py).
if "keras" in sys.modules:
    _register_serializable_classes()
else:
    sys.meta_path.insert(0, _AfterKerasImport())


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_privacy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
