"""DP queries: differentially private aggregations of records (TF Privacy's ``dp_query``),
framework-free (NumPy, with ``dp_accounting`` events).

See :mod:`keras_privacy.queries.base` for the interface, :mod:`~.gaussian` for the
Gaussian sum/average and nested queries and :mod:`~.quantile` for private quantiles and
adaptive clipping.
"""

from keras_privacy.queries.base import DPQuery, SumAggregationDPQuery
from keras_privacy.queries.gaussian import (
    GaussianAverageQuery,
    GaussianSumQuery,
    NestedQuery,
    NestedSumQuery,
    NormalizedQuery,
    clip_record,
    gaussian_event,
)
from keras_privacy.queries.quantile import (
    QuantileAdaptiveClipSumQuery,
    QuantileEstimatorQuery,
    split_noise_multiplier,
)

__all__ = [
    "DPQuery",
    "GaussianAverageQuery",
    "GaussianSumQuery",
    "NestedQuery",
    "NestedSumQuery",
    "NormalizedQuery",
    "QuantileAdaptiveClipSumQuery",
    "QuantileEstimatorQuery",
    "SumAggregationDPQuery",
    "clip_record",
    "gaussian_event",
    "split_noise_multiplier",
]
