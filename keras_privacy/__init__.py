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


def _own_module_initializing() -> bool:
    """Whether a ``keras_privacy`` module is being executed now (its import not finished)."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name == __name__ or name.startswith(__name__ + ".")
    )


class _AtNextImport(importlib.abc.MetaPathFinder):
    """Registers the classes at the first import, or lazy name lookup
    (:func:`finish_deferred_registration`), after the modules the registration needs have
    finished importing (see :class:`_AfterKerasImport`); finds nothing itself."""

    def register_if_ready(self) -> None:
        if self not in sys.meta_path:
            return
        sys.meta_path.remove(self)  # no second attempt from the imports this one makes
        try:
            _register_serializable_classes()
        except ImportError:
            if not _own_module_initializing():
                raise
            sys.meta_path.insert(0, self)  # a module it needs is still being imported

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        self.register_if_ready()
        return None


def finish_deferred_registration() -> None:
    """Register the DP classes now if their registration waited for a module of ours to
    finish importing (called by the lazy-name lookups after their import)."""
    for finder in [f for f in sys.meta_path if isinstance(f, _AtNextImport)]:
        finder.register_if_ready()


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
            try:
                _register_serializable_classes()
            except ImportError:
                if not _own_module_initializing():
                    raise
                # Keras was imported by one of our modules, and registering needs names
                # that module has not defined yet (a circular import: e.g. ``from
                # keras_privacy.training.optimizers import X`` before ``import keras``).
                # Register once it and its importers have finished.
                sys.meta_path.insert(0, _AtNextImport())

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
    finish_deferred_registration()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
