"""Per-unit norms and the clipped sum from the captured rule calls (``keras.ops``).

Each unit's gradient norm over *all* trainable variables is
``||g_u|| = sqrt(sum_calls ||g_{u,call}||^2 + cross terms)``: a variable reached by one
call contributes that call's part alone, a variable reached by several calls (shared or
tied weights) also the inner products of its calls' parts
(:mod:`keras_privacy.training.fast.shared`), computed in float64. The clip factor is
``min(1, C / ||g_u||)`` (0 for a non-finite norm, as in
:mod:`keras_privacy.training.clipping`), and each layer builds its share of
``sum_u c_u g_u`` from the same activations and output gradients.

Two paths, chosen at run time as in :func:`keras_privacy.training.clipping.global_norms`:
the plain one (squares summed directly) when every unit's squared norm is finite, and a
scaled one (norms computed as ``m * ||g / m||``) when a square overflowed; and for the
sums, a plain one when every norm is finite and one that zeroes the tensors of units
with factor 0 first (``0 * NaN`` is NaN) otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from keras import ops

from keras_privacy.training import clipping
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.fast.rules import RuleCall
from keras_privacy.training.fast.shared import cross_terms
from keras_privacy.training.fast.units import Units, combine_norms
from keras_privacy.training.sparsity import SparseRows


def shared_variables(calls: Sequence[RuleCall]) -> dict[int, list[tuple[RuleCall, int]]]:
    """The variables reached by more than one call: ``id -> [(call, index in the call's
    variables)]``."""
    reached: dict[int, list[tuple[RuleCall, int]]] = {}
    for call in calls:
        for index, v in enumerate(call.rule.call_variables(call)):
            reached.setdefault(id(v), []).append((call, index))
    return {k: v for k, v in reached.items() if len(v) > 1}


def _cross(calls: Sequence[RuleCall], units: Units) -> Any:
    shared = shared_variables(calls)
    if not shared:
        return None
    for call in {id(c): c for uses in shared.values() for c, _ in uses}.values():
        if "terms" not in call.cache:
            call.cache["terms"] = call.rule.terms(call, units)
    by_variable = [[call.cache["terms"][i] for call, i in uses] for uses in shared.values()]
    return cross_terms(by_variable)


def unit_norms(calls: Sequence[RuleCall], units: Units) -> Any:
    """``[U]``: each unit's global gradient norm (NaN/inf where not finite)."""
    squared = None
    for call in calls:
        sq = call.rule.squared_norms(call, units)
        squared = sq if squared is None else squared + sq
    cross = _cross(calls, units)
    if cross is not None:
        # Cross terms may be negative (parts pointing apart): sum in float64, and rebuild
        # from the overflow-safe per-call norms where a float32 square overflowed.
        def with_cross(parts):
            total = ops.maximum(parts + cross, 0.0)
            return ops.cast(ops.sqrt(total), "float32")

        return ops.cond(
            ops.all(ops.isfinite(squared)),
            lambda: with_cross(ops.cast(squared, "float64")),
            lambda: with_cross(
                sum(ops.square(ops.cast(call.rule.norms(call, units), "float64")) for call in calls)
            ),
        )
    return ops.cond(
        ops.all(ops.isfinite(squared)),
        lambda: ops.sqrt(squared),
        lambda: combine_norms([call.rule.norms(call, units) for call in calls]),
    )


def clipped_gradient_sum(
    calls: Sequence[RuleCall],
    units: Units,
    variables: Sequence,
    l2_norm_clip: float,
    unit_mask: Any = None,
    sparsity: Any = None,
    release: Callable[[RuleCall], None] | None = None,
) -> tuple[list, Any]:
    """``([sum_u c_u grad_u for each of variables], norms)`` with the norms of
    :func:`unit_norms` and ``c_u = min(1, C / ||g_u||)`` (0 for a non-finite norm and for
    units outside ``unit_mask``: padding rows); every variable of every call is summed
    (a variable reached by several calls gets the sum of their parts), returned in the
    order of ``variables``. With ``sparsity`` (a
    :class:`~keras_privacy.training.sparsity.SparsityPreserving`) the tables of rules
    that support it come back by row (:class:`~keras_privacy.training.sparsity.SparseRows`).
    ``release``, for eager backends only (where just one of the two paths below runs), is
    called with each call once its sums are taken, to let go of its tensors."""
    norms = unit_norms(calls, units)
    for call in calls:
        if sparsity is not None and getattr(call.rule, "supports_sparse_rows", False):
            call.cache["sparsity"] = sparsity
            call.cache["real_units"] = None if unit_mask is None else ops.cast(unit_mask, "float32")
    factors = clipping.clip_factors(norms, l2_norm_clip, unit_mask)

    covered = [v for call in calls for v in call.rule.call_variables(call)]

    def sums(safe: bool):
        def run():
            out = []
            for call in calls:
                out.extend(call.rule.clipped_sums(call, units, factors, safe))
                if release is not None:
                    release(call)
            return out

        return run

    flat = ops.cond(ops.all(ops.isfinite(norms)), sums(False), sums(True))
    by_id: dict[int, Any] = {}
    for v, g in zip(covered, flat, strict=True):
        if id(v) in by_id and isinstance(g, SparseRows):
            raise PrivacyError(
                f"sparsity_preserving: the table {v.path!r} is reached by several calls (a "
                "shared or tied embedding); its rows cannot be selected per call. Train it "
                "without sparsity_preserving."
            )
        by_id[id(v)] = g if id(v) not in by_id else by_id[id(v)] + g
    return [by_id[id(v)] for v in variables], norms
