"""The privacy record says what ran: regressions for the bookkeeping holes of issue 7.

The privacy claim for fixed-size batches (``sampling="shuffle"``, pipelines) is one
Gaussian mechanism of sensitivity C per pass, which is right when, over the whole run,
``sum_t c_{i,t}^2 <= passes`` for every example i, where ``c_{i,t}`` is how many times
example i is in update t. These tests measure ``c_{i,t}`` directly: the inputs are one-hot
rows, so example i's clipped gradient lands on kernel row i alone, and with a tiny clip
norm every present example contributes exactly C.
"""

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import BACKEND

import keras_privacy as kp
from keras_privacy.accounting import events
from keras_privacy.training.callbacks import load_privacy_state
from keras_privacy.training.errors import PrivacyError

CLIP = 1e-3


def _one_hot_model(n, **dp):
    model = kp.DPSequential(
        l2_norm_clip=CLIP,
        noise_multiplier=0.0,
        layers=[
            keras.Input((n,)),
            keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros"),
        ],
        **dp,
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    return model


class _UpdateCounts(keras.callbacks.Callback):
    """c_{i,t}: each update's kernel change, in units of one clipped contribution."""

    def __init__(self):
        super().__init__()
        self.counts = []
        self._last = None

    def _kernel(self):
        return self.model.trainable_variables[0].numpy().ravel().copy()

    def on_train_begin(self, logs=None):
        self._last = self._kernel()

    def on_train_batch_end(self, batch, logs=None):
        now = self._kernel()
        delta = np.abs(now - self._last)
        self._last = now
        if delta.max() > 0:  # an update happened: the smallest change is one contribution
            unit = delta[delta > 0].min()
            self.counts.append(np.rint(delta / unit).astype(int))


def _max_sensitivity_squared(counts):
    """max_i sum_t c_{i,t}^2: what the run actually spent, in units of one Gaussian(sigma)."""
    return int(np.max(np.sum(np.square(counts), axis=0)))


def _accounted_passes(model):
    total = 0
    for segment in model.privacy_record.segments:
        event = events.segment_event(segment)
        if isinstance(event, dp_accounting.SelfComposedDpEvent):
            assert segment.sampling != "poisson"
            total += event.count
    return total


# Not seeded: with keras.utils.set_random_seed, Keras reshuffles every epoch into the same
# permutation, which hides the boundary-crossing duplicates this test looks for.
@pytest.mark.parametrize(
    ("batch", "accumulation", "epochs"), [(40, 2, 6), (50, 3, 4), (30, 2, 3), (8, 4, 3)]
)
def test_shuffle_accumulation_never_spans_a_pass(batch, accumulation, epochs):
    n = 100
    model = _one_hot_model(n, sampling="shuffle", gradient_accumulation_steps=accumulation)
    counter = _UpdateCounts()
    model.fit(
        np.eye(n, dtype="float32"),
        np.ones((n, 1), "float32"),
        batch_size=batch,
        epochs=epochs,
        verbose=0,
        callbacks=[counter],
    )
    counts = np.array(counter.counts)
    assert counts.max() == 1  # no example twice in one update
    assert len(counts) == model.privacy_record.total_updates
    assert _max_sensitivity_squared(counts) <= _accounted_passes(model)


def test_accumulation_never_spans_two_fits():
    n = 10
    model = _one_hot_model(n, sampling="shuffle", gradient_accumulation_steps=2)
    counter = _UpdateCounts()
    x, y = np.eye(n, dtype="float32"), np.ones((n, 1), "float32")
    all_counts = []
    # Each fit ends with a batch of 2; before the fix it was accumulated with the next
    # fit's first batch of 4 (a shared example with probability 2/3 per boundary).
    for _ in range(6):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[counter])
        all_counts += counter.counts
        counter.counts = []
    counts = np.array(all_counts)
    assert counts.max() == 1
    assert _max_sensitivity_squared(counts) <= _accounted_passes(model)


