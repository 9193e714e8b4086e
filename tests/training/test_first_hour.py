"""Issue 21, item 7: what a new user trips over in the first hour, each fixed or explained."""

import keras
import numpy as np
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


def _compiled(noise_multiplier=1.0, **compile_args):
    model = kp.DPSequential(_layers(), l2_norm_clip=1.0, noise_multiplier=noise_multiplier)
    model.compile(optimizer="sgd", loss=LOSS, **compile_args)
    return model


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, 3, size=n)


def test_all_nan_inputs_log_nan_loss_and_warn_that_examples_were_dropped():
    x, y = _data()
    x[:] = np.nan
    model = _compiled()
    with pytest.warns(UserWarning, match="dropped from the DP update"):
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isnan(history.history["loss"][0])  # not 0.0 (JAX, PyTorch before)
    assert all(np.isfinite(w).all() for w in model.get_weights())  # noise-only updates


def test_no_noise_and_monitoring_the_training_loss_are_warned_about():
    x, y = _data()
    with pytest.warns(UserWarning, match="NOT differentially private"):
        _compiled(noise_multiplier=0.0).fit(x, y, batch_size=16, verbose=0)
    stop = keras.callbacks.EarlyStopping(monitor="loss")
    with pytest.warns(UserWarning, match=r"EarlyStopping\(monitor='loss'\).*not covered"):
        _compiled().fit(x, y, batch_size=16, verbose=0, callbacks=[stop])


def test_list_inputs_train_and_string_labels_get_a_clear_error():
    import warnings

    x, y = _data(n=32)
    model = _compiled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no SamplingWarning "arrives already batched"
        model.fit(x.tolist(), y.tolist(), batch_size=8, verbose=0)
    assert model.privacy_record.current.sampling == "poisson"
    with pytest.raises(ValueError, match="labels y are strings.*np.unique"):
        model.fit(x, np.array(["cat", "dog"] * 16), batch_size=8, verbose=0)


def test_train_on_batch_missing_dataset_size_says_how_to_state_it():
    x, y = _data(n=16)
    model = _compiled()
    model.train_on_batch(x, y)
    from keras_privacy.accounting import DatasetSizeUnknownError

    with pytest.raises(DatasetSizeUnknownError, match="train_on_batch"):
        model.privacy_spent(1e-5)
    model.privacy_record.current.dataset_size = 1000
    assert model.privacy_spent(1e-5) > 0
