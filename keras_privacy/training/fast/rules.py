"""Norm-only ("ghost" / book-keeping) clipping rules, one per layer type (``keras.ops``).

For a layer computing ``z = f(a, W)`` the per-unit gradient of ``W`` is a function of the
layer's input ``a`` and of the loss gradient ``dz = dL/dz`` at the unit's positions. A rule

1. runs the layer's forward itself (:meth:`LayerRule.forward`), keeping what it needs
   (``saved``) and naming the tensors whose loss gradients it needs (``probes``);
2. computes each unit's squared gradient norm over the layer's variables from those
   tensors without materialising per-unit gradients where that is cheaper
   (:meth:`squared_norms`, and :meth:`norms` without overflow in the squares);
3. builds the layer's share of ``sum_u c_u grad_u`` from the same tensors, with each
   unit's clip factor ``c_u`` applied to its output gradients (:meth:`clipped_sums`).

Dense, for a unit with positions ``s`` (rows of a microbatch, tokens of a sequence)::

    G_u = sum_s a_s dz_s^T,     ||G_u||^2 = sum_{s,s'} (a_s . a_s') (dz_s . dz_s')

The double sum costs ``S^2 (d_in + d_out)`` per unit, materialising ``G_u`` costs
``S d_in d_out``; the rule picks the cheaper from static shapes. The clipped sum is one
matmul, ``a^T (c * dz)``. Embedding: ``G_u[v] = sum_{s: id_s = v} dz_s``, so the squared
norm is a sum over the unit's *distinct* tokens of the squared sum of their output
gradients (a sort and a segment sum, never a vocabulary-sized tensor per unit), and the
clipped sum is a segment sum of ``c * dz`` over token ids. Normalization layers: the
per-unit scale and offset gradients are small and are materialised.

The registry is public: :func:`register_rule` adds a rule for a custom layer class.
A rule applies to an instance only if the instance's class does not override ``call``
(checked by identity), so a subclass that changes the computation never gets a rule
written for its parent.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
from keras import ops

from keras_privacy.training.fast import units as U
from keras_privacy.training.fast.units import Units


class NotExact(Exception):
    """Raised while tracing when the fast engine cannot be exact for a model; the message
    says why. ``engine="auto"`` then uses the vectorized engine."""


@dataclasses.dataclass
class RuleCall:
    """One captured call of a layer that has a rule.

    Attributes:
      layer: the layer.
      rule: its rule.
      saved: tensors the rule kept from the forward pass (e.g. the input activations).
      probes: tensors whose loss gradients the rule needs, by name.
      grads: the loss gradients of ``probes`` (filled in by the engine after backward).
      cache: per-call intermediate results a rule may reuse between its methods.
    """

    layer: Any
    rule: LayerRule
    saved: dict
    probes: dict
    grads: dict = dataclasses.field(default_factory=dict)
    cache: dict = dataclasses.field(default_factory=dict)


class LayerRule:
    """Base class of a per-layer rule; see the module docstring for the contract."""

    def unsupported(self, layer: Any) -> str | None:
        """Why this instance is outside the rule (then the engine is not used), or None."""
        return None

    def variables(self, layer: Any) -> list:
        """The layer's variables whose gradients the rule computes, in a fixed order."""
        raise NotImplementedError

    def forward(self, layer: Any, inputs: Any, *args: Any, **kwargs: Any) -> tuple[Any, dict, dict]:
        """Compute the layer's outputs exactly as its ``call``; return
        ``(outputs, saved, probes)``."""
        raise NotImplementedError

    def squared_norms(self, call: RuleCall, units: Units) -> Any:
        """``[U]``: each unit's squared gradient norm over :meth:`variables`."""
        raise NotImplementedError

    def norms(self, call: RuleCall, units: Units) -> Any:
        """``[U]``: the same as a norm, exact where the squares overflow float32."""
        raise NotImplementedError

    def clipped_sums(self, call: RuleCall, units: Units, factors: Any, safe: bool) -> list:
        """``sum_u factors_u grad_u`` per variable. With ``safe``, units with factor 0
        must contribute exactly zero even if their tensors hold NaN or inf."""
        raise NotImplementedError