def test_pipeline_accumulation_keeps_each_update_within_one_batch():
    n = 10
    model = _one_hot_model(n, gradient_accumulation_steps=2)
    counter = _UpdateCounts()
    data = tf.data.Dataset.from_tensor_slices(
        (np.eye(n, dtype="float32"), np.ones((n, 1), "float32"))
    )
    with pytest.warns(kp.SamplingWarning):
        model.fit(
            data.shuffle(n, seed=1).batch(4),
            epochs=3,
            verbose=0,
            callbacks=[counter],
            dataset_size=n,
        )
    counts = np.array(counter.counts)
    assert len(counts) == model.privacy_record.total_updates == 3 * 3  # one per batch
    assert counts.max() == 1
    assert _max_sensitivity_squared(counts) <= _accounted_passes(model)


def _uneven_pipeline(n, first):
    data = tf.data.Dataset.from_tensor_slices(
        (np.eye(n, dtype="float32"), np.ones((n, 1), "float32"))
    )
    return data.take(first).batch(first).concatenate(data.skip(first).batch(n - first))


def test_pipeline_batch_size_is_what_the_step_saw_not_the_first_batch():
    n = 10
    model = _one_hot_model(n)
    counter = _UpdateCounts()
    with pytest.warns(kp.SamplingWarning):
        model.fit(_uneven_pipeline(n, 1), epochs=10, verbose=0, callbacks=[counter])
    segment = model.privacy_record.current
    segment.dataset_size = n  # the same run given dataset_size (checked on its own below)
    assert segment.expected_batch_size == 9  # the largest batch seen, not the first (1)
    counts = np.array(counter.counts)
    assert _max_sensitivity_squared(counts) == 10
    assert _accounted_passes(model) >= 10
    honest = kp.compute_epsilon(n, 9, 1.0, delta=1e-5, steps=20, sampling="shuffle")
    segment.noise_multiplier = 1.0
    assert kp.accounting.epsilon_of_record(model.privacy_record, 1e-5) >= honest * (1 - 1e-9)


def test_pipeline_microbatch_size_is_the_largest_seen():
    n = 10
    model = _one_hot_model(n, num_microbatches=2)
    with pytest.warns(kp.SamplingWarning):
        model.fit(_uneven_pipeline(n, 2), epochs=1, verbose=0, dataset_size=n)
    segment = model.privacy_record.current
    # batches of 2 and 8 rows in 2 microbatches: units of 1 and of 4 examples
    assert segment.examples_per_clipping_unit == 4
    assert segment.used_microbatching  # sensitivity 2C: accounted with sigma / 2


def test_a_pass_shorter_than_dataset_size_is_refused_and_recorded_as_seen():
    n = 10
    model = _one_hot_model(n)
    data = tf.data.Dataset.from_tensor_slices(
        (np.eye(n, dtype="float32"), np.ones((n, 1), "float32"))
    ).batch(5)
    with pytest.warns(kp.SamplingWarning), pytest.raises(PrivacyError, match="dataset_size=10"):
        model.fit(data, epochs=3, verbose=0, dataset_size=1000)
    assert model.privacy_record.current.dataset_size == 10
    assert model.privacy_record.current.updates == 2


# -- update counting ----------------------------------------------------------------------


def _interrupt_after_first_call(model):
    make = model.make_train_function

    def make_interrupting(force=False):
        make(force)
        train = model.train_function

        def interrupted(*args):  # (iterator) on TensorFlow, (state, iterator) on JAX
            train(*args)
            raise KeyboardInterrupt

        model.train_function = interrupted
        return interrupted

    object.__setattr__(model, "make_train_function", make_interrupting)


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)).astype("float32"), rng.integers(0, 2, size=n)


def _small_model(**compile_args):
    model = kp.DPSequential(
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        layers=[keras.Input((3,)), keras.layers.Dense(2)],
        sampling="shuffle",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **compile_args,
    )
    return model


