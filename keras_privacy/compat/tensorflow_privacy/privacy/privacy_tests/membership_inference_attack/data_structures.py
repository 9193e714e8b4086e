"""``...membership_inference_attack.data_structures``: attack inputs, slices, results.

``EpsilonLowerBoundValue`` is accepted in results built by hand; keras-privacy's attacks
compute one bound each (``SingleAttackResult.get_epsilon_lower_bound()``). TF Privacy's
private helpers raise :class:`~keras_privacy.compat._unsupported.UnsupportedError` on use.
"""

from __future__ import annotations

from keras_privacy.compat._unsupported import module_getattr, unsupported
from keras_privacy.privacy_tests.data_structures import (  # noqa: F401
    AttackInputData,
    AttackResults,
    AttackResultsCollection,
    AttackType,
    DataSize,
    EpsilonLowerBoundValue,
    PrivacyMetric,
    PrivacyReportMetadata,
    RocCurve,
    SingleAttackResult,
    SingleSliceSpec,
    SlicingFeature,
    SlicingSpec,
    get_flattened_attack_metrics,
)
from keras_privacy.privacy_tests.membership_probability import (  # noqa: F401
    MembershipProbabilityResults,
    SingleMembershipProbabilityResult,
)

_MODULE = "privacy.privacy_tests.membership_inference_attack.data_structures"

#: TF Privacy's name of the entire-dataset slice.
ENTIRE_DATASET_SLICE_STR = "Entire dataset"

#: TF Privacy's tolerance for "TPR and FPR both ~0" in its PPV; kept so that code patching
#: it still runs. keras-privacy's PPV does not read it: it skips only thresholds with
#: TPR = FPR = 0 (``keras_privacy.privacy_tests.metrics.positive_predictive_value``).
_ABSOLUTE_TOLERANCE = 1e-3

_log_value = unsupported(
    _MODULE, "_log_value", "It is a private helper; AttackInputData computes its own losses."
)

__all__ = [
    "ENTIRE_DATASET_SLICE_STR",
    "AttackInputData",
    "AttackResults",
    "AttackResultsCollection",
    "AttackType",
    "DataSize",
    "EpsilonLowerBoundValue",
    "MembershipProbabilityResults",
    "PrivacyMetric",
    "PrivacyReportMetadata",
    "RocCurve",
    "SingleAttackResult",
    "SingleMembershipProbabilityResult",
    "SingleSliceSpec",
    "SlicingFeature",
    "SlicingSpec",
    "get_flattened_attack_metrics",
]

__getattr__ = module_getattr(_MODULE, "See docs/coming_from_tf_privacy.md for what differs.")
