"""The engine's vectorizer rules (conv filter gradients, batched matmul) are exact."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_privacy.training.backend.tensorflow.vectorization import (
    vectorizer_rules,
)


def _per_example_kernel_grads(layer, x):
    def one(xi):
        with tf.GradientTape() as tape:
            out = layer(xi[None])
            loss = tf.reduce_sum(tf.sin(out))  # a non-trivial output gradient
        return tape.gradient(loss, layer.kernel)

    return tf.function(lambda x: tf.vectorized_map(one, x))(x).numpy()


@pytest.mark.parametrize(
    "make_layer, shape",
    [
        (lambda: keras.layers.Conv2D(4, 3, strides=2, padding="same"), (6, 9, 9, 2)),
        (lambda: keras.layers.Conv2D(4, (3, 2), strides=(1, 2), padding="valid"), (5, 8, 7, 3)),
        (lambda: keras.layers.Conv2D(3, 3, dilation_rate=2, padding="same"), (4, 10, 10, 1)),
        (lambda: keras.layers.Conv2D(16, 8, strides=2, padding="same"), (3, 28, 28, 1)),
        (lambda: keras.layers.Conv1D(5, 3, strides=2, padding="same"), (6, 11, 2)),
        (lambda: keras.layers.Conv1D(5, 4, padding="valid"), (6, 11, 2)),
    ],
)
def test_rule_matches_tensorflow_loop(make_layer, shape):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    layer = make_layer()
    layer.build(shape)
    expected = _per_example_kernel_grads(layer, x)  # TensorFlow's while_loop fallback
    with vectorizer_rules():
        got = _per_example_kernel_grads(layer, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert got.shape == (shape[0], *layer.kernel.shape)


def test_rule_is_removed_afterwards():
    from tensorflow.python.ops.parallel_for import pfor

    before = pfor._pfor_converter_registry["Conv2DBackpropFilter"]
    with vectorizer_rules():
        assert pfor._pfor_converter_registry["Conv2DBackpropFilter"] is not before
    assert pfor._pfor_converter_registry["Conv2DBackpropFilter"] is before


def test_broadcast_batch_matmul_is_exact_for_every_unit():
    """[units, 1, m, k] @ [k, n] (what EinsumDense becomes per example): TensorFlow 2.21's
    oneDNN kernel gets units beyond the first thread's share wrong (#117700)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(12, 1, 5, 4)).astype("float32"))
    w = tf.constant(rng.normal(size=(4, 6)).astype("float32"))
    z = tf.constant(rng.normal(size=(12, 4, 3)).astype("float32"))  # a per-unit operand

    def per_unit(args):
        xi, zi = args
        return tf.matmul(xi, w), tf.matmul(xi, zi)

    @tf.function(autograph=False)
    def vectorized():
        with vectorizer_rules():
            return tf.vectorized_map(per_unit, (x, z))

    got = vectorized()
    for i in range(12):
        expected = (x[i].numpy() @ w.numpy(), x[i].numpy() @ z[i].numpy())
        np.testing.assert_allclose(got[0][i], expected[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[1][i], expected[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape, size, strides, dilation, padding",
    [
        ((3, 28, 28, 1), (8, 8), (2, 2), (1, 1), "same"),  # identity convolution
        ((2, 9, 8, 3), (3, 2), (1, 2), (1, 1), "valid"),  # identity convolution
        ((2, 9, 9, 2), (3, 3), (1, 1), (2, 2), "same"),  # dilated: copied
        ((2, 7, 7, 16), (4, 4), (2, 2), (1, 1), "valid"),  # many channels: copied
    ],
)
def test_image_patches_are_the_convolution_windows(shape, size, strides, dilation, padding):
    from keras_privacy.training.backend.tensorflow.vectorization import image_patches

    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    got = image_patches(images, size, strides, dilation, padding).numpy()
    want = tf.image.extract_patches(
        images, [1, *size, 1], [1, *strides, 1], [1, *dilation, 1], padding.upper()
    ).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


pytestmark = pytest.mark.tensorflow_only(reason="rules for TensorFlow's vectorizer")
