"""Shared weights on the fast path: the cross terms of a variable reached by several calls.

A variable ``W`` used by calls ``1..K`` of the forward pass (a tied input/output embedding,
one layer applied twice, Siamese towers) has the per-unit gradient ``G_u = sum_k G_{u,k}``,
the sum of each call's part. Its squared norm is::

    ||G_u||^2 = sum_k ||G_{u,k}||^2 + 2 sum_{k < l} <G_{u,k}, G_{u,l}>

The first sum is what each call's rule computes on its own (``squared_norms``); the
inner products are the *cross terms*, which dropping would make the norm wrong (too small
where the parts point the same way: the clip would then let a unit contribute more
than ``C``). A rule that supports shared weights describes each call's part of each of its
variables as a :class:`Term`, and this module computes the inner products of two terms
from the same activations and output gradients the rules keep, per unit and in float64:

* :class:`OuterTerm` ``G = sum_s a_s d_s^T`` (Dense-like: input ``a``, output gradient
  ``d`` at positions ``s``). Two of them: ``<a^T d, b^T e> = sum_{s,t} (a_s . b_t)(d_s .
  e_t)`` (the "ghost" double sum, ``S T (p + q)`` per unit) or materialising both
  (``(S + T) p q``), the cheaper from static shapes as the rules choose.
* :class:`RowsTerm` ``G[v] = sum_{s: id_s = v} g_s`` (a table lookup with token ids).
  With an outer term ``b^T e`` over the same table (a tied output projection, where
  ``b`` holds the logits' gradients): ``sum_{s,t} b_t[id_s] (g_s . e_t)`` (Li et al.
  2022's cross term for tied embeddings: the same token ids, activations and output
  gradients, never a table-sized tensor per unit). Two lookups:
  ``sum_{s,t: id_s = id'_t} g_s . g'_t``.
* :class:`FullTerm` a materialised per-unit gradient (biases, normalization scales):
  plain inner products with each other.

The clipped sum needs no cross terms: it is linear, ``sum_u c_u G_u = sum_k sum_u c_u
G_{u,k}``, the sum of each call's own clipped sum.

Two terms of one variable must describe it in the same 2-D layout (``layout``, e.g. the
kernel as ``[d_in, d_out]``); pairs of kinds without a formula here raise
:class:`~keras_privacy.training.fast.rules.NotExact` (the vectorized engine then trains
the model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from keras import ops

from keras_privacy.training.fast import units as U
from keras_privacy.training.fast.rules import NotExact

#: Materialise both outer terms when the positions are unknown and the variable has at
#: most this many entries.
_MATERIALISE_UNKNOWN = 1 << 16


@dataclasses.dataclass
class OuterTerm:
    """``G_u = sum_s a[u, s]^T d[u, s]``: ``a`` ``[U, S, p]``, ``d`` ``[U, S, q]``."""

    a: Any
    d: Any
    layout: Any


@dataclasses.dataclass
class RowsTerm:
    """``G_u[v] = sum_{s: ids[u, s] = v} g[u, s]``: ``ids`` ``[U, S]``, ``g`` ``[U, S, q]``."""

    ids: Any
    g: Any
    layout: Any


@dataclasses.dataclass
class FullTerm:
    """``G_u = g[u]``, materialised: ``g`` ``[U, ...]`` in the variable's own order."""

    g: Any
    layout: Any


Term = OuterTerm | RowsTerm | FullTerm


def _f64(tensor: Any) -> Any:
    return ops.cast(tensor, "float64")


def _per_unit_sum(tensor: Any) -> Any:
    return ops.sum(ops.reshape(tensor, (ops.shape(tensor)[0], -1)), axis=1)


def _gram(x: Any, y: Any) -> Any:
    """``[U, S, k] x [U, T, k] -> [U, S, T]`` inner products, float64 (:func:`U.gram`)."""
    return U.gram(x, y)


def _static(n: Any) -> int | None:
    return n if isinstance(n, int) else None


def _outer_outer(x: OuterTerm, y: OuterTerm) -> Any:
    s, t = _static(x.a.shape[1]), _static(y.a.shape[1])
    p, q = x.a.shape[-1], x.d.shape[-1]
    if s is None or t is None:
        ghost = p * q > _MATERIALISE_UNKNOWN
    else:
        ghost = s * t * (p + q) <= (s + t) * p * q
    if ghost:
        return _per_unit_sum(_gram(x.a, y.a) * _gram(x.d, y.d))
    gx = ops.matmul(ops.transpose(_f64(x.a), (0, 2, 1)), _f64(x.d))
    gy = ops.matmul(ops.transpose(_f64(y.a), (0, 2, 1)), _f64(y.d))
    return _per_unit_sum(gx * gy)


def _rows_outer(x: RowsTerm, y: OuterTerm) -> Any:
    # b_t[id_s] for every lookup position s and projection position t: [U, T, S].
    ids = ops.cast(x.ids, "int32")
    positions = ops.shape(y.a)[1]
    index = ops.broadcast_to(ids[:, None, :], (ops.shape(ids)[0], positions, ops.shape(ids)[1]))
    picked = ops.take_along_axis(y.a, index, axis=2)
    return _per_unit_sum(_f64(picked) * _gram(y.d, x.g))


def _rows_rows(x: RowsTerm, y: RowsTerm) -> Any:
    same = ops.equal(x.ids[:, :, None], y.ids[:, None, :])
    return _per_unit_sum(ops.where(same, _gram(x.g, y.g), ops.zeros((), "float64")))


def _full_full(x: FullTerm, y: FullTerm) -> Any:
    return _per_unit_sum(_f64(x.g) * _f64(y.g))


def inner(x: Term, y: Term) -> Any:
    """``[U]`` float64: each unit's ``<G_x, G_y>`` for two terms of one variable."""
    if x.layout != y.layout:
        raise NotExact(
            f"two calls describe a shared variable in different layouts ({x.layout!r}, "
            f"{y.layout!r})"
        )
    if isinstance(x, OuterTerm) and isinstance(y, OuterTerm):
        return _outer_outer(x, y)
    if isinstance(x, RowsTerm) and isinstance(y, OuterTerm):
        return _rows_outer(x, y)
    if isinstance(x, OuterTerm) and isinstance(y, RowsTerm):
        return _rows_outer(y, x)
    if isinstance(x, RowsTerm) and isinstance(y, RowsTerm):
        return _rows_rows(x, y)
    if isinstance(x, FullTerm) and isinstance(y, FullTerm):
        return _full_full(x, y)
    raise NotExact(
        f"no cross term between a {type(x).__name__} and a {type(y).__name__} of a shared variable"
    )


def cross_terms(terms_by_variable: Sequence[Sequence[Term]]) -> Any:
    """``[U]`` float64: ``2 sum_{k < l} <G_k, G_l>`` summed over the shared variables
    (each given as the list of its calls' terms), or ``None`` if there are none."""
    total = None
    for terms in terms_by_variable:
        for i in range(len(terms)):
            for j in range(i + 1, len(terms)):
                value = 2.0 * inner(terms[i], terms[j])
                total = value if total is None else total + value
    return total
