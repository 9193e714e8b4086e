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


def _is_container(value: Any) -> bool:
    return isinstance(value, (Mapping, list, tuple))


def _check_same_level(first: Any, others: tuple) -> None:
    """``TypeError`` where a container meets a leaf or another kind of container,
    ``ValueError`` where two containers differ in keys or length (as ``tf.nest`` does)."""
    for other in others:
        same_kind = type(other) is type(first) or (
            isinstance(first, Mapping) and isinstance(other, Mapping)
        )
        if not same_kind:
            raise TypeError(
                f"structures differ: {type(first).__name__} {first!r} and "
                f"{type(other).__name__} {other!r}"
            )
        if len(other) != len(first) or (isinstance(first, Mapping) and set(other) != set(first)):
            raise ValueError(f"structures differ: {first!r} and {other!r}")


def _rebuild(like: Any, items: list) -> Any:
    if _is_namedtuple(like):
        return type(like)(*items)
    return type(like)(items)


def map_structure(fn: Callable[..., Any], *structures: Any) -> Any:
    """``fn`` applied leaf by leaf to nests of the same structure (dict keys in the first
    nest's order); ``TypeError`` / ``ValueError`` when the structures differ."""
    first = structures[0]
    if not _is_container(first):
        for other in structures[1:]:
            if _is_container(other):
                raise TypeError(f"structures differ: leaf {first!r} and {other!r}")
        return fn(*structures)
    _check_same_level(first, structures[1:])
    if isinstance(first, Mapping):
        return type(first)((key, map_structure(fn, *(s[key] for s in structures))) for key in first)
    return _rebuild(first, [map_structure(fn, *parts) for parts in zip(*structures, strict=True)])


def map_up_to(shallow: Any, fn: Callable[..., Any], *structures: Any) -> Any:
    """Like :func:`map_structure`, but following only ``shallow``'s structure: where
    ``shallow`` has a leaf, ``fn`` gets that leaf and the whole sub-nests of
    ``structures`` at the same place (a nest of queries over a deeper nest of records)."""
    if not _is_container(shallow):
        return fn(shallow, *structures)
    _check_same_level(shallow, structures)
    if isinstance(shallow, Mapping):
        return type(shallow)(
            (key, map_up_to(shallow[key], fn, *(s[key] for s in structures))) for key in shallow
        )
    parts = zip(shallow, *structures, strict=True)
    return _rebuild(shallow, [map_up_to(part, fn, *rest) for part, *rest in parts])


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
