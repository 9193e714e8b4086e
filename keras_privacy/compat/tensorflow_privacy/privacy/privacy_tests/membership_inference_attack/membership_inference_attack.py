"""``...membership_inference_attack.membership_inference_attack``: running the attacks."""

from __future__ import annotations

from keras_privacy.privacy_tests.attacks import (  # noqa: F401
    run_attacks,
)
from keras_privacy.privacy_tests.membership_probability import (  # noqa: F401
    run_membership_probability_analysis,
)

__all__ = [
    "run_attacks",
    "run_membership_probability_analysis",
]
