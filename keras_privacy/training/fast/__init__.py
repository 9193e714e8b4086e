"""The fast (norm-only, "book-keeping") clipping engine's backend-neutral parts.

* :mod:`.rules`: the rule interface and its public registry (:func:`register_rule`);
  :mod:`.matmul_rules` (Dense, EinsumDense, Conv1D/Conv2D/Conv3D; LoRA) and
  :mod:`.table_norm_rules` (Embedding, ReversibleEmbedding, LayerNormalization,
  RMSNormalization, GroupNormalization) hold the built-in rules, :mod:`.hub_rules`
  keras-hub's (loaded once the user imported keras_hub);
* :mod:`.shared`: the cross terms of variables reached by several calls (tied weights);
* :mod:`.guard`: the batch-independence guard (:func:`register_per_example_layer`);
* :mod:`.clip`: per-unit norms and the clipped sum from the captured calls.

The backend supplies only the forward/backward pass and "gradients with respect to these
tensors" (``keras_privacy/training/backend/<name>/fast_engine.py``).
"""

import keras

from keras_privacy.training.fast.matmul_rules import ConvRule, DenseRule, EinsumDenseRule
from keras_privacy.training.fast.rules import (
    LayerRule,
    NotExact,
    RuleCall,
    register_optional_rules,
    register_rule,
    rule_for,
)
from keras_privacy.training.fast.table_norm_rules import (
    EmbeddingRule,
    GroupNormalizationRule,
    LayerNormalizationRule,
    ReversibleEmbeddingRule,
    RMSNormalizationRule,
)
from keras_privacy.training.fast.units import probe

register_rule(keras.layers.Dense, DenseRule())
register_rule(keras.layers.EinsumDense, EinsumDenseRule())
register_rule(keras.layers.Conv1D, ConvRule())
register_rule(keras.layers.Conv2D, ConvRule())
register_rule(keras.layers.Conv3D, ConvRule())
register_rule(keras.layers.Embedding, EmbeddingRule())
register_rule(keras.layers.LayerNormalization, LayerNormalizationRule())
register_rule(keras.layers.GroupNormalization, GroupNormalizationRule())
if hasattr(keras.layers, "RMSNormalization"):
    register_rule(keras.layers.RMSNormalization, RMSNormalizationRule())
if hasattr(keras.layers, "ReversibleEmbedding"):
    register_rule(keras.layers.ReversibleEmbedding, ReversibleEmbeddingRule())
# keras-hub's layers (an optional dependency: keras-privacy[hub]) get their rules and
# guard entries the first time a rule is looked up after the user imported keras_hub.
register_optional_rules("keras_hub", "keras_privacy.training.fast.hub_rules")
# keras-rs's per-example layers (keras-privacy[recommenders]): guard entries only.
register_optional_rules("keras_rs", "keras_privacy.training.fast.rs_rules")

# Imported after the rules: the guard allows every layer that has a rule.
from keras_privacy.training.fast.guard import (  # noqa: E402
    batch_mixing_reason,
    register_per_example_layer,
)

__all__ = [
    "ConvRule",
    "LayerRule",
    "NotExact",
    "RuleCall",
    "batch_mixing_reason",
    "probe",
    "register_per_example_layer",
    "register_rule",
    "rule_for",
]
