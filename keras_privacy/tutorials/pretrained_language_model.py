"""Public pretraining, then DP fine-tuning: a keras-hub GPT-2 on fortunes, with canaries.

    python -m keras_privacy.tutorials.pretrained_language_model [--report-dir DIR] [--quick]

Why this matters. DP-SGD's noise costs the most when the model must learn everything from
the private data. Published results (Li et al. 2022, "Large language models can be strong
differentially private learners"; Yu et al. 2022, "Differentially private fine-tuning of
language models") find that a model pretrained on *public* text and then fine-tuned with
DP-SGD on the private text comes close to non-private training at moderate epsilon, and
that parameter-efficient fine-tuning (LoRA) does as well with far fewer trained weights.
This tutorial measures that claim offline, at a small scale:

1. Pretrain a small keras-hub GPT-2 (``GPT2Backbone``: 2 layers x 128, 4 heads, tied
   input/output embedding) **non-privately on public text**: the GNU Collaborative
   International Dictionary of English (Debian ``dict-gcide``), with every dictionary
   paragraph that shares 8 consecutive words with any fortune removed
   (:mod:`keras_privacy.tutorials._public_corpus`).
2. On the **private** data of the character language-model tutorial (Debian's fortunes,
   with its "my number is ddddd" canaries inserted 1, 4, 16 and 64 times;
   :mod:`keras_privacy.tutorials._fortunes`), train three ways, each non-privately and
   with DP-SGD at every target epsilon: from scratch (random weights), full fine-tuning
   of the pretrained model, and LoRA fine-tuning (rank 8 on the attention's query and
   value projections; everything else frozen, keras-hub's ``enable_lora``).

The vocabulary is the fortunes tutorial's fixed character set (48 characters plus
padding, begin and end), so it depends on neither corpus. One training example is one
sequence of at most 30 characters, and DP-SGD clips each sequence's gradient (the
trainable weights' only: LoRA clips and noises the LoRA factors), adds N(0, sigma^2 C^2 I)
once per update and samples sequences with probability q = B / N (Poisson); sigma is
planned for each target epsilon at delta = 1e-5. Pretraining uses no private data: it is
post-processing-free public knowledge and costs no privacy.

Hyperparameters: each DP way's learning rate is chosen from a small grid at the middle
target epsilon by per-character perplexity on a **validation** split (a tenth of the
training fortunes, held out whole); the table reports perplexity on the **test** split
(the held-out tenth of all fortunes) that no choice saw. (Tuning on private data has a
privacy cost of its own that this tutorial does not account for; see Papernot & Steinke
2022.) Canary exposure and the loss-threshold membership-inference attack are measured as
in :mod:`keras_privacy.tutorials.language_model`, whose pieces this module reuses.

Each run trains in its own process (spawned), so that its peak resident memory is its own
(``--same-process`` trains in this one and reports none). keras-hub's layers have fast-engine
rules (the tied head with its cross term, LoRA), so every DP run takes the fast engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

WIDTH = 30
REPETITIONS = (0, 1, 4, 16, 64)
WAYS = ("from scratch", "pretrained, full fine-tuning", "pretrained, LoRA r=8")
# learning-rate grids (Adam) for the DP runs; the first is the non-private runs' rate too
GRIDS = {
    "from scratch": (0.003, 0.01),
    "pretrained, full fine-tuning": (0.001, 0.003),
    "pretrained, LoRA r=8": (0.01, 0.003),
}
LORA_RANK = 8
MEMORY = "peak memory (GB)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_privacy.tutorials.pretrained_language_model",
        description="Public pretraining (dict-gcide), then DP fine-tuning on fortunes.",
    )
    parser.add_argument("--report-dir", default="pretrained_lm_report", help="report folder")
    parser.add_argument("--quick", action="store_true", help="a tiny run (about 2 min of CPU)")
    parser.add_argument("--targets", type=float, nargs="+", default=None, help="ε (1 4 8)")
    parser.add_argument("--epochs", type=int, default=None, help="private epochs (3)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="public epochs (3)")
    parser.add_argument("--public-chars", type=int, default=None, help="public text (4e6)")
    parser.add_argument("--train-examples", type=int, default=None, help="fewer sequences")
    parser.add_argument("--batch-size", type=int, default=512, help="DP expected batch")
    parser.add_argument("--grid", type=int, default=None, help="learning rates tried (2)")
    parser.add_argument("--digits", type=int, default=None, help="secret digits (5)")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--same-process", action="store_true", help="no per-run processes")
    parser.add_argument("--noise-seed", type=int, default=None, help="tests only")
    return parser


def gpt2_language_model(max_length: int = 64, layers: int = 2, width: int = 128, heads: int = 4):
    """A keras-hub ``GPT2Backbone`` on the fortunes' characters with a tied output layer
    (the token embedding used in reverse): token ids of any length up to ``max_length``
    in, next-token logits out. Returns ``(model, backbone)``."""
    import keras
    import keras_hub

    from keras_privacy.tutorials._fortunes import VOCABULARY

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=width,
        intermediate_dim=4 * width,
        dropout=0.0,
        max_sequence_length=max_length,
    )
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    # Causal attention: a padded tail never reaches the positions before it, and padded
    # targets are masked out of the loss, so every position may attend.
    hidden = backbone({"token_ids": token_ids, "padding_mask": keras.ops.ones_like(token_ids)})
    logits = backbone.token_embedding(hidden, reverse=True)
    return keras.Model(token_ids, logits, name="gpt2_characters"), backbone


def build_for(way: str, pretrained: list[np.ndarray] | None):
    """The model a way trains: fresh weights, or the pretrained ones (LoRA enabled)."""
    model, backbone = gpt2_language_model()
    if way != WAYS[0]:
        model.set_weights(pretrained)
        if "LoRA" in way:
            backbone.enable_lora(LORA_RANK)
    return model


def split_validation(corpus, fraction: float = 0.1, seed: int = 1):
    """``(corpus, validation)``: a tenth of the training fortunes held out whole, their
    sequences removed from ``corpus.train`` (canary copies stay in training)."""
    from keras_privacy.tutorials import _fortunes

    rng = np.random.default_rng(seed)
    count = max(1, round(fraction * len(corpus.train_fortunes)))
    held = [
        corpus.train_fortunes[i]
        for i in sorted(rng.permutation(len(corpus.train_fortunes))[:count])
    ]
    pieces = set(_fortunes.wrap(held, WIDTH))
    keep = np.asarray(
        [
            t not in pieces or c
            for t, c in zip(corpus.train_texts, corpus.train_is_canary, strict=True)
        ]
    )
    ids = _fortunes.encode(sorted(pieces), WIDTH + 2)
    kept_corpus = dataclasses.replace(
        corpus,
        train=(corpus.train[0][keep], corpus.train[1][keep]),
        train_texts=[t for t, k in zip(corpus.train_texts, keep, strict=True) if k],
        train_fortunes=[f for f in corpus.train_fortunes if f not in set(held)],
        train_is_canary=corpus.train_is_canary[keep],
    )
    return kept_corpus, (ids[:, :-1], ids[:, 1:])


@dataclasses.dataclass(frozen=True)
class Task:
    """One training run, as sent to its process."""

    way: str
    target_epsilon: float | None
    recipe: Any
    weights_path: str | None
    delta: float
    noise_seed: int | None


def _peak_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _prepare_process() -> None:
    from keras_privacy.programs import quiet_tensorflow_startup, torch_program_threads

    torch_program_threads()
    quiet_tensorflow_startup()
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def run_task(task: Task, corpus, validation, separate: bool):
    """Train one way at one target (``train_at_target``) and measure it: test perplexity,
    accuracy, exposures, validation perplexity, membership AUC, and (``separate``) this
    process's peak memory."""

    import keras

    from keras_privacy.tutorials import _fortunes
    from keras_privacy.tutorials._training import train_at_target
    from keras_privacy.tutorials.language_model import (
        _logits,
        character_accuracy,
        language_model_metrics,
        loss_threshold_auc,
        sequence_loss,
    )

    pretrained = None
    if task.weights_path is not None:
        with np.load(task.weights_path) as saved:
            pretrained = [saved[f"w{i}"] for i in range(len(saved.files))]
    keep = ~corpus.train_is_canary
    fortune_pieces = (corpus.train[0][keep], corpus.train[1][keep])

    def evaluate(model) -> dict[str, float]:
        scorer = getattr(model, "wrapped_model", model)  # takes any length
        metrics = language_model_metrics(model, scorer, corpus, corpus.test)
        logits = np.concatenate([out for _, out in _logits(model, validation[0])])
        metrics["validation perplexity"] = _fortunes.heldout_metrics(logits, validation[1])[
            "perplexity"
        ]
        return metrics

    row = train_at_target(
        task.way,
        lambda: build_for(task.way, pretrained),
        corpus.train,
        corpus.test,
        task.recipe,
        task.target_epsilon,
        task.delta,
        sequence_loss,
        evaluate,
        keras.metrics.MeanMetricWrapper(character_accuracy, name="accuracy"),
        noise_seed=task.noise_seed,
        attack=lambda model, _, held_out: loss_threshold_auc(model, fortune_pieces, held_out),
    )
    memory = _peak_gb() if separate else math.nan
    return dataclasses.replace(row, metrics={**row.metrics, MEMORY: memory})


