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

__all__ = ["check_tf_privacy_arguments", "sparsity_from_tf_privacy"]


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


def sparsity_from_tf_privacy(
    config: Any, noise_multiplier: float | None, sparsity_preserving: Any
) -> tuple[float | None, Any]:
    """``(noise_multiplier, sparsity_preserving)`` for a model given TF Privacy's
    ``sparsity_preserving_dpsgd_config`` (a ``SparsityPreservingDPSGDConfig`` of TF
    Privacy or of :mod:`keras_privacy.compat.tensorflow_privacy`, read by its fields).

    TF Privacy splits the model's ``noise_multiplier`` between the partition selection
    and the gradient with ``sparse_selection_privacy_budget_fraction`` (see
    :func:`keras_privacy.training.sparsity.split_noise_multiplier_tf_privacy`, which
    reproduces its formula) and selects rows whose count (each example contributing at
    most 1 in L2) plus noise reaches ``sparse_selection_threshold``. The same split is
    made here: the model trains with the gradient's share as its ``noise_multiplier``
    and the selection's as :class:`~keras_privacy.training.sparsity.SparsityPreserving`'s,
    and is accounted with their combination, which is the ``noise_multiplier`` given. A
    fraction of 0 (TF Privacy's default) is plain DP-SGD.
    """
    from keras_privacy.training.errors import PrivacyError
    from keras_privacy.training.sparsity import (
        SparsityPreserving,
        split_noise_multiplier_tf_privacy,
    )

    if config is None:
        return noise_multiplier, sparsity_preserving
    if sparsity_preserving is not None:
        raise PrivacyError(
            "Give sparsity_preserving or TF Privacy's sparsity_preserving_dpsgd_config, not both."
        )
    registry = getattr(config, "sparse_selection_layer_registry", None)
    if registry is not None and not getattr(registry, "keras_privacy_no_op", False):
        raise TypeError(
            "sparse_selection_layer_registry: keras-privacy selects rows for the tables of "
            "layers whose fast rule supports it (keras.layers.Embedding); it does not read "
            "TF Privacy's registries. Leave it None."
        )
    fraction = float(getattr(config, "sparse_selection_privacy_budget_fraction", 0.0))
    if fraction == 0.0:
        return noise_multiplier, None
    if noise_multiplier is None:
        raise PrivacyError(
            "sparsity_preserving_dpsgd_config needs the model's noise_multiplier (TF "
            "Privacy splits it between the row selection and the gradient): pass "
            "noise_multiplier to the model, not only to a DP optimizer."
        )
    selection, gradient = split_noise_multiplier_tf_privacy(noise_multiplier, fraction)
    threshold = float(getattr(config, "sparse_selection_threshold", 100))
    spec = SparsityPreserving(
        selection_noise_multiplier=selection, threshold=threshold, contribution_bound=1.0
    )
    return gradient, spec
