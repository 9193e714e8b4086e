"""The DP step's clip-and-noise is TF Privacy's Gaussian sum query (issue 20): per
training step, ``sum_i clip_C(g_i) + N(0, (sigma C)^2 I)`` with each example's whole
gradient ``g_i`` as one record. Each engine's clipped sum is checked against
:class:`keras_privacy.queries.GaussianSumQuery` fed the per-example gradients, and the
step's noise against the query's."""

import dp_accounting
import keras
import numpy as np
import pytest
from helpers import engine_clipped_sum, gradients, sgd_step_sum

import keras_privacy as kp
from keras_privacy.queries import GaussianSumQuery

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _model():
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(7, activation="tanh"), keras.layers.Dense(3)]
    )


def _query_sum(model, x, y, clip, stddev=0.0):
    """GaussianSumQuery over the per-example gradients (one record per example)."""
    query = GaussianSumQuery(l2_norm_clip=clip, stddev=stddev)
    state = query.initial_global_state()
    params = query.derive_sample_params(state)
    sample = query.initial_sample_state([np.zeros(v.shape) for v in model.trainable_variables])
    for i in range(len(x)):
        record = gradients(
            model, lambda i=i: keras.ops.mean(LOSS(y[i : i + 1], model(x[i : i + 1])))
        )
        sample = query.accumulate_record(params, sample, record)
    result, _, event = query.get_noised_result(sample, state)
    return result, event


@pytest.mark.parametrize("engine", ["fast", "vectorized"])
@pytest.mark.parametrize("clip", [1e-3, 0.5, 1e6])
def test_every_engine_computes_the_gaussian_sum_query(engine, clip):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(9, 5)) * rng.uniform(0.1, 30, size=(9, 1))).astype("float32")
    y = rng.integers(0, 3, size=9)
    private = kp.make_private(_model(), l2_norm_clip=clip, noise_multiplier=0.0, engine=engine)
    private.compile(optimizer="sgd", loss=LOSS)
    private.build((None, 5))
    expected, event = _query_sum(private, x, y, clip)
    got = engine_clipped_sum(private, x, y)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=1e-6 * clip)
    assert event == dp_accounting.NonPrivateDpEvent()


def test_the_step_noise_is_the_query_noise():
    # Zero data gradient: the update is the noise alone, sigma * C per coordinate of the
    # sum, as the query's stddev.
    clip, sigma, batch = 2.0, 1.5, 4
    model = keras.Sequential(
        [keras.Input((400,)), keras.layers.Dense(50, kernel_initializer="zeros")]
    )
    private = kp.make_private(model, l2_norm_clip=clip, noise_multiplier=sigma, seed=3)
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    x, y = np.zeros((batch, 400), "float32"), np.zeros((batch, 50), "float32")
    step_noise = np.concatenate([np.ravel(s) for s in sgd_step_sum(private, x, y, batch)])
    query_noise, event = _query_sum_of_zeros(clip, sigma * clip, step_noise.size)
    assert abs(np.std(step_noise) - np.std(query_noise)) < 0.05 * sigma * clip
    assert event.noise_multiplier == sigma


def _query_sum_of_zeros(clip, stddev, size):
    query = GaussianSumQuery(clip, stddev, rng=1)
    state = query.initial_global_state()
    sample = query.initial_sample_state(np.zeros(size))
    sample = query.accumulate_record(query.derive_sample_params(state), sample, np.zeros(size))
    result, _, event = query.get_noised_result(sample, state)
    return result, event
