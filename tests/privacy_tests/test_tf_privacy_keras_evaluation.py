"""TF Privacy's keras_evaluation forms on a small Keras classifier."""

from __future__ import annotations

import importlib

import keras
import numpy as np
import pytest

from keras_privacy import privacy_tests as pt
from keras_privacy.privacy_tests.keras_adapters import attack_input_from_model

KERAS_EVALUATION = (
    "keras_privacy.compat.tensorflow_privacy.privacy.privacy_tests."
    "membership_inference_attack.keras_evaluation"
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype("float32")
    y = rng.integers(0, 3, 400)
    return (x[:200], y[:200]), (x[200:], y[200:])


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, "relu"), keras.layers.Dense(3)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_run_attack_on_keras_model_equals_the_native_path(data):
    members, nonmembers = data
    model = _model()
    model.fit(*members, epochs=20, verbose=0)
    module = importlib.import_module(KERAS_EVALUATION)
    results = module.run_attack_on_keras_model(model, members, nonmembers, is_logit=True)
    native = pt.run_attacks(attack_input_from_model(model, members, nonmembers, output="logits"))
    assert results.get_result_with_max_auc().get_auc() == native.get_result_with_max_auc().get_auc()
    assert results.get_result_with_max_auc().get_auc() > 0.55  # it overfit a little


def test_callback_takes_tf_privacy_arguments(data):
    members, nonmembers = data
    module = importlib.import_module(KERAS_EVALUATION)
    callback = module.MembershipInferenceCallback(
        members, nonmembers, pt.SlicingSpec(entire_dataset=True), is_logit=True, batch_size=64
    )
    history = _model().fit(*members, epochs=2, verbose=0, callbacks=[callback])
    assert len(history.history["mia_auc"]) == 2 and len(callback.results) == 2
    with pytest.raises(ValueError, match="TensorBoard"):
        module.MembershipInferenceCallback(members, nonmembers, tensorboard_dir="/tmp/x")
