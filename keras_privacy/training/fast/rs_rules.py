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

``DistributedEmbedding`` and its ``EmbedReduce`` tables, when every feature is placed on
the default device (CPU, GPU, or TPU without SparseCore): the layer then calls one
``EmbedReduce`` per feature, a ``keras.layers.Embedding`` lookup of the example's ids
followed by a reduction over the example's own ids (``sum``, ``mean`` or ``sqrtn``, with
optional per-id weights). ``EmbedReduce`` has a rule (:class:`EmbedReduceRule`): the
lookup's per-unit gradient is the Embedding rule's (rows by id, so sparsity-preserving
DP-SGD applies), and the reduction is differentiated through, as any per-example op after
a probe. Features placed on a SparseCore are looked up by TPU embedding ops that have no
rule, so such a layer is refused.

keras-rs's ranking losses (``PairwiseLogisticLoss``, ``ListMLELoss``, ...) are per list:
row ``b`` of ``y_pred`` is one example's candidate list, and its loss depends on that row
only, so they are per-example wherever each example carries its own list.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from keras_rs.src.layers.embedding import distributed_embedding, embed_reduce
from keras_rs.src.layers.feature_interaction import dot_interaction, feature_cross

from keras_privacy.training.fast.guard import register_per_example_layer
from keras_privacy.training.fast.rules import NotExact, register_rule
from keras_privacy.training.fast.table_norm_rules import EmbeddingRule

#: ``EmbedReduce``'s reductions over an example's ids.
_COMBINERS = ("sum", "mean", "sqrtn")


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


def _default_device_only(layer: Any) -> str | None:
    """A ``DistributedEmbedding`` is per-example only where its features are looked up by
    ``EmbedReduce`` layers (the "default_device" placement)."""
    placements = getattr(layer, "_placement_to_path_to_feature_config", {})
    if set(placements) - {"default_device"}:
        return (
            "features placed on a SparseCore are looked up by TPU embedding ops that "
            "have no per-example rule (place them on the default device)"
        )
    return None


def _dense(tensor: Any) -> bool:
    """Whether ``tensor`` is a dense array (not ragged or sparse)."""
    name = type(tensor).__name__
    return not ("Ragged" in name or "Sparse" in name or name in ("BCOO", "BCSR"))


class EmbedReduceRule(EmbeddingRule):
    """keras-rs ``EmbedReduce``: ``y_b = sum_j w_bj E[id_bj] / c_b`` with ``c_b = 1``
    (``sum``), ``sum_j w_bj`` (``mean``) or ``sqrt(sum_j w_bj^2)`` (``sqrtn``), ``w = 1``
    without weights; an example's output depends on its own ids and weights only.

    The lookup ``z = E[ids]`` is the Embedding rule's probe, so the table's per-unit
    gradient is the same rows-by-id sum ``G_u[v] = sum_{j: id_j = v} dz_j`` (with
    ``dz_j = w_bj dy_b / c_b``, which backpropagation through the reduction gives);
    norms, clipped sums, LoRA and sparsity-preserving rows are the Embedding rule's.
    Only dense ids and weights (ragged and sparse inputs raise :class:`NotExact`).
    """

    def unsupported(self, layer):
        if layer.combiner not in _COMBINERS:
            return f"its combiner {layer.combiner!r} is not one of {_COMBINERS}"
        if layer.mask_zero:
            return "mask_zero=True"
        return super().unsupported(layer)

    def forward(self, layer, inputs, weights=None, *args, **kwargs):
        if not _dense(inputs) or (weights is not None and not _dense(weights)):
            raise NotExact(f"layer {layer.name!r} (EmbedReduce) got ragged or sparse inputs")
        rows, saved, probes = super().forward(layer, inputs)
        rank = len(rows.shape)
        # The weights only scale a single lookup per example under "sum" (EmbedReduce's
        # own rule); otherwise every looked-up row has weight one.
        if weights is None or (rank <= 2 and layer.combiner != "sum"):
            weights = ops.ones(ops.shape(inputs), rows.dtype)
        else:
            weights = ops.cast(weights, rows.dtype)
        while len(weights.shape) < rank:
            weights = ops.expand_dims(weights, -1)
        weighted = ops.multiply(rows, weights)
        if rank <= 2:
            return weighted, saved, probes
        total = ops.sum(weighted, axis=-2)
        if layer.combiner == "mean":
            total = ops.divide_no_nan(total, ops.sum(weights, axis=-2))
        elif layer.combiner == "sqrtn":
            total = ops.divide_no_nan(total, ops.sqrt(ops.sum(ops.square(weights), axis=-2)))
        return total, saved, probes


register_rule(embed_reduce.EmbedReduce, EmbedReduceRule())
register_per_example_layer(distributed_embedding.DistributedEmbedding, _default_device_only)
