"""Rules for layers that are a matmul of (patches of) their input with a kernel: Dense,
EinsumDense, Conv1D/Conv2D. See :mod:`keras_privacy.training.fast.rules` for the math."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from keras import ops

from keras_privacy.training.fast import units as U
from keras_privacy.training.fast.rules import (
    LayerRule,
    NotExact,
    RuleCall,
    _not_quantized,
    _plain_layer,
    _scale_units,
    _static_positions,
    _trainable,
    _trainable_only,
)
from keras_privacy.training.fast.shared import FullTerm, OuterTerm
from keras_privacy.training.fast.units import Units

#: Kernel entries below which a unit's gradient is materialised when the positions per
#: unit are not known statically.
_MATERIALISE_UNKNOWN = 1 << 16


@dataclasses.dataclass
class _Piece:
    """One variable's per-unit gradient ``G_u = sum_s a_s d_s^T`` (``a`` ``[U, S, p]``,
    ``d`` ``[U, S, q]``, float32); ``to_variable`` maps the ``[p, q]`` sum to the
    variable's shape, ``layout`` names that 2-D view (for cross terms)."""

    variable: Any
    a: Any
    d: Any
    positions: int | None
    to_variable: Callable[[Any], Any]
    layout: Any
    keep: dict = dataclasses.field(default_factory=dict)


def outer_sq(a, d, positions, keep=None):
    """Per-unit ``||a_u^T d_u||^2``: a product of norms for one position, else the
    cheaper of the position double sum and materialising ``G_u`` (kept in ``keep``, so
    that the clipped sum adds exactly the ``G_u`` whose norm was taken)."""
    if positions == 1:
        return U.sum_squares(a) * U.sum_squares(d)
    d_in, d_out = a.shape[-1], d.shape[-1]
    # Per unit, the double sum costs positions^2 (d_in + d_out) multiply-adds in
    # float64, materialising positions d_in d_out in float32; a float64 matmul ran at
    # about half the float32 rate here (tutorial CNN's second convolution, 25
    # positions, 256 x 32: 6.1 ms double sum against 2.0 ms materialised).
    if positions is None:
        # Rows per unit unknown until run time (microbatches of a batch of unknown
        # size): materialise small kernels (at most 256 KB per unit), whose cost is
        # bounded, rather than risk a double sum over many positions.
        ghost = d_in * d_out > _MATERIALISE_UNKNOWN
    else:
        ghost = 2 * positions * (d_in + d_out) <= d_in * d_out
    if ghost:
        # The double sum has terms of both signs. In float64 the products of float32
        # values are exact and the sums keep 29 more bits, so cancellation between
        # positions loses ~5e8 times less than in float32 (U.gram: the Gram matrices
        # in float64, or from float32 products where a float64 copy would be large).
        aa, dd = U.gram(a, a), U.gram(d, d)
        sq = ops.sum(ops.reshape(aa * dd, (ops.shape(aa)[0], -1)), axis=1)
        return ops.cast(ops.maximum(sq, 0.0), "float32")
    grads = ops.matmul(ops.transpose(a, (0, 2, 1)), d)
    if keep is not None and U.backend_ops["keep_materialised"](grads, a, d):
        keep["G"] = grads
    return U.sum_squares(grads)


def outer_norm(a, d, positions):
    """Per-unit ``||a_u^T d_u||`` without overflow in the squares."""
    ma, md = U.unit_max_abs(a), U.unit_max_abs(d)
    a_hat, d_hat = U.safe_divide(a, ma), U.safe_divide(d, md)
    return ma * md * ops.sqrt(outer_sq(a_hat, d_hat, positions))


