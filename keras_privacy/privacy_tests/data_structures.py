"""Inputs, slices and results of membership inference attacks, under TensorFlow
Privacy's module name.

The inputs live in :mod:`keras_privacy.privacy_tests.attack_inputs` and the results in
:mod:`keras_privacy.privacy_tests.attack_results`; this module gathers both, so that code
written for TF Privacy's ``data_structures`` (``AttackInputData``, ``SlicingSpec``,
``AttackType``, ``AttackResults``...) finds every name here.
"""

from __future__ import annotations

from keras_privacy.privacy_tests.attack_inputs import (
    AttackInputData,
    AttackType,
    SingleSliceSpec,
    SlicingFeature,
    SlicingSpec,
)
from keras_privacy.privacy_tests.attack_results import (
    AttackResults,
    AttackResultsCollection,
    PrivacyMetric,
    PrivacyReportMetadata,
    RocCurve,
    SingleAttackResult,
)
from keras_privacy.privacy_tests.tf_privacy_forms import (
    DataSize,
    EpsilonLowerBoundValue,
    get_flattened_attack_metrics,
)

__all__ = [
    "AttackInputData",
    "AttackResults",
    "AttackResultsCollection",
    "AttackType",
    "DataSize",
    "EpsilonLowerBoundValue",
    "PrivacyMetric",
    "PrivacyReportMetadata",
    "RocCurve",
    "SingleAttackResult",
    "SingleSliceSpec",
    "SlicingFeature",
    "SlicingSpec",
    "get_flattened_attack_metrics",
]
