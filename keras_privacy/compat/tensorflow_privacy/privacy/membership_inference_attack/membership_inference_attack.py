"""``tensorflow_privacy.privacy.membership_inference_attack.membership_inference_attack``.

TF Privacy's older path; the same names as under ``privacy.privacy_tests``.
"""

from __future__ import annotations

import importlib

_NEW = importlib.import_module(
    "keras_privacy.compat.tensorflow_privacy.privacy.privacy_tests."
    "membership_inference_attack.membership_inference_attack"
)
__all__ = list(_NEW.__all__)
globals().update({name: getattr(_NEW, name) for name in __all__})
