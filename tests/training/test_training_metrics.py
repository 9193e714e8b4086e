"""The training metrics of a DP ``fit`` count only the sampled rows of a batch."""

import keras
import numpy as np
import pytest

import keras_privacy as kp

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _constant_model() -> keras.Model:
    """Predicts class 2 for every input (zero kernel, bias favouring class 2), so every
    row of the data below is classified alike and any subset has the same accuracy."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.layers[0].kernel.assign(np.zeros((4, 3), "float32"))
    model.layers[0].bias.assign(np.array([0.0, 0.0, 3.0], "float32"))
    return model


@pytest.mark.parametrize("batch_size", [20, 50])  # padded capacity 62 (one piece) and 114
def test_frozen_weights_log_the_accuracy_evaluate_reports(rng, batch_size):
    """Learning rate 0: weights never move, so the accuracy and loss logged by ``fit``
    over Poisson batches must equal ``evaluate`` on the training rows. Padding rows
    (``x = 0, y = 0``) are predicted as class 2 and labelled 0: were they counted, the
    logged accuracy would fall below 1 (JAX logged ~0.4 in issue 21)."""
    x = rng.normal(size=(1000, 4)).astype("float32")
    y = np.full(1000, 2)
    model = kp.make_private(_constant_model(), l2_norm_clip=1.0, noise_multiplier=1.0, seed=0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=LOSS,
        metrics=["accuracy"],
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="weighted_acc")],
    )
    history = model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    loss, accuracy, weighted = model.evaluate(x, y, verbose=0)
    assert accuracy == 1.0
    assert history.history["accuracy"][-1] == pytest.approx(accuracy)
    assert history.history["weighted_acc"][-1] == pytest.approx(weighted)
    assert history.history["loss"][-1] == pytest.approx(loss, rel=1e-5)
