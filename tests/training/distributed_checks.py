"""Measurements of the DP step on several devices, run in a subprocess by
``test_distributed.py`` (the device count must be set before the framework starts).

``python tests/training/distributed_checks.py MODE`` with MODE ``tf-mirrored`` (two logical
CPU devices, ``tf.distribute.MirroredStrategy``), ``tf-multi-worker`` (one process per
worker, ``TF_CONFIG`` set; ``tf.distribute.MultiWorkerMirroredStrategy``) or
``jax-data-parallel`` (run with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``;
``keras.distribution.DataParallel``) prints one JSON object:

* ``replicas``: the replicas the step ran on;
* ``clipped``: the update of one ``train_on_batch`` (multi-worker: a Poisson ``fit`` step
  with q = 1) (noise 0, SGD with learning rate 1, an L2 kernel regularizer) against the
  per-example reference computed here in NumPy: ``-(sum_i clip_C(grad_i) / B + grad R(w))``;
* ``poisson``: one Poisson update where every example's clipped gradient is the same
  vector ``v``: the update must be ``-n v / B`` with ``n`` the examples the step counted
  (all replicas' rows, each once) and ``B`` the global expected batch;
* ``noise``: updates of a model whose every example has weight 0 (clipped sum 0), so an
  update is the noise alone divided by ``B``: its standard deviation against
  ``sigma C / B``, the largest correlation between two updates' noise (also across two
  ``fit`` calls), and the record's figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

MODE = sys.argv[1]
os.environ["KERAS_BACKEND"] = "tensorflow" if MODE.startswith("tf") else "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if MODE.startswith("tf"):
    import tensorflow as tf
if MODE == "tf-mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_privacy as kp  # noqa: E402
from keras_privacy.accounting import epsilon_of_record  # noqa: E402
from keras_privacy.training.record import TrainingRecord  # noqa: E402

warnings.simplefilter("ignore")
keras.config.disable_traceback_filtering()


def distributed_scope():
    """(scope to build models in, number of replicas)."""
    if MODE == "tf-mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        return strategy.scope, strategy.num_replicas_in_sync
    if MODE == "tf-multi-worker":  # TF_CONFIG names this worker
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return strategy.scope, strategy.num_replicas_in_sync
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    keras.distribution.set_distribution(distribution)
    return (lambda: _Nothing()), len(keras.distribution.list_devices())


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def dense_model(
    scope, inputs, units, *, clip, sigma, seed, regularizer=None, zeros=True, accumulation=1
):
    with scope():
        model = kp.DPSequential(
            [
                keras.layers.Input((inputs,)),
                keras.layers.Dense(
                    units,
                    kernel_regularizer=regularizer,
                    kernel_initializer="zeros" if zeros else "glorot_uniform",
                ),
            ],
            l2_norm_clip=clip,
            noise_multiplier=sigma,
            seed=seed,
            gradient_accumulation_steps=accumulation,
        )
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    return model


def sharded_devices(model) -> int:
    """The devices the model's kernel (and so the step) lives on: evidence that the step
    really ran distributed (a mirrored variable; a replicated JAX array)."""
    value = model.trainable_variables[0].value
    if MODE == "tf-multi-worker":  # one device per worker: the replicas in sync
        return int(model.distribute_strategy.num_replicas_in_sync)
    if MODE == "tf-mirrored":
        return len(value.values) if isinstance(value, tf.distribute.DistributedValues) else 1
    return len(value.sharding.device_set)


def flat_weights(model) -> np.ndarray:
    return np.concatenate([np.ravel(w) for w in model.get_weights()])


def clipped_reference(w, b, x, y, clip, l2):
    """-(sum_i clip_C(grad_i) / B + grad R) for a Dense layer under MSE (mean over the K
    outputs): grad_i = (2/K) x_i r_i^T for the kernel, (2/K) r_i for the bias."""
    k = y.shape[1]
    total_w, total_b = np.zeros_like(w), np.zeros_like(b)
    for xi, yi in zip(x, y, strict=True):
        r = xi @ w + b - yi
        gw, gb = (2.0 / k) * np.outer(xi, r), (2.0 / k) * r
        norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
        factor = min(1.0, clip / norm)
        total_w += factor * gw
        total_b += factor * gb
    return np.concatenate([-(total_w / len(x) + 2 * l2 * w).ravel(), -(total_b / len(x))])


def check_clipped(scope) -> dict:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 5)) * rng.uniform(0.1, 3.0, size=(8, 1))).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    model = dense_model(
        scope,
        5,
        3,
        clip=0.5,
        sigma=0.0,
        seed=1,
        regularizer=keras.regularizers.L2(0.1),
        zeros=False,
    )
    model.build((None, 5))
    w, b = (np.asarray(v, "float64") for v in model.get_weights())
    before = flat_weights(model)
    if MODE == "tf-multi-worker":
        # train_on_batch is refused with several workers: a Poisson fit with q = 1 (every
        # row of every worker's shard) is the same deterministic update.
        model.fit(x, y, batch_size=len(x), epochs=1, steps_per_epoch=1, verbose=0)
    else:
        model.train_on_batch(x, y)
    update = flat_weights(model) - before
    reference = clipped_reference(w, b, x.astype("float64"), y.astype("float64"), 0.5, 0.1)
    return {
        "sharded_devices": sharded_devices(model),
        "max_abs_error": float(np.max(np.abs(update - reference))),
        "reference_norm": float(np.linalg.norm(reference)),
        "updates": model.privacy_record.total_updates,
    }


def check_uneven_split(scope) -> dict:
    """TensorFlow: a shuffled batch of 7 rows split 4 / 3 across the replicas (and its
    first batch used by Keras to build), then the same rows as one ``tf.data`` batch: each
    update is the reference's over 7 rows."""
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(7, 5)) * 2).astype("float32")
    y = rng.normal(size=(7, 3)).astype("float32")
    with scope():
        model = kp.DPSequential(
            [keras.layers.Input((5,)), keras.layers.Dense(3)],
            l2_norm_clip=0.5,
            noise_multiplier=0.0,
            sampling="shuffle",
        )
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    w, b = (np.asarray(v, "float64") for v in model.get_weights())
    before = flat_weights(model)
    model.fit(x, y, batch_size=7, epochs=1, shuffle=False, verbose=0)
    update = flat_weights(model) - before
    reference = clipped_reference(w, b, x.astype("float64"), y.astype("float64"), 0.5, 0.0)
    # The same rows as one tf.data batch, at the new weights.
    w, b = (np.asarray(v, "float64") for v in model.get_weights())
    before = flat_weights(model)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(7), epochs=1, verbose=0)
    pipeline_update = flat_weights(model) - before
    pipeline_reference = clipped_reference(w, b, x.astype("float64"), y.astype("float64"), 0.5, 0.0)
    return {
        "max_abs_error": float(
            max(
                np.max(np.abs(update - reference)),
                np.max(np.abs(pipeline_update - pipeline_reference)),
            )
        ),
        "updates": model.privacy_record.total_updates,
    }


