"""Rules for Embedding (a table lookup) and for normalization layers (a per-feature scale
and offset). See :mod:`keras_privacy.training.fast.rules` for the math."""

from __future__ import annotations

import math
from typing import Any

from keras import ops

from keras_privacy.training.fast import units as U
from keras_privacy.training.fast.rules import (
    LayerRule,
    NotExact,
    _plain_layer,
    _scale_units,
    _trainable_only,
)
from keras_privacy.training.sparsity import SparseRows, contribution_weights


class EmbeddingRule(LayerRule):
    """``keras.layers.Embedding`` (any id shape; repeated ids; ``mask_zero``).

    Under sparsity-preserving DP-SGD (:mod:`keras_privacy.training.sparsity`) the clipped
    sum is returned by row (:class:`~keras_privacy.training.sparsity.SparseRows`: one
    slot per (row, unit) pair, with the unit's contribution weight), never as a
    table-sized tensor."""

    supports_sparse_rows = True

    def unsupported(self, layer):
        return _plain_layer(layer) or _trainable_only(layer, self.variables(layer))

    def variables(self, layer):
        return [layer._embeddings]

    def forward(self, layer, inputs, *args, **kwargs):
        ids = inputs
        if ids.dtype not in ("int32", "int64"):
            ids = ops.cast(ids, "int32")
        z = U.probe(ops.take(layer.embeddings, ids, axis=0))
        return ops.cast(z, layer.compute_dtype), {"ids": ids}, {"z": z}

    def _segments(self, call, units):
        """Each unit's distinct tokens: sort ``id * U + unit`` and sum the output
        gradients of equal keys (a sorted segment sum). Cached per call."""
        if "segments" in call.cache:
            return call.cache["segments"]
        ids = call.saved["ids"]
        d = U.float32(call.grads["z"])
        dim = d.shape[-1]
        count = units.count(ids)
        ids_u = ops.reshape(ops.cast(ids, "int64"), (count, -1))
        positions = ops.shape(ids_u)[1]
        owner = ops.reshape(
            ops.broadcast_to(ops.arange(count, dtype="int64")[:, None], (count, positions)), (-1,)
        )
        keys = ops.reshape(ids_u, (-1,)) * ops.cast(count, "int64") + owner
        order = ops.argsort(keys)
        sorted_keys = ops.take(keys, order)
        first = ops.concatenate(
            [ops.ones((1,), "bool"), ops.not_equal(sorted_keys[1:], sorted_keys[:-1])]
        )
        segment = ops.cumsum(ops.cast(first, "int32")) - 1
        rows = ops.take(ops.reshape(d, (-1, dim)), order, axis=0)
        # Backends that need static shapes (JAX) get one segment per position; the unused
        # ones are empty (zero sums, negative keys that the segment sums below drop).
        slots = None
        if U.backend_ops["static_segments"]:
            slots = keys.shape[0]
        segment_keys = ops.segment_max(sorted_keys, segment, num_segments=slots, sorted=True)
        seg = {
            "d_units": ops.reshape(d, (count, -1, dim)),
            "rows": rows,
            "row_units": ops.take(owner, order),
            "segment": segment,
            "sums": U.segment_sum(rows, segment, num_segments=slots, sorted=True),
            "slots": slots,
            "unit": segment_keys % ops.cast(count, "int64"),
            "id": segment_keys // ops.cast(count, "int64"),
            "count": count,
        }
        call.cache["segments"] = seg
        return seg

    def _unit_sq(self, seg, sums):
        return U.segment_sum(
            ops.sum(ops.square(sums), axis=1), seg["unit"], num_segments=seg["count"]
        )

    def squared_norms(self, call, units):
        seg = self._segments(call, units)
        return self._unit_sq(seg, seg["sums"])

    def norms(self, call, units):
        seg = self._segments(call, units)
        scale = U.unit_max_abs(seg["d_units"])
        row_scale = ops.maximum(ops.take(scale, seg["row_units"]), 1e-30)
        sums = U.segment_sum(
            seg["rows"] / row_scale[:, None], seg["segment"], num_segments=seg["slots"], sorted=True
        )
        return scale * ops.sqrt(self._unit_sq(seg, sums))

    def clipped_sums(self, call, units, factors, safe):
        seg = self._segments(call, units)
        weights = ops.take(factors, seg["unit"])
        sums = seg["sums"]
        if safe:
            sums = U.keep_rows(sums, weights)
        # Segments are sorted by token id, so the table is a sorted segment sum over ids
        # (rows up to the largest id present), completed with zero rows.
        vocab = int(call.layer.input_dim)
        sparsity = call.cache.get("sparsity")
        if sparsity is not None:
            return [self._sparse_rows(call, seg, sums, weights, sparsity)]
        if seg["slots"] is not None:
            keep = ops.cast(seg["id"] >= 0, sums.dtype)[:, None]
            return [U.segment_sum(U.scale_rows(sums, weights) * keep, seg["id"], vocab)]
        part = U.segment_sum(U.scale_rows(sums, weights), seg["id"], sorted=True)
        missing = ops.zeros((vocab - ops.shape(part)[0], part.shape[-1]), part.dtype)
        return [ops.concatenate([part, missing], axis=0)]

    def _sparse_rows(self, call, seg, sums, weights, sparsity):
        """One slot per (row, unit) pair: the row id, the unit's clipped share
        ``c_u sum_{s: id_s = v} dz_s`` and the unit's contribution ``w_u`` (0 for padding
        units), so the row counts are ``n_v = sum_u w_u 1[v in T_u]``."""
        valid = seg["id"] >= 0
        valid_f = ops.cast(valid, "float32")
        unit = ops.where(valid, seg["unit"], 0)
        distinct = U.segment_sum(valid_f, unit, num_segments=seg["count"])
        real = call.cache.get("real_units")
        if real is None:
            real = ops.ones((seg["count"],), "float32")
        contribution = contribution_weights(distinct, real, sparsity.contribution_bound)
        counts = ops.take(contribution, unit) * valid_f
        values = U.scale_rows(sums, weights) * valid_f[:, None]
        ids = ops.where(valid, ops.cast(seg["id"], "int32"), -1)
        return SparseRows(ids, values, counts)


