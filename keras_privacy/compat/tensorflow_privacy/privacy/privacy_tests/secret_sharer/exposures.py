"""``...secret_sharer.exposures``: TF Privacy's exposure call forms.

``compute_exposure_interpolation(perplexities, perplexities_reference)`` and
``compute_exposure_extrapolation(...)`` take ``{key: sequence of canary perplexities}``
(e.g. keyed by repetitions) and return ``{key: array of exposures}``, computed by
:mod:`keras_privacy.privacy_tests.secret_sharer`. Conventions differ from TF Privacy's in
interpolation: |R| = references + 1 and ties go to the canary (TF Privacy: |R| =
references, ties go to the references), so exposures are higher by about
``log2((n + 1) / n)`` and never negative. Extrapolation is the same fit (skew-normal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from keras_privacy.privacy_tests import secret_sharer

_Key = TypeVar("_Key")

__all__ = ["compute_exposure_extrapolation", "compute_exposure_interpolation"]


def compute_exposure_interpolation(
    perplexities: Mapping[_Key, Sequence[float]], perplexities_reference: Sequence[float]
) -> dict[_Key, np.ndarray]:
    """Exposure of each canary by its rank among the references, keyed as ``perplexities``."""
    return secret_sharer.compute_exposure_interpolation(perplexities, perplexities_reference)


def compute_exposure_extrapolation(
    perplexities: Mapping[_Key, Sequence[float]], perplexities_reference: Sequence[float]
) -> dict[_Key, Any]:
    """Exposure of each canary from a skew-normal fitted to the references."""
    return secret_sharer.compute_exposure_extrapolation(perplexities, perplexities_reference)
