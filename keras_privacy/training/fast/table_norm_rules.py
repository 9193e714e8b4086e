"""Rules for Embedding (a table lookup) and for normalization layers (a per-feature scale
and offset). See :mod:`keras_privacy.training.fast.rules` for the math."""

from __future__ import annotations

import math
from typing import Any

from keras import ops
from keras.src.backend import set_keras_mask

from keras_privacy.training.fast import units as U
from keras_privacy.training.fast.matmul_rules import (
    _lora_on,
    _lora_values,
    outer_clipped_sum,
    outer_norm,
    outer_sq,
)
from keras_privacy.training.fast.rules import (
    LayerRule,
    NotExact,
    _not_quantized,
    _scale_units,
    _static_positions,
    _trainable,
    _trainable_only,
)
from keras_privacy.training.fast.shared import FullTerm, OuterTerm, RowsTerm
from keras_privacy.training.sparsity import SparseRows, contribution_weights


class EmbeddingRule(LayerRule):
    """``keras.layers.Embedding`` (any id shape; repeated ids; ``mask_zero``), with or
    without LoRA.

    The table's per-unit gradient is ``G_u[v] = sum_{s: id_s = v} dz_s`` (rows by token
    id). With LoRA (``E = E0 + s A B``): ``dL/dA`` has the same form with ``s dz B^T``
    in place of ``dz`` (rank-wide rows), and ``dL/dB = s sum_s A[id_s]^T dz_s``, a
    Dense-like outer product over positions (:func:`outer_sq`).

    Under sparsity-preserving DP-SGD (:mod:`keras_privacy.training.sparsity`) the table's
    clipped sum (a layer without LoRA) is returned by row
    (:class:`~keras_privacy.training.sparsity.SparseRows`: one slot per (row, unit) pair,
    with the unit's contribution weight), never as a table-sized tensor.
    """

    supports_sparse_rows = True

    def unsupported(self, layer):
        return _not_quantized(layer)

    def variables(self, layer):
        lora = [layer.lora_embeddings_a, layer.lora_embeddings_b] if _lora_on(layer) else []
        return _trainable([layer._embeddings, *lora])

    def forward(self, layer, inputs, *args, **kwargs):
        ids = inputs
        if ids.dtype not in ("int32", "int64"):
            ids = ops.cast(ids, "int32")
        z = U.probe(ops.take(layer.embeddings, ids, axis=0))
        saved = {"ids": ids, **_lora_values(layer, "lora_embeddings_a", "lora_embeddings_b")}
        return ops.cast(z, layer.compute_dtype), saved, {"z": z}

    # The lookup's tensors: ids and their output gradients (overridden by a rule whose
    # call is not always a lookup).
    def _lookup(self, call):
        return call.saved["ids"], call.grads["z"]

    def _segments(self, call, units):
        """Each unit's distinct tokens: sort ``id * U + unit`` (cached per call). The
        per-token sums of any rows (:meth:`_row_sums`) are then sorted segment sums."""
        if "segments" in call.cache:
            return call.cache["segments"]
        ids, _ = self._lookup(call)
        count = units.count(ids)
        ids_u = ops.reshape(ops.cast(ids, "int64"), (count, -1))
        positions = ops.shape(ids_u)[1]
        owner = ops.reshape(
            ops.broadcast_to(ops.arange(count, dtype="int64")[:, None], (count, positions)), (-1,)
        )
        keys = ops.reshape(ids_u, (-1,)) * ops.cast(count, "int64") + owner
        order = U.argsort(keys)
        sorted_keys = ops.take(keys, order)
        first = ops.concatenate(
            [ops.ones((1,), "bool"), ops.not_equal(sorted_keys[1:], sorted_keys[:-1])]
        )
        # Backends that need static shapes (JAX) get one segment per position; the unused
        # ones are empty (zero sums, negative keys that the segment sums below drop).
        slots = None
        if U.backend_ops["static_segments"]:
            slots = keys.shape[0]
        segment = ops.cumsum(ops.cast(first, "int32")) - 1
        segment_keys = U.segment_max(sorted_keys, segment, num_segments=slots, sorted=True)
        seg = {
            "order": order,
            "row_units": ops.take(owner, order),
            "segment": segment,
            "slots": slots,
            "unit": segment_keys % ops.cast(count, "int64"),
            "id": segment_keys // ops.cast(count, "int64"),
            "count": count,
        }
        call.cache["segments"] = seg
        return seg

    def _row_sums(self, seg, rows):
        """``[segments, q]``: the rows ``[B, ..., q]`` summed per (unit, token)."""
        flat = ops.take(ops.reshape(U.float32(rows), (-1, rows.shape[-1])), seg["order"], axis=0)
        return U.segment_sum(flat, seg["segment"], num_segments=seg["slots"], sorted=True)

    def _cached_row_sums(self, call, seg, variable, rows):
        """:meth:`_row_sums` of one variable's rows, computed once per call: the norm pass
        and the clipped sum's pass read the same per-(unit, token) sums (kept in the
        call's cache, let go with it)."""
        cached = call.cache.setdefault("row_sums", {})
        if id(variable) not in cached:
            cached[id(variable)] = self._row_sums(seg, rows)
        return cached[id(variable)]

    def _unit_sq(self, seg, sums):
        return U.segment_sum(
            ops.sum(ops.square(sums), axis=1), seg["unit"], num_segments=seg["count"]
        )

    def _rows_pieces(self, call, units):
        """``[(variable, rows [B, ..., q])]``: the row-by-token parts, and the LoRA ``B``
        part as ``(variable, a [U, S, r], d [U, S, D])``, cached."""
        if "pieces" in call.cache:
            return call.cache["pieces"]
        layer = call.layer
        ids, dz = self._lookup(call)
        rows, outer = [], []
        if layer._embeddings.trainable:
            rows.append((layer._embeddings, dz))
        if _lora_on(layer):
            scale = layer.lora_alpha / layer.lora_rank
            b = ops.cast(call.saved["lora_b"], "float32")
            if layer.lora_embeddings_a.trainable:
                dzb = scale * ops.matmul(U.float32(dz), ops.transpose(b))
                rows.append((layer.lora_embeddings_a, dzb))
            if layer.lora_embeddings_b.trainable:
                a = scale * ops.take(ops.cast(call.saved["lora_a"], "float32"), ids, axis=0)
                a = ops.reshape(a, (ops.shape(a)[0], -1, a.shape[-1]))
                d = ops.reshape(U.float32(dz), (ops.shape(dz)[0], -1, dz.shape[-1]))
                positions = _static_positions(a, units)
                outer.append((layer.lora_embeddings_b, units.group(a), units.group(d), positions))
        call.cache["pieces"] = (rows, outer)
        return rows, outer

    def squared_norms(self, call, units):
        rows, outer = self._rows_pieces(call, units)
        seg = self._segments(call, units)
        parts = [self._unit_sq(seg, self._cached_row_sums(call, seg, v, r)) for v, r in rows]
        keep = call.cache.setdefault("keep", {})
        for v, a, d, positions in outer:
            parts.append(outer_sq(a, d, positions, keep.setdefault(id(v), {})))
        return sum(parts[1:], parts[0])

    def norms(self, call, units):
        rows, outer = self._rows_pieces(call, units)
        seg = self._segments(call, units)
        parts = []
        for _, r in rows:
            scale = U.unit_max_abs(ops.reshape(U.float32(r), (seg["count"], -1, r.shape[-1])))
            row_scale = ops.maximum(ops.take(scale, seg["row_units"]), 1e-30)
            flat = ops.take(ops.reshape(U.float32(r), (-1, r.shape[-1])), seg["order"], axis=0)
            sums = U.segment_sum(
                flat / row_scale[:, None], seg["segment"], num_segments=seg["slots"], sorted=True
            )
            parts.append(scale * ops.sqrt(self._unit_sq(seg, sums)))
        parts += [outer_norm(a, d, positions) for _, a, d, positions in outer]
        return U.combine_norms(parts)

    def _table_sum(self, seg, sums, factors, safe, vocab):
        weights = ops.take(factors, seg["unit"])
        if safe:
            sums = U.keep_rows(sums, weights)
        # Segments are sorted by token id, so the table is a sorted segment sum over ids
        # (rows up to the largest id present), completed with zero rows.
        if seg["slots"] is not None:
            keep = ops.cast(seg["id"] >= 0, sums.dtype)[:, None]
            return U.segment_sum(U.scale_rows(sums, weights) * keep, seg["id"], vocab)
        part = U.segment_sum(U.scale_rows(sums, weights), seg["id"], sorted=True)
        missing = ops.zeros((vocab - ops.shape(part)[0], part.shape[-1]), part.dtype)
        return ops.concatenate([part, missing], axis=0)

    def _lookup_clipped_sums(self, call, units, factors, safe):
        rows, outer = self._rows_pieces(call, units)
        seg = self._segments(call, units)
        vocab = int(call.layer.input_dim)
        by_id = {}
        sparsity = call.cache.get("sparsity")
        for v, r in rows:
            sums = self._cached_row_sums(call, seg, v, r)
            if sparsity is not None and v is call.layer._embeddings:
                weights = ops.take(factors, seg["unit"])
                if safe:
                    sums = U.keep_rows(sums, weights)
                by_id[id(v)] = self._sparse_rows(call, seg, sums, weights, sparsity)
            else:
                by_id[id(v)] = self._table_sum(seg, sums, factors, safe, vocab)
        keep = call.cache.get("keep", {})
        for v, a, d, _ in outer:
            by_id[id(v)] = outer_clipped_sum(a, d, factors, safe, keep.get(id(v)))
        return by_id

    def clipped_sums(self, call, units, factors, safe):
        by_id = self._lookup_clipped_sums(call, units, factors, safe)
        return [by_id[id(v)] for v in self.call_variables(call)]

    def _lookup_terms(self, call, units):
        rows, outer = self._rows_pieces(call, units)
        ids, _ = self._lookup(call)
        ids_u = ops.reshape(ids, (units.count(ids), -1))
        by_id = {}
        for v, r in rows:
            g = units.group(ops.reshape(U.float32(r), (ops.shape(r)[0], -1, r.shape[-1])))
            by_id[id(v)] = RowsTerm(ids_u, g, "2d")
        for v, a, d, _ in outer:
            by_id[id(v)] = OuterTerm(a, d, "2d")
        return by_id

    def terms(self, call, units):
        by_id = self._lookup_terms(call, units)
        return [by_id[id(v)] for v in self.call_variables(call)]

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
        # An unused slot's sums are zero (no rows), so its values are too.
        values = U.scale_rows(sums, weights)
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

    def terms(self, call, units):
        return [FullTerm(g, "full") for g in self._unit_grads(call, units)]


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


