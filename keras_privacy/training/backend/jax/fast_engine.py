"""The fast (norm-only, book-keeping) clipping engine on JAX.

The engine of :mod:`keras_privacy.training.fast.engine` (which says when it is exact and
when it falls back), with JAX's way of getting the loss gradients of the rules' probe
tensors ``z`` (a traced function has no gradient with respect to an intermediate value):

1. trace the forward once abstractly (``jax.eval_shape``) to learn the probes' shapes;
2. run it again with a zero perturbation added at each probe (``z + e``, installed as the
   rules' :func:`~keras_privacy.training.fast.units.probe` tap) and take
   ``d(sum_u loss_u) / de``, which is ``dL/dz``, in one backward pass;
3. the shared rules compute each unit's norm and the clipped sum from the layers' inputs
   and those gradients (:mod:`keras_privacy.training.fast.clip`), with 64-bit types
   enabled for that part (``jax.enable_x64``) as the rules use them on TensorFlow.

Padding rows of a Poisson batch are left out of the summed loss and get clip factor 0.

Memory: XLA's compile of the DP step (about 7 times the HLO of Keras's own step: the
forward with its probes, the backward, each rule's norm and clipped-sum code in both
branches of the overflow checks of :mod:`~keras_privacy.training.fast.clip`, the noise)
frees several hundred MB of C heap that glibc keeps; the step's buffers, allocated right
after, then came on top of it (BertBackbone 4 x 512, batch 32: 0.65 GB of a 3.8 GB peak).
So once the engine has been traced, the C heap's free pages go back to the system after
the next XLA compile (:func:`release_heap_after_next_compile`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
from keras.src.backend.common.stateless_scope import StatelessScope

from keras_privacy.training.backend.jax.engine import VectorizedEngine
from keras_privacy.training.checks import seed_state_variables
from keras_privacy.training.engine import ClippedBatch, state_mapping, to_units
from keras_privacy.training.fast import clip as fast_clip
from keras_privacy.training.fast import engine as fast_engine
from keras_privacy.training.fast import units as fast_units
from keras_privacy.training.fast.capture import _Capture, _check_exact
from keras_privacy.training.fast.engine import (
    refuse_forward_updates,
    rules_forward,
    vectorized_unit_losses,
)
from keras_privacy.training.fast.matmul_rules import ConvRule
from keras_privacy.training.fast.rules import _RULES, NotExact, RuleCall, register_rule
from keras_privacy.training.fast.units import Units
from keras_privacy.training.regularization import excluding_weight_regularization
from keras_privacy.training.sparsity import SparseRows

fast_units.backend_ops["static_segments"] = True


def _concrete_values(variables: list) -> list:
    """The variables' stored arrays (inside the jitted step ``v.value`` is a tracer). An
    array already donated to a previous step is replaced by a random one of its shape:
    the batch-independence check needs weights, not these weights."""
    rng = np.random.default_rng(0)
    values = []
    for v in variables:
        value = v._value
        if isinstance(value, jax.Array) and not value.is_deleted():
            values.append(np.asarray(value))
        elif jnp.issubdtype(v.dtype, jnp.floating):
            values.append((0.1 * rng.standard_normal(v.shape)).astype(v.dtype))
        else:
            values.append(np.zeros(v.shape, v.dtype))
    return values


# The engine choice runs while the step is traced by jax.jit; the numerical
# batch-independence check computes on concrete arrays at trace time.
fast_units.backend_ops["eager"] = jax.ensure_compile_time_eval
fast_units.backend_ops["variable_values"] = _concrete_values

# On JAX the convolution rule beats the vectorized engine, whose per-example filter
# gradients become grouped convolutions (tutorial CNN, batch 250, one core: ~141 against
# ~168 ms per step), so here it is on by default (on TensorFlow it is opt-in).
for _conv in (keras.layers.Conv1D, keras.layers.Conv2D):
    if _conv not in _RULES:
        register_rule(_conv, ConvRule())


#: JAX's ``jax.monitoring`` event after XLA compiled a program.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def release_freed_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); False
    where the C library has none (then nothing happens)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # no glibc (macOS, musl, Windows)
        return False
    trim(0)
    return True


class _HeapRelease:
    """A ``jax.monitoring`` listener, registered once: after the next XLA compile that
    follows :meth:`arm` (the DP step's, whose trace armed it), release the freed heap."""

    def __init__(self) -> None:
        self.armed = False
        self.registered = False

    def arm(self) -> None:
        if not self.registered:
            jax.monitoring.register_event_duration_secs_listener(self)
            self.registered = True
        self.armed = True

    def __call__(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE_EVENT and self.armed:
            self.armed = False
            release_freed_heap()


_heap_release = _HeapRelease()


def release_heap_after_next_compile() -> None:
    """After the next XLA compile (the traced DP step's), return the heap the compiler
    freed to the system, before the step's own buffers are allocated."""
    _heap_release.arm()


class _Tap:
    """The rules' probe hook: records each probe (phase 1) or adds its perturbation
    (phase 2), in call order."""

    def __init__(self, perturbations: list | None) -> None:
        self.perturbations = perturbations
        self.shapes: list = []
        self.outputs: list = []

    def __call__(self, tensor: Any) -> Any:
        if self.perturbations is not None:
            tensor = tensor + self.perturbations[len(self.outputs)].astype(tensor.dtype)
        self.shapes.append(jax.ShapeDtypeStruct(tensor.shape, "float32"))
        self.outputs.append(tensor)
        return tensor


@contextlib.contextmanager
def _tapping(tap: _Tap) -> Iterator[None]:
    previous = fast_units.backend_ops["probe"]
    fast_units.backend_ops["probe"] = tap
    try:
        yield
    finally:
        fast_units.backend_ops["probe"] = previous


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, jnp.ndarray)) or hasattr(value, "aval")


