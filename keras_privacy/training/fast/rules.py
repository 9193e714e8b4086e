"""Norm-only ("ghost" / book-keeping) clipping rules, one per layer type (``keras.ops``).

For a layer computing ``z = f(a, W)`` the per-unit gradient of ``W`` is a function of the
layer's input ``a`` and of the loss gradient ``dz = dL/dz`` at the unit's positions. A rule

1. runs the layer's forward itself (:meth:`LayerRule.forward`), keeping what it needs
   (``saved``) and naming the tensors whose loss gradients it needs (``probes``), each
   passed through :func:`~keras_privacy.training.fast.units.probe` where the computation
   goes on from it (the identity on TensorFlow; on JAX the engine differentiates there);
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
import importlib
import math
import sys
from typing import Any

import keras

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
        """The layer's trainable variables whose gradients the rule computes, in a fixed
        order."""
        raise NotImplementedError

    def call_variables(self, call: RuleCall) -> list:
        """The variables this call's gradient reaches (a subset of :meth:`variables`, in
        its order: e.g. a tied embedding's lookup and its reverse projection reach the
        same table, an untied one's reach different tables)."""
        return self.variables(call.layer)

    def terms(self, call: RuleCall, units: Units) -> list:
        """Each of :meth:`call_variables`' per-unit gradient parts as a
        :class:`~keras_privacy.training.fast.shared.Term`, for the cross terms of a
        variable reached by several calls (:mod:`keras_privacy.training.fast.shared`).
        A rule that does not override this cannot share weights between calls."""
        raise NotImplementedError

    @classmethod
    def shares_weights(cls) -> bool:
        """Whether the rule describes its gradients as terms (:meth:`terms`)."""
        return cls.terms is not LayerRule.terms

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


def _trainable(variables: list) -> list:
    return [v for v in variables if v is not None and v.trainable]


def _not_quantized(layer: Any) -> str | None:
    if getattr(layer, "quantization_mode", None):
        return "it is quantized"
    return None


def _plain_layer(layer: Any) -> str | None:
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled on it"
    if getattr(layer, "quantization_mode", None):
        return "it is quantized"
    return None


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


#: Modules with rules for an optional library's layers, loaded the first time a rule is
#: looked up after the library was imported by the user (never imported by us before).
_OPTIONAL: dict[str, str] = {}


def register_optional_rules(library: str, module: str) -> None:
    """Import ``module`` (which registers rules) once ``library`` has been imported."""
    _OPTIONAL[library] = module


def load_optional_rules() -> None:
    """Import the rule modules of the optional libraries the process has imported."""
    for library in [name for name in _OPTIONAL if name in sys.modules]:
        importlib.import_module(_OPTIONAL.pop(library))


def rule_for(layer: Any) -> LayerRule | None:
    """The rule for ``layer``: of the nearest registered class in its MRO, and only if
    the layer's class runs that class's ``call``."""
    if _OPTIONAL:
        load_optional_rules()
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls] if type(layer).call is cls.call else None
    return None


def row_tables(model: Any) -> set[int]:
    """The ids of the variables that come by row under sparsity-preserving DP-SGD
    (:mod:`keras_privacy.training.sparsity`): the tables of layers whose rule supports it."""
    found = set()
    for layer in model._flatten_layers(include_self=False):
        rule = rule_for(layer)
        if rule is None or not getattr(rule, "supports_sparse_rows", False):
            continue
        table = getattr(layer, "_embeddings", None)
        if table is not None and table.trainable and not getattr(layer, "lora_enabled", False):
            found.add(id(table))
    return found
