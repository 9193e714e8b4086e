"""``...membership_inference_attack.models``: TF Privacy's attack-model classes.

Not provided: keras-privacy's trained attacks are scikit-learn classifiers chosen by
``AttackType`` (or any classifier through ``run_attacks(attack_model_factories=...)``), and
their data are built by :func:`keras_privacy.privacy_tests.create_attacker_data`. Every
name here raises :class:`~keras_privacy.compat._unsupported.UnsupportedError` on import or
use, saying so.
"""

from __future__ import annotations

from keras_privacy.compat._unsupported import module_getattr

__all__: list[str] = []

__getattr__ = module_getattr(
    "privacy.privacy_tests.membership_inference_attack.models",
    "Trained attacks are scikit-learn classifiers chosen by AttackType; pass your own with "
    "keras_privacy.privacy_tests.run_attacks(attack_model_factories={AttackType.X: "
    "lambda seed: classifier}); their data come from "
    "keras_privacy.privacy_tests.create_attacker_data.",
)