def outer_clipped_sum(a, d, factors, safe, keep=None):
    """``sum_u factors_u a_u^T d_u`` as ``[p, q]`` (from ``keep["G"]`` if materialised)."""
    if keep is not None and "G" in keep:
        return ops.sum(_scale_units(keep["G"], factors, safe), axis=0)
    if safe:
        a, d = U.keep_rows(a, factors), _scale_units(d, factors, safe)
    elif a.shape[-1] < d.shape[-1]:  # scale the narrower side (an untied LM head: h, not dz)
        a = U.scale_rows(a, factors)
    else:
        d = U.scale_rows(d, factors)
    return U.backend_ops["outer_sum"](a, d)


def _lora_pieces(layer, a2, dz3, lora_a3, lora_b, to_a, layout, units):
    """LoRA's low-rank path: the effective kernel ``W + s A B`` (``s = alpha / rank``)
    seen as ``[n_in, n_mid, n_last]`` with ``A`` ``[n_in, n_mid, r]`` and ``B``
    ``[r, n_last]`` (a Dense kernel has ``n_mid = 1``). For a unit with layer inputs
    ``a_s`` ``[n_in]`` and output gradients ``dz_s`` ``[n_mid, n_last]``::

        dL/dA = s sum_s a_s (dz_s B^T)^T       (an outer product over positions s)
        dL/dB = s sum_{s, m} (a_s A_m)^T dz_{s, m}   (positions s and middle index m)

    so both are Dense-like pieces with rank-sized sides: cheap to materialise per unit.
    ``a2`` ``[B, S, n_in]``, ``dz3`` ``[B, S, n_mid, n_last]``, ``lora_a3`` = ``A`` as
    ``[n_in, n_mid, r]``; ``to_a`` maps ``[n_in, n_mid r]`` to ``A``'s shape."""
    scale = layer.lora_alpha / layer.lora_rank
    b = ops.cast(lora_b, "float32")
    n_mid, n_last = dz3.shape[2], dz3.shape[3]
    rank = b.shape[0]
    dz3 = U.float32(dz3)
    a2 = U.float32(a2)
    pieces = []
    if layer.lora_kernel_a.trainable:
        dzb = scale * ops.einsum("bsml,rl->bsmr", dz3, b)
        dzb = ops.reshape(dzb, (ops.shape(dzb)[0], -1, n_mid * rank))
        pieces.append(
            _Piece(
                layer.lora_kernel_a,
                units.group(a2),
                units.group(dzb),
                _static_positions(a2, units),
                to_a,
                (layout, "lora_a"),
            )
        )
    if layer.lora_kernel_b.trainable:
        aa = scale * ops.einsum("bsi,imr->bsmr", a2, ops.cast(lora_a3, "float32"))
        aa = ops.reshape(aa, (ops.shape(aa)[0], -1, rank))
        dz = ops.reshape(dz3, (ops.shape(dz3)[0], -1, n_last))
        pieces.append(
            _Piece(
                layer.lora_kernel_b,
                units.group(aa),
                units.group(dz),
                _static_positions(aa, units),
                lambda g: g,
                (layout, "lora_b"),
            )
        )
    return pieces


