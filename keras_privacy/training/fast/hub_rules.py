"""keras-hub's layers on the fast engine (optional: ``keras-privacy[hub]``).

Imported only once the user has imported ``keras_hub``
(:func:`~keras_privacy.training.fast.rules.register_optional_rules`); never imports it
itself first. Per layer, never per model:

* rules: ``PositionEmbedding`` (a learned table sliced to the sequence: each unit's
  gradient is its output gradients summed over its rows, ``[T, D]``, materialised),
  the RMS-style norms of keras-hub's decoders (``keras_hub.layers.RMSNormalization``,
  Llama's ``LlamaLayerNorm``, Gemma's ``RMSNormalization`` with ``x (1 + scale)``);
  ``ReversibleEmbedding`` is Keras's own layer and has its rule with the Embedding rule;
* batch-independence entries (an allow-list by class, each instance's sub-layers and
  callables checked by the guard, and the numerical check of
  :mod:`keras_privacy.training.fast.independence` before every first use):
  ``RotaryEmbedding`` (no weights; positions from the sequence axis, never the batch
  axis), ``TokenAndPositionEmbedding``, ``TransformerEncoder``, ``TransformerDecoder``
  and ``CachedMultiHeadAttention`` (containers of layers that have rules: attention
  mixes the positions of one example, never two examples);
* ``gelu_approximate`` (keras-hub's ``gelu(x, approximate=True)``), an element-wise
  activation, on the guard's list of per-example functions.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from keras_hub.src.layers.modeling import (
    cached_multi_head_attention,
    position_embedding,
    rms_normalization,
    rotary_embedding,
    token_and_position_embedding,
    transformer_decoder,
    transformer_encoder,
)
from keras_hub.src.models.gemma import rms_normalization as gemma_rms
from keras_hub.src.models.llama import llama_layernorm
from keras_hub.src.utils import keras_utils

from keras_privacy.training.fast import units as U
from keras_privacy.training.fast.guard import (
    register_per_example_function,
    register_per_example_layer,
)
from keras_privacy.training.fast.rules import (
    LayerRule,
    NotExact,
    _scale_units,
    _trainable,
    register_rule,
)
from keras_privacy.training.fast.shared import FullTerm
from keras_privacy.training.fast.table_norm_rules import _ScaleOffsetRule


class PositionEmbeddingRule(LayerRule):
    """keras-hub's ``PositionEmbedding``: ``out[b, t] = P[start + t]`` for a static
    ``start_index``. A unit's gradient of ``P`` is ``sum_{b in unit} dz[b, t]`` at rows
    ``start + t`` (``T D`` numbers per unit, materialised)."""

    def variables(self, layer):
        return _trainable([layer.position_embeddings])

    def forward(self, layer, inputs, *args, start_index=0, positions=None, **kwargs):
        if positions is not None or position_embedding._vllm_serving_positions() is not None:
            raise NotExact(f"layer {layer.name!r} is called with explicit positions")
        if not isinstance(start_index, int):
            raise NotExact(f"layer {layer.name!r} is called with a traced start_index")
        shape = ops.shape(inputs)
        table = ops.convert_to_tensor(layer.position_embeddings)
        rows = ops.slice(table, (start_index, 0), (shape[-2], shape[-1]))
        z = U.probe(ops.broadcast_to(rows, shape))
        return z, {"start": start_index}, {"z": z}

    def _unit_grads(self, call, units):
        if "g" not in call.cache:
            d = U.float32(call.grads["z"])
            d = ops.reshape(d, (units.count(d), -1, *d.shape[-2:]))
            call.cache["g"] = ops.sum(d, axis=1)  # [U, T, D]
        return call.cache["g"]

    def squared_norms(self, call, units):
        return U.sum_squares(self._unit_grads(call, units))

    def norms(self, call, units):
        return U.safe_norm(self._unit_grads(call, units))

    def clipped_sums(self, call, units, factors, safe):
        g = ops.sum(_scale_units(self._unit_grads(call, units), factors, safe), axis=0)
        length = call.layer.position_embeddings.shape[0]
        start = call.saved["start"]
        after = length - start - g.shape[0]
        return [ops.pad(g, ((start, after), (0, 0)))]

    def terms(self, call, units):
        g = self._unit_grads(call, units)
        length = call.layer.position_embeddings.shape[0]
        start = call.saved["start"]
        full = ops.pad(g, ((0, 0), (start, length - start - g.shape[1]), (0, 0)))
        return [FullTerm(full, "full")]


class _RMSRule(_ScaleOffsetRule):
    """``y = xhat * (offset + scale)`` with ``xhat = x / sqrt(mean(x^2) + eps)`` over the
    last axis, in float32 (keras-hub's RMS-style norms). The scale's per-unit gradient
    is ``sum_s dz_s * xhat_s`` whatever the offset."""

    offset = 0.0

    def _epsilon(self, layer) -> float:
        return layer.epsilon

    def _gamma_beta(self, layer):
        return layer.scale, None

    def variables(self, layer):
        return _trainable([layer.scale])

    def _normalize(self, layer, inputs):
        x = ops.cast(inputs, "float32")
        return x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + self._epsilon(layer))

    def forward(self, layer, inputs, *args, **kwargs):
        xhat = self._normalize(layer, inputs)
        scale = ops.cast(layer.scale, "float32")
        y = U.probe(xhat * (self.offset + scale) if self.offset else xhat * scale)
        return ops.cast(y, self._out_dtype(layer)), {"xhat": xhat}, {"z": y}

    def _out_dtype(self, layer) -> Any:
        return layer.compute_dtype


class HubRMSNormalizationRule(_RMSRule):
    """``keras_hub.layers.RMSNormalization`` (epsilon 1e-6, float32 output)."""

    def _epsilon(self, layer):
        return 1e-6

    def _out_dtype(self, layer):
        return "float32"


class GemmaRMSNormalizationRule(_RMSRule):
    """Gemma's ``RMSNormalization``: ``xhat * (1 + scale)``."""

    offset = 1.0


def _rotary_axes(layer: Any) -> str | None:
    for name in ("sequence_axis", "feature_axis"):
        axis = getattr(layer, name)
        if not isinstance(axis, int) or axis == 0:
            return f"its {name}={axis!r} is (or may be) the batch axis"
    return None


register_rule(position_embedding.PositionEmbedding, PositionEmbeddingRule())
register_rule(rms_normalization.RMSNormalization, HubRMSNormalizationRule())
register_rule(llama_layernorm.LlamaLayerNorm, _RMSRule())
register_rule(gemma_rms.RMSNormalization, GemmaRMSNormalizationRule())
register_per_example_layer(rotary_embedding.RotaryEmbedding, _rotary_axes)
for _container in (
    token_and_position_embedding.TokenAndPositionEmbedding,
    transformer_encoder.TransformerEncoder,
    transformer_decoder.TransformerDecoder,
    cached_multi_head_attention.CachedMultiHeadAttention,
):
    register_per_example_layer(_container)
register_per_example_function(keras_utils.gelu_approximate)
