"""Examples/s and peak memory: non-private ``fit`` vs DP ``fit``, measured in one run.

    python benchmarks/training_speed.py [--models cnn mlp] [--steps 40]

Models: the TF Privacy tutorial CNN and an MLP 784-512-512-10, batch 250, Fashion-MNIST
(random data if the Debian package is missing). Each (model, mode) runs in its own
process so that its peak resident memory is its own. Speed is timed over a second epoch
(all 60,000 examples for non-private ``fit``; ``--steps`` Poisson updates for DP ``fit``),
after a first epoch that traces and warms up; the steps actually run are counted. Prints a table and
the DP/non-private ratios. This is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BATCH = 250


def _measure(model_name: str, mode: str, steps: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import resource

    import keras
    import numpy as np

    import keras_privacy as kp
    from keras_privacy.models import mlp, tutorial_cnn

    try:
        from keras_privacy.datasets import load_fashion_mnist

        (x, y), _ = load_fashion_mnist()
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        x, y = rng.random((60000, 28, 28, 1), dtype="float32"), rng.integers(0, 10, 60000)
    if model_name == "mlp":
        x = x.reshape(len(x), -1)
    model = tutorial_cnn() if model_name == "cnn" else mlp()
    if mode == "dp":
        model = kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.1)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    epochs = []  # (seconds, steps) per epoch; the steps actually run are counted

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.steps = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1

        def on_epoch_end(self, epoch, logs=None):
            epochs.append((time.perf_counter() - self.start, self.steps))

    if mode == "plain":
        # Full passes over the arrays (Keras's array iterator ends after one pass).
        x, y = x[: steps * BATCH], y[: steps * BATCH]
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[Timer()])
    else:
        # The Poisson stream is endless: an "epoch" is `steps` updates.
        model.fit(
            x, y, batch_size=BATCH, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=[Timer()]
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds, ran = epochs[1]
    return {
        "model": model_name,
        "mode": mode,
        "examples_per_s": ran * BATCH / seconds,
        "step_ms": 1000 * seconds / ran,
        "peak_rss_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    parser.add_argument("--steps", type=int, default=40, help="timed updates per run")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_measure(*args.worker, args.steps)))
        return
    rows = []
    for model_name in args.models:
        for mode in ("plain", "dp"):
            steps = 240 if mode == "plain" else args.steps  # plain: all 60,000 examples
            out = subprocess.run(
                [sys.executable, __file__, "--worker", model_name, mode, "--steps", str(steps)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'model':<6}{'mode':<7}{'examples/s':>12}{'ms/step':>10}{'peak RSS MB':>13}")
    for r in rows:
        print(
            f"{r['model']:<6}{r['mode']:<7}{r['examples_per_s']:>12,.0f}"
            f"{r['step_ms']:>10.1f}{r['peak_rss_mb']:>13,.0f}"
        )
    for model_name in args.models:
        plain, dp = (
            next(r for r in rows if r["model"] == model_name and r["mode"] == m)
            for m in ("plain", "dp")
        )
        print(
            f"{model_name}: DP / non-private speed = "
            f"{dp['examples_per_s'] / plain['examples_per_s']:.2f}x, "
            f"memory = {dp['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x"
        )


if __name__ == "__main__":
    main()
