"""DP training on several devices (``keras_privacy/training/distribution.py``).

The supported settings (TensorFlow's ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``
-- two worker processes on localhost --, JAX's ``DataParallel``) are measured in
subprocesses with two CPU devices (``distributed_checks.py``): the update equals
the per-example reference (clipped sums all-reduced, the regularizer's gradient once), a
Poisson update (also under gradient accumulation) counts every sampled row of every replica
once over the global B, and the
noise of an update has standard deviation ``sigma C / B`` -- once, not ``sqrt(R)`` times --
and differs between updates and fits; the record holds the global N and B. Every other
setting is refused; one fast refusal test per backend runs in the default suite.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_privacy as kp
from keras_privacy.training.errors import PrivacyError

BACKEND = keras.backend.backend()
ROOT = pathlib.Path(__file__).resolve().parents[2]
CHECKS = pathlib.Path(__file__).with_name("distributed_checks.py")


def small_model():
    return kp.DPSequential(
        [keras.layers.Input((3,)), keras.layers.Dense(1)],
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        seed=0,
    )


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 3)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")


# -- refusals (fast, one per backend) ---------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        {"l2_norm_clip": kp.AdaptiveClip(clipped_count_stddev=1.0)},
        {"l2_norm_clip": 1.0, "secure_noise": True},
        {
            "l2_norm_clip": 1.0,
            "sparsity_preserving": kp.SparsityPreserving(
                selection_noise_multiplier=1.0, threshold=1.0
            ),
        },
    ],
)
def test_options_not_proven_across_devices_are_refused_there(option, monkeypatch):
    """Adaptive clipping, secure noise and sparsity preservation are checked on one device
    only: under two replicas per-replica secure draws would average to less noise, and the
    unclipped count and the row selection would be per replica. The step is never run."""
    from keras_privacy.training import dp_training
    from keras_privacy.training.distribution import DistributionPlan

    model = kp.DPSequential(
        [keras.layers.Input((3,), dtype="int32"), keras.layers.Embedding(8, 2)],
        noise_multiplier=1.0,
        **option,
    )
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((4, 3), "int32"), np.zeros((4, 3, 2), "float32")
    monkeypatch.setattr(
        dp_training, "check_distribution", lambda m: DistributionPlan("mirrored", 2)
    )
    with pytest.raises(PrivacyError, match="not supported on several devices"):
        model.train_on_batch(x, y)
    monkeypatch.undo()
    model.train_on_batch(x, y)  # one device: trains


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
def test_tensorflow_strategy_other_than_mirrored_is_refused():
    import tensorflow as tf

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    x, y = data()
    with pytest.raises(PrivacyError, match="OneDeviceStrategy.*MirroredStrategy"):
        with strategy.scope():
            model = small_model()
            model.compile(optimizer="sgd", loss="mse")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution on JAX")
def test_jax_model_parallel_is_refused():
    import jax

    mesh = keras.distribution.DeviceMesh((1, 1), ["batch", "model"], jax.devices()[:1])
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*dense.*kernel"] = (None, "model")
    distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    x, y = data()
    with pytest.raises(PrivacyError, match="ModelParallel.*DataParallel"), distribution.scope():
        model = small_model()
        model.compile(optimizer="sgd", loss="mse")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed")
def test_torch_distributed_process_group_is_refused(tmp_path):
    import torch.distributed as dist

    x, y = data()
    model = small_model()
    model.compile(optimizer="sgd", loss="mse")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        with pytest.raises(PrivacyError, match="torch.distributed.*no distribution API"):
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    finally:
        dist.destroy_process_group()
    assert model.privacy_record.total_updates == 0


# -- the supported settings, measured (slow: a subprocess each) -------------------------


def run_checks(mode: str, extra_env: dict, *arguments: str) -> dict | None:
    """``distributed_checks.py mode *arguments`` in a subprocess: its RESULT line (None
    when it printed none: a process killed on purpose)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra_env}
    done = subprocess.run(
        [sys.executable, str(CHECKS), mode, *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next((s for s in done.stdout.splitlines() if s.startswith("RESULT ")), "RESULT null")
    return json.loads(line[len("RESULT ") :])


def assert_dp_rules(result: dict) -> None:
    assert result["replicas"] == 2
    clipped = result["clipped"]
    assert clipped["sharded_devices"] == 2  # the step really ran on both devices
    assert clipped["updates"] == 1
    assert clipped["max_abs_error"] < 1e-6 * max(1.0, clipped["reference_norm"])

    for poisson in (result["poisson"], result["poisson_accumulated"]):
        assert 20 <= poisson["counted_examples"] <= 120
        assert abs(poisson["implied_examples"] - poisson["counted_examples"]) < 1e-3
        assert poisson["residual"] < 1e-6
        assert (poisson["dataset_size"], poisson["expected_batch_size"]) == (512, 64)

    noise = result["noise"]
    # 32,640 noise coordinates: the std's relative standard error is ~0.4%; noise added on
    # each of the 2 replicas would be sqrt(2) = 1.41 times too large.
    assert noise["coordinates"] == 30 * 1088
    assert abs(noise["update_std"] / noise["expected_std"] - 1.0) < 0.03
    # 1088 coordinates per update: independent draws correlate by ~0.03 (one repeated
    # draw, in this fit or the next, would correlate by 1).
    assert noise["max_correlation"] < 0.3
    assert noise["updates"] == 30
    assert (noise["dataset_size"], noise["expected_batch_size"]) == (512, 64)
    # All replicas' rows counted: 30 updates of Binomial(512, 1/8), mean 1920, sd 40.
    assert abs(noise["examples"] - 1920) < 6 * 41


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="run once, in the TensorFlow suite")
def test_tensorflow_mirrored_strategy_follows_the_dp_rules():
    result = run_checks("tf-mirrored", {})
    assert_dp_rules(result)
    assert result["uneven_split"]["updates"] == 2
    assert result["uneven_split"]["max_abs_error"] < 1e-6


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open until every one is chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(
    arguments: list[str], workers: int = 2, timeout: float = 900, program: pathlib.Path = CHECKS
) -> list:
    """``program tf-multi-worker *arguments`` (``distributed_checks.py``) in ``workers``
    processes on localhost (``TF_CONFIG``: TensorFlow's collective runtime over gRPC, one CPU device
    each); their RESULT lines."""
    addresses = [f"localhost:{port}" for port in free_ports(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(program), "tf-multi-worker", *arguments],
            env={
                **env,
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}
                ),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            assert process.returncode == 0, err[-4000:]
            line = next((s for s in out.splitlines() if s.startswith("RESULT ")), "RESULT null")
            results.append(json.loads(line[len("RESULT ") :]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="MultiWorkerMirroredStrategy is TensorFlow's (multi-process JAX is refused, a slow "
    "test; Keras's torch backend has no distribution API): run once, in the TensorFlow suite",
)
def test_two_worker_processes_make_one_noised_update():
    """The default suite's multi-process test: two worker processes on localhost, one
    Poisson update with q = 1 of a noise-only model (``check_quick``)."""
    results = run_workers(["quick"], timeout=600)
    assert results[0] == results[1]  # the same global update on both workers
    quick = results[0]["quick"]
    assert results[0]["replicas"] == 2
    # 1,088 noise coordinates (std's standard error ~2%): noise drawn on each worker and
    # summed would be sqrt(2) = 1.41 times sigma C / B; averaged, 0.71.
    assert 0.88 < quick["std_ratio"] < 1.12
    # Each row is in one worker's shard and q = 1: all 64, each once (every worker
    # sampling all rows would count 128); the record holds the global N and B.
    assert quick["examples"] == 64
    assert quick["record"] == [1, 64, 64]


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="run once, in the TensorFlow suite")
def test_tensorflow_multi_worker_strategy_follows_the_dp_rules():
    """Two worker processes on localhost, one CPU device each; every worker gets all 512
    rows and samples its own shard."""
    results = run_workers([])
    assert results[0]["disagreement_refused"]
    assert_dp_rules(results[0])
    # The workers hold the same weights and figures (same noise, the same global update).
    assert results[0] == results[1]


def assert_restart_neither_repeats_noise_nor_loses_updates(directory, result, workers):
    """Phase 1 made 10 updates (8 backed up, 2 lost with the process); phase 2 restored
    the backup and made 4 (``distributed_checks.check_restart``)."""
    assert result["replicas"] == 2
    restart = result["restart"]
    # The record holds the 8 updates behind the restored weights and the 4 after, each
    # once (without the record in the weights file it held [4]: epsilon too small) ...
    assert restart["updates"] == [8, 4]
    assert (restart["dataset_size"], restart["expected_batch_size"]) == (512, 64)
    # ... and says the epsilon of one uninterrupted run of the same 12 updates.
    assert abs(restart["epsilon"] - restart["one_run_epsilon"]) < 1e-6
    noises = [
        [np.load(directory / f"noise-{w}-{phase}.npy") for phase in (1, 2)] for w in range(workers)
    ]
    for before, after in noises:
        assert (len(before), len(after)) == (10, 4)
        # Every update is noise / B (std sigma C / B, once: 15,232 coordinates) ...
        std = np.std(np.concatenate([before, after]))
        assert abs(std / restart["expected_std"] - 1.0) < 0.05
        # ... and no update after the restart repeats one before it, the 2 lost ones
        # included (independent draws correlate by ~0.03 over 1,088 coordinates; a
        # repeated key by 1).
        cross = np.corrcoef(np.concatenate([after, before]))[: len(after), len(after) :]
        assert np.max(np.abs(cross)) < 0.3
    for other in noises[1:]:  # every worker drew the same noise, in both runs
        for mine, theirs in zip(noises[0], other, strict=True):
            np.testing.assert_allclose(mine, theirs, atol=1e-7)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="run once, in the TensorFlow suite")
