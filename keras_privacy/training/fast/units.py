"""Clipping units and the per-unit arithmetic shared by the norm-only rules (``keras.ops``).

A batch has ``B`` rows; the clipping units are the rows themselves (per-example clipping)
or ``k`` equal microbatches of ``R = B / k`` rows. Every rule sees its layer's tensors with
a leading row axis and groups them as ``[U, S, d]``: ``U`` units, ``S`` positions per unit
(the unit's rows times the layer's sequence/spatial positions) and ``d`` features. A
unit's gradient of a layer is then a sum over its ``S`` positions, which is what makes
microbatches and sequence inputs the same case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from keras import ops

_TINY = 1e-30


class Units:
    """How the rows of a batch form clipping units.

    Args:
      num_units: ``None`` for one unit per row, else the number of equal microbatches.
    """

    def __init__(self, num_units: int | None) -> None:
        self.num_units = num_units

    def count(self, rows_tensor) -> object:
        """``U`` for a tensor whose leading axis is the batch's rows."""
        if self.num_units is None:
            return ops.shape(rows_tensor)[0]
        return self.num_units

    def group(self, tensor, features: int | None = None) -> object:
        """``[B, ..., d] -> [U, S, d]`` (``d`` = the last axis, or ``features``)."""
        last = tensor.shape[-1] if features is None else features
        if last is None:
            last = ops.shape(tensor)[-1]
        return ops.reshape(tensor, (self.count(tensor), -1, last))

    def per_row(self, unit_values, rows_tensor) -> object:
        """``[U] -> [B]``: each row gets its unit's value."""
        if self.num_units is None:
            return unit_values
        rows = ops.shape(rows_tensor)[0]
        return ops.repeat(unit_values, rows // self.num_units, axis=0)


def _channels_last(name: str):
    """Keras's ``ops.image.<name>`` with the rules' positional signature, channels last."""

    def extract(images, size, strides, dilation_rate, padding):
        return getattr(ops.image, name)(
            images,
            size,
            strides=strides,
            dilation_rate=dilation_rate,
            padding=padding,
            data_format="channels_last",
        )

    return extract


_keras_extract_patches = _channels_last("extract_patches")
_keras_extract_patches_3d = _channels_last("extract_patches_3d")


backend_ops = {
    #: ``extract_patches(images [B, H, W, C], size, strides, dilation_rate, padding)`` ->
    #: ``[B, H', W', kh * kw * C]`` (features in (kh, kw, C) order). Keras's version is an
    #: identity convolution (exact, but costs a convolution with kh*kw*C output channels);
    #: a backend may install a plain copy (TensorFlow's ``tf.image.extract_patches``).
    "extract_patches": _keras_extract_patches,
    # ``[B, D, H, W, C]`` -> ``[B, D', H', W', kd * kh * kw * C]``, same conventions.
    "extract_patches_3d": _keras_extract_patches_3d,
    "probe": lambda tensor: tensor,
    #: ``segment_sum(data, segment_ids, num_segments=None, sorted=False)`` as
    #: ``keras.ops.segment_sum`` (ids outside ``[0, num_segments)`` dropped); a backend may
    #: install a faster one (PyTorch: ``index_add_``).
    "segment_sum": ops.segment_sum,
    #: ``segment_max`` likewise (``keras.ops.segment_max``); it must be exact on the
    #: embedding rule's int64 keys ``id * U + unit`` (Keras's PyTorch version reduces in
    #: float32, which rounds keys above 2^24: PyTorch installs an exact one).
    "segment_max": ops.segment_max,
    #: ``argsort(x)``: the indices that sort a 1-D integer tensor ascending (ties in any
    #: order), as ``keras.ops.argsort``; a backend may install a faster one (PyTorch:
    #: NumPy's sort on the tensor's own memory).
    "argsort": ops.argsort,
    # True where every shape must be static (JAX): segment sums get a fixed segment count.
    "static_segments": False,
    # For the numerical batch-independence check (fast/independence.py), which runs on
    # concrete arrays while the step may be being traced: a context in which operations
    # on concrete values run eagerly (TensorFlow: tf.init_scope; JAX:
    # ensure_compile_time_eval), the variables' concrete values, and a context that gives
    # every forward pass in it the same randomness outside Keras's seed states.
    "eager": contextlib.nullcontext,
    "variable_values": lambda variables: [ops.convert_to_numpy(v.value) for v in variables],
    "same_randomness": contextlib.nullcontext,
    #: ``outer_sum(a [U, S, p], d [U, S, q]) -> [p, q]``: ``sum_{u, s} a[u, s]^T d[u, s]``
    #: (a clipped sum's matmul). A backend may avoid the flattening copy of an input that
    #: is not contiguous in ``(U, S)`` (PyTorch: a logit gradient laid out class-major).
    "outer_sum": lambda a, d: ops.matmul(
        ops.transpose(ops.reshape(a, (-1, a.shape[-1]))), ops.reshape(d, (-1, d.shape[-1]))
    ),
    #: ``keep_materialised(grads [U, p, q], a, d) -> bool``: whether a norm's materialised
    #: per-unit gradients are kept for the clipped sum (saves its matmul) rather than
    #: recomputed from ``a`` and ``d``; PyTorch keeps them only where they are no larger
    #: than ``a`` and ``d`` (eagerly, every kept ``G`` lives until the clipped sums).
    "keep_materialised": lambda grads, a, d: True,
}


def probe(tensor) -> object:
    """Marks a tensor whose loss gradient a rule needs (a rule's ``probes``) at the point
    where the layer's computation goes on from it. The identity, unless a backend installs
    a tap: JAX adds a zero perturbation there and differentiates with respect to it (a
    traced function has no gradient with respect to an intermediate tensor otherwise)."""
    return backend_ops["probe"](tensor)


def segment_sum(data, segment_ids, num_segments=None, sorted=False) -> object:
    """``out[k] = sum of data[i] over i with segment_ids[i] == k`` (the backend's op)."""
    return backend_ops["segment_sum"](data, segment_ids, num_segments=num_segments, sorted=sorted)


def segment_max(data, segment_ids, num_segments=None, sorted=False) -> object:
    """``out[k] = max of data[i] over i with segment_ids[i] == k`` (the backend's op)."""
    return backend_ops["segment_max"](data, segment_ids, num_segments=num_segments, sorted=sorted)


def argsort(keys) -> object:
    """The indices that sort the 1-D integer ``keys`` ascending (the backend's op; the
    order of equal keys is unspecified)."""
    return backend_ops["argsort"](keys)


def float32(tensor) -> object:
    return ops.cast(tensor, "float32")


#: Largest float64 copy of one unit's side of a Gram (positions x features x 8 bytes)
#: that :func:`gram` makes; above it the products are taken in float32 instead.
FLOAT64_GRAM_BYTES = 1 << 20


def gram(x, y) -> object:
    """``[U, S, k] x [U, T, k] -> [U, S, T]``: each unit's inner products of positions,
    float64 (for the position double sums of the ghost norms and cross terms, whose terms
    have both signs and are summed in float64).

    Where one unit's float64 copy is small (at most :data:`FLOAT64_GRAM_BYTES`), the
    inputs are cast to float64 and the products are exact. Above it (a tied LM head's
    logit gradients: vocabulary x sequence per unit, a 1 GB copy for a batch of 32 at
    32k x 128) the float32 matmul is taken and its ``[U, S, T]`` result cast: no copy of
    the inputs, and each inner product's rounding is float32's over ``k`` terms
    (relative to ``|x_s| |y_t|``), not a loss to cancellation between positions, which
    the float64 sum of the double sum still avoids."""
    positions = max(_static_size(x.shape[1]), _static_size(y.shape[1]))
    if positions * x.shape[-1] * 8 <= FLOAT64_GRAM_BYTES:
        x, y = ops.cast(x, "float64"), ops.cast(y, "float64")
        return ops.matmul(x, ops.transpose(y, (0, 2, 1)))
    x, y = float32(x), float32(y)
    return ops.cast(ops.matmul(x, ops.transpose(y, (0, 2, 1))), "float64")


def _static_size(n) -> int:
    # An unknown number of positions (a run-time shape) counts as large.
    return n if isinstance(n, int) else FLOAT64_GRAM_BYTES


def unit_max_abs(grouped) -> object:
    """``[U, ...] -> [U]``: the largest magnitude in each unit (a scale for safe norms)."""
    return ops.max(ops.reshape(ops.abs(grouped), (ops.shape(grouped)[0], -1)), axis=1)


def safe_divide(grouped, scale) -> object:
    """Each unit's entries divided by its (positive) scale."""
    shape = (-1,) + (1,) * (len(grouped.shape) - 1)
    return grouped / ops.reshape(ops.maximum(scale, _TINY), shape)


def sum_squares(grouped) -> object:
    """``[U, ...] -> [U]``: sum of squares per unit."""
    return ops.sum(ops.reshape(ops.square(grouped), (ops.shape(grouped)[0], -1)), axis=1)


def safe_norm(grouped) -> object:
    """``[U, ...] -> [U]``: L2 norm per unit as ``m * ||g / m||`` with ``m = max |g|``, so
    that norms up to float32's maximum do not overflow in their squares."""
    scale = unit_max_abs(grouped)
    return scale * ops.sqrt(sum_squares(safe_divide(grouped, scale)))


def combine_norms(norms: Sequence) -> object:
    """``sqrt(sum_i n_i^2)`` computed as ``M * sqrt(sum_i (n_i / M)^2)``, ``M = max_i n_i``."""
    norms = list(norms)
    if len(norms) == 1:
        return norms[0]
    peak = norms[0]
    for n in norms[1:]:
        peak = ops.maximum(peak, n)
    scale = ops.maximum(peak, _TINY)
    total = None
    for n in norms:
        sq = ops.square(n / scale)
        total = sq if total is None else total + sq
    return scale * ops.sqrt(total)


def keep_rows(tensor, row_factors) -> object:
    """Zero the rows of units that contribute nothing (factor 0), so that a NaN or inf
    in them cannot reach the sum (``0 * inf`` is NaN)."""
    shape = (-1,) + (1,) * (len(tensor.shape) - 1)
    keep = ops.reshape(row_factors > 0, shape)
    return ops.where(keep, tensor, ops.zeros_like(tensor))


def scale_rows(tensor, row_factors) -> object:
    shape = (-1,) + (1,) * (len(tensor.shape) - 1)
    return tensor * ops.reshape(row_factors, shape)
