"""DP-SGD for topic classification of real text: WordNet noun definitions by topic.

    python -m keras_privacy.tutorials.text [--report-dir DIR] [--full]

Data: Debian's ``wordnet-base`` (``apt-get install wordnet-base``; read offline from
``/usr/share/wordnet/data.noun``). Each noun synset's definition is labelled with its
lexicographer file; the 10 largest (artifact, person, plant, animal, act, communication,
state, location, attribute, substance) give 63,245 definitions, split 80/20. Words are
hashed into 4,096 ids (a data-independent vocabulary), 24 words per definition.

Model: Embedding(4096, 32) -> one Transformer encoder block (MultiHeadAttention with 2
heads, residual + LayerNormalization, Dense 64 -> 32 feed-forward, residual +
LayerNormalization) -> mean over words -> Dense(10). Every trainable layer has a rule in
the fast clipping engine, so DP-SGD costs about one extra backward pass.

Canaries: "the secret code is a b" rows (3 codes each inserted 1, 4 and 16 times,
labelled noun.substance) are added to the training set; their exposure (secret sharer)
is measured for every model, and so is the membership-inference AUC (training rows vs
held-out rows).
``--full``: all four target epsilons and 10 epochs (quick: epsilon 1 and 8, 4 epochs).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

VOCABULARY = 4096
LENGTH = 24
REPETITIONS = (1, 4, 16)
CANARY_LABEL = 9  # noun.substance, the smallest of the 10 classes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_privacy.tutorials.text",
        description="DP-SGD topic classification of WordNet definitions, with canaries.",
    )
    parser.add_argument("--report-dir", default="text_report", help="where the report goes")
    parser.add_argument("--full", action="store_true", help="ε 1, 2, 4, 8 and 10 epochs")
    parser.add_argument("--targets", type=float, nargs="+", default=None, help="target epsilons")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (4; 10 with --full)")
    parser.add_argument("--batch-size", type=int, default=1000, help="DP expected batch")
    parser.add_argument("--train-examples", type=int, default=None, help="use fewer rows")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--noise-seed", type=int, default=None, help="tests only")
    return parser


def transformer_classifier(classes: int, width: int = 32, heads: int = 2):
    """Embedding -> one Transformer encoder block -> mean pooling -> Dense(classes) logits."""
    import keras

    tokens = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, width)(tokens)
    attended = keras.layers.MultiHeadAttention(heads, width // heads)(x, x)
    x = keras.layers.LayerNormalization()(keras.layers.Add()([x, attended]))
    hidden = keras.layers.Dense(2 * width, activation="relu")(x)
    feed_forward = keras.layers.Dense(width)(hidden)
    x = keras.layers.LayerNormalization()(keras.layers.Add()([x, feed_forward]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(classes)(x))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keras_privacy.programs import quiet_tensorflow_startup, torch_program_threads

    torch_program_threads()  # before PyTorch loads: see its docstring
    quiet_tensorflow_startup()
    import keras

    from keras_privacy.tutorials import _canaries
    from keras_privacy.tutorials._report import write_report
    from keras_privacy.tutorials._training import Recipe, train_at_target
    from keras_privacy.tutorials._wordnet import load_wordnet_topics

    try:
        (x_train, y_train), test, names = load_wordnet_topics(10, VOCABULARY, LENGTH)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.train_examples:
        x_train, y_train = x_train[: args.train_examples], y_train[: args.train_examples]
    canaries = _canaries.make_canaries(REPETITIONS, 3)
    train = _canaries.insert_canaries(x_train, y_train, canaries, CANARY_LABEL, VOCABULARY)
    targets = args.targets or ([1.0, 2.0, 4.0, 8.0] if args.full else [1.0, 8.0])
    epochs = args.epochs or (10 if args.full else 4)
    print(f"keras-privacy: DP-SGD topic classification of WordNet definitions, {len(names)} topics")
    print(f"  N={len(train[0])} training rows (with {sum(r for r, _ in canaries)} canary rows)")
    print(f"  {len(test[0])} held-out rows; delta={args.delta:g}; targets {targets}")

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    per_example = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    def evaluate(model) -> dict[str, float]:
        logits = np.asarray(model.predict(test[0], batch_size=1024, verbose=0))
        metrics = {"test accuracy": float(np.mean(logits.argmax(axis=1) == test[1]))}

        def losses_of(x, y):
            return np.asarray(per_example(y, model.predict(x, batch_size=1024, verbose=0)))

        found = _canaries.exposures(losses_of, canaries, CANARY_LABEL, VOCABULARY, LENGTH)
        metrics.update({f"exposure ×{count}": value for count, value in found.items()})
        return metrics

    private_recipe = Recipe(args.batch_size, epochs, 0.02, 1.0, optimizer="adam")
    plain_recipe = dataclasses.replace(private_recipe, batch_size=250, learning_rate=0.003)
    start = time.perf_counter()
    rows = []
    for target in [None, *targets]:
        rows.append(
            train_at_target(
                "Transformer",
                lambda: transformer_classifier(len(names)),
                train,
                test,
                plain_recipe if target is None else private_recipe,
                target,
                args.delta,
                loss,
                evaluate,
                "accuracy",
                noise_seed=args.noise_seed,
            )
        )
    elapsed = time.perf_counter() - start
    from keras_privacy.tutorials._text_notes import sections

    path = write_report(
        args.report_dir,
        "DP-SGD topic classification: WordNet definitions",
        rows,
        "test accuracy",
        sections=sections(rows, names, len(train[0]), len(test[0]), args, elapsed),
    )
    print(f"  report: {path} ({elapsed:.0f} s of training and attacks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
