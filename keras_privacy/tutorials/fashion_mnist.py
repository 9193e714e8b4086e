"""DP-SGD on Fashion-MNIST: the project's main job, and the privacy-utility table.

    python -m keras_privacy.tutorials.fashion_mnist [--epochs 2] [--noise-multiplier 1.1]
    python -m keras_privacy.tutorials.fashion_mnist --table [--full] [--report-dir DIR]

Without ``--table`` (the main job): trains the TF Privacy tutorial CNN with per-example
clipping (C = 1.0), Gaussian noise (sigma = 1.1) and Poisson sampling (expected batch 250
of 60,000), then prints the DP settings, the test accuracy, the training speed and the
privacy spent.

With ``--table``: the privacy-utility table at epsilon 1, 2, 3 and 8 (delta = 1e-5) with
the recipe of :mod:`keras_privacy.tutorials._fashion_table` (scattering-transform
features, private partial whitening, a DP-SGD linear model, large batches, many epochs),
beside the same model trained without DP; writes ``report.md``, ``results.json`` and PNG plots (test
accuracy and membership-inference AUC vs epsilon) to ``--report-dir``. The quick default
takes a few minutes; ``--full`` is the published-quality run (80 epochs at epsilon 3).
"""

from __future__ import annotations

import argparse
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_privacy.tutorials.fashion_mnist",
        description="Train the TF Privacy tutorial CNN on Fashion-MNIST with DP-SGD.",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=250, help="expected batch size")
    parser.add_argument("--l2-norm-clip", type=float, default=1.0)
    parser.add_argument("--noise-multiplier", type=float, default=1.1)
    parser.add_argument("--learning-rate", type=float, default=0.25)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument(
        "--train-examples", type=int, default=None, help="use only the first N training images"
    )
    parser.add_argument("--seed", type=int, default=None, help="for reproducible runs only")
    table = parser.add_argument_group("the privacy-utility table (--table)")
    table.add_argument("--table", action="store_true", help="ScatterNet + DP linear, ε table")
    table.add_argument("--report-dir", default="fashion_mnist_report", help="report folder")
    table.add_argument("--full", action="store_true", help="published-quality run (80 epochs)")
    table.add_argument(
        "--targets", type=float, nargs="+", default=[1.0, 2.0, 3.0, 8.0], help="target ε"
    )
    table.add_argument("--seeds", type=int, default=None, help="seeds per row (default 1)")
    table.add_argument("--table-epochs", type=int, default=None, help="override the epochs")
    table.add_argument("--table-batch-size", type=int, default=None, help="override the batch")
    table.add_argument(
        "--test-examples", type=int, default=None, help="use only the first N test images"
    )
    table.add_argument(
        "--cache-dir", default=None, help="scattering-feature cache (~/.cache/keras-privacy)"
    )
    table.add_argument("--no-cache", action="store_true", help="recompute the features")
    table.add_argument("--noise-seed", type=int, default=None, help="tests only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keras_privacy.programs import quiet_tensorflow_startup, torch_program_threads

    torch_program_threads()  # before PyTorch loads: see its docstring
    quiet_tensorflow_startup()  # TF_CPP_MIN_LOG_LEVEL=3 and no start-up notices
    if args.table:
        from keras_privacy.tutorials import _fashion_table

        return _fashion_table.run(args)
    import keras

    import keras_privacy as kp
    from keras_privacy.models import tutorial_cnn
    from keras_privacy.tutorials._fashion_data import load_data

    data = load_data(args)
    if data is None:
        return 2
    (x_train, y_train), (x_test, y_test) = data
    n = len(x_train)

    model = kp.make_private(
        tutorial_cnn(),
        l2_norm_clip=args.l2_norm_clip,
        noise_multiplier=args.noise_multiplier,
        seed=args.seed,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print("keras-privacy: DP-SGD on Fashion-MNIST (TF Privacy tutorial CNN)")
    q = args.batch_size / n
    print(f"  examples N={n}, expected batch B={args.batch_size} (Poisson, q={q:.5f})")
    print(f"  epochs={args.epochs} ({round(n / args.batch_size)} updates each)")
    print(
        f"  l2_norm_clip C={args.l2_norm_clip}, noise_multiplier sigma={args.noise_multiplier} "
        f"(noise std sigma*C={args.noise_multiplier * args.l2_norm_clip:g} per update)"
    )
    start = time.perf_counter()
    # A live progress bar with epsilon (PLD, the default accountant) when run in a
    # terminal; one line per epoch otherwise.
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=1 if sys.stdout.isatty() else 2,
        callbacks=[kp.PrivacyBudget(delta=args.delta)],
    )
    elapsed = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    record = model.privacy_record
    examples = record.total_updates * args.batch_size
    print(f"  test accuracy: {accuracy:.4f} (loss {loss:.4f}) on {len(x_test)} test images")
    print(
        f"  speed: {examples / elapsed:,.0f} examples/s "
        f"({record.total_updates} updates in {elapsed:.1f} s, including the first trace)"
    )
    print("  privacy: " + _privacy_line(record, args.delta))
    return 0


def _privacy_line(record, delta: float) -> str:
    from keras_privacy.accounting import epsilon_of_record

    epsilon = epsilon_of_record(record, delta)
    return f"epsilon = {epsilon:.3f} at delta = {delta:g} (PLD accountant, Poisson sampling)"


if __name__ == "__main__":
    sys.exit(main())
