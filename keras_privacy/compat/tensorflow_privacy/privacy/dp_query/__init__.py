"""``tensorflow_privacy.privacy.dp_query``: TF Privacy's DP queries, served by
:mod:`keras_privacy.queries` (NumPy; records and results are nests of arrays, and
TensorFlow tensors convert). Each query takes an extra keyword ``rng`` (a NumPy generator
or seed) for its noise. The tree-aggregation, discrete-Gaussian, Skellam, restart and
no-privacy queries are not provided."""

#: What the unsupported names of these modules say to use instead.
INSTEAD = (
    "keras_privacy.queries (NumPy) provides DPQuery, SumAggregationDPQuery, "
    "GaussianSumQuery, GaussianAverageQuery, NormalizedQuery, NestedQuery, NestedSumQuery, "
    "QuantileEstimatorQuery and QuantileAdaptiveClipSumQuery."
)
