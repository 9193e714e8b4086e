"""TF Privacy's ``privacy.dp_query.dp_query``: see :mod:`keras_privacy.queries`."""

from __future__ import annotations

from keras_privacy.compat._unsupported import module_getattr
from keras_privacy.compat.tensorflow_privacy.privacy.dp_query import INSTEAD
from keras_privacy.queries import (  # noqa: F401
    DPQuery,
    SumAggregationDPQuery,
)

__all__ = ["DPQuery", "SumAggregationDPQuery"]
__getattr__ = module_getattr("privacy.dp_query.dp_query", INSTEAD)
