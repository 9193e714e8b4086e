"""``tensorflow_privacy.privacy.analysis.compute_noise_from_budget_lib``."""

from __future__ import annotations

from keras_privacy.accounting.tf_privacy_forms import (  # noqa: F401
    compute_noise,
)

__all__ = [
    "compute_noise",
]
