"""``...membership_inference_attack.privacy_report``: privacy-vs-utility plots."""

from __future__ import annotations

from keras_privacy.privacy_tests.plotting import (  # noqa: F401
    plot_by_epochs,
    plot_privacy_vs_accuracy,
)

__all__ = [
    "plot_by_epochs",
    "plot_privacy_vs_accuracy",
]
