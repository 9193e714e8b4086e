"""Keras adapters: attack input from a model, the attack callback, shadow models, perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

keras = pytest.importorskip("keras")

from keras_privacy.privacy_tests import AttackType, run_attacks, run_lira  # noqa: E402
from keras_privacy.privacy_tests.keras_adapters import (  # noqa: E402
    MembershipInferenceCallback,
    attack_input_from_model,
    model_outputs,
    sequence_log_perplexities,
    train_shadow_models,
)

NUM_FEATURES, NUM_CLASSES = 40, 4


def build_model(softmax: bool = False) -> keras.Model:
    layers = [
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(NUM_CLASSES, activation="softmax" if softmax else None),
    ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax),
        metrics=["accuracy"],
    )
    return model


def test_attack_input_from_logits_or_probabilities_model(classification_data):
    x, y = classification_data
    logits_model = build_model()
    probs_model = build_model(softmax=True)
    probs_model.set_weights(logits_model.get_weights())
    train, test = (x[:50], y[:50]), (x[50:100], y[50:100])
    from_logits = attack_input_from_model(logits_model, train, test)
    from_probs = attack_input_from_model(probs_model, train, test)
    assert from_logits.logits_train is not None and from_probs.probs_train is not None
    np.testing.assert_allclose(from_logits.get_loss_train(), from_probs.get_loss_train(), rtol=1e-4)
    one_hot = attack_input_from_model(logits_model, (x[:50], np.eye(4)[y[:50]]), test)
    np.testing.assert_array_equal(one_hot.labels_train, y[:50])
    _, is_logits = model_outputs(probs_model, x[:5], output="logits")
    assert is_logits
    with pytest.raises(ValueError, match="output"):
        model_outputs(probs_model, x[:5], output="scores")


def test_callback_logs_attacks_into_history(classification_data):
    x, y = classification_data
    model = build_model()
    callback = MembershipInferenceCallback(
        in_data=(x[:200], y[:200]),
        out_data=(x[1000:1200], y[1000:1200]),
        attack_types=[AttackType.THRESHOLD_ATTACK, AttackType.LOGISTIC_REGRESSION],
        every_n_epochs=10,
    )
    history = model.fit(x[:200], y[:200], epochs=30, batch_size=32, verbose=0, callbacks=[callback])
    aucs = history.history["mia_auc"]
    assert len(aucs) == 30
    assert all(math.isnan(a) for i, a in enumerate(aucs) if (i + 1) % 10)
    attacked = [aucs[9], aucs[19], aucs[29]]
    assert all(0 <= a <= 1 for a in attacked)
    assert attacked[-1] > 0.65  # the model memorized its 200 examples
    assert len(history.history["mia_logistic_regression_advantage"]) == 30
    assert [r.privacy_report_metadata.epoch_num for r in callback.results] == [10, 20, 30]
    assert callback.results[-1].privacy_report_metadata.accuracy_train > 0.95
    assert len(callback.results_collection.calculate_pd_dataframe()) == 6
    with pytest.raises(ValueError):
        MembershipInferenceCallback((x, y), (x, y), every_n_epochs=0)


def test_callback_on_a_model_that_never_saw_the_data(classification_data):
    x, y = classification_data
    model = build_model()
    callback = MembershipInferenceCallback(
        in_data=(x[1200:1800], y[1200:1800]),  # not trained on: "members" only by name
        out_data=(x[1800:2400], y[1800:2400]),
        every_n_epochs=30,
    )
    model.fit(x[:200], y[:200], epochs=30, batch_size=32, verbose=0, callbacks=[callback])
    result = callback.results[-1].single_attack_results[0]
    assert abs(result.get_auc() - 0.5) < 0.06


@pytest.mark.slow
def test_shadow_models_and_lira(classification_data):
    x, y = classification_data[0][:300], classification_data[1][:300]
    saved = []
    shadow = train_shadow_models(
        build_model,
        x,
        y,
        num_shadow_models=8,
        epochs=25,
        batch_size=32,
        query_transforms=[lambda inputs: inputs, lambda inputs: inputs * 1.01],
        on_model_trained=lambda k, model: saved.append(k),
    )
    assert saved == list(range(8))
    assert shadow.scores.shape == (8, 300, 2) and shadow.in_mask.shape == (8, 300)
    assert (shadow.train_accuracy > 0.95).all() and (shadow.test_accuracy < 0.9).all()
    result = run_lira(shadow, target_model_indices=[0, 1], online=True).single_attack_results[0]
    assert result.get_auc() > 0.75


def test_shadow_models_quick(classification_data):
    x, y = classification_data[0][:60], classification_data[1][:60]
    shadow = train_shadow_models(build_model, x, y, num_shadow_models=2, epochs=1)
    assert shadow.scores.shape == (2, 60)
    assert (shadow.in_mask.sum(axis=0) == 1).all()
    assert np.all((shadow.train_accuracy >= 0) & (shadow.train_accuracy <= 1))


def test_shadow_model_input_errors(classification_data):
    x, y = classification_data
    with pytest.raises(ValueError, match="examples"):
        train_shadow_models(build_model, x[:10], y[:9], num_shadow_models=2)
    with pytest.raises(ValueError, match="in_mask"):
        train_shadow_models(build_model, x[:10], y[:10], 2, in_mask=np.ones((3, 10), bool))


def test_sequence_log_perplexity_of_a_known_bigram_model():
    # Embedding rows are the log transition probabilities: P(next | current) = T[current]
    rng = np.random.default_rng(0)
    vocabulary = 5
    transitions = special.softmax(rng.normal(size=(vocabulary, vocabulary)), axis=1)
    model = keras.Sequential([keras.Input((None,), dtype="int32")])
    model.add(keras.layers.Embedding(vocabulary, vocabulary))
    model.layers[-1].set_weights([np.log(transitions)])
    sequences = rng.integers(0, vocabulary, (7, 6))
    expected = np.array(
        [-sum(np.log2(transitions[s[t - 1], s[t]]) for t in range(2, 6)) for s in sequences]
    )
    computed = sequence_log_perplexities(model, sequences, score_from=2, output="logits")
    np.testing.assert_allclose(computed, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="score_from"):
        sequence_log_perplexities(model, sequences, score_from=6)


def test_attacks_through_adapter_match_direct_computation(classification_data):
    x, y = classification_data
    model = build_model()
    model.fit(x[:100], y[:100], epochs=2, verbose=0)
    data = attack_input_from_model(model, (x[:100], y[:100]), (x[100:200], y[100:200]))
    logits = model.predict(x[:100], verbose=0)
    expected_loss = -special.log_softmax(logits.astype(np.float64), axis=1)[np.arange(100), y[:100]]
    np.testing.assert_allclose(data.get_loss_train(), expected_loss, rtol=1e-5)
    assert run_attacks(data).single_attack_results[0].data_size == {"train": 100, "test": 100}


def test_shadow_training_shows_progress_only_when_asked_or_on_a_terminal(
    classification_data, capsys
):
    x, y = classification_data[0][:40], classification_data[1][:40]
    train_shadow_models(build_model, x, y, num_shadow_models=2, epochs=1)  # "auto", no tty
    assert capsys.readouterr().out == ""
    train_shadow_models(build_model, x, y, num_shadow_models=2, epochs=1, verbose=1)
    out = capsys.readouterr().out
    assert "2/2" in out and "train accuracy" in out