def test_tensorflow_mirrored_worker_restarted_mid_fit_keeps_its_record(tmp_path):
    """``BackupAndRestore`` under ``MirroredStrategy``: a killed process, then a new one
    resuming the same ``fit`` (two logical CPU devices each)."""
    assert run_checks("tf-mirrored", {}, "restart", str(tmp_path), "1") is None
    result = run_checks("tf-mirrored", {}, "restart", str(tmp_path), "2")
    assert_restart_neither_repeats_noise_nor_loses_updates(tmp_path, result, workers=1)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="run once, in the TensorFlow suite")
def test_tensorflow_multi_worker_restarted_mid_fit_keeps_its_record(tmp_path):
    """``BackupAndRestore`` under ``MultiWorkerMirroredStrategy``: both worker processes
    killed mid-epoch (a lost worker stops the collective fit), then both restarted."""
    assert run_workers(["restart", str(tmp_path), "1"]) == [None, None]
    results = run_workers(["restart", str(tmp_path), "2"])
    assert results[0] == results[1]
    assert_restart_neither_repeats_noise_nor_loses_updates(tmp_path, results[0], workers=2)


def test_worker_shards_are_disjoint_poisson_samples_at_the_global_rate():
    """Multi-worker sampling: worker w draws only rows w, w + W, ... with q = B / N."""
    from keras_privacy.training.sampling import PoissonBatches

    n, batch, workers = 1000, 100, 2
    x, y = np.arange(n, dtype="float32")[:, None], np.zeros(n, "float32")
    samplers = [
        PoissonBatches(
            x, y, None, expected_batch_size=batch, rng=np.random.default_rng(w), shard=(w, workers)
        )
        for w in range(workers)
    ]
    assert samplers[0].capacity == samplers[1].capacity
    draws = [[s.sample_indices() for _ in range(400)] for s in samplers]
    for w, worker_draws in enumerate(draws):
        rows = np.concatenate(worker_draws)
        assert np.all(rows % workers == w)
        # Each of the worker's 500 rows joins with q = 0.1: 400 draws x 50 expected.
        assert abs(len(rows) / 400 - 50) < 6 * np.sqrt(50 * 0.9 / 400)
        counts = np.bincount(rows, minlength=n)[w::workers]
        assert abs(counts.mean() / 400 - 0.1) < 0.01


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="run once, in the JAX suite")
def test_jax_data_parallel_follows_the_dp_rules():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    assert_dp_rules(run_checks("jax-data-parallel", {"XLA_FLAGS": flags.strip()}))


