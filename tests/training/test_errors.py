"""Loud failures instead of silent non-privacy."""

import warnings

import keras
import numpy as np
import pytest

import keras_privacy as kp
from keras_privacy import PrivacyError

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp(*extra):
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6), *extra, keras.layers.Dense(3)]
    )


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, 3, size=n)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"l2_norm_clip": 0.0, "noise_multiplier": 1.0},
            "l2_norm_clip must be a finite number > 0",
        ),
        ({"l2_norm_clip": -1.0, "noise_multiplier": 1.0}, "received -1.0"),
        ({"l2_norm_clip": float("nan"), "noise_multiplier": 1.0}, "l2_norm_clip"),
        ({"l2_norm_clip": 1.0, "noise_multiplier": -0.1}, "noise_multiplier must be a finite"),
        ({"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "num_microbatches": 0}, "num_microbatches"),
        (
            {"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "gradient_accumulation_steps": 0},
            "gradient_accumulation_steps",
        ),
        ({"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "sampling": "random"}, "sampling"),
    ],
)
def test_bad_dp_arguments_name_the_argument(kwargs, match):
    with pytest.raises(PrivacyError, match=match):
        kp.make_private(_mlp(), **kwargs)
    with pytest.raises(PrivacyError, match=match):
        kp.DPSequential(layers=[keras.Input((4,)), keras.layers.Dense(2)], **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"l2_norm_clip": 0.0, "noise_multiplier": 1.0},
        {"l2_norm_clip": 1.0, "noise_multiplier": -1.0},
    ],
)
def test_bad_dp_optimizer_arguments(kwargs):
    with pytest.raises(PrivacyError):
        kp.DPKerasSGDOptimizer(learning_rate=0.1, **kwargs)


def test_batch_normalization_is_refused_with_advice():
    with pytest.raises(PrivacyError, match="BatchNormalization.*GroupNormalization"):
        kp.make_private(
            _mlp(keras.layers.BatchNormalization()), l2_norm_clip=1.0, noise_multiplier=1.0
        )
    model = kp.DPSequential(
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        layers=[keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(3)],
    )
    with pytest.raises(PrivacyError, match="BatchNormalization"):
        model.compile(optimizer="sgd", loss=LOSS)


def test_frozen_batch_normalization_runs_in_inference_mode_and_is_allowed():
    bn = keras.layers.BatchNormalization()
    bn.trainable = False
    model = kp.make_private(_mlp(bn), l2_norm_clip=1.0, noise_multiplier=1.0)
    model.compile(optimizer="sgd", loss=LOSS)
    model.fit(*_data(), batch_size=8, epochs=1, verbose=0)


def test_layers_that_update_state_in_training_are_refused():
    class RunningMean(keras.layers.Layer):
        def build(self, shape):
            self.mean = self.add_weight(shape=shape[1:], initializer="zeros", trainable=False)

        def call(self, x, training=False):
            if training:
                self.mean.assign(0.9 * self.mean + 0.1 * keras.ops.mean(x, axis=0))
            return x

    model = kp.make_private(_mlp(RunningMean()), l2_norm_clip=1.0, noise_multiplier=1.0)
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(PrivacyError, match="non-trainable variables are updated"):
        model.fit(*_data(), batch_size=8, epochs=1, verbose=0)


def test_a_loss_that_averages_over_the_batch_is_refused():
    def batch_mean_loss(y_true, y_pred):
        return keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        )

    model = kp.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0)
    model.compile(optimizer="sgd", loss=batch_mean_loss)
    with pytest.raises(PrivacyError, match="returned a scalar: it reduces over the batch"):
        model.fit(*_data(), batch_size=8, epochs=1, verbose=0)


def test_per_example_loss_functions_and_reduction_none_work():
    def per_example(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    for loss in (
        per_example,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
    ):
        model = kp.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0)
        model.compile(optimizer="sgd", loss=loss)
        history = model.fit(*_data(), batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "optimizer_cls", [kp.DPKerasSGDOptimizer, kp.DPKerasAdamOptimizer, kp.DPKerasAdagradOptimizer]
)
def test_dp_optimizer_on_a_plain_model_refuses_to_train(optimizer_cls):
    model = _mlp()
    model.compile(
        optimizer=optimizer_cls(l2_norm_clip=1.0, noise_multiplier=1.0, learning_rate=0.1),
        loss=LOSS,
    )
    before = model.get_weights()
    with pytest.raises(PrivacyError, match="WITHOUT differential privacy.*make_private"):
        model.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dp_model_without_dp_settings_says_where_to_put_them():
    model = kp.DPSequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(PrivacyError, match="no l2_norm_clip / noise_multiplier"):
        model.compile(optimizer="sgd", loss=LOSS)


def test_conflicting_settings_between_model_and_optimizer():
    model = kp.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0)
    with pytest.raises(PrivacyError, match="noise_multiplier=1.0 but the optimizer"):
        model.compile(
            optimizer=kp.DPKerasSGDOptimizer(l2_norm_clip=1.0, noise_multiplier=2.0), loss=LOSS
        )


def test_keras_optimizer_accumulation_is_refused():
    model = kp.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0)
    with pytest.raises(PrivacyError, match="gradient_accumulation_steps to the DP model"):
        model.compile(optimizer=keras.optimizers.SGD(gradient_accumulation_steps=2), loss=LOSS)


def test_microbatches_with_poisson_sampling_are_refused_with_alternatives():
    model = kp.make_private(
        _mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=2, sampling="poisson"
    )
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(PrivacyError, match="num_microbatches=2 needs fixed-size batches"):
        model.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    # The same with shuffled fixed-size batches works, and is recorded as microbatching.
    model = kp.make_private(
        _mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=2, sampling="shuffle"
    )
    model.compile(optimizer="sgd", loss=LOSS)
    model.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    segment = model.privacy_record.current
    assert segment.used_microbatching and segment.examples_per_clipping_unit == 4


