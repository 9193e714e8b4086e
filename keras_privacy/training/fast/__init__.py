"""The fast (norm-only, "book-keeping") clipping engine's backend-neutral parts.

* :mod:`.rules`: per-layer rules and their public registry (:func:`register_rule`);
* :mod:`.guard`: the batch-independence guard (:func:`register_per_example_layer`);
* :mod:`.clip`: per-unit norms and the clipped sum from the captured calls.

The backend supplies only the forward/backward pass and "gradients with respect to these
tensors" (``keras_privacy/training/backend/<name>/fast_engine.py``).
"""

from keras_privacy.training.fast.guard import batch_mixing_reason, register_per_example_layer
from keras_privacy.training.fast.rules import LayerRule, NotExact, RuleCall, register_rule, rule_for

__all__ = [
    "LayerRule",
    "NotExact",
    "RuleCall",
    "batch_mixing_reason",
    "register_per_example_layer",
    "register_rule",
    "rule_for",
]