def check_poisson(scope, accumulation: int = 1) -> dict:
    """With ``accumulation`` > 1 the logical batch of 64 is ``batch_size`` 64 / n, done in
    chunks of that many rows (on each replica) before the one noise draw."""
    n, batch, clip = 512, 64, 0.25
    model = dense_model(scope, 4, 2, clip=clip, sigma=0.0, seed=2, accumulation=accumulation)
    x = np.tile(np.array([[3.0, -1.0, 2.0, 0.5]], "float32"), (n, 1))
    y = np.tile(np.array([[1.0, -2.0]], "float32"), (n, 1))
    model.build((None, 4))
    w, b = (np.asarray(v, "float64") for v in model.get_weights())
    # Every example's gradient is the same; clipped to norm C it is v (per example).
    v = -clipped_reference(w, b, x[:1].astype("float64"), y[:1].astype("float64"), clip, 0.0)
    before = flat_weights(model)
    model.fit(x, y, batch_size=batch // accumulation, epochs=1, steps_per_epoch=1, verbose=0)
    update = flat_weights(model) - before
    counted = model._dp_counters()["examples"]
    segment = model.privacy_record.segments[-1]
    implied = float(-update @ v / (v @ v) * batch)
    return {
        "counted_examples": counted,
        "implied_examples": implied,
        "residual": float(np.max(np.abs(update + counted * v / batch))),
        "dataset_size": segment.dataset_size,
        "expected_batch_size": segment.expected_batch_size,
    }


def check_noise(scope) -> dict:
    n, batch, clip, sigma, steps = 512, 64, 0.5, 2.0, 15
    model = dense_model(scope, 16, 64, clip=clip, sigma=sigma, seed=3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 16)).astype("float32")
    y = rng.normal(size=(n, 64)).astype("float32")
    weights = np.zeros(n, "float32")  # every loss 0: the clipped sum is 0, only noise
    snapshots = [flat_weights(model) if model.built else None]

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            snapshots.append(flat_weights(self.model))

    model.build((None, 16))
    snapshots[0] = flat_weights(model)
    for _ in range(2):  # two fits: the second continues the noise stream
        model.fit(
            x,
            y,
            sample_weight=weights,
            batch_size=batch,
            epochs=1,
            steps_per_epoch=steps,
            verbose=0,
            callbacks=[Snapshot()],
        )
    updates = np.diff(np.stack(snapshots), axis=0)
    corr = np.corrcoef(updates)
    off_diagonal = np.abs(corr[~np.eye(len(updates), dtype=bool)])
    record = model.privacy_record
    return {
        "final_weights_sum": float(np.sum(np.abs(snapshots[-1]))),
        "update_std": float(np.std(updates)),
        "expected_std": sigma * clip / batch,
        "coordinates": int(updates.size),
        "max_correlation": float(off_diagonal.max()),
        "updates": record.total_updates,
        "dataset_size": record.segments[-1].dataset_size,
        "expected_batch_size": record.segments[-1].expected_batch_size,
        "examples": model._dp_counters()["examples"],
    }