def test_microbatches_without_a_sampling_choice_use_shuffled_batches_and_say_so():
    # TF Privacy's models never Poisson-sampled; code written for them (num_microbatches,
    # no sampling argument) trains on shuffled fixed-size batches, with a warning, and is
    # accounted as such: no amplification, microbatches of 4 counted at 2C.
    model = kp.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=2)
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.warns(kp.SamplingWarning, match="num_microbatches=2") as caught:
        model.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    assert caught[0].filename == __file__
    segment = model.privacy_record.current
    assert segment.sampling == "shuffle"
    assert segment.used_microbatching and segment.examples_per_clipping_unit == 4
    # k equal to the batch size is per-example clipping: Poisson as usual, no warning.
    model = kp.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=8)
    model.compile(optimizer="sgd", loss=LOSS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", kp.SamplingWarning)
        model.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    assert model.privacy_record.current.sampling == "poisson"
    assert model._num_microbatches == 8  # TF Privacy's private name, read by its tests


def test_shuffled_batches_that_microbatches_do_not_divide_are_refused():
    model = kp.make_private(
        _mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=4, sampling="shuffle"
    )
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(PrivacyError, match="must divide every batch"):
        model.fit(*_data(18), batch_size=8, epochs=1, verbose=0)  # last batch has 2


def test_make_private_refuses_a_dp_model_and_non_models():
    model = kp.make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0)
    with pytest.raises(PrivacyError, match="already a DP model"):
        kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)
    with pytest.raises(TypeError, match="expects a keras.Model"):
        kp.make_private(keras.layers.Dense(3), l2_norm_clip=1.0, noise_multiplier=1.0)


# -- smaller defects found by the review (issue 7, item 6) ---------------------------------


def test_a_lambda_loss_trains():
    model = kp.DPSequential(
        l2_norm_clip=1.0, noise_multiplier=1.0, layers=[keras.Input((3,)), keras.layers.Dense(2)]
    )
    model.compile(optimizer="sgd", loss=lambda y, p: keras.ops.mean((y - p) ** 2, axis=-1))
    model.fit(np.zeros((16, 3)), np.zeros((16, 2)), batch_size=4, verbose=0)
    assert model.privacy_record.total_updates == 4


def test_a_list_of_input_arrays_is_poisson_sampled():
    a, b = keras.Input((3,)), keras.Input((2,))
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([a, b]))
    private = kp.make_private(keras.Model([a, b], out), l2_norm_clip=1.0, noise_multiplier=1.0)
    private.compile(optimizer="sgd", loss="mse")
    x = [np.ones((20, 3), "float32"), np.ones((20, 2), "float32")]
    private.fit(x, np.zeros((20, 2)), batch_size=4, verbose=0)
    assert private.privacy_record.current.sampling == "poisson"
    assert private.privacy_record.total_updates == 5


@pytest.mark.parametrize("kind", ["sequential", "functional", "make_private"])
def test_clone_model_keeps_the_dp_settings(kind):
    settings = {"l2_norm_clip": 0.5, "noise_multiplier": 2.0, "sampling": "shuffle"}
    layers = [keras.Input((3,)), keras.layers.Dense(2)]
    if kind == "sequential":
        model = kp.DPSequential(layers=layers, **settings)
    elif kind == "functional":
        model = kp.DPModel(layers[0], layers[1](layers[0]), **settings)
    else:
        model = kp.make_private(keras.Sequential(layers), **settings)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((8, 3)), np.zeros((8, 2)), batch_size=4, verbose=0)
    clone = kp.clone_model(model)
    assert type(clone) is type(model)
    assert clone.dp_config == model.dp_config
    assert clone.privacy_record.total_updates == 0  # fresh weights, nothing spent yet
    clone.fit(np.zeros((8, 3)), np.zeros((8, 2)), batch_size=4, verbose=0)
    assert clone.privacy_record.total_updates == 2


def test_keras_clone_of_a_functional_dp_model_names_the_dp_clone():
    inputs = keras.Input((3,))
    model = kp.DPModel(inputs, keras.layers.Dense(2)(inputs), l2_norm_clip=1, noise_multiplier=1)
    clone = keras.models.clone_model(model)
    with pytest.raises(PrivacyError, match="keras_privacy.clone_model"):
        clone.compile(optimizer="sgd", loss="mse")


def test_keras_clone_of_a_compiled_dp_sequential_is_refused_not_a_plain_model(tmp_path):
    """Keras clones a DPSequential as a plain keras.Sequential and compiles it from the
    original's compile config: the DP marker in that config refuses it; DP models
    compiled from it (loading, kp.clone_model) still work."""
    model = kp.DPSequential(
        l2_norm_clip=1.0, noise_multiplier=1.0, layers=[keras.Input((3,)), keras.layers.Dense(2)]
    )
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(PrivacyError, match="keras_privacy.clone_model"):
        keras.models.clone_model(model)
    assert kp.clone_model(model).compiled
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, kp.DPSequential) and loaded.compiled


@pytest.mark.parametrize("trainable", [True, False])
def test_a_stateful_rnn_is_refused(trainable):
    rnn = keras.layers.SimpleRNN(2, stateful=True)
    rnn.trainable = trainable
    layers = [keras.Input((4, 3), batch_size=4), rnn, keras.layers.Dense(1)]
    with pytest.raises(PrivacyError, match="stateful=True"):
        kp.make_private(keras.Sequential(layers), l2_norm_clip=1.0, noise_multiplier=1.0)
