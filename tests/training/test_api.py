"""The public API inside ordinary Keras workflows: compile/fit/evaluate/predict/save."""

import warnings

import keras
import numpy as np
import pytest
from helpers import flat, weights

import keras_privacy as kp

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=64, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    return x, y


def test_tf_privacy_style_snippet_runs():
    """The classic TF Privacy snippet with the model construction switched."""
    x, y = _data()
    model = kp.DPSequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    optimizer = kp.DPKerasSGDOptimizer(
        l2_norm_clip=1.0, noise_multiplier=0.5, num_microbatches=16, learning_rate=0.25
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    history = model.fit(x, y, epochs=2, validation_data=(x, y), batch_size=16, verbose=0)
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert model.l2_norm_clip == 1.0 and model.noise_multiplier == 0.5
    assert model.privacy_record.total_updates == 8


def test_functional_and_subclassed_dp_models_train():
    x, y = _data()
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(inputs))
    functional = kp.DPModel(inputs, outputs, l2_norm_clip=1.0, noise_multiplier=0.5)

    class Subclassed(kp.DPModel):
        def __init__(self):
            super().__init__(l2_norm_clip=1.0, noise_multiplier=0.5)
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.out = keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))

    for model in (functional, Subclassed()):
        model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        assert model.evaluate(x, y, verbose=0)[0] > 0
        assert model.predict(x, verbose=0).shape == (64, 2)


def test_make_private_shares_weights_and_leaves_the_model_object_alone():
    x, y = _data()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    train_step, cls = model.train_step, type(model)
    private = kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=0.0)
    private.compile(optimizer=keras.optimizers.SGD(0.5), loss=LOSS)
    private.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert type(model) is cls and model.train_step == train_step
    np.testing.assert_array_equal(model.predict(x, verbose=0), private.predict(x, verbose=0))


def test_make_private_carries_over_the_compile_settings():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    private = kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)
    history = private.fit(*_data(), batch_size=16, epochs=1, verbose=0)
    assert "accuracy" in history.history
    assert isinstance(private.optimizer, keras.optimizers.Adam)


def test_metrics_callbacks_validation_split_and_class_weights():
    x, y = _data(80)
    model = kp.make_private(
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]),
        l2_norm_clip=1.0,
        noise_multiplier=0.3,
    )
    model.compile(optimizer="sgd", loss=LOSS, metrics=["accuracy"], weighted_metrics=["accuracy"])
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs))
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        validation_split=0.25,
        class_weight={0: 1.0, 1: 3.0},
        callbacks=[callback],
        verbose=0,
    )
    assert len(seen) == 2 and "val_accuracy" in seen[0] and "weighted_accuracy" in seen[0]
    assert model.privacy_record.current.dataset_size == 60  # the validation split is held out


def test_sample_weights_scale_each_example_loss():
    """Noise 0, huge clip: DP step with sample weights equals the plain weighted step."""
    x, y = _data(16)
    w = np.linspace(0.0, 2.0, 16).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    plain.compile(optimizer=keras.optimizers.SGD(0.5), loss=LOSS)
    private = kp.make_private(model, l2_norm_clip=1e9, noise_multiplier=0.0)
    private.compile(optimizer=keras.optimizers.SGD(0.5), loss=LOSS)
    plain.train_on_batch(x, y, sample_weight=w)
    private.train_on_batch(x, y, sample_weight=w)
    np.testing.assert_allclose(flat(weights(private)), flat(weights(plain)), rtol=1e-5, atol=1e-6)