class ReversibleEmbeddingRule(EmbeddingRule):
    """``keras.layers.ReversibleEmbedding`` (and keras-hub's subclass): a lookup, and with
    ``reverse=True`` the output projection ``z = h T`` with ``T = E^T`` (tied) or the
    separate ``reverse_embeddings`` (untied), before the optional logit soft cap.

    The projection's per-unit gradient is Dense-like: ``dL/dE = sum_t dz_t h_t^T``
    (tied; ``[V, D]``) or ``dL/dT = sum_t h_t dz_t^T`` (untied), with the double sum or
    materialising chosen from static shapes (:func:`outer_sq`). A tied table is reached
    by the lookup and the projection: its norm gets their cross term
    (:mod:`keras_privacy.training.fast.shared`).

    With LoRA (``E = E0 + s A B``, ``A`` ``[V, r]``, ``B`` ``[r, D]``), the lookup is the
    Embedding rule's, and a tied projection ``z_t = h_t E0^T + s (h_t B^T) A^T`` gives two
    more outer products over positions: ``dL/dA = sum_t dz_t^T (s h_t B^T)`` and
    ``dL/dB = sum_t (s dz_t A)^T h_t``. ``A`` and ``B`` are then reached by both calls, so
    their norms get the cross terms too. An untied projection does not read ``E``.
    """

    # A reversed (output) projection's gradient touches every row: never by row.
    supports_sparse_rows = False

    def unsupported(self, layer):
        return _not_quantized(layer)

    def _lora(self, layer) -> list:
        return [layer.lora_embeddings_a, layer.lora_embeddings_b] if _lora_on(layer) else []

    def variables(self, layer):
        reverse = getattr(layer, "reverse_embeddings", None)
        return _trainable([layer._embeddings, *self._lora(layer), reverse])

    def call_variables(self, call):
        layer = call.layer
        if call.saved["reverse"] and not layer.tie_weights:
            return _trainable([layer.reverse_embeddings])
        return _trainable([layer._embeddings, *self._lora(layer)])

    def forward(self, layer, inputs, *args, reverse=False, **kwargs):
        if not reverse:
            out, saved, probes = super().forward(layer, inputs)
            if layer.mask_zero:
                set_keras_mask(out, ops.not_equal(saved["ids"], 0))
            return out, {**saved, "reverse": False}, probes
        kernel = ops.transpose(layer.embeddings) if layer.tie_weights else layer.reverse_embeddings
        if layer.reverse_dtype is not None:
            inputs = ops.cast(inputs, layer.reverse_dtype)
            kernel = ops.cast(kernel, layer.reverse_dtype)
        z = U.probe(ops.matmul(inputs, kernel))
        logits = z
        if layer.logit_soft_cap is not None:
            cap = layer.logit_soft_cap
            logits = ops.multiply(ops.tanh(ops.divide(z, cap)), cap)
        saved = {"h": inputs, "reverse": True}
        if layer.tie_weights:
            saved.update(_lora_values(layer, "lora_embeddings_a", "lora_embeddings_b"))
        return logits, saved, {"z": z}

    def _projection(self, call, units):
        """``[(variable, a, d)]``: the projection's outer products ``G_u = sum_t a_t^T d_t``
        in :meth:`call_variables`' order (float32, grouped), and the positions per unit."""
        if "projection" not in call.cache:
            layer = call.layer
            h, dz = call.saved["h"], call.grads["z"]
            h = ops.reshape(h, (ops.shape(h)[0], -1, h.shape[-1]))
            dz = ops.reshape(dz, (ops.shape(dz)[0], -1, dz.shape[-1]))
            positions = _static_positions(h, units)
            h, dz = U.float32(units.group(h)), U.float32(units.group(dz))
            # In call_variables' order, each only when trainable (never computed for a
            # frozen variable).
            pieces = []
            if not layer.tie_weights:
                pieces.append((layer.reverse_embeddings, lambda: (h, dz)))
            else:
                pieces.append((layer._embeddings, lambda: (dz, h)))
                if _lora_on(layer):
                    scale = layer.lora_alpha / layer.lora_rank
                    a = ops.cast(call.saved["lora_a"], "float32")
                    b = ops.cast(call.saved["lora_b"], "float32")
                    pieces.append(
                        (
                            layer.lora_embeddings_a,
                            lambda: (dz, scale * ops.matmul(h, ops.transpose(b))),
                        )
                    )
                    pieces.append((layer.lora_embeddings_b, lambda: (scale * ops.matmul(dz, a), h)))
            pieces = [(v, *sides()) for v, sides in pieces if v.trainable]
            call.cache["projection"] = (pieces, positions)
        return call.cache["projection"]

    def _zeros(self, call, units):
        rows = call.saved["h"] if call.saved["reverse"] else call.saved["ids"]
        return ops.zeros((units.count(rows),), "float32")

    def squared_norms(self, call, units):
        if not self.call_variables(call):
            return self._zeros(call, units)
        if not call.saved["reverse"]:
            return super().squared_norms(call, units)
        pieces, positions = self._projection(call, units)
        keep = call.cache.setdefault("keep", {})
        parts = [outer_sq(a, d, positions, keep.setdefault(id(v), {})) for v, a, d in pieces]
        return sum(parts[1:], parts[0])

    def norms(self, call, units):
        if not self.call_variables(call):
            return self._zeros(call, units)
        if not call.saved["reverse"]:
            return super().norms(call, units)
        pieces, positions = self._projection(call, units)
        return U.combine_norms([outer_norm(a, d, positions) for _, a, d in pieces])

    def clipped_sums(self, call, units, factors, safe):
        if not self.call_variables(call) or not call.saved["reverse"]:
            return super().clipped_sums(call, units, factors, safe)
        pieces, _ = self._projection(call, units)
        keep = call.cache.get("keep", {})
        return [outer_clipped_sum(a, d, factors, safe, keep.get(id(v))) for v, a, d in pieces]

    def terms(self, call, units):
        if not call.saved["reverse"]:
            return super().terms(call, units)
        pieces, _ = self._projection(call, units)
        return [OuterTerm(a, d, "2d") for _, a, d in pieces]
