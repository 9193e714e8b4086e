"""PrivacyBudget: epsilon in fit logs, stopping before the budget, checkpoint / resume."""

import json

import keras
import numpy as np
import pytest

import keras_privacy as kp
from keras_privacy import accounting
from keras_privacy.training.callbacks import (
    PrivacyBudget,
    PrivacyBudgetExhaustedError,
    PrivacyBudgetWarning,
    load_privacy_state,
    privacy_spent,
)

DELTA = 1e-3
N = 64
B = 8  # q = 1/8; with sigma = 2 each accountant call takes a fraction of a second
SIGMA = 2.0
#: The callback logic does not depend on the accountant; RDP keeps these tests fast.
FAST = "rdp"
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, 2, size=n)


def _model(noise_multiplier=SIGMA, **dp):
    model = kp.DPSequential(
        layers=[keras.Input((4,)), keras.layers.Dense(2)],
        l2_norm_clip=1.0,
        noise_multiplier=noise_multiplier,
        seed=1,
        **dp,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    return model


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def test_epsilon_is_logged_each_epoch_and_matches_planning():
    x, y = _data()
    model = _model()
    budget = PrivacyBudget(delta=DELTA)  # default accountant: PLD
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0, callbacks=[budget])
    logged = history.history["epsilon"]
    assert len(logged) == 2 and 0 < logged[0] < logged[1]
    updates = model.privacy_record.total_updates
    assert updates == 2 * (N // B)
    planned = accounting.compute_epsilon(N, B, SIGMA, delta=DELTA, steps=updates)
    assert logged[-1] == pytest.approx(planned, rel=1e-12)
    assert privacy_spent(model, DELTA) == logged[-1] == budget.epsilon


def _assert_stopped_at_budget(model, target, accountant=FAST):
    record = model.privacy_record
    assert accounting.epsilon_of_record(record, DELTA, accountant) <= target
    record.current.updates += 1  # one more update would have exceeded it
    assert accounting.epsilon_of_record(record, DELTA, accountant) > target
    record.current.updates -= 1


def _target_for(steps=None, epochs=None, sampling="poisson"):
    epsilon = accounting.compute_epsilon(
        N, B, SIGMA, delta=DELTA, steps=steps, epochs=epochs, sampling=sampling, accountant=FAST
    )
    return epsilon * (1 + 1e-9)


def test_training_stops_before_the_update_that_would_exceed_the_target():
    x, y = _data()
    model = _model()
    target = _target_for(steps=10)
    budget = PrivacyBudget(delta=DELTA, target_epsilon=target, accountant=FAST)
    with pytest.warns(PrivacyBudgetWarning) as caught:
        history = model.fit(x, y, batch_size=B, epochs=10, verbose=0, callbacks=[budget])
    # the warning points at the user's fit call, not into Keras's callback list
    assert [w.filename for w in caught if w.category is PrivacyBudgetWarning] == [__file__]
    assert model.privacy_record.total_updates == budget.max_updates == 10
    assert budget.stopped_by_budget
    assert len(history.history["epsilon"]) == 2  # stopped in the second epoch
    assert history.history["epsilon"][-1] <= target
    _assert_stopped_at_budget(model, target)


def test_gradient_accumulation_counts_one_event_per_optimizer_update():
    x, y = _data()
    # shuffled fixed batches of 4, 2 batches per update: 16 train steps, 8 updates per epoch
    model = _model(gradient_accumulation_steps=2, sampling="shuffle")
    budget = PrivacyBudget(DELTA, accountant=FAST)
    model.fit(x, y, batch_size=B // 2, epochs=2, verbose=0, callbacks=[budget])
    segment = model.privacy_record.current
    assert segment.updates == 2 * N // B and segment.expected_batch_size == B
    ledger = accounting.PrivacyLedger.from_training_record(model.privacy_record)
    assert ledger.num_events == 2  # one Gaussian per pass over the data
    # Poisson: the sampler draws a logical batch of B per update, processed in 2 chunks
    model = _model(gradient_accumulation_steps=2)
    model.fit(x, y, batch_size=B // 2, epochs=2, verbose=0, callbacks=[budget])
    ledger = accounting.PrivacyLedger.from_training_record(model.privacy_record)
    assert ledger.num_events == model.privacy_record.total_updates == 2 * N // B
    (entry,) = ledger.entries
    assert entry.event.sampling_probability == pytest.approx(B / N)


def test_budget_holds_under_accumulation():
    x, y = _data()
    model = _model(gradient_accumulation_steps=2, sampling="shuffle")
    # shuffle: epsilon grows once per pass (8 updates); the budget allows exactly 2 passes
    target = _target_for(epochs=2, sampling="shuffle")
    budget = PrivacyBudget(delta=DELTA, target_epsilon=target, accountant=FAST)
    with pytest.warns(PrivacyBudgetWarning):
        model.fit(x, y, batch_size=B // 2, epochs=5, verbose=0, callbacks=[budget])
    assert model.privacy_record.total_updates == 16
    _assert_stopped_at_budget(model, target)


def test_initial_epoch_steps_per_epoch_and_repeated_fit_share_one_budget():
    x, y = _data()
    model = _model()
    target = _target_for(steps=13)
    budget = PrivacyBudget(delta=DELTA, target_epsilon=target, accountant=FAST)
    model.fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=[budget])
    assert model.privacy_record.total_updates == 8 and not budget.stopped_by_budget
    with pytest.warns(PrivacyBudgetWarning):
        history = model.fit(
            x,
            y,
            batch_size=B,
            initial_epoch=1,
            epochs=6,
            steps_per_epoch=2,
            verbose=0,
            callbacks=[budget],
        )
    assert model.privacy_record.total_updates == 13  # 8 + 2 + 2 + 1
    assert len(history.history["epsilon"]) == 3
    _assert_stopped_at_budget(model, target)
    before = _weights(model)
    with pytest.raises(PrivacyBudgetExhaustedError, match="spent"):
        model.fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=[budget])
    for a, b in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)  # not a single further update


def test_checkpoint_and_resume_keep_counting(tmp_path):
    x, y = _data()
    model = _model()
    state = tmp_path / "privacy.json"
    checkpoint = tmp_path / "model.keras"
    model.fit(
        x,
        y,
        batch_size=B,
        epochs=2,
        verbose=0,
        callbacks=[
            keras.callbacks.ModelCheckpoint(str(checkpoint)),
            PrivacyBudget(DELTA, state_path=state, accountant=FAST),
        ],
    )
    epsilon_before = privacy_spent(model, DELTA)
    restored_record = load_privacy_state(state)
    assert accounting.epsilon_of_record(restored_record, DELTA) == epsilon_before  # bit-identical
    data = json.loads(state.read_text())
    assert data["ledger"]["entries"][0]["count"] == 16

    resumed = keras.models.load_model(checkpoint)
    resumed.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    assert resumed.privacy_record.total_updates == 16  # the checkpoint carries the record
    budget = PrivacyBudget(DELTA, state_path=state, accountant=FAST)
    history = resumed.fit(
        x, y, batch_size=B, initial_epoch=2, epochs=3, verbose=0, callbacks=[budget]
    )
    assert resumed.privacy_record.total_updates == 24
    expected = accounting.compute_epsilon(N, B, SIGMA, delta=DELTA, steps=24, accountant=FAST)
    assert history.history["epsilon"][-1] == pytest.approx(expected, rel=1e-12)
    assert load_privacy_state(state).total_updates == 24


def test_state_file_is_checked_and_never_unpickled(tmp_path):
    x, y = _data()
    model = _model()
    state = tmp_path / "privacy.json"
    budget = PrivacyBudget(DELTA, state_path=state, accountant=FAST)
    model.fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=[budget])
    data = json.loads(state.read_text())
    data["training_record"]["segments"][0]["updates"] = 1  # the ledger says 8
    state.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match"):
        load_privacy_state(state)
    data["training_record"]["segments"][0]["updates"] = {"__reduce__": "os.system"}
    state.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="updates"):
        load_privacy_state(state)
    state.write_bytes(b"\x80\x04\x95")  # a pickle header is not JSON
    with pytest.raises(ValueError):
        load_privacy_state(state)


