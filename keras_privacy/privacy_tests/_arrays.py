"""Input checks shared by the privacy tests (NumPy only; imports nothing of the package)."""

from __future__ import annotations

from typing import Any

import numpy as np


def one_dimensional_values(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D float64 array; ``ValueError`` naming ``name`` if it is not
    one-dimensional, is empty, or holds a NaN."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, received shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if np.any(np.isnan(array)):
        raise ValueError(f"{name} contains NaN")
    return array
