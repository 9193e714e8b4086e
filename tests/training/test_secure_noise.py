"""secure_noise=True: the noise comes from os.urandom at every update, with the right scale."""

import keras
import numpy as np
import pytest
from helpers import to_numpy

import keras_privacy as kp
from keras_privacy.training import noise

SIGMA, CLIP, BATCH = 1.3, 0.7, 8


def test_secure_normals_are_standard_normal():
    z = noise.secure_standard_normals(200_000)
    assert z.dtype == np.float32 and z.shape == (200_000,)
    assert abs(np.mean(z)) < 0.01 and abs(np.std(z) - 1) < 0.01
    assert abs(np.mean(z.astype("float64") ** 4) - 3) < 0.1  # Gaussian kurtosis


def test_every_update_draws_fresh_os_entropy(monkeypatch):
    """The update's noise is N(0, (sigma C / B)^2) per coordinate and its bytes come from
    os.urandom (32 bytes per coordinate: four float64 normals), fresh at each update."""
    requested = []
    real = noise.os.urandom

    def recording_urandom(size):
        requested.append(size)
        return real(size)

    monkeypatch.setattr(noise.os, "urandom", recording_urandom)
    inner = keras.Sequential([keras.Input((200,)), keras.layers.Dense(50, use_bias=False)])
    model = kp.make_private(inner, l2_norm_clip=CLIP, noise_multiplier=SIGMA, secure_noise=True)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    steps = []
    for _ in range(2):
        before = to_numpy(model.trainable_variables[0].value).copy()
        model.train_on_batch(np.zeros((BATCH, 200), "float32"), np.zeros((BATCH, 50), "float32"))
        steps.append(before - to_numpy(model.trainable_variables[0].value))
    assert requested == [32 * 200 * 50] * 2
    for step in steps:
        assert abs(np.std(step) / (SIGMA * CLIP / BATCH) - 1) < 0.05
    assert not np.allclose(steps[0], steps[1])


def test_secure_noise_refusals():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(kp.PrivacyError, match="seed"):
        kp.make_private(inner, l2_norm_clip=1.0, noise_multiplier=1.0, secure_noise=True, seed=1)
    with pytest.raises(kp.PrivacyError, match="secure_noise"):
        kp.make_private(inner, l2_norm_clip=1.0, noise_multiplier=1.0, secure_noise="yes")
