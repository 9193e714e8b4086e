"""Examples/s from 1 to 2 devices and from 1 to 2 processes, DP and non-private ``fit``.

    python benchmarks/scaling.py [--steps 30] [--settings tf-1 tf-mirrored-2 ...]

Settings (each in its own processes, DP and non-private in the same run):

* ``tf-1``: TensorFlow, one CPU device, pinned to one core (``taskset -c 0``);
* ``tf-mirrored-2``: ``tf.distribute.MirroredStrategy`` over two logical CPU devices,
  pinned to two cores;
* ``tf-multi-worker-2``: ``tf.distribute.MultiWorkerMirroredStrategy``, two worker
  processes on localhost (``TF_CONFIG``), each pinned to its own core;
* ``jax-1``: JAX, one CPU device, one core;
* ``jax-data-parallel-2``: ``keras.distribution.DataParallel`` over two host devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=2``), two cores.

Every op runs single-threaded (TensorFlow: one intra-op thread, one inter-op thread per
device; XLA: no multi-threaded Eigen), so a device is a core. The model is an MLP
784-512-512-10 (SGD, cross-entropy) on random data, N = 60,000, global batch 256 (DP:
Poisson, expected 256, noise multiplier 1.1, clip 1; the default engine). Each ``fit`` is
timed over ``--steps`` steps after two warm-up ``fit`` calls of 2 steps (tracing, compiling).
Non-private ``fit`` under ``MultiWorkerMirroredStrategy`` fails inside Keras 3.15 itself,
so that row has DP only. Figures are examples per **wall-clock** second (the devices are
cores: CPU time would count both), with the 1-minute load average before and after each
setting: the machine may be shared, and a busy machine makes the 2-core figures worse
first. This is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

SETTINGS = ("tf-1", "tf-mirrored-2", "tf-multi-worker-2", "jax-1", "jax-data-parallel-2")
N, FEATURES, CLASSES, BATCH = 60_000, 784, 10, 256


def measure(setting: str, steps: int) -> dict:
    """In the worker process: the examples/s of non-private and DP fit."""
    import numpy as np

    if setting.startswith("tf"):
        import tensorflow as tf

        if setting == "tf-mirrored-2":
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * 2
            )
        strategy = {
            "tf-1": tf.distribute.get_strategy,
            "tf-mirrored-2": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
            "tf-multi-worker-2": tf.distribute.MultiWorkerMirroredStrategy,
        }[setting]()
        scope = strategy.scope
    import keras

    import keras_privacy as kp

    if setting == "jax-data-parallel-2":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    if setting.startswith("jax"):
        import contextlib

        scope = contextlib.nullcontext
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=N)
    result = {}
    for mode in ("plain", "dp"):
        if mode == "plain" and setting == "tf-multi-worker-2":
            # Keras 3.15's own multi-worker fit fails before its first step (its symbolic
            # build reduces the per-worker batches with strategy.reduce, which cannot
            # convert them; its scalar logs fail reduce(axis=0) too): the DP model
            # works around both (backend/tensorflow/trainer.py), a plain one cannot.
            result[mode] = None
            continue
        with scope():
            layers = [
                keras.layers.Input((FEATURES,)),
                keras.layers.Dense(512, activation="relu"),
                keras.layers.Dense(512, activation="relu"),
                keras.layers.Dense(CLASSES),
            ]
            if mode == "plain":
                model = keras.Sequential(layers)
            else:
                model = kp.DPSequential(layers, l2_norm_clip=1.0, noise_multiplier=1.1)
            model.compile(
                optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        # Two warm-up fits: under DataParallel JAX compiles the step again in the second
        # (the state's shardings differ after the first), never after.
        for _ in range(2):
            model.fit(x, y, batch_size=BATCH, epochs=1, steps_per_epoch=2, verbose=0)
        start = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, steps_per_epoch=steps, verbose=0)
        result[mode] = steps * BATCH / (time.perf_counter() - start)
    return result


def single_thread_env(setting: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTRAOP_THREADS": "1"}
    env["KERAS_BACKEND"] = "jax" if setting.startswith("jax") else "tensorflow"
    # One inter-op thread per device: MirroredStrategy runs its replicas concurrently.
    env["TF_NUM_INTEROP_THREADS"] = "2" if setting == "tf-mirrored-2" else "1"
    flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    if setting == "jax-data-parallel-2":
        flags += " --xla_force_host_platform_device_count=2"
    env["XLA_FLAGS"] = flags
    return env


def run(setting: str, steps: int) -> dict:
    """The setting in its own process(es), pinned to its cores."""
    me = [sys.executable, os.path.abspath(__file__), "--worker", setting, "--steps", str(steps)]
    env = single_thread_env(setting)
    if setting != "tf-multi-worker-2":
        cores = "0" if setting.endswith("-1") else "0,1"
        done = subprocess.run(
            ["taskset", "-c", cores, *me], env=env, capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout.strip().splitlines()[-1])
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("localhost", 0))
    workers = [f"localhost:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                ["taskset", "-c", str(index), *me],
                env={**env, "TF_CONFIG": json.dumps(config)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate() for p in processes]
    for p, (_, err) in zip(processes, outputs, strict=True):
        if p.returncode:
            raise RuntimeError(err[-3000:])
    return json.loads(outputs[0][0].strip().splitlines()[-1])  # worker 0's clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.steps)))
        return
    print(f"{'setting':<22}{'plain ex/s':>12}{'DP ex/s':>10}{'load before/after':>20}")
    for setting in args.settings:
        before = os.getloadavg()[0]
        figures = run(setting, args.steps)
        after = os.getloadavg()[0]
        plain = "n/a" if figures["plain"] is None else f"{figures['plain']:.0f}"
        print(
            f"{setting:<22}{plain:>12}{figures['dp']:>10.0f}{before:>12.2f} / {after:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
