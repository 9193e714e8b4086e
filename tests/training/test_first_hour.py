"""Issue 21, item 7: what a new user trips over in the first hour, each fixed or explained."""

import keras
import pytest

import keras_privacy as kp

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _layers():
    return [keras.Input((4,)), keras.layers.Dense(3)]


def test_dp_sequential_takes_layers_first_as_keras_does():
    model = kp.DPSequential(_layers(), l2_norm_clip=1.0, noise_multiplier=1.1)
    assert (model._dp_config.l2_norm_clip, model._dp_config.noise_multiplier) == (1.0, 1.1)
    assert len(model.layers) == 1
    tf_privacy_style = kp.DPSequential(1.0, 1.1, layers=_layers())
    assert tf_privacy_style._dp_config.noise_multiplier == 1.1
    with pytest.raises(TypeError, match="multiple values for argument 'l2_norm_clip'"):
        kp.DPSequential(1.0, 1.1, l2_norm_clip=2.0, layers=_layers())