class _MatmulRule(LayerRule):
    """Shared math of Dense and EinsumDense: ``z = a W (+ b)`` on ``[B, S, d_in]``; with
    LoRA enabled (``W = W0 + s A B``) the trainable ones of ``W0``, ``A``, ``B`` and the
    bias, each a piece of the same Dense-like math."""

    def _kernel_2d(self, call: RuleCall, units: Units) -> tuple[Any, Any]:
        """``a`` as ``[U, S, d_in]`` and ``dz`` as ``[U, S, d_out]``, float32."""
        raise NotImplementedError

    def _kernel_from_2d(self, layer: Any, grad_2d: Any) -> Any:
        return grad_2d

    def _bias_units(self, call: RuleCall, units: Units) -> Any:
        """``[U, n_bias]``: each unit's bias gradient."""
        raise NotImplementedError

    def _lora(self, call: RuleCall, units: Units) -> list:
        """The LoRA pieces (see :func:`_lora_pieces`)."""
        return []

    def _kernel_variable(self, layer: Any) -> Any:
        return layer._kernel

    def _layout(self, layer: Any) -> Any:
        return "2d"

    def variables(self, layer):
        lora = [layer.lora_kernel_a, layer.lora_kernel_b] if _lora_on(layer) else []
        return _trainable([self._kernel_variable(layer), *lora, layer.bias])

    def _project(self, layer: Any, inputs: Any) -> Any:
        """``a W``: the layer's output before the bias."""
        raise NotImplementedError

    def forward(self, layer, inputs, *args, **kwargs):
        z = self._project(layer, inputs)
        if layer.bias is not None:
            z = ops.add(z, layer.bias)
        z = U.probe(z)
        out = layer.activation(z) if layer.activation is not None else z
        return out, {"a": inputs, **_lora_values(layer)}, {"z": z}

    def _grouped(self, call, units):
        if "a" not in call.cache:
            call.cache["a"], call.cache["d"] = self._kernel_2d(call, units)
        return call.cache["a"], call.cache["d"]

    def _kernel_sq(self, a, d, positions, keep=None):
        return outer_sq(a, d, positions, keep)

    def _positions(self, call, units):
        return call.cache.get("positions")

    def _pieces(self, call, units) -> list[_Piece]:
        if "pieces" not in call.cache:
            layer = call.layer
            pieces = []
            kernel = self._kernel_variable(layer)
            if kernel.trainable:
                a, d = self._grouped(call, units)
                pieces.append(
                    _Piece(
                        kernel,
                        a,
                        d,
                        self._positions(call, units),
                        lambda g: self._kernel_from_2d(layer, g),
                        self._layout(layer),
                    )
                )
            if _lora_on(layer):
                pieces += self._lora(call, units)
            call.cache["pieces"] = pieces
        return call.cache["pieces"]

    def _has_bias(self, layer) -> bool:
        return layer.bias is not None and layer.bias.trainable

    def squared_norms(self, call, units):
        sq = None
        for p in self._pieces(call, units):
            part = outer_sq(p.a, p.d, p.positions, keep=p.keep)
            sq = part if sq is None else sq + part
        if self._has_bias(call.layer):
            part = U.sum_squares(self._bias_units(call, units))
            sq = part if sq is None else sq + part
        return sq

    def norms(self, call, units):
        parts = [outer_norm(p.a, p.d, p.positions) for p in self._pieces(call, units)]
        if self._has_bias(call.layer):
            parts.append(U.safe_norm(self._bias_units(call, units)))
        return U.combine_norms(parts)

    def clipped_sums(self, call, units, factors, safe):
        by_id = {}
        for p in self._pieces(call, units):
            by_id[id(p.variable)] = p.to_variable(
                outer_clipped_sum(p.a, p.d, factors, safe, p.keep)
            )
        layer = call.layer
        if self._has_bias(layer):
            bias = _scale_units(self._bias_units(call, units), factors, safe)
            by_id[id(layer.bias)] = ops.reshape(ops.sum(bias, axis=0), layer.bias.shape)
        return [by_id[id(v)] for v in self.variables(layer)]

    def terms(self, call, units):
        by_id = {id(p.variable): OuterTerm(p.a, p.d, p.layout) for p in self._pieces(call, units)}
        layer = call.layer
        if self._has_bias(layer):
            by_id[id(layer.bias)] = FullTerm(self._bias_units(call, units), "bias")
        return [by_id[id(v)] for v in self.variables(layer)]


def _lora_on(layer: Any) -> bool:
    return bool(getattr(layer, "lora_enabled", False))


def _lora_values(layer: Any, a: str = "lora_kernel_a", b: str = "lora_kernel_b") -> dict:
    """The LoRA factors' values as the forward pass reads them (on JAX, inside the step's
    stateless scope: the traced values, not the stored ones), for the rule's later math."""
    if not _lora_on(layer):
        return {}
    return {
        "lora_a": ops.convert_to_tensor(getattr(layer, a)),
        "lora_b": ops.convert_to_tensor(getattr(layer, b)),
    }


