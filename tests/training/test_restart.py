"""A DP model restarted mid-``fit`` from a weights file (``keras_privacy/training/restore.py``).

``keras.callbacks.BackupAndRestore`` restarts a worker from ``save_weights``: a new model,
built by the same code, ``load_weights`` the backup. Its privacy record must count the
updates behind the restored weights (the weights file carries the record), and a model
with a DP seed, which would draw the resumed run's noise and samples again, is refused.
In separate processes on two devices and two workers: ``test_distributed.py`` (slow).
"""

import dataclasses
import shutil

import keras
import numpy as np
import pytest

import keras_privacy as kp
from keras_privacy.accounting import epsilon_of_record
from keras_privacy.training.record import TrainingRecord

STEPS = 4  # updates per epoch; 3 epochs
# The record's save and restore is backend-neutral (the DP model's weights entry): run in
# the TensorFlow and PyTorch default suites; in JAX's only with -m slow (no room there).
pytestmark = [pytest.mark.slow] if keras.backend.backend() == "jax" else []


def small_model(seed=None):
    model = kp.DPSequential(
        [keras.layers.Input((3,)), keras.layers.Dense(1)],
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        seed=seed,
    )
    model.compile(optimizer="sgd", loss="mse")
    model.build((None, 3))  # BackupAndRestore needs a built model
    return model


def fit(model, *callbacks):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3)).astype("float32"), np.ones((64, 1), "float32")
    model.fit(x, y, batch_size=16, epochs=3, steps_per_epoch=STEPS, verbose=0, callbacks=callbacks)


class Die(keras.callbacks.Callback):
    """Ends the fit after 2 updates of epoch 2 (after the epoch-1 backup): a lost worker."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and batch == 1:
            raise KeyboardInterrupt


def backup(tmp_path, name="backup"):
    return keras.callbacks.BackupAndRestore(str(tmp_path / name), delete_checkpoint=False)


def interrupted_run(tmp_path, seed=None):
    model = small_model(seed)
    state = kp.PrivacyBudget(1e-5, accountant="rdp", state_path=tmp_path / "state.json", live=False)
    with pytest.raises(KeyboardInterrupt):
        fit(model, backup(tmp_path), state, Die())
    assert model.privacy_record.total_updates == 10
    return model


def test_a_restarted_model_counts_every_update_once(tmp_path):
    interrupted_run(tmp_path)
    shutil.copytree(tmp_path / "backup", tmp_path / "copy")  # to restart from twice
    resumed = small_model()  # a new process builds the model again ...
    fit(resumed, backup(tmp_path))  # ... and resumes from the epoch-1 backup
    record = resumed.privacy_record
    # The 8 updates behind the restored weights and the 4 of epoch 2: without the record
    # in the weights file, [4] (epsilon of a third of the training).
    assert [s.updates for s in record.segments] == [8, 4]
    one_run = TrainingRecord([dataclasses.replace(record.segments[0], updates=3 * STEPS)])
    assert resumed.privacy_spent(1e-5, "rdp") == pytest.approx(
        epsilon_of_record(one_run, 1e-5, "rdp"), rel=1e-9
    )
    # With the PrivacyBudget state file (written after every update), the 2 updates lost
    # with the process are counted too: privacy spent stays spent.
    counted = small_model()
    fit(
        counted,
        backup(tmp_path, "copy"),
        kp.PrivacyBudget(1e-5, accountant="rdp", state_path=tmp_path / "state.json", live=False),
    )
    assert [s.updates for s in counted.privacy_record.segments] == [10, 4]


def test_restoring_a_trained_state_into_a_seeded_model_is_refused(tmp_path):
    """The seed would restart the noise key and the sampler: the resumed updates would
    draw the noise and samples of the first ones again."""
    interrupted_run(tmp_path, seed=3)
    resumed = small_model(seed=3)
    with pytest.raises(ValueError, match="built with seed="):
        fit(resumed, backup(tmp_path))
    assert resumed.privacy_record.total_updates == 0
    fit(small_model(), backup(tmp_path))  # without a seed: resumes