def _trailing_axes(axis: Any, rank: int) -> list[int] | None:
    axes = sorted(a % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis]))
    if 0 in axes or axes != list(range(rank - len(axes), rank)):
        return None
    return axes


class _ScaleOffsetRule(LayerRule):
    """Normalization layers ``y = xhat * gamma + beta`` over trailing axes; the per-unit
    gradients ``sum_s dz_s * xhat_s`` and ``sum_s dz_s`` are small and materialised."""

    def _gamma_beta(self, layer) -> tuple[Any, Any]:
        raise NotImplementedError

    def _normalize(self, layer, inputs) -> Any:
        raise NotImplementedError

    def variables(self, layer):
        return [v for v in self._gamma_beta(layer) if v is not None]

    def forward(self, layer, inputs, *args, **kwargs):
        xhat = self._normalize(layer, inputs)
        gamma, beta = self._gamma_beta(layer)
        y = xhat
        if gamma is not None:
            y = y * ops.cast(gamma, y.dtype)
        if beta is not None:
            y = y + ops.cast(beta, y.dtype)
        y = U.probe(y)
        return ops.cast(y, layer.compute_dtype), {"xhat": xhat}, {"z": y}

    def _unit_grads(self, call, units):
        if "grads" in call.cache:
            return call.cache["grads"]
        gamma, beta = self._gamma_beta(call.layer)
        features = math.prod((gamma if gamma is not None else beta).shape)
        d = units.group(U.float32(call.grads["z"]), features)
        grads = []
        if gamma is not None:
            xhat = units.group(U.float32(call.saved["xhat"]), features)
            grads.append(ops.sum(d * xhat, axis=1))
        if beta is not None:
            grads.append(ops.sum(d, axis=1))
        call.cache["grads"] = grads
        return grads

    def squared_norms(self, call, units):
        grads = self._unit_grads(call, units)
        total = U.sum_squares(grads[0])
        for g in grads[1:]:
            total = total + U.sum_squares(g)
        return total

    def norms(self, call, units):
        return U.combine_norms([U.safe_norm(g) for g in self._unit_grads(call, units)])

    def clipped_sums(self, call, units, factors, safe):
        return [
            ops.reshape(ops.sum(_scale_units(g, factors, safe), axis=0), v.shape)
            for g, v in zip(self._unit_grads(call, units), self.variables(call.layer), strict=True)
        ]


def _check_axes(layer: Any, inputs: Any) -> None:
    if _trailing_axes(layer.axis, len(inputs.shape)) is None:
        raise NotExact(
            f"layer {layer.name!r} normalizes over axes {layer.axis}, not trailing feature axes"
        )


class LayerNormalizationRule(_ScaleOffsetRule):
    """``keras.layers.LayerNormalization`` over trailing axes (not ``rms_scaling``)."""

    def unsupported(self, layer):
        if getattr(layer, "rms_scaling", False):
            return "rms_scaling=True"
        return _trainable_only(layer, self.variables(layer))

    def _gamma_beta(self, layer):
        return layer.gamma, layer.beta

    def _normalize(self, layer, inputs):
        _check_axes(layer, inputs)
        return ops.layer_normalization(inputs, None, None, layer.axis, layer.epsilon)


class RMSNormalizationRule(_ScaleOffsetRule):
    """``keras.layers.RMSNormalization`` over trailing axes."""

    def unsupported(self, layer):
        return _trainable_only(layer, self.variables(layer))

    def _gamma_beta(self, layer):
        return layer.scale, None

    def _normalize(self, layer, inputs):
        _check_axes(layer, inputs)
        return ops.rms_normalization(inputs, scale=None, axis=layer.axis, epsilon=layer.epsilon)


class GroupNormalizationRule(_ScaleOffsetRule):
    """``keras.layers.GroupNormalization`` with channels last: each example's channels are
    normalized in groups over all its positions, then scaled and shifted per channel."""

    def unsupported(self, layer):
        return _trainable_only(layer, self.variables(layer))

    def _gamma_beta(self, layer):
        return (layer.gamma if layer.scale else None), (layer.beta if layer.center else None)

    def _normalize(self, layer, inputs):
        if layer.axis not in (-1, len(inputs.shape) - 1):
            raise NotExact(f"layer {layer.name!r} normalizes groups over axis {layer.axis}")
        channels = inputs.shape[-1]
        x = ops.cast(inputs, "float32")
        grouped = ops.reshape(x, (ops.shape(x)[0], -1, layer.groups, channels // layer.groups))
        mean, variance = ops.moments(grouped, axes=(1, 3), keepdims=True)
        xhat = (grouped - mean) * ops.rsqrt(variance + layer.epsilon)
        return ops.reshape(xhat, ops.shape(inputs))
