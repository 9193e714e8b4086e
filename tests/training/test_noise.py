"""Noise: N(0, (sigma C)^2) added once per optimizer update, divided by B; fresh each step."""

import keras
import numpy as np
import pytest
from helpers import flat, weights

import keras_privacy as kp

SIGMA, CLIP, BATCH = 1.3, 0.7, 8
UNITS = 200 * 50  # noised coordinates per update


def _zero_gradient_model(**dp):
    """Inputs are all zero, so every gradient is exactly 0 and the update is pure noise."""
    model = kp.DPSequential(
        l2_norm_clip=CLIP,
        noise_multiplier=SIGMA,
        layers=[keras.Input((200,)), keras.layers.Dense(50, use_bias=False)],
        **dp,
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    return model


def _noise_of_step(model, batch=BATCH):
    before = flat(weights(model))
    model.train_on_batch(np.zeros((batch, 200), "float32"), np.zeros((batch, 50), "float32"))
    return before - flat(weights(model))


def _assert_std(sample, expected):
    # 10,000 coordinates: the sample std is within ~1.5% of the truth with high
    # probability, so a 5% band rejects 2/3 and 3/2 of the expected value.
    ratio = np.std(sample) / expected
    assert abs(ratio - 1) < 0.05, ratio
    assert abs(np.mean(sample)) < 5 * expected / np.sqrt(sample.size)


def test_noise_std_is_sigma_c_over_batch():
    noise = _noise_of_step(_zero_gradient_model(seed=3))
    _assert_std(noise, SIGMA * CLIP / BATCH)
    for wrong in (2 / 3, 3 / 2):
        assert abs(np.std(noise) / (wrong * SIGMA * CLIP / BATCH) - 1) > 0.2


def test_noise_is_fresh_every_step_and_reproducible_with_a_seed():
    a = _zero_gradient_model(seed=11)
    first, second = _noise_of_step(a), _noise_of_step(a)
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.05
    b = _zero_gradient_model(seed=11)
    b.set_weights(a.get_weights())  # only the noise matters: the gradient is 0
    np.testing.assert_allclose(_noise_of_step(b), first, atol=1e-6)
    c = _zero_gradient_model(seed=12)
    assert not np.allclose(_noise_of_step(c), first)


def test_unseeded_models_draw_different_noise():
    assert not np.allclose(
        _noise_of_step(_zero_gradient_model()), _noise_of_step(_zero_gradient_model())
    )


def test_noise_once_per_update_under_gradient_accumulation():
    # One train_on_batch call is one update: its batch is processed in 3 chunks of 8 rows,
    # whose clipped sums are added before a single noise draw.
    model = _zero_gradient_model(seed=5, gradient_accumulation_steps=3)
    update = _noise_of_step(model, batch=3 * BATCH)
    # Once: sigma C / (3 B). Three draws would give sqrt(3) times that.
    _assert_std(update, SIGMA * CLIP / (3 * BATCH))
    assert abs(np.std(update) / (np.sqrt(3) * SIGMA * CLIP / (3 * BATCH)) - 1) > 0.2
    assert int(model.optimizer.iterations.numpy()) == 1
    assert model.privacy_record.total_updates == 1


def test_poisson_accumulation_noises_each_logical_batch_once():
    model = _zero_gradient_model(seed=5, gradient_accumulation_steps=4)
    x, y = np.zeros((400, 200), "float32"), np.zeros((400, 50), "float32")
    start = flat(weights(model))
    model.fit(x, y, batch_size=10, epochs=1, steps_per_epoch=1, verbose=0)
    _assert_std(start - flat(weights(model)), SIGMA * CLIP / 40)  # expected batch 4 x 10
    segment = model.privacy_record.current
    assert (segment.sampling, segment.expected_batch_size, segment.updates) == ("poisson", 40, 1)


@pytest.mark.parametrize("sigma", [0.0])
def test_zero_noise_multiplier_adds_nothing(sigma):
    model = kp.DPSequential(
        l2_norm_clip=CLIP,
        noise_multiplier=sigma,
        layers=[keras.Input((200,)), keras.layers.Dense(50, use_bias=False)],
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    assert np.all(_noise_of_step(model) == 0)


def test_seeded_noise_is_never_repeated_after_recompiling_or_retracing():
    model = _zero_gradient_model(seed=21)
    first = _noise_of_step(model)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")  # recompile
    second = _noise_of_step(model)
    model.fit(  # a different data path retraces the step
        np.zeros((40, 200), "float32"),
        np.zeros((40, 50), "float32"),
        batch_size=40,
        epochs=1,
        verbose=0,
    )
    third = _noise_of_step(model)
    for a, b in ((first, second), (first, third), (second, third)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.05


# -- every variable gets its own noise, on every training path ------------------------


def _multi_variable_model(**dp):
    """Embedding, Dense kernel and Dense bias; a loss with exactly zero gradient, so one
    update (SGD, learning rate 1) is the noise divided by B, variable by variable."""
    model = kp.DPSequential(
        l2_norm_clip=CLIP,
        noise_multiplier=SIGMA,
        layers=[
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(60, 10),
            keras.layers.Flatten(),
            keras.layers.Dense(300),
        ],
        seed=7,
        **dp,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=lambda y, p: 0.0 * keras.ops.sum(p, axis=-1),
    )
    return model


def _tf_data(x, y, batch):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).take(1)


# path -> (DP settings, how to run one update, the divisor B of that update)
PATHS = {
    "poisson": ({}, lambda m, x, y: m.fit(x, y, batch_size=16, steps_per_epoch=1), 16),
    "poisson_accumulation": (
        {"gradient_accumulation_steps": 2},
        lambda m, x, y: m.fit(x, y, batch_size=8, steps_per_epoch=1),
        16,
    ),
    "shuffle": (
        {"sampling": "shuffle"},
        lambda m, x, y: m.fit(x, y, batch_size=16, steps_per_epoch=1),
        16,
    ),
    "shuffle_accumulation": (
        {"sampling": "shuffle", "gradient_accumulation_steps": 4},
        lambda m, x, y: m.fit(x, y, batch_size=4, steps_per_epoch=1),
        16,
    ),
    "microbatches": (
        {"sampling": "shuffle", "num_microbatches": 4},
        lambda m, x, y: m.fit(x, y, batch_size=16, steps_per_epoch=1),
        4,
    ),
    "tf_data": ({}, lambda m, x, y: m.fit(_tf_data(x, y, 16), dataset_size=16), 16),
    "tf_data_accumulation": (
        {"gradient_accumulation_steps": 2},
        lambda m, x, y: m.fit(_tf_data(x, y, 16), dataset_size=16),
        16,
    ),
}


@pytest.mark.filterwarnings("ignore::keras_privacy.training.errors.SamplingWarning")
@pytest.mark.parametrize(
    "path",
    # tf_data_accumulation on JAX with -m slow: noise once per accumulated update there by
    # poisson_accumulation and shuffle_accumulation, a tf.data input by tf_data.
    [
        pytest.param(p, marks=pytest.mark.slow_on_jax) if p == "tf_data_accumulation" else p
        for p in sorted(PATHS)
    ],
)
def test_every_variable_gets_noise_of_std_sigma_c_over_b(path):
    settings, run_one_update, divisor = PATHS[path]
    model = _multi_variable_model(**settings)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 60, size=(64, 4)).astype("int32"), np.zeros((64, 300), "float32")
    before = weights(model)
    keras.utils.disable_interactive_logging()
    try:
        run_one_update(model, x, y)
    finally:
        keras.utils.enable_interactive_logging()
    assert model.privacy_record.total_updates == 1
    expected = SIGMA * CLIP / divisor
    noises = [b - a for b, a in zip(before, weights(model), strict=True)]
    assert [n.size for n in noises] == [600, 12000, 300]  # embedding, kernel, bias
    for noise in noises:
        sample = noise.ravel()
        # Relative standard error of a sample std is 1/sqrt(2n): 4.1% for the 300 biases.
        # A 5-standard-error band rejects a missing (0x), doubled (sqrt 2) or wrongly
        # divided draw, and a variable noised with another's draw.
        band = 5 / np.sqrt(2 * sample.size)
        assert abs(np.std(sample) / expected - 1) < band, (path, sample.size, np.std(sample))
        assert abs(np.mean(sample)) < 5 * expected / np.sqrt(sample.size)
    # Fresh, independent draws for each variable (not one draw reused).
    assert abs(np.corrcoef(noises[1].ravel()[:300], noises[2].ravel())[0, 1]) < 0.3


# -- the noise is Gaussian ------------------------------------------------------------


def test_box_muller_turns_uniforms_into_independent_standard_normals():
    from scipy import stats

    from keras_privacy.training.noise import gaussians_from_uniforms, pairs_needed, split_noise

    rng = np.random.default_rng(0)
    m = 100_000
    uniforms = rng.random((2, m), dtype=np.float32)
    z = keras.ops.convert_to_numpy(gaussians_from_uniforms(uniforms, 2.5)) / 2.5
    assert z.shape == (2 * m,) and np.all(np.isfinite(z))
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # The two halves come from the same radii: independent, so even their squares are
    # uncorrelated (reusing one angle or one radius twice would correlate them).
    cos_part, sin_part = z[:m], z[m:]
    assert abs(np.corrcoef(cos_part, sin_part)[0, 1]) < 0.02
    assert abs(np.corrcoef(cos_part**2, sin_part**2)[0, 1]) < 0.02
    # The extreme uniform 1 - 2^-23 (float32's largest below 1) gives the largest radius.
    edge = keras.ops.convert_to_numpy(
        gaussians_from_uniforms(np.array([[1 - 2**-23], [0.0]], "float32"), 1.0)
    )
    assert np.isclose(edge[0], np.sqrt(2 * 23 * np.log(2)), rtol=1e-4)
    assert pairs_needed([3, 4]) == 4
    parts = split_noise(np.arange(8.0), [(3,), (2, 2)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(parts[1]), [[3, 4], [5, 6]])


def test_a_noised_update_is_gaussian_with_std_sigma_c_over_b():
    from scipy import stats

    noise = _noise_of_step(_zero_gradient_model(seed=9))  # 10,000 coordinates
    scale = SIGMA * CLIP / BATCH
    assert stats.kstest(noise / scale, "norm").pvalue > 1e-3
    # A uniform or Laplace draw of the same std fails this (kurtosis 1.8 or 6).
    assert abs(stats.kurtosis(noise, fisher=False) - 3) < 0.3


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch noise generator")
def test_torch_noise_generator_state_is_all_entropy_not_a_32_bit_seed():
    """torch's manual_seed keeps 32 bits of a seed (2^32 possible noise streams). The DP
    step's generator gets all 624 Mersenne Twister words from the OS instead: its state
    does not follow the seeding recurrence that every manual_seed'ed state follows."""
    import torch

    from keras_privacy.training.backend.torch.trainer import _MT_WORDS_OFFSET, _StepState

    def words(generator):
        raw = generator.get_state().numpy().tobytes()[_MT_WORDS_OFFSET : _MT_WORDS_OFFSET + 8 * 624]
        return np.frombuffer(raw, "<u8").astype("uint64")

    def follows_seeding(w):
        w = [int(v) for v in w]
        return all(
            w[i] == (1812433253 * (w[i - 1] ^ (w[i - 1] >> 30)) + i) % 2**32 for i in range(1, 624)
        )

    seeded = torch.Generator()
    seeded.manual_seed(2**40 + 7)
    assert follows_seeding(words(seeded))  # the check has power
    a, b = _StepState(None).generator, _StepState(None).generator
    assert not follows_seeding(words(a)) and not follows_seeding(words(b))
    assert not torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))
    # Seeded (tests only): reproducible.
    c, d = _StepState(5).generator, _StepState(5).generator
    assert torch.equal(torch.randn(8, generator=c), torch.randn(8, generator=d))


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX draws large noise in chunks")
def test_jax_chunked_noise_draws_every_coordinate_once(monkeypatch):
    """Large variables are noised in chunks (bounded memory): with chunks of 1,024 the
    kernel's 10,000 coordinates are 9 chunks and a remainder; each part must be
    N(0, (sigma C / B)^2) on its own (a part left unnoised, noised twice or given its
    neighbour's draw fails) and the parts independent."""
    from keras_privacy.training.backend.jax import noise

    monkeypatch.setattr(noise, "NOISE_CHUNK", 1024)
    monkeypatch.setattr(noise, "CHUNKED_ABOVE", 4096)
    sample = _noise_of_step(_zero_gradient_model())
    expected = SIGMA * CLIP / BATCH
    _assert_std(sample, expected)
    assert np.all(sample != 0)
    parts = [sample[i : i + 1024] for i in range(0, 10_000, 1024)]
    for part in parts:  # 784 to 1,024 draws: the std within ~8% at 3 sigma
        assert abs(np.std(part) / expected - 1) < 0.12
    correlations = np.corrcoef(np.stack([p[:784] for p in parts]))
    assert np.max(np.abs(correlations - np.eye(len(parts)))) < 0.2
