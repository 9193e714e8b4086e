"""``tensorflow_privacy.privacy.privacy_tests.epsilon_lower_bound``.

TF Privacy's empirical ε lower bounds from confidence intervals for the ratio of true- to
false-positive rates (Katz-log, adjusted-log, Bailey, inverse-sinh, Clopper–Pearson) over
many thresholds: keras-privacy's implementation in
:mod:`keras_privacy.privacy_tests.ratio_bounds`, under TF Privacy's names. Its largest value
over thresholds needs a correction for the number of thresholds scanned to be a valid bound;
:func:`keras_privacy.privacy_tests.compute_epsilon_lower_bound` gives one (ε, δ) bound that
accounts for the choice of threshold.
"""

from __future__ import annotations

from keras_privacy.privacy_tests.ratio_bounds import (
    BoundMethod,
    EpsilonLowerBound,
    RatioBound,
    counts_at_thresholds,
)

__all__ = ["BoundMethod", "EpsilonLowerBound", "RatioBound"]

# TF Privacy's private helper, under its name, for code (and tests) that call it
_get_tp_fp_for_thresholds = counts_at_thresholds
