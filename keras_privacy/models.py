"""Reference architectures used by the tutorials and benchmarks."""

from __future__ import annotations

import keras


def tutorial_cnn(input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10) -> keras.Model:
    """The CNN of TensorFlow Privacy's MNIST DP-SGD tutorial (about 26k parameters).

    Conv2D 16 8x8 stride 2 same -> MaxPool 2 stride 1 -> Conv2D 32 4x4 stride 2 valid ->
    MaxPool 2 stride 1 -> Flatten -> Dense 32 relu -> Dense ``num_classes`` (logits).
    """
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 8, strides=2, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2, 1),
            keras.layers.Conv2D(32, 4, strides=2, padding="valid", activation="relu"),
            keras.layers.MaxPooling2D(2, 1),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="tutorial_cnn",
    )


def mlp(input_dim: int = 784, hidden: tuple[int, ...] = (512, 512), num_classes: int = 10):
    """A plain MLP (784-512-512-10 by default, about 670k parameters) on flat inputs."""
    return keras.Sequential(
        [keras.Input((input_dim,))]
        + [keras.layers.Dense(h, activation="relu") for h in hidden]
        + [keras.layers.Dense(num_classes)],
        name="mlp",
    )
