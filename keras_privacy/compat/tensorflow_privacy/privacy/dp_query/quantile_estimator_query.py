"""TF Privacy's ``privacy.dp_query.quantile_estimator_query``: see :mod:`keras_privacy.queries`."""

from __future__ import annotations

from keras_privacy.compat._unsupported import module_getattr
from keras_privacy.compat.tensorflow_privacy.privacy.dp_query import INSTEAD
from keras_privacy.queries import (  # noqa: F401
    QuantileEstimatorQuery,
)

__all__ = ["QuantileEstimatorQuery"]
__getattr__ = module_getattr("privacy.dp_query.quantile_estimator_query", INSTEAD)
