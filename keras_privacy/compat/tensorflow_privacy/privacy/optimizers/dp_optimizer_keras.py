"""``tensorflow_privacy.privacy.optimizers.dp_optimizer_keras``: the DP optimizers.

They carry the DP settings to a DP model (``DPSequential``, ``DPModel``,
``keras_privacy.make_private``), whose training step clips and noises."""

from __future__ import annotations

from keras_privacy.training import (  # noqa: F401
    DPKerasAdagradOptimizer,
    DPKerasAdamOptimizer,
    DPKerasSGDOptimizer,
)

__all__ = [
    "DPKerasAdagradOptimizer",
    "DPKerasAdamOptimizer",
    "DPKerasSGDOptimizer",
]
