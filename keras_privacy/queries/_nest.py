"""Nested structures of arrays (dicts, lists, tuples, namedtuples), without a framework.

A DP query's records, sample states and results are nests of arrays, as in TF Privacy;
these helpers map over them with NumPy so that :mod:`keras_privacy.queries` imports no
deep-learning framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def map_structure(fn: Callable[..., Any], *structures: Any) -> Any:
    """``fn`` applied leaf by leaf to nests of the same structure (dict keys sorted as
    given by the first nest); raises ``ValueError`` when the structures differ."""
    first = structures[0]
    if isinstance(first, Mapping):
        for other in structures[1:]:
            if not isinstance(other, Mapping) or set(other) != set(first):
                raise ValueError(f"structures differ: {first!r} and {other!r}")
        return type(first)((key, map_structure(fn, *(s[key] for s in structures))) for key in first)
    if isinstance(first, (list, tuple)):
        for other in structures[1:]:
            if not isinstance(other, (list, tuple)) or len(other) != len(first):
                raise ValueError(f"structures differ: {first!r} and {other!r}")
        items = [map_structure(fn, *parts) for parts in zip(*structures, strict=True)]
        if _is_namedtuple(first):
            return type(first)(*items)
        return type(first)(items)
    return fn(*structures)


def map_up_to(shallow: Any, fn: Callable[..., Any], *structures: Any) -> Any:
    """Like :func:`map_structure`, but following only ``shallow``'s structure: where
    ``shallow`` has a leaf, ``fn`` gets that leaf and the whole sub-nests of
    ``structures`` at the same place (a nest of queries over a deeper nest of records)."""
    if isinstance(shallow, Mapping):
        return type(shallow)(
            (key, map_up_to(shallow[key], fn, *(s[key] for s in structures))) for key in shallow
        )
    if isinstance(shallow, (list, tuple)):
        for other in structures:
            if not isinstance(other, (list, tuple)) or len(other) != len(shallow):
                raise ValueError(f"structures differ: {shallow!r} and {other!r}")
        items = [
            map_up_to(part, fn, *parts) for part, *parts in zip(shallow, *structures, strict=True)
        ]
        if _is_namedtuple(shallow):
            return type(shallow)(*items)
        return type(shallow)(items)
    return fn(shallow, *structures)


def flatten(structure: Any) -> list[Any]:
    """The leaves of a nest, in the order :func:`map_structure` visits them."""
    leaves: list[Any] = []
    map_structure(leaves.append, structure)
    return leaves


def as_arrays(structure: Any) -> Any:
    """Every leaf as a float64 NumPy array (TensorFlow, JAX and PyTorch CPU tensors
    convert through ``__array__``)."""
    return map_structure(lambda leaf: np.asarray(leaf, dtype=np.float64), structure)


def global_norm(structure: Any) -> float:
    """The L2 norm of all leaves of a nest taken together."""
    return float(np.sqrt(sum(float(np.sum(np.square(leaf))) for leaf in flatten(structure))))
