"""``...membership_inference_attack.plotting`` (matplotlib figures)."""

from __future__ import annotations

from keras_privacy.privacy_tests.plotting import (  # noqa: F401
    plot_curve_with_area,
    plot_histograms,
    plot_roc_curve,
    save_plot,
)

__all__ = [
    "plot_curve_with_area",
    "plot_histograms",
    "plot_roc_curve",
    "save_plot",
]
