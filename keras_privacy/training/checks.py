"""Static checks that a model can be trained with per-example DP-SGD."""

from __future__ import annotations

import keras

from keras_privacy.training.errors import PrivacyError

# Layers whose training-mode forward pass mixes the examples of a batch: an example's
# output (and so its gradient) depends on the other examples, so per-example clipping
# does not bound one example's influence.
_BATCH_MIXING_LAYERS: tuple[tuple[type, str], ...] = (
    (
        keras.layers.BatchNormalization,
        "normalizes each example with statistics of the whole batch, so one example "
        "influences every other example's gradient (and the moving statistics are "
        "computed from private data without noise). Replace it with "
        "keras.layers.GroupNormalization or keras.layers.LayerNormalization, or freeze it "
        "(layer.trainable = False runs it in inference mode)",
    ),
)


def _all_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    # Layer._flatten_layers is Keras's own traversal (used by `losses`, `variables`).
    return list(model._flatten_layers(include_self=False, recursive=True))


def check_layers_supported(model: keras.layers.Layer) -> None:
    """Raise :class:`PrivacyError` for layers that mix examples in training mode, and for
    stateful layers, which carry state from one batch's examples into the next batch."""
    for layer in _all_layers(model):
        if getattr(layer, "stateful", False):
            raise PrivacyError(
                f"Layer {layer.name!r} ({type(layer).__name__}) has stateful=True: its state "
                "after one batch (computed from those examples, without noise) feeds the next "
                "batch, so one example's influence is not bounded by the clip norm. Use "
                "stateful=False (the default); each example's sequence is then processed on "
                "its own."
            )
        for layer_type, why in _BATCH_MIXING_LAYERS:
            if isinstance(layer, layer_type) and layer.trainable:
                raise PrivacyError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) cannot be trained with "
                    f"DP-SGD: it {why}."
                )


def seed_state_variables(model: keras.layers.Layer) -> list:
    """The RNG state variables (dropout and other random layers) of a model."""
    states = []
    for layer in [model, *_all_layers(model)]:
        for generator in getattr(layer, "_seed_generators", []):
            states.append(generator.state)
    return states
