"""``...membership_inference_attack.keras_evaluation``: attacking a Keras model (imports Keras).

``MembershipInferenceCallback`` takes TF Privacy's arguments; it records the attacks in the
epoch logs and ``results`` instead of printing, and refuses ``tensorboard_dir`` (use
``keras.callbacks.TensorBoard`` after it).
"""

from __future__ import annotations

from keras_privacy.privacy_tests.keras_evaluation import (
    TFPrivacyMembershipInferenceCallback as MembershipInferenceCallback,
)
from keras_privacy.privacy_tests.keras_evaluation import run_attack_on_keras_model

__all__ = ["MembershipInferenceCallback", "run_attack_on_keras_model"]
