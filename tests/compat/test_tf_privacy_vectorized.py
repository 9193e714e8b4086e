"""A5: TF Privacy's vectorized DP optimizers take ``unconnected_gradients_to_zero``."""

from __future__ import annotations

import importlib

import keras
import numpy as np

import keras_privacy as kp

ROOT = "keras_privacy.compat.tensorflow_privacy.privacy"
VECTORIZED = f"{ROOT}.optimizers.dp_optimizer_keras_vectorized"


class _WithUnusedWeight(keras.layers.Layer):
    """A Dense layer with a trainable weight that the output does not depend on."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 1), initializer="ones")
        self.unused = self.add_weight(shape=(3,), initializer="ones")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)


def test_a5_unconnected_gradients_to_zero_is_accepted_and_trains():
    module = importlib.import_module(VECTORIZED)
    optimizer = module.VectorizedDPKerasSGDOptimizer(
        1.0,
        0.0,
        None,
        True,
        learning_rate=0.1,  # TF Privacy's positional order
    )
    assert optimizer.unconnected_gradients_to_zero is True
    assert optimizer.get_config()["unconnected_gradients_to_zero"] is True
    model = kp.DPSequential(
        layers=[keras.Input((4,)), _WithUnusedWeight()], engine="vectorized", seed=0
    )
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model.fit(x, np.zeros((32, 1), "float32"), batch_size=8, epochs=1, verbose=0)
    layer = model.layers[-1]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.unused), np.ones(3))
    assert not np.allclose(keras.ops.convert_to_numpy(layer.kernel), 1.0)


def test_a5_keyword_form():
    module = importlib.import_module(VECTORIZED)
    optimizer = module.VectorizedDPKerasAdamOptimizer(
        l2_norm_clip=1.0, noise_multiplier=1.1, unconnected_gradients_to_zero=False
    )
    assert optimizer.unconnected_gradients_to_zero is False
    assert isinstance(optimizer, keras.optimizers.Adam)
