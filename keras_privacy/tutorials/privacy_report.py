"""The privacy report of one DP model on Fashion-MNIST, with every section measured.

    python -m keras_privacy.tutorials.privacy_report [--report-dir DIR] [--epochs 3]

Trains an MLP (784-128-10) with DP-SGD (Poisson sampling, C = 1, sigma planned for
ε = 3 at δ = 1e-5) on Fashion-MNIST training images plus two sets of made-up examples,
then attacks it three ways and writes :func:`keras_privacy.privacy_report` with all of it:

* membership inference: real training images (members) against test images (non-members,
  never trained on), loss-threshold and logistic-regression attacks;
* the secret sharer: canaries are uniform-noise images labelled 0, inserted 1, 4 and 16
  times; each is ranked by its loss among ``--references`` other noise images labelled 0
  that training never saw (R = those images and the canary, exposure up to log2 |R|);
* a one-run audit (Steinke, Nasr & Jagielski 2023) with input-space canaries: noise
  images with random labels, each put into the training data with probability 1/2; the
  audit guesses which were in from their losses and turns the correct guesses into an ε
  lower bound at 95% confidence.

Every made-up example counts in N and is clipped and noised like the others. The model is
also saved as ``model.keras`` in the report folder, so ``keras-privacy report
DIR/model.keras --out OTHER_DIR`` rewrites the settings and ε sections from the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Canaries:
    """Made-up training examples of the secret sharer and of the one-run audit."""

    secret_x: np.ndarray  # one per secret canary
    secret_repetitions: np.ndarray  # times each is inserted
    reference_x: np.ndarray  # same format, never trained on
    audit_x: np.ndarray
    audit_y: np.ndarray
    audit_included: np.ndarray  # bool, drawn with probability 1/2 each
    label: int = 0


def make_canaries(
    shape: tuple[int, ...],
    num_classes: int,
    repetitions: Sequence[int] = (1, 4, 16),
    per_repetition: int = 4,
    references: int = 1023,
    audit_canaries: int = 1000,
    seed: int = 0,
) -> Canaries:
    """Uniform-noise inputs: secret canaries (label 0, ``per_repetition`` for each count in
    ``repetitions``), their references, and audit canaries with random labels."""
    rng = np.random.default_rng(seed)
    count = len(repetitions) * per_repetition
    return Canaries(
        secret_x=rng.uniform(size=(count, *shape)).astype(np.float32),
        secret_repetitions=np.repeat(np.asarray(repetitions), per_repetition),
        reference_x=rng.uniform(size=(references, *shape)).astype(np.float32),
        audit_x=rng.uniform(size=(audit_canaries, *shape)).astype(np.float32),
        audit_y=rng.integers(0, num_classes, size=audit_canaries),
        audit_included=rng.random(audit_canaries) < 0.5,
    )


def training_set(
    x: np.ndarray, y: np.ndarray, canaries: Canaries, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` with each secret canary repeated and the included audit canaries, shuffled."""
    secret_x = np.repeat(canaries.secret_x, canaries.secret_repetitions, axis=0)
    secret_y = np.full(len(secret_x), canaries.label, dtype=y.dtype)
    audit = canaries.audit_included
    x_all = np.concatenate([x, secret_x, canaries.audit_x[audit]])
    y_all = np.concatenate([y, secret_y, canaries.audit_y[audit].astype(y.dtype)])
    order = np.random.default_rng(seed).permutation(len(y_all))
    return x_all[order], y_all[order]


def per_example_loss(model: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy of each example under ``model`` (which outputs logits)."""
    import keras

    logits = model.predict(x, batch_size=1024, verbose=0)
    losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return np.asarray(keras.ops.convert_to_numpy(losses), dtype=np.float64)


def measure_and_report(
    model: Any,
    members: tuple[np.ndarray, np.ndarray],
    non_members: tuple[np.ndarray, np.ndarray],
    canaries: Canaries,
    delta: float,
    directory: str | Path,
    title: str | None = None,
) -> Path:
    """Attack ``model`` (membership, secret sharer, one-run audit) and write its report."""
    import keras_privacy as kp
    from keras_privacy.auditing import one_run_audit
    from keras_privacy.privacy_tests import compute_exposure_interpolation

    label = np.full(len(canaries.secret_x), canaries.label)
    secret_losses = per_example_loss(model, canaries.secret_x, label)
    reference_losses = per_example_loss(
        model, canaries.reference_x, np.full(len(canaries.reference_x), canaries.label)
    )
    # log-perplexity of a one-token "sequence" is its loss: lower = more likely
    exposures = compute_exposure_interpolation(secret_losses, reference_losses)
    by_count: dict[int, list[float]] = {}
    for count, exposure in zip(canaries.secret_repetitions, exposures, strict=True):
        by_count.setdefault(int(count), []).append(float(exposure))
    audit_scores = -per_example_loss(model, canaries.audit_x, canaries.audit_y)
    audit = one_run_audit(
        audit_scores,
        canaries.audit_included,
        delta=delta,
        epsilon_claimed=model.privacy_spent(delta),
        canary_kind="input-space",
    )
    return kp.privacy_report(
        model,
        directory,
        delta=delta,
        membership=(members, non_members),
        audit=audit,
        canary_exposures=by_count,
        canary_space_size=len(canaries.reference_x) + 1,
        title=title,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_privacy.tutorials.privacy_report",
        description="Train a DP MLP on Fashion-MNIST, attack it, write its privacy report.",
    )
    parser.add_argument("--report-dir", default="privacy_report", help="where the report goes")
    parser.add_argument("--train-examples", type=int, default=20000)
    parser.add_argument("--attack-examples", type=int, default=5000, help="members/non-members")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="expected batch size")
    parser.add_argument("--target-epsilon", type=float, default=3.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--audit-canaries", type=int, default=1000)
    parser.add_argument("--references", type=int, default=1023, help="secret-sharer |R| - 1")
    parser.add_argument("--noise-seed", type=int, default=None, help="tests only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keras_privacy.programs import quiet_tensorflow_startup, torch_program_threads

    torch_program_threads()
    quiet_tensorflow_startup()
    import keras

    import keras_privacy as kp
    from keras_privacy.datasets import load_fashion_mnist
    from keras_privacy.tutorials._training import plan_noise, quiet_accounting_logs

    quiet_accounting_logs()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, y_train = x_train[: args.train_examples], y_train[: args.train_examples]
    canaries = make_canaries(
        x_train.shape[1:], 10, references=args.references, audit_canaries=args.audit_canaries
    )
    x_all, y_all = training_set(x_train, y_train, canaries)
    sigma = plan_noise(args.target_epsilon, args.delta, len(x_all), args.batch_size, args.epochs)
    model = keras.Sequential(
        [
            keras.Input(x_train.shape[1:]),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="fashion_mnist_mlp",
    )
    private = kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=sigma, seed=args.noise_seed)
    private.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(f"training on {len(x_all):,} examples (σ = {sigma:.3f}) ...", flush=True)
    private.fit(x_all, y_all, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    accuracy = private.evaluate(x_test, y_test, verbose=0)[1]
    k = args.attack_examples
    directory = Path(args.report_dir)
    directory.mkdir(parents=True, exist_ok=True)
    private.save(directory / "model.keras")
    path = measure_and_report(
        private,
        (x_train[:k], y_train[:k]),
        (x_test[:k], y_test[:k]),
        canaries,
        args.delta,
        directory,
        title=f"Fashion-MNIST MLP (test accuracy {accuracy:.1%})",
    )
    print(f"test accuracy {accuracy:.4f}; ε = {private.privacy_spent(args.delta):.3f}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
