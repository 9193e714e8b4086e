"""The fast (norm-only, book-keeping) clipping engine on PyTorch.

The engine of :mod:`keras_privacy.training.fast.engine` (which says when it is exact and
when it falls back). On PyTorch the step is eager, so getting the loss gradients of the
rules' probe tensors ``z`` is plain autograd: one forward pass of the whole batch with
every layer that has a rule running the rule's forward (inside a
:class:`keras.StatelessScope`, so that no non-trainable state is written behind the
engine's back), the unit losses ``l_u``, then ``torch.autograd.grad(sum_u l_u, z)`` in one
backward pass; the shared rules compute each unit's norm and the clipped sum
(:mod:`keras_privacy.training.fast.clip`) from the layers' inputs and those gradients.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import torch
from keras.src.backend.common.stateless_scope import StatelessScope

from keras_privacy.training.backend.torch.engine import VectorizedEngine, to_units
from keras_privacy.training.checks import seed_state_variables
from keras_privacy.training.engine import ClippedBatch, state_mapping
from keras_privacy.training.fast import clip as fast_clip
from keras_privacy.training.fast import engine as fast_engine
from keras_privacy.training.fast import units as fast_units
from keras_privacy.training.fast.capture import _Capture, _check_exact
from keras_privacy.training.fast.engine import (
    refuse_forward_updates,
    rules_forward,
    vectorized_unit_losses,
)
from keras_privacy.training.fast.units import Units
from keras_privacy.training.regularization import excluding_weight_regularization
from keras_privacy.training.sparsity import SparseRows


def _unfold_patches(images, size, strides, dilation_rate, padding):
    """``[B, H, W, C] -> [B, H', W', kh * kw * C]`` (features in (kh, kw, C) order).

    With 8 or more channels a plain copy by ``torch.nn.functional.unfold`` (tutorial CNN's
    second layer, one core: 3.4 against 6.4 ms for Keras's identity convolution); with
    fewer, Keras's identity convolution (2.8 against 3.3 ms for its first layer)."""
    images = torch.as_tensor(images)
    batch, height, width, channels = images.shape
    if channels < 8:
        return fast_units._keras_extract_patches(images, size, strides, dilation_rate, padding)
    kh, kw = size
    sh, sw = strides
    dh, dw = (dilation_rate, dilation_rate) if isinstance(dilation_rate, int) else dilation_rate
    nchw = images.permute(0, 3, 1, 2)
    if padding.lower() == "same":
        out_h, out_w = -(-height // sh), -(-width // sw)
        pad_h = max((out_h - 1) * sh + (kh - 1) * dh + 1 - height, 0)
        pad_w = max((out_w - 1) * sw + (kw - 1) * dw + 1 - width, 0)
        nchw = torch.nn.functional.pad(
            nchw, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        )
    else:
        out_h = (height - (kh - 1) * dh - 1) // sh + 1
        out_w = (width - (kw - 1) * dw - 1) // sw + 1
    cols = torch.nn.functional.unfold(nchw, (kh, kw), dilation=(dh, dw), stride=(sh, sw))
    # [B, C * kh * kw, L] with features in (C, kh, kw) order -> (kh, kw, C).
    cols = cols.reshape(batch, channels, kh * kw, out_h, out_w)
    return cols.permute(0, 3, 4, 2, 1).reshape(batch, out_h, out_w, kh * kw * channels)


def _in_range(data, segment_ids, num_segments):
    """``(data, ids, num_segments)`` as tensors, without the rows whose id is negative or
    not below ``num_segments`` (Keras's segment ops drop them; the rules mark unused slots
    with negative ids)."""
    data = torch.as_tensor(data)
    ids = torch.as_tensor(segment_ids).long()
    if num_segments is None:
        num_segments = int(ids.max()) + 1 if ids.numel() else 0
    keep = (ids >= 0) & (ids < num_segments)
    if not bool(keep.all()):
        data, ids = data[keep], ids[keep]
    return data, ids, num_segments


def _segment_sum(data, segment_ids, num_segments=None, sorted=False):
    """``keras.ops.segment_sum`` by ``index_add_`` in the data's own dtype (Keras's torch
    version expands the ids to the data's shape and computes in float32: 3-4x slower on
    the embedding rule's sums, and it would round the rules' float64 sums)."""
    data, ids, num_segments = _in_range(data, segment_ids, num_segments)
    out = torch.zeros((int(num_segments), *data.shape[1:]), dtype=data.dtype, device=data.device)
    return out.index_add_(0, ids, data)


def _segment_max(data, segment_ids, num_segments=None, sorted=False):
    """``keras.ops.segment_max`` by ``scatter_reduce_`` in the data's own dtype. Keras's
    torch version reduces in float32: the embedding rule's int64 keys ``id * U + unit``
    above 2^24 (a 1,000,000-row table and 17 or more units) came back rounded, giving
    rows to the wrong unit and id."""
    data, ids, num_segments = _in_range(data, segment_ids, num_segments)
    lowest = -math.inf if data.dtype.is_floating_point else torch.iinfo(data.dtype).min
    shape = (int(num_segments), *data.shape[1:])
    out = torch.full(shape, lowest, dtype=data.dtype, device=data.device)
    index = ids.reshape((-1,) + (1,) * (data.dim() - 1)).expand_as(data)
    return out.scatter_reduce_(0, index, data, "amax", include_self=True)


def _argsort(keys):
    """``argsort`` of a 1-D integer tensor by NumPy's sort on the tensor's own memory where
    it is on the CPU: 0.13 against 0.63 ms for ``torch.argsort`` on the embedding rule's
    16,000 keys (one core; equal keys in any order, as both promise)."""
    keys = torch.as_tensor(keys).detach()
    if keys.device.type != "cpu":
        return torch.argsort(keys)
    return torch.from_numpy(np.argsort(keys.numpy()))


@contextlib.contextmanager
def _same_randomness() -> Iterator[None]:
    """Unseeded Keras random layers draw from torch's global generator: every forward pass
    of the numerical batch-independence check starts it from the same state (and leaves
    the caller's state as it was), so that only the perturbed input differs."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        yield


def _outer_sum(a, d):
    """``sum_{u, s} a[u, s]^T d[u, s]`` (``[U, S, p] x [U, S, q] -> [p, q]``) without
    copying an input that cannot be flattened to ``[U S, .]`` as a view: Keras's
    cross-entropy on PyTorch moves the class axis, so an LM head's logit gradient arrives
    laid out ``[U, V, S]`` and flattening it copied it (412 MB for gpt2-small's batch of
    8 x 256 tokens x 50,257 classes); then the sum is taken unit by unit (``addmm_``)."""
    a, d = torch.as_tensor(a), torch.as_tensor(d)
    p, q = a.shape[-1], d.shape[-1]
    try:
        return a.view(-1, p).T @ d.view(-1, q)
    except RuntimeError:  # not viewable as [U S, .]
        out = torch.zeros((p, q), dtype=torch.result_type(a, d), device=a.device)
        for u in range(a.shape[0]):
            out.addmm_(a[u].T, d[u])
        return out


def _keep_materialised(grads, a, d) -> bool:
    """Keep a norm's materialised per-unit gradients ``G`` ``[U, p, q]`` for the clipped
    sum only where ``G`` is no larger than the ``a`` and ``d`` it came from: the step is
    eager, so every kept ``G`` lives until the clipped sums (gpt2-small: 48 attention
    kernels x 8 units x 768 x 768, 0.9 GB); otherwise the sum's matmul recomputes it."""
    return math.prod(grads.shape) <= math.prod(a.shape) + math.prod(d.shape)


fast_units.backend_ops["extract_patches"] = _unfold_patches
fast_units.backend_ops["outer_sum"] = _outer_sum
fast_units.backend_ops["keep_materialised"] = _keep_materialised
fast_units.backend_ops["segment_sum"] = _segment_sum
fast_units.backend_ops["segment_max"] = _segment_max
fast_units.backend_ops["argsort"] = _argsort
fast_units.backend_ops["same_randomness"] = _same_randomness
# The check's variable values as the variables' own tensors, detached (no copy), not NumPy
# copies: the default copied a 1,000,000 x 64 table (256 MB) and converted the copy back
# to a tensor for each of its seven probe passes.
fast_units.backend_ops["variable_values"] = lambda variables: [v.value.detach() for v in variables]


def _unit_losses(
    model: Any, y: Any, y_pred: Any, sample_weight: Any, num_units: int | None, **options: Any
):
    """``[U]``: each unit's loss, vectorized over units with ``torch.func.vmap``
    (differentiable with respect to ``y_pred``; see
    :func:`~keras_privacy.training.fast.engine.vectorized_unit_losses`)."""
    scratch_metrics = [(v, torch.zeros_like(v.value)) for v in model.metrics_variables]
    return vectorized_unit_losses(
        model,
        y,
        y_pred,
        sample_weight,
        num_units,
        to_units=to_units,
        vmap=lambda fn, leaves: torch.func.vmap(fn)(leaves),
        scope=lambda: StatelessScope(state_mapping=scratch_metrics),
        errors=(TypeError, ValueError, NotImplementedError, RuntimeError),
        **options,
    )


class FastEngine(fast_engine.FastEngine):
    """The fast engine (:class:`keras_privacy.training.fast.engine.FastEngine`) on PyTorch;
    see the module docstring."""

    vectorized = VectorizedEngine

    def _fast(self, model, x, y, sample_weight, *, num_units, l2_norm_clip) -> ClippedBatch:
        units = Units(num_units)
        trainable = model.trainable_variables
        non_trainable = model.non_trainable_variables
        seeds = {id(v) for v in seed_state_variables(model)}
        old_values = [v.value for v in non_trainable]
        scratch_metrics = [(v, torch.zeros_like(v.value)) for v in model.metrics_variables]
        # The trainable values are the variables' own tensors, so autograd connects the
        # probes to them; nothing is written to any variable inside the scope.
        mapping = state_mapping(model, [v.value for v in trainable], old_values, scratch_metrics)
        with (
            torch.enable_grad(),
            _Capture(model) as capture,
            excluding_weight_regularization(model),
            StatelessScope(state_mapping=mapping, collect_losses=True) as scope,
        ):
            y_pred, unit_losses = rules_forward(model, x, y, sample_weight, num_units, _unit_losses)
            new_values = [scope.get_current_value(v) for v in non_trainable]
        _check_exact(model, capture)
        refuse_forward_updates(non_trainable, old_values, new_values, seeds)
        calls = capture.calls
        probes = [t for call in calls for t in call.probes.values()]
        keep = torch.isfinite(unit_losses)
        total = torch.sum(torch.where(keep, unit_losses, torch.zeros_like(unit_losses)))
        grads = torch.autograd.grad(total, probes, allow_unused=True)
        it = iter(zip(probes, grads, strict=True))
        for call in calls:
            call.grads = {}
            for name in call.probes:
                probe, grad = next(it)
                call.grads[name] = torch.zeros_like(probe) if grad is None else grad
            # The probes (every rule layer's output z, as large as its gradient) are
            # needed no more: only their gradients are.
            call.probes = {}
        del probes, grads, it, probe, grad
        with torch.no_grad():
            for call in calls:
                call.saved = {k: _detach(v) for k, v in call.saved.items()}
            config = getattr(model, "_dp_config", None)
            sums, norms = fast_clip.clipped_gradient_sum(
                calls,
                units,
                trainable,
                l2_norm_clip,
                sparsity=None if config is None else config.sparsity_preserving,
                release=_release,
            )
            grad_sum = [g if isinstance(g, SparseRows) else g.to(torch.float32) for g in sums]
        for var, new in zip(non_trainable, new_values, strict=True):
            if id(var) in seeds:  # random layers' seeds advance as in a plain call
                var.assign(new)
        return ClippedBatch(
            grad_sum=grad_sum,
            unit_losses=unit_losses.detach(),
            y_pred=keras.tree.map_structure(_detach, y_pred),
            norms=norms,
        )


def _release(call) -> None:
    """Let go of a rule call's layer inputs, output gradients and cached values once its
    clipped sums are taken (the step is eager: only one of the clipped sum's two paths
    runs), so that the sums built later (gpt2-small's 154 MB tied table last) do not sit
    on top of every layer's activations and output gradients."""
    call.saved, call.grads, call.cache = {}, {}, {}


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


__all__ = ["FastEngine"]