def check_workers_agree(scope) -> bool:
    """Multi-worker: workers given different N are refused before any update."""
    from keras_privacy.training.errors import PrivacyError

    worker = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    n = 256 + 8 * worker  # each worker a different N: the accountant's N would be wrong
    model = dense_model(scope, 4, 2, clip=1.0, sigma=1.0, seed=4)
    x, y = np.ones((n, 4), "float32"), np.ones((n, 2), "float32")
    try:
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    except PrivacyError as error:
        return "disagree" in str(error) and model.privacy_record.total_updates == 0
    return False


def check_restart(scope, directory: str, phase: int) -> dict:
    """A worker restarted mid-``fit`` by ``keras.callbacks.BackupAndRestore``: phase 1
    trains a noise-only model (every example's weight 0: an update is its noise / B) for
    epochs 0, 1 (backed up after each) and 2 updates of epoch 2, then the process dies
    (``os._exit``: nothing runs after). Phase 2, a new process running the same code,
    restores the backup and runs epoch 2 again (4 updates). Each phase saves every
    update's noise (``noise-<worker>-<phase>.npy``); phase 2 returns its record. The model
    has no DP seed: its noise key and sampler come from OS entropy (a seed is refused on
    restore; ``test_restart.py``)."""
    n, batch, clip, sigma, steps = 512, 64, 0.5, 2.0, 4
    worker = json.loads(os.environ.get("TF_CONFIG", '{"task": {"index": 0}}'))["task"]["index"]
    model = dense_model(scope, 16, 64, clip=clip, sigma=sigma, seed=None)
    model.build((None, 16))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 16)).astype("float32")
    y = rng.normal(size=(n, 64)).astype("float32")
    noise, path = [], os.path.join(directory, f"noise-{worker}-{phase}.npy")

    class RecordNoise(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch_index, logs=None):
            self.before = flat_weights(self.model)

        def on_train_batch_end(self, batch_index, logs=None):
            noise.append(flat_weights(self.model) - self.before)
            np.save(path, np.stack(noise))

    class Die(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch_index, logs=None):
            if self.epoch == 2 and batch_index == 1:
                os._exit(0)  # killed: after the epoch-1 backup and 2 more updates

    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(directory, f"backup-{worker}")),
        RecordNoise(),
    ] + ([Die()] if phase == 1 else [])
    model.fit(
        x,
        y,
        sample_weight=np.zeros(n, "float32"),
        batch_size=batch,
        epochs=3,
        steps_per_epoch=steps,
        verbose=0,
        callbacks=callbacks,
    )
    record = model.privacy_record
    one_run = TrainingRecord(segments=[dataclasses.replace(record.segments[-1], updates=3 * steps)])
    return {
        "updates": [s.updates for s in record.segments],
        "dataset_size": record.segments[-1].dataset_size,
        "expected_batch_size": record.segments[-1].expected_batch_size,
        "epsilon": model.privacy_spent(1e-5),
        "one_run_epsilon": epsilon_of_record(one_run, 1e-5),
        "expected_std": sigma * clip / batch,
    }


def check_quick(scope) -> dict:
    """One Poisson update with q = 1 of a noise-only model (every example's weight 0),
    for the default suite's two-worker test: the update is the noise / B, 1,088
    coordinates whose standard deviation is sigma C / B once (not sqrt(2) times, nor
    1/sqrt(2)); the rows the step counted (both workers' shards, each row once) and the
    record's global figures."""
    n, clip, sigma = 64, 0.5, 2.0
    model = dense_model(scope, 16, 64, clip=clip, sigma=sigma, seed=None)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, 16)).astype("float32"), rng.normal(size=(n, 64)).astype("float32")
    model.fit(
        x, y, sample_weight=np.zeros(n, "float32"), batch_size=n, steps_per_epoch=1, verbose=0
    )
    record = model.privacy_record
    return {
        "std_ratio": float(np.std(flat_weights(model)) / (sigma * clip / n)),
        "weights_sum": float(np.sum(flat_weights(model))),
        "examples": model._dp_counters()["examples"],
        "record": [
            record.total_updates,
            record.segments[-1].dataset_size,
            record.segments[-1].expected_batch_size,
        ],
    }


def main() -> None:
    scope, replicas = distributed_scope()
    if sys.argv[2:] == ["quick"]:
        print("RESULT " + json.dumps({"replicas": replicas, "quick": check_quick(scope)}))
        return
    if len(sys.argv) > 2:  # restart DIRECTORY PHASE
        result = check_restart(scope, sys.argv[3], int(sys.argv[4]))
        print("RESULT " + json.dumps({"replicas": replicas, "restart": result}))
        return
    result = {
        "replicas": replicas,
        "clipped": check_clipped(scope),
        "poisson": check_poisson(scope),
        "poisson_accumulated": check_poisson(scope, accumulation=2),
        "noise": check_noise(scope),
    }
    if MODE == "tf-mirrored":
        result["uneven_split"] = check_uneven_split(scope)
    if MODE == "tf-multi-worker":
        result["disagreement_refused"] = check_workers_agree(scope)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