class DenseRule(_MatmulRule):
    """``keras.layers.Dense`` on inputs of any rank (``[B, d]``, ``[B, T, d]``, ...), with
    or without LoRA."""

    def unsupported(self, layer):
        return _not_quantized(layer)

    def _project(self, layer, inputs):
        return ops.matmul(inputs, layer.kernel)

    def _kernel_2d(self, call, units):
        a = call.saved["a"]
        d = call.grads["z"]
        call.cache["positions"] = _static_positions(a, units)
        return U.float32(units.group(a)), U.float32(units.group(d))

    def _lora(self, call, units):
        a = call.saved["a"]
        d = call.grads["z"]
        n_in, n_out = a.shape[-1], d.shape[-1]
        a2 = ops.reshape(a, (ops.shape(a)[0], -1, n_in))
        dz3 = ops.reshape(d, (ops.shape(d)[0], -1, 1, n_out))
        a3 = ops.reshape(call.saved["lora_a"], (n_in, 1, -1))
        lora_b = call.saved["lora_b"]
        return _lora_pieces(call.layer, a2, dz3, a3, lora_b, lambda g: g, "dense", units)

    def _bias_units(self, call, units):
        if "bias" not in call.cache:
            d = U.float32(units.group(call.grads["z"]))
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
        letters = self._letters(layer)
        if letters is None:
            return f"its equation {layer.equation!r} is not a batched matmul"
        if _lora_on(layer) and letters[1][-1] not in letters[6]:
            return "LoRA is enabled and the kernel's last axis is not an output axis"
        return _not_quantized(layer)

    def _layout(self, layer):
        return ("einsum", layer.equation)

    def _lora(self, call, units):
        layer = call.layer
        inp, ker, out, b, pos, d_in, d_out = self._letters(layer)
        last = ker[-1]
        mid = "".join(c for c in ker[:-1] if c in d_out)
        rank_letter = next(c for c in "zyxwvutsrqponmlkjihgfedcba" if c not in inp + ker + out)
        dims = dict(zip(ker, layer._kernel.shape, strict=True))
        n_in = math.prod(dims[c] for c in d_in)
        n_mid = math.prod(dims[c] for c in mid)
        a2 = ops.einsum(f"{inp}->{b}{pos}{d_in}", call.saved["a"])
        a2 = ops.reshape(a2, (ops.shape(a2)[0], -1, n_in))
        dz3 = ops.einsum(f"{out}->{b}{pos}{mid}{last}", call.grads["z"])
        dz3 = ops.reshape(dz3, (ops.shape(dz3)[0], -1, n_mid, dims[last]))
        r = rank_letter
        a3 = ops.einsum(f"{ker[:-1]}{r}->{d_in}{mid}{r}", call.saved["lora_a"])
        a3 = ops.reshape(a3, (n_in, n_mid, -1))
        rank = layer.lora_kernel_a.shape[-1]

        def to_a(grad):
            grad = ops.reshape(grad, tuple(dims[c] for c in d_in + mid) + (rank,))
            if d_in + mid == ker[:-1]:
                return grad
            return ops.einsum(f"{d_in}{mid}{r}->{ker[:-1]}{r}", grad)

        lora_b = call.saved["lora_b"]
        return _lora_pieces(layer, a2, dz3, a3, lora_b, to_a, self._layout(layer), units)

    def _project(self, layer, inputs):
        return ops.einsum(layer.equation, inputs, layer.kernel)

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


