"""``...membership_inference_attack.data_structures``: attack inputs, slices, results."""

from __future__ import annotations

from keras_privacy.privacy_tests.data_structures import (  # noqa: F401
    AttackInputData,
    AttackResults,
    AttackResultsCollection,
    AttackType,
    PrivacyMetric,
    PrivacyReportMetadata,
    RocCurve,
    SingleAttackResult,
    SingleSliceSpec,
    SlicingFeature,
    SlicingSpec,
)
from keras_privacy.privacy_tests.membership_probability import (  # noqa: F401
    MembershipProbabilityResults,
    SingleMembershipProbabilityResult,
)

__all__ = [
    "AttackInputData",
    "AttackResults",
    "AttackResultsCollection",
    "AttackType",
    "MembershipProbabilityResults",
    "PrivacyMetric",
    "PrivacyReportMetadata",
    "RocCurve",
    "SingleAttackResult",
    "SingleMembershipProbabilityResult",
    "SingleSliceSpec",
    "SlicingFeature",
    "SlicingSpec",
]
