"""TF Privacy's extra DP model arguments, ``use_xla`` and ``layer_registry``.

``DPModel``/``DPSequential`` accept them so that code written for TF Privacy's models runs:

* ``use_xla`` is accepted and ignored. TF Privacy compiles its DP step with XLA by default;
  keras-privacy leaves that to ``compile(jit_compile=...)``, because on CPU XLA made DP
  steps 2–3× slower (docs/coming_from_tf_privacy.md).
* ``layer_registry`` may be ``None`` or the no-op registry of
  ``keras_privacy.compat.tensorflow_privacy.privacy.fast_gradient_clipping.layer_registry``:
  keras-privacy's models choose an exact clipping engine themselves (``engine="auto"``).
  Anything else raises ``TypeError`` saying to register a ``LayerRule`` with
  ``keras_privacy.training.fast.register_rule`` instead.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_tf_privacy_arguments"]


def check_tf_privacy_arguments(use_xla: bool, layer_registry: Any) -> None:
    """Refuse a ``layer_registry`` keras-privacy cannot honour; ``use_xla`` is ignored."""
    if not isinstance(use_xla, bool):
        raise TypeError(f"use_xla must be True or False, received {use_xla!r}")
    if layer_registry is None or getattr(layer_registry, "keras_privacy_no_op", False):
        return
    raise TypeError(
        f"layer_registry={layer_registry!r}: keras-privacy's DP models do not read TF "
        "Privacy's layer registries; they pick an exact clipping engine per model "
        "(engine='auto'). For a fast rule of your own layer, register a "
        "keras_privacy.training.fast.LayerRule with "
        "keras_privacy.training.fast.register_rule(layer_class, rule)."
    )