def test_multi_output_model_with_dict_losses():
    x, y = _data()
    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    model = kp.DPModel(
        inputs,
        {"cls": keras.layers.Dense(2, name="cls")(h), "reg": keras.layers.Dense(1, name="reg")(h)},
        l2_norm_clip=1.0,
        noise_multiplier=0.5,
    )
    model.compile(optimizer="adam", loss={"cls": LOSS, "reg": "mse"}, metrics={"cls": ["accuracy"]})
    history = model.fit(x, {"cls": y, "reg": x[:, :1]}, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # Each output's own loss is logged, as in a plain Keras model.
    assert history.history["cls_loss"][0] > 0.1 and history.history["reg_loss"][0] > 0.1


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_multi_output_model_with_targets_as_a_list(sampling):
    """``y`` as a Python list for a two-output model (TensorFlow's input pipeline has no
    lists; they were refused with a tf.data error)."""
    x, y = _data()
    inputs = keras.Input((8,))
    outputs = [keras.layers.Dense(2, name="cls")(inputs), keras.layers.Dense(1, name="reg")(inputs)]
    model = kp.DPModel(
        inputs, outputs, l2_norm_clip=1.0, noise_multiplier=0.5, sampling=sampling, seed=0
    )
    model.compile(optimizer="sgd", loss=[LOSS, "mse"])
    history = model.fit(x, [y, x[:, :1]], batch_size=16, epochs=1, verbose=0)
    assert history.history["cls_loss"][0] > 0.0 and history.history["reg_loss"][0] > 0.0


def test_poisson_draw_above_capacity_stops_fit_with_a_privacy_error(monkeypatch):
    """On every backend (TensorFlow draws inside its tf.data pipeline) the refusal is the
    sampler's PrivacyError, not the pipeline's own error."""
    from keras_privacy.training import sampling

    monkeypatch.setattr(sampling, "poisson_capacity", lambda n, expected: expected // 2)
    x, y = _data()
    model = kp.DPSequential(
        l2_norm_clip=1.0, noise_multiplier=0.5, seed=0, layers=[keras.layers.Dense(2)]
    )
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(kp.PrivacyError, match="exceeded the padded capacity"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize("builder", ["sequential", "functional", "make_private"])
def test_save_and_load_keep_dp_settings_but_no_seed_or_noise_state(builder, tmp_path):
    x, y = _data()
    dp = {
        "l2_norm_clip": 0.8,
        "noise_multiplier": 1.1,
        "seed": 42,
        "gradient_accumulation_steps": 2,
    }
    layers = [keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)]
    if builder == "sequential":
        model = kp.DPSequential(layers=layers, **dp)
    elif builder == "functional":
        h = layers[2](layers[1](layers[0]))
        model = kp.DPModel(layers[0], h, **dp)
    else:
        model = kp.make_private(keras.Sequential(layers), **dp)
    model.compile(
        optimizer=kp.DPKerasAdamOptimizer(l2_norm_clip=0.8, noise_multiplier=1.1), loss=LOSS
    )
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.dp_config.l2_norm_clip == 0.8 and loaded.dp_config.noise_multiplier == 1.1
    assert loaded.dp_config.gradient_accumulation_steps == 2
    assert loaded.dp_config.seed is None
    assert isinstance(loaded.optimizer, kp.DPKerasAdamOptimizer)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    saved_names = {v.path for v in loaded.variables} | {v.path for v in loaded.optimizer.variables}
    assert not any("noise" in n or "accumul" in n for n in saved_names), saved_names
    import json
    import zipfile

    config_text = zipfile.ZipFile(path).read("config.json").decode()
    assert '"seed": 42' not in config_text
    assert "dp_config" in json.loads(config_text)["config"]
    # The training record (public counters: sampling, N, batch, updates) is kept ...
    assert loaded.privacy_record.to_dict() == model.privacy_record.to_dict()
    assert loaded.privacy_spent(1e-5) == model.privacy_spent(1e-5)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)  # ... and training resumes
    assert loaded.privacy_record.total_updates == 2 * model.privacy_record.total_updates


def test_mixed_precision_update_matches_float32():
    """Clip and noise in float32, never through the LossScaleOptimizer's unscaling."""
    x, y = _data(32)
    results = []
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(2, dtype="float32"),
            ]
        )
        private = kp.make_private(model, l2_norm_clip=0.1, noise_multiplier=0.0)
        private.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
        if policy == "mixed_float16":
            assert isinstance(private.optimizer, keras.optimizers.LossScaleOptimizer)
        before = flat(weights(private))
        private.train_on_batch(x, y)
        results.append(before - flat(weights(private)))
    keras.config.set_dtype_policy("float32")
    ratio = np.linalg.norm(results[1]) / np.linalg.norm(results[0])
    assert 0.98 < ratio < 1.02, ratio
    np.testing.assert_allclose(results[1], results[0], atol=2e-3 * np.abs(results[0]).max())


