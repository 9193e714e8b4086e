"""``tensorflow_privacy.privacy.fast_gradient_clipping.layer_registry``: a no-op registry.

TF Privacy's DP models do fast ("ghost") clipping only for layers in the registry they are
given. keras-privacy's DP models choose the engine themselves (``engine="auto"``): the
norm-only engine where every layer has a rule, the vectorized engine otherwise, both exact.
So :func:`make_default_layer_registry` returns a :class:`LayerRegistry` that changes
nothing; ``is_elem`` answers whether keras-privacy has a built-in rule for a layer.
TF Privacy's registry functions have another contract than keras-privacy's rules:
``insert`` and ``lookup`` raise
:class:`~keras_privacy.compat._unsupported.UnsupportedError` saying to register a
``keras_privacy.training.fast.LayerRule`` with
``keras_privacy.training.fast.register_rule`` instead.

``DPModel``/``DPSequential`` accept this registry as ``layer_registry`` (and nothing
else: :mod:`keras_privacy.training.tf_privacy_arguments`).
"""

from __future__ import annotations

from typing import Any, NoReturn

from keras_privacy.compat._unsupported import UnsupportedError

__all__ = ["LayerRegistry", "make_default_layer_registry"]

_INSTEAD = (
    "TF Privacy's layer registry functions are not used by keras-privacy, whose DP models "
    "pick an exact clipping engine per model (engine='auto'). For a fast rule of your own "
    "layer, register a keras_privacy.training.fast.LayerRule with "
    "keras_privacy.training.fast.register_rule(layer_class, rule)."
)


class LayerRegistry:
    """TF Privacy's registry type; keras-privacy's models do not read it (a no-op)."""

    #: what ``DPModel``/``DPSequential`` check to accept it as ``layer_registry``
    keras_privacy_no_op = True

    def is_elem(self, layer_instance: Any) -> bool:
        """Whether keras-privacy's fast engine has a built-in rule for this layer."""
        from keras_privacy.training.fast import rules

        return rules.rule_for(layer_instance) is not None

    def lookup(self, layer_instance: Any) -> NoReturn:
        raise UnsupportedError(f"LayerRegistry.lookup: {_INSTEAD}")

    def insert(self, layer_class: type, layer_registry_function: Any) -> NoReturn:
        raise UnsupportedError(f"LayerRegistry.insert: {_INSTEAD}")


def make_default_layer_registry() -> LayerRegistry:
    """The (no-op) registry: keras-privacy's DP models choose their engine themselves."""
    return LayerRegistry()
