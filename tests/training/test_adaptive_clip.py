"""Adaptive clipping (Andrew et al. 2021) inside fit: l2_norm_clip=AdaptiveClip(...).

The clip C_t is step state that follows the target quantile of the per-example norms;
each update's clipped sum is bounded by the C_t it used; the unclipped count comes from
the same norms as the clip factors on every engine (checked against per-example
references); the record and the logs carry each update's clip; bad settings are refused.
"""

import math

import keras
import numpy as np
import pytest
from helpers import gradients, to_numpy

import keras_privacy as kp
from keras_privacy.queries import split_noise_multiplier

ENGINES = ["vectorized", "fast"]
#: slow_on_jax below: the JAX default suite has no time to spare for their eager engine
#: calls and extra compiles (each is in the default suite on TensorFlow and PyTorch).


def _mlp(engine, clip, noise=0.0, seed=3, **dp):
    keras.utils.set_random_seed(7)
    inner = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    model = kp.make_private(
        inner, l2_norm_clip=clip, noise_multiplier=noise, seed=seed, engine=engine, **dp
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def _reference_norms(model, x, y):
    """Each example's gradient norm, one example at a time."""
    loss_fn = keras.losses.MeanSquaredError(reduction=None)
    norms = []
    for i in range(len(x)):

        def loss(i=i):
            return keras.ops.mean(loss_fn(y[i : i + 1], model(x[i : i + 1], training=True)))

        norms.append(math.sqrt(sum(np.sum(g**2) for g in gradients(model, loss))))
    return np.array(norms)


@pytest.mark.parametrize(
    "engine", [pytest.param("vectorized", marks=pytest.mark.slow_on_jax), pytest.param("fast")]
)
def test_count_uses_the_clip_norms_on_every_engine(engine, rng):
    """One update with (almost) no count noise: the new clip is C0 exp(-eta (b - gamma))
    with b the fraction of examples whose norm is <= C0. Reference norms in closed form:
    for Dense(1) and squared error, example i's gradient is 2 r_i (x_i, 1) with residual
    r_i = w.x_i + b - y_i, of norm 2 |r_i| sqrt(||x_i||^2 + 1)."""
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    keras.utils.set_random_seed(7)
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    kernel, bias = (to_numpy(v.value).astype("float64") for v in inner.weights)
    residual = (x @ kernel + bias - y)[:, 0]
    norms = np.sort(2 * np.abs(residual) * np.sqrt(np.sum(x.astype("float64") ** 2, 1) + 1))
    c0 = float((norms[4] + norms[5]) / 2)  # 5 of 16 examples are under the clip
    adaptive = kp.AdaptiveClip(
        initial=c0, target_quantile=0.7, learning_rate=0.3, clipped_count_stddev=1e-6
    )
    model = kp.make_private(inner, l2_norm_clip=adaptive, noise_multiplier=0.0, engine=engine)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert model.dp_engine_used == engine
    assert float(to_numpy(logs["l2_norm_clip"])) == pytest.approx(c0, rel=1e-6)
    expected = c0 * math.exp(-0.3 * (5 / 16 - 0.7))
    assert model.dp_current_clip == pytest.approx(expected, rel=1e-5)
    assert model.privacy_record.current.clip_values == [pytest.approx(c0, rel=1e-6)]


@pytest.mark.slow_on_jax
@pytest.mark.parametrize("engine", ENGINES)
def test_clipped_sum_sensitivity_is_the_current_clip(engine, rng):
    """After adaptive updates, the engine clips at C_t: removing any one example moves the
    clipped sum by at most C_t, and by exactly C_t for an example above the clip."""
    x = rng.normal(size=(12, 5)).astype("float32")
    y = 3 * rng.normal(size=(12, 1)).astype("float32")
    adaptive = kp.AdaptiveClip(
        initial=0.05, target_quantile=0.5, learning_rate=0.5, clipped_count_stddev=1.0
    )
    model = _mlp(engine, adaptive, noise=0.5)
    model.fit(x, y, batch_size=6, epochs=2, verbose=0)
    clip = model.dp_current_clip
    assert clip != pytest.approx(0.05)  # the clip moved
    norms = _reference_norms(model, x, y)
    full = [to_numpy(g) for g in model._dp_clipped(x, y, None, None).grad_sum]
    for i in (int(np.argmax(norms)), int(np.argmin(norms))):
        keep = np.arange(len(x)) != i
        rest = [to_numpy(g) for g in model._dp_clipped(x[keep], y[keep], None, None).grad_sum]
        moved = math.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(full, rest, strict=True)))
        assert moved <= clip * (1 + 1e-4)
        assert moved == pytest.approx(min(norms[i], clip), rel=1e-3)


def test_clip_converges_to_target_quantile():
    """A model whose per-example norms are fixed (learning rate 0): C_t settles near the
    target quantile of those norms, with the noise of a private run."""
    n = 256
    # Dense(1, no bias, zero kernel), MSE: example i's gradient is -2 y_i x_i, norm 2 |y_i|.
    x = np.ones((n, 1), "float32")
    y = np.linspace(0.5, 5.0, n, dtype="float32")[:, None]
    inner = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    adaptive = kp.AdaptiveClip(
        initial=0.2, target_quantile=0.3, learning_rate=0.2, clipped_count_stddev=64 / 20
    )
    model = kp.make_private(inner, l2_norm_clip=adaptive, noise_multiplier=1.0, seed=5)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    history = model.fit(x, y, batch_size=64, epochs=30, verbose=0)
    clips = np.array(model.privacy_record.current.clip_values)
    assert len(clips) == model.privacy_record.current.updates == len(history.history["loss"]) * 4
    assert clips[0] == pytest.approx(0.2)
    norms = 2 * y[:, 0]
    settled = float(np.mean(clips[-40:]))
    assert np.quantile(norms, 0.2) < settled < np.quantile(norms, 0.4), settled


