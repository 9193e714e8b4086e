"""DP-SGD for a character-level language model on real text: Debian's fortunes, with canaries.

    python -m keras_privacy.tutorials.language_model [--report-dir DIR] [--full]

The secret-sharer experiment (Carlini et al. 2019; TF Privacy's Penn-Treebank language
model) on data installed offline: Debian's ``fortunes`` (``apt-get install fortunes``; read
from ``/usr/share/games/fortunes``; seven files, about 5,000 fortunes and 800,000
characters after cleaning, see :mod:`keras_privacy.tutorials._fortunes`). A tenth of the
fortunes is held out; the rest are wrapped into training sequences of at most 30
characters. Canaries "my number is ddddd" (|R| = 10^5 secrets) are inserted 1, 4, 16 and
64 times, three of each, plus three controls never inserted.

Model: Embedding(51, 32) -> GRU(128, all time steps) -> Dense(51): next-character logits
at every position. The GRU is unrolled (31 steps) so that TensorFlow can vectorize its
per-example gradients; it has no rule in the fast clipping engine, so ``make_private``
trains it with the vectorized engine (exact per-example gradients, about 4x the cost of a
non-private step here; a causal Conv1D would be faster, but the recurrent model is the
secret sharer's and memorises the way the published experiments did).

What DP-SGD protects. The training example is one **sequence** x (at most 30 characters
of one fortune), and its loss is the mean cross-entropy of its next-character predictions,

    l(w; x) = -(1/T_x) sum_t log p_w(x_{t+1} | x_{<=t})   (over its characters and EOS).

Each update samples every sequence independently with probability q = B / N (Poisson),
clips each sampled sequence's gradient g_x = grad l(w; x) to norm C,
g_x * min(1, C / ||g_x||), sums them, adds Gaussian noise N(0, sigma^2 C^2 I) and divides
by B. Neighbouring datasets differ by adding or removing one sequence, and (epsilon, delta)
bounds what the trained model reveals about any one sequence; sigma is planned for the
target epsilon and the exact number of updates (PLD accountant). A canary repeated k times
is k sequences: it is protected only by group privacy of size k, (k * epsilon,
k * e^((k - 1) epsilon) * delta)-DP, so DP-SGD is expected to hide a canary seen once and
may not hide one seen 64 times. The same holds for a fortune longer than 30 characters (several
sequences) and for a sentence that occurs in several fortunes.

Measured per model: held-out per-character perplexity and next-character accuracy
(padding excluded), canary exposure by repetition count (interpolation among all 10^5
candidates, and extrapolation), and membership inference: the project's loss-threshold
attack on each sequence's loss, the training sequences cut from fortunes (not the canary
copies) against the held-out ones.
Quick default: epsilon 2 and 8, 4 DP epochs (5 without DP); ``--full``: epsilon 1, 2, 4
and 8, 10 epochs each. DP-SGD: Adam, learning rate 0.01, expected batch 512, C = 1; the
vectorized engine holds the batch's per-example gradients and the unrolled GRU's
intermediates at once (7.1-7.4 GB peak memory for the whole program, measured at batch
512; the quick default took 6.5 min and the ``--full`` run 23 min on 2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings

import numpy as np

WIDTH = 30
REPETITIONS = (0, 1, 4, 16, 64)
UTILITY = ("perplexity", "accuracy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_privacy.tutorials.language_model",
        description="DP-SGD character language model on Debian's fortunes, with canaries.",
    )
    parser.add_argument("--report-dir", default="language_model_report", help="report folder")
    parser.add_argument("--full", action="store_true", help="ε 1, 2, 4, 8 and more epochs")
    parser.add_argument("--targets", type=float, nargs="+", default=None, help="target epsilons")
    parser.add_argument("--epochs", type=int, default=None, help="DP epochs (quick 4, full 10)")
    parser.add_argument("--plain-epochs", type=int, default=None, help="non-private (5; full 10)")
    parser.add_argument("--batch-size", type=int, default=512, help="DP expected batch")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="DP Adam rate")
    parser.add_argument("--train-examples", type=int, default=None, help="use fewer sequences")
    parser.add_argument("--digits", type=int, default=5, help="secret digits: |R| = 10^digits")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--noise-seed", type=int, default=None, help="tests only")
    return parser


def gru_language_model(length: int, width: int = 32, units: int = 128):
    """Embedding -> GRU (unrolled, every step) -> Dense: next-character logits."""
    import keras

    from keras_privacy.tutorials._fortunes import VOCABULARY

    return keras.Sequential(
        [
            keras.Input((length,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, width),
            keras.layers.GRU(units, return_sequences=True, unroll=True),
            keras.layers.Dense(VOCABULARY),
        ]
    )


def sequence_loss(y_true, y_pred):
    """Per-sequence mean cross-entropy over non-padding targets: one value per example."""
    import keras
    from keras import ops

    y_true = ops.cast(y_true, "int32")
    mask = ops.cast(ops.not_equal(y_true, 0), "float32")
    losses = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    return ops.sum(losses * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


def character_accuracy(y_true, y_pred):
    """Per-sequence next-character accuracy over non-padding targets (progress display)."""
    from keras import ops

    y_true = ops.cast(y_true, "int32")
    mask = ops.cast(ops.not_equal(y_true, 0), "float32")
    hits = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32")
    return ops.sum(hits * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


def _logits(model, x: np.ndarray, slice_rows: int = 4096):
    """The model's logits in slices (the float64 post-processing stays small)."""
    for i in range(0, len(x), slice_rows):
        yield i, np.asarray(model.predict(x[i : i + slice_rows], batch_size=1024, verbose=0))


