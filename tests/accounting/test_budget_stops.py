"""PrivacyBudget stops before the update that would exceed the target, also when one
train-function call makes several updates (``steps_per_execution``) and under Poisson
sampling with gradient accumulation (one update per logical batch).

The number of updates that ran is read from the model's record and checked against two
counts kept outside it: Keras's ``optimizer.iterations`` and, where each call makes one
update, the number of calls after which the weights changed (every update adds Gaussian
noise, so every update moves the weights; nothing else does). Epsilon is recomputed from
the run's public parameters with ``accounting.compute_epsilon`` (checked against an
independent computation in ``test_independent_rdp.py``).
"""

import warnings

import keras
import numpy as np
import pytest

import keras_privacy as kp
from keras_privacy import accounting
from keras_privacy.training.callbacks import (
    PrivacyBudget,
    PrivacyBudgetExhaustedError,
    PrivacyBudgetWarning,
)
from keras_privacy.training.record import TrainingRecord

DELTA = 1e-3
N = 64
B = 8  # expected examples per optimizer update: q = 1/8, N / B = 8 updates per epoch
SIGMA = 2.0
FAST = "rdp"
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, 4)).astype("float32"), rng.integers(0, 2, size=N)


def _model(steps_per_execution=1, **dp):
    model = kp.DPSequential(
        layers=[keras.Input((4,)), keras.layers.Dense(2)],
        l2_norm_clip=1.0,
        noise_multiplier=SIGMA,
        seed=1,
        **dp,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=LOSS, steps_per_execution=steps_per_execution
    )
    return model


def _epsilon(steps, batch_size=B):
    """Epsilon of ``steps`` Poisson updates of expected size ``batch_size`` out of N."""
    return accounting.compute_epsilon(
        N, batch_size, SIGMA, delta=DELTA, steps=steps, accountant=FAST
    )


def _target(updates):
    """A budget that allows exactly ``updates`` updates (and not one more)."""
    return _epsilon(updates) * (1 + 1e-9)


class _WeightChanges(keras.callbacks.Callback):
    """Counts the train-function calls after which the weights had changed."""

    def on_train_begin(self, logs=None):
        self.changes = 0
        self._last = self._weights()

    def on_train_batch_end(self, batch, logs=None):
        now = self._weights()
        self.changes += int(not np.array_equal(now, self._last))
        self._last = now

    def _weights(self):
        return np.concatenate([np.ravel(v.numpy()) for v in self.model.trainable_variables])


class _PerUpdateBudget(keras.callbacks.Callback):
    """A budget callback with the natural mistake: it stops when the *next single update*
    would exceed the target, ignoring that one call can make several updates."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def on_train_begin(self, logs=None):
        record = self.model.privacy_record
        self.max_updates = accounting.max_updates_within_budget(record, self.target, DELTA, FAST)

    def on_train_batch_end(self, batch, logs=None):
        if self.model.privacy_record.current.updates + 1 > self.max_updates:
            self.model.stop_training = True


def _fit(model, callbacks, batch_size=B, epochs=10):
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyBudgetWarning)
        return model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks)


@pytest.mark.steps_per_execution
def test_budget_stops_in_time_with_several_updates_per_train_function_call():
    """steps_per_execution=4: each call makes 4 updates. The budget allows 14, so the
    callback must stop after the third call (12 updates): a fourth would reach 16."""
    target = _target(14)
    assert _epsilon(12) <= target < _epsilon(15)
    model = _model(steps_per_execution=4)
    budget = PrivacyBudget(delta=DELTA, target_epsilon=target, accountant=FAST)
    changes = _WeightChanges()
    with pytest.warns(PrivacyBudgetWarning):
        history = model.fit(
            *_data(), batch_size=B, epochs=10, verbose=0, callbacks=[budget, changes]
        )
    record = model.privacy_record
    assert budget.stopped_by_budget and budget.max_updates == 14
    assert record.total_updates == 12  # three calls of four updates
    assert int(model.optimizer.iterations.numpy()) == 12  # Keras's own count agrees
    assert changes.changes == 3  # three calls moved the weights
    assert len(history.history["loss"]) == 2  # stopped in the second epoch (8 per epoch)
    spent = accounting.epsilon_of_record(record, DELTA, FAST)
    assert spent == pytest.approx(_epsilon(12), rel=1e-12)
    assert spent <= target
    assert history.history["epsilon"][-1] == spent
    # Another call would make up to four more updates (16 > 14): refused before training.
    with pytest.raises(PrivacyBudgetExhaustedError):
        model.fit(*_data(), batch_size=B, epochs=1, verbose=0, callbacks=[budget])
    assert model.privacy_record.total_updates == 12


@pytest.mark.steps_per_execution
def test_a_per_update_budget_check_overshoots_with_several_updates_per_call():
    """Power of the test above: the same run with a callback that ignores
    steps_per_execution makes 16 updates, and the check epsilon <= target rejects it."""
    target = _target(14)
    model = _model(steps_per_execution=4)
    _fit(model, [_PerUpdateBudget(target)])
    assert model.privacy_record.total_updates == 16
    assert int(model.optimizer.iterations.numpy()) == 16
    assert accounting.epsilon_of_record(model.privacy_record, DELTA, FAST) > target


def test_budget_stops_in_time_under_poisson_sampling_with_gradient_accumulation():
    """Poisson sampling, batch_size=4, gradient_accumulation_steps=2: each update is one
    Poisson batch of expected size 8 (q = 1/8), processed in two chunks. The budget allows
    13 updates: training stops after exactly 13, in the second epoch."""
    target = _target(13)
    model = _model(gradient_accumulation_steps=2)
    budget = PrivacyBudget(delta=DELTA, target_epsilon=target, accountant=FAST)
    changes = _WeightChanges()
    with pytest.warns(PrivacyBudgetWarning):
        history = model.fit(
            *_data(), batch_size=B // 2, epochs=10, verbose=0, callbacks=[budget, changes]
        )
    record = model.privacy_record
    (segment,) = record.segments
    assert segment.sampling == "poisson"
    assert segment.expected_batch_size == B  # the logical batch, not the chunk of 4
    assert segment.sampling_probability == pytest.approx(B / N)
    assert budget.stopped_by_budget and budget.max_updates == 13
    assert record.total_updates == 13
    assert int(model.optimizer.iterations.numpy()) == 13
    assert changes.changes == 13  # one noised update per logical batch, each call
    assert len(history.history["loss"]) == 2
    spent = accounting.epsilon_of_record(record, DELTA, FAST)
    assert spent == pytest.approx(_epsilon(13), rel=1e-12)
    assert spent <= target < _epsilon(14)


def test_an_accountant_given_the_chunk_as_the_batch_would_overshoot():
    """Power of the test above without a buggy library: had the record taken q from the
    chunk (4 / N instead of 8 / N), the budget would allow more updates, and the check
    epsilon(true q, updates) <= target rejects such a run."""
    target = _target(13)
    model = _model(gradient_accumulation_steps=2)
    _fit(model, [PrivacyBudget(delta=DELTA, accountant=FAST)], batch_size=B // 2, epochs=1)
    wrong = TrainingRecord.from_dict(model.privacy_record.to_dict())
    assert wrong.current.expected_batch_size == B
    wrong.current.expected_batch_size = B // 2
    wrong.current.updates = 0
    allowed = accounting.max_updates_within_budget(wrong, target, DELTA, FAST)
    assert allowed > 13
    assert _epsilon(allowed) > target
