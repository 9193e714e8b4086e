"""keras-rs's layers under DP (optional: ``keras-privacy[recommenders]``).

Imported only once the user has imported ``keras_rs``
(:func:`~keras_privacy.training.fast.rules.register_optional_rules`); never imports it
itself first. Batch-independence entries (an allow-list by class; each instance's
sub-layers and callables are checked by the guard, and the numerical check of
:mod:`keras_privacy.training.fast.independence` runs before every first use):

* ``FeatureCross`` (DCN's cross layer): ``x0 * dense(x) + x`` (``dense`` after an
  optional down-projection, plus ``diag_scale * x``): two ``Dense`` sub-layers (which have
  rules, and are checked by the guard with their ``pre_activation``) and element-wise
  arithmetic on the last axis. It needs inputs with a feature axis besides the batch axis.
* ``DotInteraction`` (DLRM's interaction): the pairwise dot products of one example's
  feature vectors (``[b, f, d] @ [b, d, f]``, a batched matmul over the example's own
  features), no weights.

Not on the list, so refused by the fast engine's guard (and named in its message):
``BruteForceRetrieval`` and ``Retrieval`` (top-k over a stored candidate table: inference
only, never differentiated), ``RemoveAccidentalHits``, ``HardNegativeMining`` and
``SamplingProbabilityCorrection``: these post-process retrieval logits, typically the
*in-batch* logits ``queries @ candidates^T`` in which every example's candidate is every
other example's negative. Such a loss mixes examples: one example's gradient depends on
the whole batch, and clipping it does not bound that example's influence. Train
retrieval with per-example sampled negatives instead (each example's candidates drawn for
it from public randomness, as the recommendation tutorial does), and use
``BruteForceRetrieval`` on the released model.

keras-rs's ranking losses (``PairwiseLogisticLoss``, ``ListMLELoss``, ...) are per list:
row ``b`` of ``y_pred`` is one example's candidate list, and its loss depends on that row
only, so they are per-example wherever each example carries its own list.
"""

from __future__ import annotations

from typing import Any

from keras_rs.src.layers.feature_interaction import dot_interaction, feature_cross

from keras_privacy.training.fast.guard import register_per_example_layer


def _feature_axis(layer: Any) -> str | None:
    """FeatureCross is per-row only if its inputs have a feature axis (rank >= 2)."""
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        return None  # not yet called in a graph: the numerical check decides
    first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    rank = len(getattr(first, "shape", ()))
    if rank < 2:
        return f"its input has rank {rank}: no feature axis besides the batch axis"
    diag = layer.diag_scale
    if diag is not None and not isinstance(diag, (int, float)):
        return f"its diag_scale={diag!r} is not a number"
    return None


def _rank_two_features(layer: Any) -> str | None:
    """DotInteraction stacks rank-2 ``[batch, features]`` inputs on axis 1."""
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        return None
    tensors = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    for tensor in tensors:
        if len(getattr(tensor, "shape", ())) != 2:
            return "its inputs must be rank-2 [batch, features] tensors"
    return None


register_per_example_layer(feature_cross.FeatureCross, _feature_axis)
register_per_example_layer(dot_interaction.DotInteraction, _rank_two_features)