@pytest.mark.parametrize(
    "steps_per_execution", [1, pytest.param(4, marks=pytest.mark.steps_per_execution)]
)
def test_an_interrupted_fit_records_every_update_that_ran(tmp_path, steps_per_execution):
    x, y = _data()
    model = _small_model(steps_per_execution=steps_per_execution)
    _interrupt_after_first_call(model)
    state = tmp_path / "state.json"
    budget = kp.PrivacyBudget(delta=1e-5, accountant="rdp", state_path=state)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[budget])
    ran = steps_per_execution
    if BACKEND == "tensorflow":
        # (On JAX, Keras's fit drops the state of a train function call that raised, so
        # the optimizer's variables are not synced back; the DP counters are kept.)
        assert int(model.optimizer.iterations.numpy()) == ran
    assert model.privacy_record.total_updates == ran
    assert load_privacy_state(state).total_updates == ran


class _ResetIterations(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.model.optimizer.iterations.assign(0)  # e.g. to restart a schedule


class _Rollback(keras.callbacks.Callback):
    def __init__(self, path):
        super().__init__()
        self.path = str(path)

    def on_train_begin(self, logs=None):
        self.model.save_weights(self.path)

    def on_epoch_end(self, epoch, logs=None):
        self.model.load_weights(self.path)  # restores optimizer.iterations too


def test_resetting_optimizer_iterations_does_not_rewind_the_record():
    x, y = _data()
    model = _small_model()
    model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[_ResetIterations()])
    assert int(model.optimizer.iterations.numpy()) == 0
    assert model.privacy_record.total_updates == 50
    assert model.privacy_spent(1e-5, accountant="rdp") > 0


def test_restoring_a_checkpoint_does_not_rewind_the_record(tmp_path):
    x, y = _data()
    model = _small_model()
    rollback = _Rollback(tmp_path / "start.weights.h5")
    model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[rollback])
    assert int(model.optimizer.iterations.numpy()) == 0  # the checkpoint's counter
    assert model.privacy_record.total_updates == 50  # privacy spent stays spent


# -- doors that would train without DP ----------------------------------------------------


def test_the_wrapped_model_refuses_to_train_until_released():
    x, y = _data()
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    private = kp.make_private(plain, l2_norm_clip=1.0, noise_multiplier=1.0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    private.compile(optimizer="sgd", loss=loss)
    plain.compile(optimizer="sgd", loss=loss)
    before = [w.copy() for w in plain.get_weights()]
    with pytest.raises(PrivacyError, match="private.fit"):
        plain.fit(x, y, verbose=0)
    with pytest.raises(PrivacyError, match="release"):
        plain.train_on_batch(x, y)
    for a, b in zip(before, plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    plain.predict(x, verbose=0)  # inference is unaffected
    private.fit(x, y, batch_size=8, verbose=0)
    assert private.privacy_record.total_updates > 0

    assert private.release() is plain
    plain.fit(x, y, verbose=0)  # trains without DP now, by the user's explicit choice
    with pytest.raises(PrivacyError, match="released"):
        private.fit(x, y, batch_size=8, verbose=0)


def test_a_model_wrapped_twice_stays_guarded_until_both_release():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    first = kp.make_private(plain, l2_norm_clip=1.0, noise_multiplier=1.0)
    second = kp.make_private(plain, l2_norm_clip=1.0, noise_multiplier=1.0)
    plain.compile(optimizer="sgd", loss="mse")
    first.release()
    with pytest.raises(PrivacyError, match=second.name):
        plain.train_on_batch(np.zeros((2, 3)), np.zeros((2, 2)))
    second.release()
    plain.train_on_batch(np.zeros((2, 3)), np.zeros((2, 2)))


def test_a_dp_model_that_overrides_train_step_is_refused():
    class Custom(kp.DPModel):
        def __init__(self):
            super().__init__(l2_norm_clip=1.0, noise_multiplier=1.0, sampling="shuffle")
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

        def train_step(self, data):  # bypasses clipping and noise
            return keras.Model.train_step(self, data)

    model = Custom()
    with pytest.raises(PrivacyError, match="overrides train_step"):
        model.compile(optimizer="sgd", loss="mse")