def test_tf_data_without_dataset_size_says_epsilon_cannot_be_computed():
    import tensorflow as tf

    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(B)
    model = _model()
    with (
        pytest.warns(kp.SamplingWarning),
        pytest.raises(accounting.DatasetSizeUnknownError, match=r"fit\(\.\.\., dataset_size=N\)"),
    ):
        model.fit(dataset, epochs=1, verbose=0, callbacks=[PrivacyBudget(DELTA)])
    assert model.privacy_record.total_updates == 0  # refused before training
    model = _model()
    budget = PrivacyBudget(DELTA, accountant=FAST)
    with pytest.warns(kp.SamplingWarning):
        history = model.fit(dataset, epochs=2, verbose=0, dataset_size=N, callbacks=[budget])
    expected = _target_for(epochs=2, sampling="shuffle") / (1 + 1e-9)
    assert history.history["epsilon"][-1] == pytest.approx(expected, rel=1e-9)


def test_plain_keras_model_is_rejected():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=LOSS)
    x, y = _data()
    with pytest.raises(ValueError, match="DP model"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[PrivacyBudget(DELTA)])


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="delta"):
        PrivacyBudget(delta=2.0)
    with pytest.raises(ValueError, match="target_epsilon"):
        PrivacyBudget(delta=DELTA, target_epsilon=0)
    with pytest.raises(ValueError, match="accountant"):
        PrivacyBudget(delta=DELTA, accountant="moments")


