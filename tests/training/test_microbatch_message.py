"""The fixed-size-batch microbatching error says which batch is wrong, and how to fix it."""

import keras
import numpy as np
import pytest

import keras_privacy as kp
from keras_privacy import PrivacyError

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit(num_examples, batch_size, num_microbatches):
    model = kp.make_private(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]),
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        num_microbatches=num_microbatches,
        sampling="shuffle",
    )
    model.compile(optimizer="sgd", loss=LOSS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_examples, 4)).astype("float32")
    model.fit(x, rng.integers(0, 3, num_examples), batch_size=batch_size, epochs=1, verbose=0)


def test_a_batch_size_microbatches_do_not_divide():
    with pytest.raises(PrivacyError) as error:
        _fit(40, 10, 4)
    assert str(error.value) == (
        "num_microbatches=4 must divide every batch size, but the batch size 10 is not a "
        "multiple of 4. Choose a batch_size that is a multiple of num_microbatches."
    )


def test_a_last_batch_microbatches_do_not_divide():
    with pytest.raises(PrivacyError) as error:
        _fit(18, 8, 4)
    assert str(error.value) == (
        "num_microbatches=4 must divide every batch size, but 18 examples in batches of 8 "
        "leave a last batch of 2, not a multiple of 4. Drop the last 2 examples or choose a "
        "batch_size that divides 18."
    )
