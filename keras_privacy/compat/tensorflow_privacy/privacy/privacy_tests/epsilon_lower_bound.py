"""``tensorflow_privacy.privacy.privacy_tests.epsilon_lower_bound``.

TF Privacy's module computes empirical lower bounds on ε from confidence intervals for the
ratio of true- to false-positive rates (Katz-log, adjusted-log, Bailey, inverse-sinh,
Clopper–Pearson) over many thresholds. keras-privacy computes one Clopper–Pearson bound at a
threshold chosen on held-out scores (valid at its confidence level without a correction for
the choice of threshold): :func:`keras_privacy.privacy_tests.compute_epsilon_lower_bound`.

``BoundMethod`` is provided (its members name the methods, for code that passes them
around); ``EpsilonLowerBound`` and ``RatioBound`` raise
:class:`~keras_privacy.compat._unsupported.UnsupportedError` on use.
"""

from __future__ import annotations

import enum

from keras_privacy.compat._unsupported import module_getattr, unsupported

_MODULE = "privacy.privacy_tests.epsilon_lower_bound"
_INSTEAD = (
    "Use keras_privacy.privacy_tests.compute_epsilon_lower_bound(member_scores, "
    "nonmember_scores, delta=..., confidence=...) (one Clopper-Pearson bound at a held-out "
    "threshold), or SingleAttackResult.get_epsilon_lower_bound() of run_attacks' results."
)

__all__ = ["BoundMethod", "EpsilonLowerBound", "RatioBound"]


class BoundMethod(enum.Enum):
    """TF Privacy's names for confidence intervals of a ratio of binomial proportions."""

    KATZ_LOG = "katz-log"
    ADJUSTED_LOG = "adjusted-log"
    BAILEY = "bailey"
    INV_SINH = "inv-sinh"
    CLOPPER_PEARSON = "clopper-pearson"


EpsilonLowerBound = unsupported(_MODULE, "EpsilonLowerBound", _INSTEAD)
RatioBound = unsupported(_MODULE, "RatioBound", _INSTEAD)
__getattr__ = module_getattr(_MODULE, _INSTEAD)
