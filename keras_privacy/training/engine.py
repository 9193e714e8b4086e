"""The engine interface: how a backend turns a batch into a sum of clipped gradients.

An engine answers one question for a batch of *clipping units* (single examples, or
microbatches): what is ``sum_u clip_C(grad_u)``, the sum of each unit's whole gradient
(over all trainable variables) clipped to L2 norm C? Everything around it -- sampling,
noise, accumulation, the optimizer update, metrics -- is the trainer's job and is shared.

The always-correct engine (``VectorizedEngine`` in each backend package) materialises
every unit's gradient with the backend's vectorizer over a stateless forward pass.
Faster engines (norm-only "ghost" clipping, which computes per-unit norms from layer
inputs and output-gradients without materialising per-unit gradients) implement the
same method and are chosen per model; the vectorized one stays the reference in tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol


@dataclasses.dataclass
class ClippedBatch:
    """What an engine returns for one batch.

    Attributes:
      grad_sum: one tensor per trainable variable: ``sum_u factor_u * grad_u``.
      unit_losses: shape ``[units]``: each unit's loss (per-example loss, or a
        microbatch's mean loss), for the loss metric.
      y_pred: the model's training-mode outputs for the batch's rows (for metrics).
      norms: shape ``[units]``: each unit's unclipped gradient norm (NaN/inf if it was
        not finite, in which case that unit contributed zero).
    """

    grad_sum: list
    unit_losses: Any
    y_pred: Any
    norms: Any


class ClippingEngine(Protocol):
    """Computes the clipped gradient sum of a batch; see the module docstring."""

    def clipped_gradient_sum(
        self,
        model: Any,
        x: Any,
        y: Any,
        sample_weight: Any,
        *,
        num_units: int | None,
        l2_norm_clip: float,
        unit_offset: Any = 0,
    ) -> ClippedBatch:
        """Args:
        model: the DP model (built).
        x, y, sample_weight: the batch's rows (nests of tensors; y and sample_weight may
          be None).
        num_units: ``None`` for per-example clipping; otherwise the number of equal
          microbatches the rows are split into.
        l2_norm_clip: C.
        unit_offset: index of the batch's first unit within the logical batch, so that
          random layers (dropout) give every unit its own randomness.
        """
        ...