@pytest.mark.slow_on_jax
def test_record_and_accounting_of_the_split_noise(rng):
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    adaptive = kp.AdaptiveClip(clipped_count_stddev=16 / 20)
    model = _mlp("auto", adaptive, noise=1.2)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    segment = model.privacy_record.current
    split = segment.adaptive_clip
    assert split["gradient_noise_multiplier"] == pytest.approx(split_noise_multiplier(1.2, 0.8))
    assert split["count_noise_multiplier"] == pytest.approx(1.6)
    assert segment.noise_multiplier == 1.2
    assert len(segment.clip_values) == segment.updates
    fixed = _mlp("auto", 1.0, noise=1.2)
    fixed.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert fixed.privacy_record.current.updates == segment.updates
    # The pair composes to the user's sigma: the same epsilon as a fixed clip.
    assert model.privacy_spent(1e-3) == pytest.approx(fixed.privacy_spent(1e-3), rel=1e-6)
    assert "adaptive clip" in model.privacy_record.describe()
    clone = kp.clone_model(model)
    assert clone.dp_config.adaptive_clip == adaptive


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial": 0.0, "clipped_count_stddev": 1.0}, "initial"),
        ({"target_quantile": 1.5, "clipped_count_stddev": 1.0}, "target_quantile"),
        ({"learning_rate": -1.0, "clipped_count_stddev": 1.0}, "learning_rate"),
        ({"clipped_count_stddev": 0.0}, "clipped_count_stddev"),
        ({"clipped_count_stddev": float("nan")}, "clipped_count_stddev"),
    ],
)
def test_bad_adaptive_clip_arguments(kwargs, match):
    with pytest.raises(kp.PrivacyError, match=match):
        kp.AdaptiveClip(**kwargs)


@pytest.mark.slow_on_jax
def test_default_count_noise_is_the_expected_batch_over_20(rng):
    """``clipped_count_stddev=None`` (the default) is the paper's B / 20, set per fit from
    the expected batch (per train_on_batch from its rows) and recorded; the saved setting
    stays the default."""
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model = _mlp("auto", kp.AdaptiveClip(), noise=1.2)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    split = model.privacy_record.current.adaptive_clip
    assert split["clipped_count_stddev"] == pytest.approx(32 / 20)
    assert split["gradient_noise_multiplier"] == pytest.approx(split_noise_multiplier(1.2, 1.6))
    model.train_on_batch(x[:40], y[:40])
    assert model.privacy_record.current.adaptive_clip["clipped_count_stddev"] == 2.0
    assert model._dp_settings["l2_norm_clip"].clipped_count_stddev is None  # as saved
    with pytest.raises(kp.PrivacyError, match="too small"):  # 2 (8 / 20) <= sigma
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_adaptive_clip_refusals():
    small = kp.AdaptiveClip(clipped_count_stddev=0.5)
    with pytest.raises(kp.PrivacyError, match="too small"):
        _mlp("auto", small, noise=1.0)
    with pytest.raises(kp.PrivacyError, match="num_microbatches"):
        _mlp("auto", kp.AdaptiveClip(clipped_count_stddev=5.0), num_microbatches=2)
    model = _mlp("auto", kp.AdaptiveClip(clipped_count_stddev=5.0))
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
    with pytest.raises(kp.PrivacyError, match="steps_per_execution"):
        model.fit(np.zeros((8, 5)), np.zeros((8, 1)), batch_size=4, verbose=0)


def test_privacy_state_keeps_the_adaptive_fields():
    """PrivacyBudget's saved state: an adaptive segment round-trips; a broken one is refused."""
    from keras_privacy.training.callbacks import privacy_state, record_from_state

    record = kp.TrainingRecord(
        [
            kp.training.TrainingSegment(
                "poisson", 1000, 10, 1.1, 0.5, updates=3, clip_values=[0.5, 0.6, 0.7]
            )
        ]
    )
    record.segments[0].adaptive_clip = {
        "target_quantile": 0.5,
        "learning_rate": 0.2,
        "clipped_count_stddev": 2.0,
        "gradient_noise_multiplier": split_noise_multiplier(1.1, 2.0),
        "count_noise_multiplier": 4.0,
    }
    again = record_from_state(privacy_state(record))
    assert again.segments[0] == record.segments[0]
    state = privacy_state(record)
    state["training_record"]["segments"][0]["clip_values"] = [0.5, -1.0, 0.7]
    with pytest.raises(ValueError, match="clip_values"):
        record_from_state(state)


@pytest.mark.slow_on_jax
def test_the_clip_is_saved_with_the_model(rng, tmp_path):
    """A saved model (``.keras``) keeps the clip C_t it reached: the reloaded model's next
    update clips at it (not at ``initial``), and a new fit's segment starts from it."""
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model = _mlp("auto", kp.AdaptiveClip(initial=5.0), noise=1.0)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    reached = model.dp_current_clip
    assert reached != pytest.approx(5.0)
    path = str(tmp_path / "adaptive.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.dp_current_clip == pytest.approx(reached)
    logs = loaded.train_on_batch(x[:32], y[:32], return_dict=True)
    assert float(to_numpy(logs["l2_norm_clip"])) == pytest.approx(reached, rel=1e-6)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    segment = model.privacy_record.current
    assert segment.l2_norm_clip == pytest.approx(reached) == segment.clip_values[0]