def _sparsity(model):
    config = getattr(model, "_dp_config", None)
    return None if config is None else config.sparsity_preserving


def _float32(g):
    if isinstance(g, SparseRows):
        return SparseRows(
            jnp.asarray(g.ids, "int32"),
            jnp.asarray(g.values, "float32"),
            jnp.asarray(g.counts, "float32"),
        )
    return jnp.asarray(g, "float32")


class FastEngine(fast_engine.FastEngine):
    """The fast engine (:class:`keras_privacy.training.fast.engine.FastEngine`) on JAX;
    see the module docstring."""

    vectorized = VectorizedEngine

    def _fast(
        self,
        model,
        trainable_values,
        non_trainable_values,
        x,
        y,
        sample_weight,
        *,
        num_units,
        l2_norm_clip,
        unit_mask=None,
    ) -> tuple[ClippedBatch, list]:
        units = Units(num_units)
        trainable = model.trainable_variables
        non_trainable = model.non_trainable_variables
        seeds = {id(v) for v in seed_state_variables(model)}
        scratch_metrics = [(v, jnp.zeros(v.shape, v.dtype)) for v in model.metrics_variables]
        mapping = state_mapping(model, trainable_values, non_trainable_values, scratch_metrics)
        static: dict = {}

        def forward(perturbations):
            tap = _Tap(perturbations)
            with (
                _tapping(tap),
                _Capture(model) as capture,
                excluding_weight_regularization(model),
                StatelessScope(state_mapping=mapping, collect_losses=True) as scope,
            ):
                y_pred, unit_losses = rules_forward(
                    model, x, y, sample_weight, num_units, _unit_losses
                )
                new_non_trainable = [scope.get_current_value(v) for v in non_trainable]
            _check_exact(model, capture)
            refuse_forward_updates(non_trainable, non_trainable_values, new_non_trainable, seeds)
            for call in capture.calls:
                for tensor in call.probes.values():
                    if not any(tensor is t for t in tap.outputs):
                        raise NotExact(
                            f"the rule for layer {call.layer.name!r} does not mark its probes "
                            "with keras_privacy.training.fast.units.probe"
                        )
            keep = jnp.isfinite(unit_losses)
            if unit_mask is not None:
                keep = jnp.logical_and(keep, unit_mask > 0)
            total = jnp.sum(jnp.where(keep, unit_losses, 0.0))
            saved = []
            for call in capture.calls:
                saved.append({k: v for k, v in call.saved.items() if _is_array(v)})
                static[id(call)] = {k: v for k, v in call.saved.items() if not _is_array(v)}
            static["calls"] = [
                (call.layer, call.rule, id(call), list(call.probes)) for call in capture.calls
            ]
            static["shapes"] = tap.shapes
            return total, (unit_losses, y_pred, saved, new_non_trainable)

        jax.eval_shape(forward, None)  # phase 1: the probes' shapes (and NotExact early)
        zeros = [jnp.zeros(s.shape, s.dtype) for s in static["shapes"]]
        probe_grads, (unit_losses, y_pred, saved, new_non_trainable) = jax.grad(
            forward, has_aux=True
        )(zeros)
        calls = []
        grads = iter(probe_grads)
        for (layer, rule, key, names), arrays in zip(static["calls"], saved, strict=True):
            probes = {name: next(grads) for name in names}
            calls.append(RuleCall(layer, rule, {**arrays, **static[key]}, {}, probes))
        # The rules compute some sums in 64 bits (the Dense rule's position double sum in
        # float64, Embedding token keys in int64): JAX allows them within this scope.
        with jax.enable_x64(True):
            sums, norms = fast_clip.clipped_gradient_sum(
                calls, units, trainable, l2_norm_clip, unit_mask, sparsity=_sparsity(model)
            )
            batch = ClippedBatch(
                grad_sum=[_float32(g) for g in sums],
                unit_losses=unit_losses,
                y_pred=y_pred,
                norms=jnp.asarray(norms, "float32"),
            )
        release_heap_after_next_compile()
        return batch, new_non_trainable


#: ``[U]``: each unit's loss, vectorized over units with ``jax.vmap``.
_unit_losses = functools.partial(
    vectorized_unit_losses,
    to_units=lambda t, n: to_units(jnp.asarray(t), n),
    vmap=lambda fn, leaves: jax.vmap(fn)(leaves),
)


__all__ = ["FastEngine"]
