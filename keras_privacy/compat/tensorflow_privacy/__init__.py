"""TensorFlow Privacy's top-level names, as aliases of keras-privacy's.

``import tensorflow_privacy`` becomes ``from keras_privacy.compat import tensorflow_privacy``.
Names are loaded on first use (the optimizers and models import Keras; the accounting
does not).
"""

from __future__ import annotations

import importlib
from typing import Any

_VECTORIZED = f"{__name__}.privacy.optimizers.dp_optimizer_keras_vectorized"
_LAZY = {
    "DPKerasSGDOptimizer": "keras_privacy.training",
    "DPKerasAdamOptimizer": "keras_privacy.training",
    "DPKerasAdagradOptimizer": "keras_privacy.training",
    "VectorizedDPKerasSGDOptimizer": _VECTORIZED,
    "VectorizedDPKerasAdamOptimizer": _VECTORIZED,
    "VectorizedDPKerasAdagradOptimizer": _VECTORIZED,
    "DPModel": "keras_privacy.training",
    "DPSequential": "keras_privacy.training",
    "DPQuery": "keras_privacy.queries",
    "SumAggregationDPQuery": "keras_privacy.queries",
    "GaussianSumQuery": "keras_privacy.queries",
    "NestedQuery": "keras_privacy.queries",
    "NormalizedQuery": "keras_privacy.queries",
    "QuantileEstimatorQuery": "keras_privacy.queries",
    "QuantileAdaptiveClipSumQuery": "keras_privacy.queries",
    "compute_dp_sgd_privacy": "keras_privacy.accounting.tf_privacy_forms",
    "compute_dp_sgd_privacy_statement": "keras_privacy.accounting.tf_privacy_forms",
}

__all__ = sorted(_LAZY) + ["privacy"]


def __getattr__(name: str) -> Any:
    if name == "privacy":
        return importlib.import_module(f"{__name__}.privacy")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    importlib.import_module("keras_privacy").finish_deferred_registration()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