class TwoDenseModel(kp.DPModel):
    def __init__(self, mix=False, **dp):
        super().__init__(l2_norm_clip=1.0, noise_multiplier=0.0, **dp)
        self.mix = mix
        self.hidden = keras.layers.Dense(4)
        self.out = keras.layers.Dense(1)

    def call(self, x):
        h = self.hidden(x)
        if self.mix:  # mixes the examples of a batch inside the model's own call
            h = h - keras.ops.mean(h, axis=0)
        return self.out(h)


@pytest.mark.parametrize("path", ["shuffle", "tf_data", "train_on_batch"])
def test_an_unbuilt_subclassed_model_trains_on_every_path(path):
    import tensorflow as tf

    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    model = TwoDenseModel(sampling="shuffle")
    model.compile(optimizer="sgd", loss="mse")
    if path == "shuffle":
        model.fit(x, y, batch_size=4, verbose=0)
    elif path == "tf_data":
        with pytest.warns(kp.SamplingWarning):
            model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0)
    else:
        model.train_on_batch(x, y)
    assert model.privacy_record.total_updates >= 1


def test_batch_mixing_in_a_subclassed_call_is_not_given_to_the_fast_engine():
    """The numerical check sees the mixing in the model's own call; the vectorized engine
    keeps DP exact and a BatchMixingWarning says what that does to the model."""
    x, y = np.random.default_rng(0).normal(size=(8, 3)).astype("float32"), np.ones((8, 1))
    auto = TwoDenseModel(mix=True, sampling="shuffle")
    auto.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto.fit(x, y, batch_size=8, verbose=0)
    said = {type(w.message): str(w.message) for w in caught}
    assert "one example at a time" in said[kp.BatchMixingWarning]
    assert "numerical batch-independence check" in said[UserWarning]
    assert auto.dp_engine_used == "vectorized"
    fast = TwoDenseModel(mix=True, sampling="shuffle", engine="fast")
    fast.compile(optimizer="sgd", loss="mse")
    with pytest.raises(kp.PrivacyError, match="numerical batch-independence check"):
        fast.fit(x, y, batch_size=8, verbose=0)
    strict = TwoDenseModel(mix=True, sampling="shuffle")
    strict.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error", kp.BatchMixingWarning)
        with pytest.raises(kp.BatchMixingWarning):
            strict.fit(x, y, batch_size=8, verbose=0)


def test_a_subclassed_model_of_ruled_layers_takes_the_fast_engine():
    """Every layer it holds passes the list and its call passes the numerical check: the
    fast engine, with the per-example reference's clipped sum."""
    from helpers import reference_clipped_sum, to_numpy

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
    model = TwoDenseModel(sampling="shuffle")
    model.compile(optimizer="sgd", loss="mse")
    model.train_on_batch(x, y)
    assert model.dp_engine_used == "fast"
    got = model._dp_clipped(x, y, None, num_units=None)
    want = reference_clipped_sum(model, keras.losses.MeanSquaredError(), x, y, 1.0)
    np.testing.assert_allclose(
        flat([to_numpy(g) for g in got.grad_sum]), flat(want), rtol=1e-4, atol=1e-6
    )


class WithCustomLayer(kp.DPModel):
    def __init__(self, **dp):
        super().__init__(l2_norm_clip=1.0, noise_multiplier=0.0, **dp)
        self.scale = keras.layers.Lambda(lambda t: 2.0 * t)
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.scale(x))


def test_a_subclassed_model_with_an_unknown_layer_is_told_what_to_do():
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    model = WithCustomLayer(sampling="shuffle")
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(UserWarning, match="register_per_example_layer"):
        model.fit(x, y, batch_size=8, verbose=0)
    assert model.dp_engine_used == "vectorized"