class _BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epsilons = []

    def on_train_batch_end(self, batch, logs=None):
        self.epsilons.append(logs.get("epsilon"))


def test_epsilon_is_shown_while_the_epoch_runs():
    x, y = _data()
    model = _model()
    seen = _BatchLogs()  # after PrivacyBudget, before the progress bar would read logs
    budget = PrivacyBudget(DELTA, accountant=FAST, live_overhead=1e9)  # every batch
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0, callbacks=[budget, seen])
    assert len(seen.epsilons) == 2 * (N // B) and None not in seen.epsilons
    assert seen.epsilons == sorted(seen.epsilons) and seen.epsilons[0] > 0
    for updates, shown in enumerate(seen.epsilons, 1):
        assert shown == pytest.approx(_target_for(steps=updates) / (1 + 1e-9), rel=1e-9)
    assert seen.epsilons[-1] == pytest.approx(history.history["epsilon"][-1], rel=1e-12)
    # live=False: only the epoch-end value, as before.
    quiet = _BatchLogs()
    model.fit(x, y, batch_size=B, verbose=0, callbacks=[PrivacyBudget(DELTA, live=False), quiet])
    assert set(quiet.epsilons) == {None}


def test_the_record_composes_other_releases_into_every_epsilon(tmp_path):
    """A release from the same data (e.g. private feature statistics) recorded on the model
    counts in PrivacyBudget's epsilon during and after training, in privacy_spent, in the
    budget, and survives the privacy state file."""
    import dp_accounting

    release = dp_accounting.GaussianDpEvent(2.0)
    x, y = _data()
    eps = {}
    for with_release in (False, True):
        model = _model()
        if with_release:
            model.privacy_record.add_release(release, "second moment")
        budget = kp.PrivacyBudget(
            1e-5, accountant=FAST, state_path=tmp_path / f"s{with_release}.json"
        )
        history = model.fit(x, y, batch_size=B, epochs=1, verbose=0, callbacks=[budget])
        eps[with_release] = (history.history["epsilon"][-1], model.privacy_spent(1e-5, FAST))
    alone = kp.PrivacyLedger()
    alone.record(release)
    assert eps[True][0] > eps[False][0] and eps[True][1] > eps[False][1]
    assert eps[True][0] > alone.epsilon(1e-5, FAST)
    assert eps[True][0] == pytest.approx(eps[True][1])
    restored = load_privacy_state(tmp_path / "sTrue.json")
    assert [event for _, event in restored.other_releases] == [release]
    with pytest.raises(ValueError, match="DpEvent"):
        model.privacy_record.add_release(2.0)


def test_live_epsilon_never_lags_the_updates_done():
    """Issue 21: with recomputations far apart (a tiny live_overhead), the bar showed the
    epsilon of the update it was computed at (0.914 shown, 1.590 at the epoch's end). Each
    value now covers the updates until the next recomputation, within the epoch."""
    x, y = _data()
    model = _model()
    seen = _BatchLogs()
    budget = PrivacyBudget(DELTA, accountant=FAST, live_overhead=1e-12)
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0, callbacks=[budget, seen])
    per_epoch = N // B
    for updates, shown in enumerate(seen.epsilons, 1):
        epoch_end = per_epoch * -(-updates // per_epoch)
        assert _target_for(steps=updates) / (1 + 1e-9) <= shown * (1 + 1e-9)
        assert shown <= _target_for(steps=epoch_end) * (1 + 1e-9)
    assert seen.epsilons[-1] == pytest.approx(history.history["epsilon"][-1], rel=1e-9)