def sequence_losses_of(model, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from keras_privacy.tutorials._fortunes import sequence_losses

    parts = [sequence_losses(out, y[i : i + len(out)]) for i, out in _logits(model, x)]
    return np.concatenate(parts)


def loss_threshold_auc(model, members, non_members) -> float:
    """AUC of the project's threshold attack on each sequence's loss (members vs
    non-members: (inputs, targets) pairs)."""
    from keras_privacy import privacy_tests as pt

    attack_input = pt.AttackInputData(
        loss_train=sequence_losses_of(model, *members),
        loss_test=sequence_losses_of(model, *non_members),
    )
    results = pt.run_attacks(attack_input, attack_types=[pt.AttackType.THRESHOLD_ATTACK])
    return float(results.get_result_with_max_auc().get_auc())


def language_model_metrics(model, scorer, corpus, test) -> dict[str, float]:
    """Held-out perplexity and accuracy of ``model`` on ``test`` (inputs, targets), and the
    canaries' mean exposure per repetition count (interpolated, and extrapolated) scored
    by ``scorer`` (the same weights, taking the canaries' length)."""
    from keras_privacy import privacy_tests as pt
    from keras_privacy.tutorials import _fortunes

    logits = np.concatenate([out for _, out in _logits(model, test[0])])
    metrics = _fortunes.heldout_metrics(logits, test[1])

    def log_perplexities(ids: np.ndarray, score_from: int) -> np.ndarray:
        # in slices: the adapter holds a slice's log-probabilities in float64
        parts = [
            pt.sequence_log_perplexities(
                scorer, ids[i : i + 20_000], score_from, batch_size=2048, output="logits"
            )
            for i in range(0, len(ids), 20_000)
        ]
        return np.concatenate(parts)

    found = _fortunes.canary_exposures(log_perplexities, corpus)
    for name, suffix in (("interpolation", ""), ("extrapolation", " (extrapolated)")):
        metrics.update({f"exposure ×{r}{suffix}": v for r, v in found[name].items()})
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keras_privacy.programs import quiet_tensorflow_startup, torch_program_threads

    torch_program_threads()  # before PyTorch loads: see its docstring
    quiet_tensorflow_startup()
    import logging

    import keras

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # predict's retracing notices

    from keras_privacy.tutorials import _fortunes
    from keras_privacy.tutorials._report import write_report
    from keras_privacy.tutorials._training import Recipe, train_at_target

    try:
        corpus = _fortunes.load_corpus(
            WIDTH, REPETITIONS, digits=args.digits, max_train=args.train_examples
        )
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train, test = corpus.train, corpus.test
    targets = args.targets or ([1.0, 2.0, 4.0, 8.0] if args.full else [2.0, 8.0])
    epochs = args.epochs or (10 if args.full else 4)
    plain_epochs = args.plain_epochs or (10 if args.full else 5)
    length = train[0].shape[1]
    print("keras-privacy: DP-SGD character language model on Debian's fortunes")
    print(
        f"  N={len(train[0])} training sequences of ≤{WIDTH} characters (from "
        f"{len(corpus.train_fortunes)} fortunes, with {sum(corpus.repetitions)} canary copies)"
    )
    print(
        f"  {len(test[0])} held-out sequences ({len(corpus.test_fortunes)} fortunes); "
        f"delta={args.delta:g}; targets {targets}"
    )

    # members for the attack: the training sequences that are pieces of fortunes (the
    # canary copies are not drawn from the held-out sequences' distribution)
    keep = ~corpus.train_is_canary
    fortune_pieces = (train[0][keep], train[1][keep])

    def evaluate(model) -> dict[str, float]:
        # the same weights on the canaries' length (BOS + prefix + digits, minus one)
        scorer = gru_language_model(len(corpus.canary_format.candidate(0)))
        scorer.set_weights(getattr(model, "wrapped_model", model).get_weights())
        return language_model_metrics(model, scorer, corpus, test)

    private_recipe = Recipe(args.batch_size, epochs, args.learning_rate, 1.0, optimizer="adam")
    plain_recipe = dataclasses.replace(
        private_recipe, batch_size=128, epochs=plain_epochs, learning_rate=0.003
    )
    start = time.perf_counter()
    rows = []
    with warnings.catch_warnings():
        # make_private says once per model that the GRU trains with the vectorized engine
        warnings.filterwarnings("ignore", message=".*vectorized clipping engine")
        for target in [None, *targets]:
            rows.append(
                train_at_target(
                    "GRU",
                    lambda: gru_language_model(length),
                    train,
                    test,
                    plain_recipe if target is None else private_recipe,
                    target,
                    args.delta,
                    sequence_loss,
                    evaluate,
                    keras.metrics.MeanMetricWrapper(character_accuracy, name="accuracy"),
                    noise_seed=args.noise_seed,
                    attack=lambda model, _, held_out: loss_threshold_auc(
                        model, fortune_pieces, held_out
                    ),
                )
            )
    elapsed = time.perf_counter() - start
    from keras_privacy.tutorials._language_model_notes import sections

    exposure_columns = [f"exposure ×{r}" for r in REPETITIONS]
    path = write_report(
        args.report_dir,
        "DP-SGD character language model: Debian's fortunes",
        rows,
        "perplexity",
        sections=sections(rows, corpus, args, elapsed),
        columns=[*UTILITY, *exposure_columns],
    )
    print(f"  report: {path} ({elapsed:.0f} s of training and attacks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
