"""``tensorflow_privacy.privacy.keras_models.dp_keras_model``: DP Keras models, and TF
Privacy's ``SparsityPreservingDPSGDConfig`` for their ``sparsity_preserving_dpsgd_config``
argument (sparsity-preserving DP-SGD, :mod:`keras_privacy.training.sparsity`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from keras_privacy.training import (  # noqa: F401
    DPModel,
    DPSequential,
)


@dataclasses.dataclass
class SparsityPreservingDPSGDConfig:
    """TF Privacy's settings of sparsity-preserving DP-SGD, with its field names.

    Attributes:
      sparse_selection_privacy_budget_fraction: ``f`` in ``[0, 1)``; how TF Privacy
        splits the model's ``noise_multiplier`` between the row selection and the
        gradient (0: no selection, plain DP-SGD). See
        :func:`keras_privacy.training.sparsity.split_noise_multiplier_tf_privacy` for the
        formula, reproduced exactly, and what it does with ``f``.
      sparse_selection_threshold: a row is updated when its noisy count (each example
        adding at most 1 in L2) reaches it.
      sparse_selection_layer_registry: must be ``None``: the tables of
        ``keras.layers.Embedding`` layers (the fast engine's rule) are selected.
    """

    sparse_selection_privacy_budget_fraction: float = 0.0
    sparse_selection_threshold: int = 100
    sparse_selection_layer_registry: Any = None


__all__ = [
    "DPModel",
    "DPSequential",
    "SparsityPreservingDPSGDConfig",
]
