"""TF Privacy's ``privacy.dp_query.nested_query``: see :mod:`keras_privacy.queries`."""

from __future__ import annotations

from keras_privacy.compat._unsupported import module_getattr
from keras_privacy.compat.tensorflow_privacy.privacy.dp_query import INSTEAD
from keras_privacy.queries import (  # noqa: F401
    NestedQuery,
    NestedSumQuery,
)

__all__ = ["NestedQuery", "NestedSumQuery"]
__getattr__ = module_getattr("privacy.dp_query.nested_query", INSTEAD)
