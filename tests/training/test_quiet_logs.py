"""TensorFlow's vectorizer must not flood the user's logs when the engine tries it."""

import logging
import warnings

import keras
import pytest

import keras_privacy as kp


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _vectorizer(record):
    """A record of TensorFlow's vectorizer (other TensorFlow notices, e.g. about
    retracing when a session builds many models, are not the engine's business)."""
    return "parallel_for" in record.pathname or "pfor" in record.getMessage()


@pytest.fixture
def tensorflow_records():
    logger = logging.getLogger("tensorflow")
    filters, level = list(logger.filters), logger.level
    handler = _Records()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)
    assert logger.filters == filters  # the engine's filter is gone after the trial


def _fit(layers, x, rng):
    model = kp.make_private(
        keras.Sequential([*layers, keras.layers.Dense(3)]), l2_norm_clip=1.0, noise_multiplier=1.0
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="sgd", loss=loss)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, rng.integers(0, 3, size=len(x)), batch_size=8, epochs=2, verbose=0)
    return [str(w.message) for w in caught if "keras-privacy" in str(w.message)]


def test_loop_fallback_is_one_warning_line_and_no_tensorflow_errors(rng, tensorflow_records):
    layers = [keras.Input((6,), dtype="int32"), keras.layers.Embedding(20, 4), keras.layers.LSTM(5)]
    messages = _fit(layers, rng.integers(0, 20, size=(32, 6)).astype("int32"), rng)
    # One line says it all: the fast engine's fallback (no rule for LSTM) and the
    # vectorizer's fallback to a per-example loop.
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert "could not vectorize" in messages[0] and "vectorized clipping engine" in messages[0]
    unwanted = [r for r in tensorflow_records if r.levelno >= logging.ERROR or _vectorizer(r)]
    assert not unwanted, [r.getMessage()[:200] for r in unwanted]


def test_dropout_vectorizes_without_tensorflow_warnings(rng, tensorflow_records):
    layers = [keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dropout(0.5)]
    messages = _fit(layers, rng.normal(size=(32, 6)).astype("float32"), rng)
    assert messages == []
    # not TensorFlow's "Using a while_loop for converting StatelessRandom..." warnings
    assert not [r.getMessage() for r in tensorflow_records if _vectorizer(r)]


def test_other_tensorflow_records_pass():
    from keras_privacy.training.backend.tensorflow import engine

    logger = logging.getLogger("tensorflow")
    handler = _Records()
    logger.addHandler(handler)
    try:
        with engine._quiet_vectorizer_logs():
            logger.error("not from the vectorizer")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == ["not from the vectorizer"]


pytestmark = pytest.mark.tensorflow_only(reason="TensorFlow's vectorizer logs")