def pretrain(public, corpus, epochs: int, weights_path: str, separate: bool) -> dict:
    """Non-private training on the public sequences; saves the weights, and measures the
    pretrained model on the private test split (it has seen none of the private data)."""
    import keras

    from keras_privacy.tutorials.language_model import (
        character_accuracy,
        language_model_metrics,
        sequence_loss,
    )

    keras.utils.set_random_seed(0)
    model, _ = gpt2_language_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.001),
        loss=sequence_loss,
        metrics=[keras.metrics.MeanMetricWrapper(character_accuracy, name="accuracy")],
    )
    start = time.perf_counter()
    for epoch in range(epochs):
        history = model.fit(*public, batch_size=128, epochs=1, verbose=0)
        print(
            f"  pretraining: epoch {epoch + 1}/{epochs}  loss {history.history['loss'][-1]:.3f}",
            flush=True,
        )
    seconds = time.perf_counter() - start
    np.savez(weights_path, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    metrics = language_model_metrics(model, model, corpus, corpus.test)
    return {
        "seconds": seconds,
        "epochs": epochs,
        "metrics": metrics,
        "parameters": int(model.count_params()),
        MEMORY: _peak_gb() if separate else math.nan,
    }


def _in_process(function, *arguments):
    """``function(*arguments)`` in a fresh spawned process (its memory is its own)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_prepare_process) as pool:
        return pool.submit(function, *arguments).result()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _prepare_process()
    from keras_privacy.tutorials import _fortunes, _public_corpus
    from keras_privacy.tutorials._report import plot_vs_epsilon, write_report
    from keras_privacy.tutorials._training import Recipe

    quick = args.quick
    targets = args.targets or ([4.0] if quick else [1.0, 4.0, 8.0])
    epochs = args.epochs or (1 if quick else 3)
    pretrain_epochs = args.pretrain_epochs or (1 if quick else 3)
    public_chars = args.public_chars or (150_000 if quick else 4_000_000)
    train_examples = args.train_examples or (1500 if quick else None)
    grid = args.grid or (1 if quick else 2)
    digits = args.digits or (3 if quick else 5)
    separate = not args.same_process
    try:
        corpus = _fortunes.load_corpus(WIDTH, REPETITIONS, digits=digits, max_train=train_examples)
        corpus, validation = split_validation(corpus)
        # every fortune (training, validation and test) is private
        private_texts = _fortunes.read_fortunes()
        public = _public_corpus.public_sequences(private_texts, WIDTH, max_chars=public_chars)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    public_x, public_y, public_counts = public
    print("keras-privacy: public pretraining (dict-gcide), DP fine-tuning on fortunes")
    print(
        f"  public: {public_counts['sequences']:,} sequences ({public_counts['characters']:,} "
        f"characters; {public_counts['dropped']} paragraphs dropped for overlap with fortunes)"
    )
    print(
        f"  private: N={len(corpus.train[0]):,} training sequences, {len(validation[0]):,} "
        f"validation, {len(corpus.test[0]):,} test; targets {targets}"
    )
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    weights_path = str(report_dir / "pretrained_weights.npz")

    def call(function, *arguments):
        if separate:
            return _in_process(function, *arguments)
        return function(*arguments)

    start = time.perf_counter()
    pretrained = call(
        pretrain, (public_x, public_y), corpus, pretrain_epochs, weights_path, separate
    )
    print(
        f"  pretrained ({pretrained['seconds']:.0f} s): test perplexity "
        f"{pretrained['metrics']['perplexity']:.2f} before seeing any private data",
        flush=True,
    )
    middle = sorted(targets)[len(targets) // 2]
    partial = report_dir / "rows_so_far.jsonl"
    partial.write_text("", encoding="utf-8")

    def train(way: str, target: float | None, rate: float):
        weights = None if way == WAYS[0] else weights_path
        recipe = Recipe(args.batch_size, epochs, rate, 1.0, optimizer="adam")
        if target is None:
            recipe = dataclasses.replace(recipe, batch_size=128)
        task = Task(way, target, recipe, weights, args.delta, args.noise_seed)
        row = call(run_task, task, corpus, validation, separate)
        if not separate:  # no per-run figure: leave the column out
            row = dataclasses.replace(
                row, metrics={k: v for k, v in row.metrics.items() if k != MEMORY}
            )
        record = {**dataclasses.asdict(row), "epsilon": str(row.epsilon)}
        with partial.open("a", encoding="utf-8") as f:  # kept if the run is cut short
            f.write(json.dumps(record) + "\n")
        return row

    # Order: every way's non-private run, then the learning-rate selection at the middle
    # target, then the other targets (a cut-short run still compares the ways).
    plain = {way: train(way, None, GRIDS[way][0]) for way in WAYS}
    tried = {way: [train(way, middle, rate) for rate in GRIDS[way][:grid]] for way in WAYS}
    best = {
        way: min(rows, key=lambda r: r.metrics["validation perplexity"])
        for way, rows in tried.items()
    }
    others = {
        (way, target): train(way, target, best[way].learning_rate)
        for target in sorted(targets)
        if target != middle
        for way in WAYS
    }
    rows = []
    for way in WAYS:
        rows.append(plain[way])
        rows += [best[way] if t == middle else others[(way, t)] for t in sorted(targets)]
    shown = ("validation perplexity", "perplexity", "accuracy")
    selection = [
        dataclasses.replace(r, metrics={k: r.metrics[k] for k in shown})
        for way in WAYS
        for r in tried[way]
    ]
    elapsed = time.perf_counter() - start

    from keras_privacy.tutorials._pretraining_notes import sections

    exposure_columns = [f"exposure ×{r}" for r in REPETITIONS]
    plot_vs_epsilon(rows, "exposure ×16", report_dir / "exposure_16_vs_epsilon.png", "canary ×16")
    path = write_report(
        report_dir,
        "Public pretraining, then DP fine-tuning: GPT-2 on fortunes",
        rows,
        "perplexity",
        sections=sections(rows, corpus, validation, public_counts, pretrained, args, elapsed),
        extra_tables=[(f"Learning-rate selection at ε = {middle:g} (validation)", selection)],
        columns=["perplexity", "accuracy", *exposure_columns, *([MEMORY] if separate else [])],
    )
    print(f"  report: {path} ({elapsed:.0f} s of training and attacks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
