"""Backend-neutral clipping arithmetic (``keras.ops``), shared by every engine.

Given per-unit gradients ``g_u`` (one list entry per trainable variable, each with a
leading unit axis), this computes each unit's *global* L2 norm over all variables,
``||g_u|| = sqrt(sum_v ||g_{u,v}||^2)``, the clip factor ``min(1, C / ||g_u||)`` and the
clipped sum ``sum_u factor_u * g_u``. A unit whose gradient is not finite (NaN or inf,
e.g. from an overflowing example) gets factor 0 and contributes exactly zero, so one bad
example can neither poison the update nor escape the bound.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras import ops

_TINY = 1e-30


def _squared_norms(grads: Sequence) -> object:
    total = None
    for g in grads:
        sq = ops.sum(ops.reshape(ops.square(g), (ops.shape(g)[0], -1)), axis=1)
        total = sq if total is None else total + sq
    return total


def _overflow_safe_norms(grads: Sequence) -> object:
    """Norms computed as m * ||g / m|| with m = max |g|, for gradients near float max."""
    peak = None
    for g in grads:
        m = ops.max(ops.reshape(ops.abs(g), (ops.shape(g)[0], -1)), axis=1)
        peak = m if peak is None else ops.maximum(peak, m)
    scale = ops.maximum(peak, _TINY)
    total = None
    for g in grads:
        shape = (-1,) + (1,) * (len(g.shape) - 1)
        sq = ops.sum(
            ops.reshape(ops.square(g / ops.reshape(scale, shape)), (ops.shape(g)[0], -1)), axis=1
        )
        total = sq if total is None else total + sq
    return scale * ops.sqrt(total)


def global_norms(grads: Sequence) -> object:
    """Per-unit L2 norm over all variables; exact even where squares overflow float32."""
    sq = _squared_norms(grads)
    return ops.cond(
        ops.all(ops.isfinite(sq)),
        lambda: ops.sqrt(sq),
        lambda: _overflow_safe_norms(grads),
    )


def clip_factors(norms: object, l2_norm_clip: float, unit_mask: object | None = None) -> object:
    """``min(1, C / norm)``; 0 for non-finite norms and for masked (padding) units."""
    finite = ops.isfinite(norms)
    safe = ops.where(finite, norms, 1.0)
    factors = ops.minimum(1.0, l2_norm_clip / ops.maximum(safe, _TINY))
    factors = ops.where(finite, factors, 0.0)
    if unit_mask is not None:
        factors = factors * ops.cast(unit_mask, factors.dtype)
    return factors


def weighted_sum(grads: Sequence, factors: object, norms: object) -> list:
    """``sum_u factor_u * g_u`` per variable, exact zero for units with factor 0.

    A NaN or inf times 0 is NaN, so when any unit is non-finite its gradient entries are
    replaced by zeros first (a second pass that only runs in that rare case). ``norms``
    (from :func:`global_norms`) are finite exactly when every entry of a unit is finite.
    """

    def fast():
        return [ops.tensordot(factors, g, axes=1) for g in grads]

    def safe():
        out = []
        for g in grads:
            shape = (-1,) + (1,) * (len(g.shape) - 1)
            keep = ops.reshape(factors > 0, shape)
            out.append(ops.tensordot(factors, ops.where(keep, g, ops.zeros_like(g)), axes=1))
        return out

    return ops.cond(ops.all(ops.isfinite(norms)), fast, safe)


def clipped_sum(grads: Sequence, l2_norm_clip: float, unit_mask: object | None = None) -> tuple:
    """``(sum_u c_u g_u, norms)`` with ``c_u = min(1, C / ||g_u||)``: :func:`global_norms`,
    :func:`clip_factors` (0 for non-finite norms and for units outside ``unit_mask``) and
    :func:`weighted_sum` in one call, as every vectorized engine clips its unit gradients."""
    norms = global_norms(grads)
    factors = clip_factors(norms, l2_norm_clip, unit_mask)
    return weighted_sum(grads, factors, norms), norms


def unclipped_count(norms: object, l2_norm_clip: object, unit_mask: object | None = None) -> object:
    """``sum_u 1[||g_u|| <= C]`` over the real units (float32): the units the clip left
    whole, from the same norms that gave the clip factors. A non-finite norm (factor 0)
    and a masked (padding) unit count 0. Adaptive clipping's count query
    (:mod:`keras_privacy.training.adaptive_clip`)."""
    below = ops.cast(ops.logical_and(ops.isfinite(norms), norms <= l2_norm_clip), "float32")
    if unit_mask is not None:
        below = below * ops.cast(unit_mask, "float32")
    return ops.sum(below)


def next_adaptive_clip(
    l2_norm_clip: object,
    unclipped: object,
    units: object,
    count_noise: object,
    divisor: object,
    target_quantile: float,
    learning_rate: float,
) -> object:
    """``C exp(-eta (b - gamma))`` with the noisy unclipped fraction
    ``b = clamp(1/2 + (unclipped - units / 2 + count_noise) / B, 0, 1)``: each of the
    ``units`` examples enters as ``1[||g|| <= C] - 1/2`` (sensitivity 1/2), ``count_noise``
    is ``N(0, s^2)`` and ``B`` the public divisor (Andrew et al. 2021, geometric update)."""
    shifted = ops.cast(unclipped, "float32") - 0.5 * ops.cast(units, "float32")
    fraction = 0.5 + (shifted + count_noise) / ops.cast(divisor, "float32")
    fraction = ops.clip(fraction, 0.0, 1.0)
    return l2_norm_clip * ops.exp(-learning_rate * (fraction - target_quantile))
