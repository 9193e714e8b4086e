"""Privacy testing: membership inference, LiRA, the secret sharer and empirical ε bounds.

The core works on scores (logits, probabilities, losses, perplexities) and imports no
deep-learning framework. The Keras adapters (model outputs, the attack callback, shadow
model training, sequence perplexities) live in
:mod:`keras_privacy.privacy_tests.keras_adapters` and are imported only when one of their
names is used. Plotting (matplotlib) is loaded on first use too.

Two kinds of empirical ε lower bound: :func:`compute_epsilon_lower_bound` (one (ε, δ) bound
whose confidence accounts for the choice of threshold; ``EpsilonLowerBound`` here is its
result) and TF Privacy's per-threshold ratio bounds in
:mod:`keras_privacy.privacy_tests.ratio_bounds` (``RatioBound``, ``BoundMethod``, and its
class ``ratio_bounds.EpsilonLowerBound``, not exported here under that name).

Typical use::

    from keras_privacy import privacy_tests as pt

    attack_input = pt.AttackInputData(
        logits_train=logits_train, logits_test=logits_test,
        labels_train=y_train, labels_test=y_test)
    results = pt.run_attacks(
        attack_input,
        pt.SlicingSpec(entire_dataset=True, by_class=True),
        attack_types=[pt.AttackType.THRESHOLD_ATTACK, pt.AttackType.LOGISTIC_REGRESSION])
    print(results.summary(by_slices=True))
    pt.plot_roc_curve(results.get_result_with_max_auc(), "roc.png")
"""

from __future__ import annotations

import importlib
from typing import Any

from keras_privacy.privacy_tests.attacks import (
    create_attacker_data,
    default_attack_model,
    run_attacks,
    run_threshold_attack,
    run_trained_attack,
)
from keras_privacy.privacy_tests.data_structures import (
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
from keras_privacy.privacy_tests.lira import (
    ShadowModelScores,
    lira_attack_result,
    lira_offline_scores,
    lira_online_scores,
    logit_scaled_confidence,
    logit_scaled_confidence_from_logits,
    make_shadow_in_mask,
    run_lira,
)
from keras_privacy.privacy_tests.membership_probability import (
    MembershipProbabilityResults,
    SingleMembershipProbabilityResult,
    run_membership_probability_analysis,
)
from keras_privacy.privacy_tests.metrics import (
    EpsilonLowerBound,
    clopper_pearson_interval,
    clopper_pearson_upper,
    compute_epsilon_lower_bound,
)
from keras_privacy.privacy_tests.ratio_bounds import (
    BoundMethod,
    RatioBound,
    counts_at_thresholds,
    ratio_lower_bound,
)
from keras_privacy.privacy_tests.secret_sharer import (
    CanaryFormat,
    compute_exposure_extrapolation,
    compute_exposure_interpolation,
    exposure_by_repetitions,
    insert_canaries,
    log_perplexity,
)
from keras_privacy.privacy_tests.seq2seq import Seq2SeqAttackInputData, run_seq2seq_attack
from keras_privacy.privacy_tests.slicing import get_single_slice_specs, get_slice

# names loaded on first use: plotting needs matplotlib, the adapters need Keras
_LAZY = {
    "plot_roc_curve": "keras_privacy.privacy_tests.plotting",
    "plot_by_epochs": "keras_privacy.privacy_tests.plotting",
    "plot_privacy_vs_accuracy": "keras_privacy.privacy_tests.plotting",
    "MembershipInferenceCallback": "keras_privacy.privacy_tests.keras_adapters",
    "attack_input_from_model": "keras_privacy.privacy_tests.keras_adapters",
    "model_outputs": "keras_privacy.privacy_tests.keras_adapters",
    "train_shadow_models": "keras_privacy.privacy_tests.keras_adapters",
    "sequence_log_perplexities": "keras_privacy.privacy_tests.keras_adapters",
}

__all__ = [
    "AttackInputData",
    "AttackResults",
    "AttackResultsCollection",
    "AttackType",
    "BoundMethod",
    "CanaryFormat",
    "EpsilonLowerBound",
    "MembershipInferenceCallback",
    "MembershipProbabilityResults",
    "PrivacyMetric",
    "PrivacyReportMetadata",
    "RatioBound",
    "RocCurve",
    "Seq2SeqAttackInputData",
    "ShadowModelScores",
    "SingleAttackResult",
    "SingleMembershipProbabilityResult",
    "SingleSliceSpec",
    "SlicingFeature",
    "SlicingSpec",
    "attack_input_from_model",
    "clopper_pearson_interval",
    "clopper_pearson_upper",
    "compute_epsilon_lower_bound",
    "compute_exposure_extrapolation",
    "compute_exposure_interpolation",
    "counts_at_thresholds",
    "create_attacker_data",
    "default_attack_model",
    "exposure_by_repetitions",
    "get_single_slice_specs",
    "get_slice",
    "insert_canaries",
    "lira_attack_result",
    "lira_offline_scores",
    "lira_online_scores",
    "log_perplexity",
    "logit_scaled_confidence",
    "logit_scaled_confidence_from_logits",
    "make_shadow_in_mask",
    "model_outputs",
    "plot_by_epochs",
    "plot_privacy_vs_accuracy",
    "plot_roc_curve",
    "ratio_lower_bound",
    "run_attacks",
    "run_lira",
    "run_membership_probability_analysis",
    "run_seq2seq_attack",
    "run_threshold_attack",
    "run_trained_attack",
    "sequence_log_perplexities",
    "train_shadow_models",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