def _static_positions(tensor: Any, units: Units, feature_axes: int = 1) -> int | None:
    """``S``, the positions per unit of a ``[B, ..., d]`` tensor, if known statically."""
    middle = tensor.shape[1 : len(tensor.shape) - feature_axes]
    if any(d is None for d in middle):
        return None
    positions = math.prod(middle)
    if units.num_units is None:
        return positions
    rows = tensor.shape[0]
    return None if rows is None else positions * (rows // units.num_units)


def _trainable_only(layer: Any, variables: list) -> str | None:
    if any(not v.trainable for v in variables):
        return "some of its variables are trainable and some are not"
    return None


def _scale_units(grouped: Any, factors: Any, safe: bool) -> Any:
    if safe:
        grouped = U.keep_rows(grouped, factors)
    return U.scale_rows(grouped, factors)


class _MatmulRule(LayerRule):
    """Shared math of Dense and EinsumDense: ``z = a W (+ b)`` on ``[B, S, d_in]``."""

    def _kernel_2d(self, call: RuleCall, units: Units) -> tuple[Any, Any]:
        """``a`` as ``[U, S, d_in]`` and ``dz`` as ``[U, S, d_out]``, float32."""
        raise NotImplementedError

    def _kernel_from_2d(self, layer: Any, grad_2d: Any) -> Any:
        return grad_2d

    def _bias_units(self, call: RuleCall, units: Units) -> Any:
        """``[U, n_bias]``: each unit's bias gradient."""
        raise NotImplementedError

    def _grouped(self, call, units):
        if "a" not in call.cache:
            call.cache["a"], call.cache["d"] = self._kernel_2d(call, units)
        return call.cache["a"], call.cache["d"]

    def _kernel_sq(self, a, d, positions):
        if positions == 1:
            return U.sum_squares(a) * U.sum_squares(d)
        d_in, d_out = a.shape[-1], d.shape[-1]
        ghost = positions is None or positions * (d_in + d_out) <= d_in * d_out
        if ghost:
            aa = ops.matmul(a, ops.transpose(a, (0, 2, 1)))
            dd = ops.matmul(d, ops.transpose(d, (0, 2, 1)))
            return ops.sum(ops.reshape(aa * dd, (ops.shape(aa)[0], -1)), axis=1)
        return U.sum_squares(ops.matmul(ops.transpose(a, (0, 2, 1)), d))

    def _positions(self, call, units):
        return call.cache.get("positions")

    def squared_norms(self, call, units):
        a, d = self._grouped(call, units)
        sq = self._kernel_sq(a, d, self._positions(call, units))
        if call.layer.bias is not None:
            sq = sq + U.sum_squares(self._bias_units(call, units))
        return sq

    def norms(self, call, units):
        a, d = self._grouped(call, units)
        ma, md = U.unit_max_abs(a), U.unit_max_abs(d)
        a_hat, d_hat = U.safe_divide(a, ma), U.safe_divide(d, md)
        kernel = ma * md * ops.sqrt(self._kernel_sq(a_hat, d_hat, self._positions(call, units)))
        parts = [kernel]
        if call.layer.bias is not None:
            parts.append(U.safe_norm(self._bias_units(call, units)))
        return U.combine_norms(parts)

    def clipped_sums(self, call, units, factors, safe):
        a, d = self._grouped(call, units)
        if safe:
            a = U.keep_rows(a, factors)
        d_scaled = _scale_units(d, factors, safe)
        a_flat = ops.reshape(a, (-1, a.shape[-1]))
        d_flat = ops.reshape(d_scaled, (-1, d.shape[-1]))
        out = [self._kernel_from_2d(call.layer, ops.matmul(ops.transpose(a_flat), d_flat))]
        if call.layer.bias is not None:
            bias = _scale_units(self._bias_units(call, units), factors, safe)
            out.append(ops.reshape(ops.sum(bias, axis=0), call.layer.bias.shape))
        return out


def _plain_layer(layer: Any) -> str | None:
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled on it"
    if getattr(layer, "quantization_mode", None):
        return "it is quantized"
    return None


class DenseRule(_MatmulRule):
    """``keras.layers.Dense`` on inputs of any rank (``[B, d]``, ``[B, T, d]``, ...)."""

    def unsupported(self, layer):
        return _plain_layer(layer) or _trainable_only(layer, self.variables(layer))

    def variables(self, layer):
        return [layer._kernel] + ([layer.bias] if layer.bias is not None else [])

    def forward(self, layer, inputs, *args, **kwargs):
        z = ops.matmul(inputs, layer.kernel)
        if layer.bias is not None:
            z = ops.add(z, layer.bias)
        out = layer.activation(z) if layer.activation is not None else z
        return out, {"a": inputs}, {"z": z}

    def _kernel_2d(self, call, units):
        a = call.saved["a"]
        d = call.grads["z"]
        call.cache["positions"] = _static_positions(a, units)
        return U.float32(units.group(a)), U.float32(units.group(d))

    def _bias_units(self, call, units):
        if "bias" not in call.cache:
            _, d = self._grouped(call, units)
            call.cache["bias"] = ops.sum(d, axis=1)
        return call.cache["bias"]


def _parse_einsum(equation: str) -> tuple[str, str, str] | None:
    if "..." in equation or "->" not in equation or equation.count(",") != 1:
        return None
    left, out = equation.replace(" ", "").split("->")
    inp, ker = left.split(",")
    return inp, ker, out


class EinsumDenseRule(_MatmulRule):
    """``keras.layers.EinsumDense`` (and so ``MultiHeadAttention``'s projections).

    The equation ``I,K->O`` is read as a matmul: the batch letter (first of ``I`` and
    ``O``), the free letters shared by input and output (positions), the contracted
    letters (``I`` and ``K``) and the output letters (``K`` and ``O``). Equations that do
    not split this way (ellipses, letters in all three, summed-out input letters) are
    outside the rule.
    """

    def _letters(self, layer):
        parsed = _parse_einsum(layer.equation)
        if parsed is None:
            return None
        inp, ker, out = parsed
        batch = inp[0]
        if out[0] != batch or batch in ker or len(set(inp + ker + out)) == 0:
            return None
        pos = [c for c in inp if c in out and c not in ker and c != batch]
        d_in = [c for c in inp if c in ker and c not in out]
        d_out = [c for c in out if c in ker and c not in inp]
        if sorted(inp) != sorted([batch, *pos, *d_in]) or sorted(out) != sorted(
            [batch, *pos, *d_out]
        ):
            return None
        if sorted(ker) != sorted(d_in + d_out) or len(set(inp)) != len(inp):
            return None
        return inp, ker, out, batch, "".join(pos), "".join(d_in), "".join(d_out)

    def unsupported(self, layer):
        if self._letters(layer) is None:
            return f"its equation {layer.equation!r} is not a batched matmul"
        return _plain_layer(layer) or _trainable_only(layer, self.variables(layer))

    def variables(self, layer):
        return [layer._kernel] + ([layer.bias] if layer.bias is not None else [])

    def forward(self, layer, inputs, *args, **kwargs):
        z = ops.einsum(layer.equation, inputs, layer.kernel)
        if layer.bias is not None:
            z = ops.add(z, layer.bias)
        out = layer.activation(z) if layer.activation is not None else z
        return out, {"a": inputs}, {"z": z}

    def _kernel_2d(self, call, units):
        inp, ker, out, b, pos, d_in, d_out = self._letters(call.layer)
        a = ops.einsum(f"{inp}->{b}{pos}{d_in}", call.saved["a"])
        d = ops.einsum(f"{out}->{b}{pos}{d_out}", call.grads["z"])
        dims = dict(zip(ker, call.layer._kernel.shape, strict=True))
        n_in = math.prod(dims[c] for c in d_in)
        n_out = math.prod(dims[c] for c in d_out)
        a = ops.reshape(a, (ops.shape(a)[0], -1, n_in))
        d = ops.reshape(d, (ops.shape(d)[0], -1, n_out))
        call.cache["positions"] = _static_positions(a, units)
        return U.float32(units.group(a)), U.float32(units.group(d))

    def _kernel_from_2d(self, layer, grad_2d):
        _, ker, _, _, _, d_in, d_out = self._letters(layer)
        dims = dict(zip(ker, layer._kernel.shape, strict=True))
        grad = ops.reshape(grad_2d, tuple(dims[c] for c in d_in + d_out))
        if d_in + d_out == ker:
            return grad
        return ops.einsum(f"{d_in}{d_out}->{ker}", grad)

    def _bias_units(self, call, units):
        if "bias" not in call.cache:
            _, _, out, b, _, _, _ = self._letters(call.layer)
            bias_letters = "".join(c for c in out if c in call.layer.bias_axes)
            rest = "".join(c for c in out if c != b and c not in bias_letters)
            d = U.float32(ops.einsum(f"{out}->{b}{rest}{bias_letters}", call.grads["z"]))
            n_bias = math.prod(call.layer.bias.shape)
            d = ops.reshape(d, (ops.shape(d)[0], -1, n_bias))
            call.cache["bias"] = ops.sum(units.group(d), axis=1)
        return call.cache["bias"]


class EmbeddingRule(LayerRule):
    """``keras.layers.Embedding`` (any id shape; repeated ids; ``mask_zero``)."""

    def unsupported(self, layer):
        return _plain_layer(layer) or _trainable_only(layer, self.variables(layer))

    def variables(self, layer):
        return [layer._embeddings]

    def forward(self, layer, inputs, *args, **kwargs):
        ids = inputs
        if ids.dtype not in ("int32", "int64"):
            ids = ops.cast(ids, "int32")
        z = ops.take(layer.embeddings, ids, axis=0)
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
        segment_keys = ops.segment_max(sorted_keys, segment, sorted=True)
        seg = {
            "d_units": ops.reshape(d, (count, -1, dim)),
            "rows": rows,
            "row_units": ops.take(owner, order),
            "segment": segment,
            "sums": ops.segment_sum(rows, segment, sorted=True),
            "unit": segment_keys % ops.cast(count, "int64"),
            "id": segment_keys // ops.cast(count, "int64"),
            "count": count,
        }
        call.cache["segments"] = seg
        return seg

    def _unit_sq(self, seg, sums):
        return ops.segment_sum(
            ops.sum(ops.square(sums), axis=1), seg["unit"], num_segments=seg["count"]
        )

    def squared_norms(self, call, units):
        seg = self._segments(call, units)
        return self._unit_sq(seg, seg["sums"])

    def norms(self, call, units):
        seg = self._segments(call, units)
        scale = U.unit_max_abs(seg["d_units"])
        row_scale = ops.maximum(ops.take(scale, seg["row_units"]), 1e-30)
        sums = ops.segment_sum(seg["rows"] / row_scale[:, None], seg["segment"], sorted=True)
        return scale * ops.sqrt(self._unit_sq(seg, sums))

    def clipped_sums(self, call, units, factors, safe):
        seg = self._segments(call, units)
        weights = ops.take(factors, seg["unit"])
        sums = seg["sums"]
        if safe:
            sums = U.keep_rows(sums, weights)
        # Segments are sorted by token id, so the table is a sorted segment sum over ids
        # (rows up to the largest id present), completed with zero rows.
        part = ops.segment_sum(U.scale_rows(sums, weights), seg["id"], sorted=True)
        vocab = int(call.layer.input_dim)
        missing = ops.zeros((vocab - ops.shape(part)[0], part.shape[-1]), part.dtype)
        return [ops.concatenate([part, missing], axis=0)]


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


_RULES: dict[type, LayerRule] = {}


def register_rule(layer_class: type, rule: LayerRule) -> None:
    """Use ``rule`` for instances of ``layer_class`` (and of subclasses that keep its
    ``call``). Registering a rule also declares the layer per-example for the
    batch-independence guard: the rule's forward *is* the layer's computation."""
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"register_rule expects a keras Layer class, got {layer_class!r}")
    if not isinstance(rule, LayerRule):
        raise TypeError(f"register_rule expects a LayerRule instance, got {rule!r}")
    _RULES[layer_class] = rule


def rule_for(layer: Any) -> LayerRule | None:
    """The rule for ``layer``: of the nearest registered class in its MRO, and only if
    the layer's class runs that class's ``call``."""
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls] if type(layer).call is cls.call else None
    return None


register_rule(keras.layers.Dense, DenseRule())
register_rule(keras.layers.EinsumDense, EinsumDenseRule())
register_rule(keras.layers.Embedding, EmbeddingRule())
register_rule(keras.layers.LayerNormalization, LayerNormalizationRule())
if hasattr(keras.layers, "RMSNormalization"):
    register_rule(keras.layers.RMSNormalization, RMSNormalizationRule())