MULTI_PROCESS_JAX = """
import sys

import jax

jax.distributed.initialize(
    coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2])
)
import keras
import numpy as np

import keras_privacy as kp
from keras_privacy.training.errors import PrivacyError

model = kp.DPSequential(
    [keras.layers.Input((3,)), keras.layers.Dense(1)], l2_norm_clip=1.0, noise_multiplier=1.0
)
try:
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((32, 3), "float32"), np.ones((32, 1), "float32"), batch_size=8, verbose=0)
    print("TRAINED")
except PrivacyError as error:
    print("REFUSED" if "multi-process JAX (2 processes)" in str(error) else repr(error))
"""


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="jax.distributed")
def test_multi_process_jax_is_refused():
    """Two JAX processes on localhost (jax.distributed.initialize): each would sample and
    account only its own share, so both refuse."""
    address = f"localhost:{free_ports(1)[0]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "jax"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MULTI_PROCESS_JAX, address, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for out, err in outputs:
        assert out.strip().splitlines()[-1:] == ["REFUSED"], err[-3000:]


# -- the page's snippets (docs/distributed.md: not run by tests/test_docs_snippets.py) -------

TWO_CPU_DEVICES = """
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
# MirroredStrategy() takes the host's GPUs, or its one CPU: here, the two logical CPUs.
EVERY_DEVICE = "tf.distribute.MirroredStrategy()"
TWO_CPUS = 'tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])'
REPORT = """
import json
print("RESULT " + json.dumps([model.privacy_record.total_updates, {devices}]))
"""


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="run once, in the TensorFlow suite")
def test_the_pages_snippets_run_on_two_devices_and_two_workers(tmp_path):
    """Each ``python`` block of docs/distributed.md, as written, on two devices or two
    worker processes: 2 epochs of N / B = 16 Poisson updates, on both devices."""
    import re

    page = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    mirrored, multi_worker, jax_block = re.findall(r"^```python\n(.*?)^```", page, re.S | re.M)
    programs = {
        "mirrored": TWO_CPU_DEVICES
        + mirrored.replace(EVERY_DEVICE, TWO_CPUS)
        + REPORT.format(devices="model.distribute_strategy.num_replicas_in_sync"),
        "multi_worker": multi_worker
        + REPORT.format(devices="model.distribute_strategy.num_replicas_in_sync"),
        "jax": jax_block
        + REPORT.format(devices="len(model.trainable_variables[0].value.sharding.device_set)"),
    }
    for name, code in programs.items():
        (tmp_path / f"page_{name}.py").write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name, extra in [
        ("mirrored", {"KERAS_BACKEND": "tensorflow"}),
        ("jax", {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
    ]:
        done = subprocess.run(
            [sys.executable, str(tmp_path / f"page_{name}.py")],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        assert done.stdout.splitlines()[-1] == "RESULT [32, 2]", name
    assert run_workers([], program=tmp_path / "page_multi_worker.py") == [[32, 2], [32, 2]]