class ConvRule(_MatmulRule):
    """``Conv1D`` / ``Conv2D`` / ``Conv3D`` (channels_last; any strides, dilation,
    ``valid``/``same``, ``causal`` for Conv1D, and ``groups``).

    A convolution is a matmul of the input's patches with the flattened kernel, so a
    unit's kernel gradient is ``P_u^T dz_u`` over its output positions; the patches come
    from ``extract_patches`` with the layer's own geometry (exact), and the Dense math
    applies. With ``groups = g`` the kernel is block-diagonal: output channels of group
    ``j`` see only input channels of group ``j``, so a unit's kernel gradient is ``g``
    blocks ``P_{u,j}^T dz_{u,j}`` and its squared norm is the sum of theirs; the rule runs
    the Dense math on ``U g`` (unit, group) pairs and adds each unit's ``g`` results.
    """

    def unsupported(self, layer):
        if layer.rank not in (1, 2, 3):
            return f"it is a {layer.rank}-D convolution"
        if layer.data_format != "channels_last":
            return "data_format is channels_first"
        return _plain_layer(layer) or _trainable_only(layer, self.variables(layer))

    def variables(self, layer):
        return [self._kernel_variable(layer)] + ([layer.bias] if layer.bias is not None else [])

    def _kernel_variable(self, layer):
        kernel = getattr(layer, "_kernel", None)
        return layer.kernel if kernel is None else kernel

    def terms(self, call, units):
        if self._groups(call.layer) != 1:
            raise NotExact(
                f"layer {call.layer.name!r}: no cross terms for a grouped convolution's "
                "shared weights"
            )
        return super().terms(call, units)

    def forward(self, layer, inputs, *args, **kwargs):
        padding = layer.padding
        if padding == "causal":
            inputs = ops.pad(inputs, layer._compute_causal_padding())
            padding = "valid"
        z = ops.conv(
            inputs,
            layer.kernel,
            strides=list(layer.strides),
            padding=padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        if layer.bias is not None:
            z = ops.add(z, ops.reshape(layer.bias, (1,) * (layer.rank + 1) + (layer.filters,)))
        z = U.probe(z)
        out = layer.activation(z) if layer.activation is not None else z
        return out, {"a": inputs, "padding": padding}, {"z": z}

    @staticmethod
    def _groups(layer) -> int:
        return getattr(layer, "groups", 1) or 1

    def _patches(self, call, units):
        """``[B, positions, kh kw C]`` patches of the layer's input (features in
        ``(kernel position, channel)`` order) and ``dz`` as ``[B, positions, F]``."""
        layer = call.layer
        a = call.saved["a"]
        size, strides, dilation = (
            tuple(layer.kernel_size),
            tuple(layer.strides),
            tuple(layer.dilation_rate),
        )
        if layer.rank == 3:
            patches = U.backend_ops["extract_patches_3d"](
                a, size, strides, dilation, call.saved["padding"]
            )
        else:
            if layer.rank == 1:
                a = ops.expand_dims(a, 1)
                size, strides, dilation = (1, *size), (1, *strides), (1, *dilation)
            patches = U.backend_ops["extract_patches"](
                a, size, strides, dilation, call.saved["padding"]
            )
        # Output positions from the patches' own (static) spatial shape: after the
        # reshape below they would be unknown whenever the batch size is (Poisson).
        call.cache["positions"] = _static_positions(patches, units)
        features = math.prod(layer.kernel_size) * a.shape[-1]
        patches = ops.reshape(patches, (ops.shape(patches)[0], -1, features))
        return patches, call.grads["z"]

    def _kernel_2d(self, call, units):
        layer = call.layer
        patches, d = self._patches(call, units)
        a, d = U.float32(units.group(patches)), U.float32(units.group(d))
        call.cache["d_full"] = d
        g = self._groups(layer)
        if g == 1:
            return a, d
        # [U, S, K C] -> [U g, S, K C/g] and [U, S, F] -> [U g, S, F/g]: (unit, group)
        # pairs, group j holding its own input channels and its own output channels.
        k, channels = math.prod(layer.kernel_size), a.shape[-1] // math.prod(layer.kernel_size)
        s = ops.shape(a)[1]
        a = ops.reshape(a, (-1, s, k, g, channels // g))
        a = ops.reshape(ops.transpose(a, (0, 3, 1, 2, 4)), (-1, s, k * channels // g))
        d = ops.reshape(d, (-1, s, g, layer.filters // g))
        d = ops.reshape(ops.transpose(d, (0, 2, 1, 3)), (-1, s, layer.filters // g))
        return a, d

    def _per_unit(self, call, values):
        """``[U g]`` per (unit, group) values -> ``[U, g]``."""
        return ops.reshape(values, (-1, self._groups(call.layer)))

    def squared_norms(self, call, units):
        g = self._groups(call.layer)
        if g == 1:
            return super().squared_norms(call, units)
        a, d = self._grouped(call, units)
        sq = self._kernel_sq(a, d, self._positions(call, units), keep=call.cache)
        sq = ops.sum(self._per_unit(call, sq), axis=1)
        if call.layer.bias is not None:
            sq = sq + U.sum_squares(self._bias_units(call, units))
        return sq

    def norms(self, call, units):
        g = self._groups(call.layer)
        if g == 1:
            return super().norms(call, units)
        a, d = self._grouped(call, units)
        ma, md = U.unit_max_abs(a), U.unit_max_abs(d)
        a_hat, d_hat = U.safe_divide(a, ma), U.safe_divide(d, md)
        pair = ma * md * ops.sqrt(self._kernel_sq(a_hat, d_hat, self._positions(call, units)))
        blocks = self._per_unit(call, pair)  # [U, g]
        parts = [U.combine_norms([blocks[:, j] for j in range(g)])]
        if call.layer.bias is not None:
            parts.append(U.safe_norm(self._bias_units(call, units)))
        return U.combine_norms(parts)

    def clipped_sums(self, call, units, factors, safe):
        layer = call.layer
        g = self._groups(layer)
        if g == 1:
            return super().clipped_sums(call, units, factors, safe)
        pair_factors = ops.repeat(factors, g, axis=0)
        if "G" in call.cache:  # [U g, K C/g, F/g], materialised for the norm
            blocks = _scale_units(call.cache["G"], pair_factors, safe)
            blocks = ops.sum(ops.reshape(blocks, (-1, g, *blocks.shape[1:])), axis=0)
        else:
            a, d = self._grouped(call, units)
            if safe:
                a = U.keep_rows(a, pair_factors)
            d = _scale_units(d, pair_factors, safe)
            # Group-major rows: [g, U S, .] per group, then one batched matmul.
            a = ops.transpose(ops.reshape(a, (-1, g, *a.shape[1:])), (1, 0, 2, 3))
            d = ops.transpose(ops.reshape(d, (-1, g, *d.shape[1:])), (1, 0, 2, 3))
            a = ops.reshape(a, (g, -1, a.shape[-1]))
            d = ops.reshape(d, (g, -1, d.shape[-1]))
            blocks = ops.matmul(ops.transpose(a, (0, 2, 1)), d)  # [g, K C/g, F/g]
        kernel_shape = self.variables(layer)[0].shape  # (*kernel_size, C/g, F)
        k, cg = math.prod(layer.kernel_size), kernel_shape[-2]
        kernel = ops.reshape(blocks, (g, k, cg, layer.filters // g))
        kernel = ops.reshape(ops.transpose(kernel, (1, 2, 0, 3)), kernel_shape)
        out = [kernel]
        if layer.bias is not None:
            bias = _scale_units(self._bias_units(call, units), factors, safe)
            out.append(ops.reshape(ops.sum(bias, axis=0), layer.bias.shape))
        return out

    def _kernel_from_2d(self, layer, grad_2d):
        return ops.reshape(grad_2d, self.variables(layer)[0].shape)

    def _bias_units(self, call, units):
        if "bias" not in call.cache:
            self._grouped(call, units)
            call.cache["bias"] = ops.sum(call.cache["d_full"], axis=1)
        return call.cache["bias"]
