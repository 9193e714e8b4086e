"""The secret sharer on real text: a character-level GRU memorizes canaries, DP-SGD does not.

Reproduces the headline experiment of "The Secret Sharer" (Carlini et al. 2019) at toy
scale. Random canaries "my number is ddddd" are inserted into a corpus of Debian's
``fortunes`` (read offline from /usr/share/games/fortunes), each repeated 0 (control), 1, 4,
16 or 64 times. The same small character-level language model (embedding, one GRU, softmax)
is trained twice on that corpus: (a) without privacy and (b) with DP-SGD through
``keras_privacy.make_private``.

What is measured, for each model:

* the **exposure** of every canary, log2 |R| − log2 rank, where rank is the canary's
  position among *all* candidates "my number is 00000" … "my number is 99999" ordered by the
  model's log-perplexity of the secret digits (the prefix is context only). Exposure is near
  log2 e ≈ 1.4 bits on average for a candidate the model never saw, and reaches log2 |R|
  (16.6 bits for five digits) when the canary is the model's single most likely candidate.
  Both the exact interpolation (rank among all candidates) and the extrapolation (a
  skew-normal fitted to the candidates' log-perplexities, which can exceed log2 |R|) are
  reported;
* the held-out per-character perplexity and next-character accuracy (padding excluded);
* the DP model's ε at the given δ (PLD accountant, Poisson sampling as trained).

It prints a table of exposure by repetition count and saves ``secret_sharer_exposure.png``
(exposure vs repetitions, both models) and ``secret_sharer_results.json`` in
``--output-dir`` (default: a new temporary folder).

    python examples/secret_sharer_fortunes.py [--output-dir DIR] [--epochs 20] ...

Needs the ``fortunes`` package (``apt-get install fortunes``). With the defaults it runs in
2–3.5 minutes on two shared CPU cores (3 GB of memory).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pathlib
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_privacy.programs import (
    progress,
    progress_callback,
    quiet_tensorflow_startup,
    show_progress,
)

quiet_tensorflow_startup()  # before Keras imports TensorFlow

import keras  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices of predict

import keras_privacy as kp  # noqa: E402
from keras_privacy import privacy_tests as pt  # noqa: E402
from keras_privacy.privacy_tests.keras_adapters import sequence_log_perplexities  # noqa: E402

DEFAULT_FORTUNES_DIR = "/usr/share/games/fortunes"
DEFAULT_FILES = ("fortunes", "computers", "science", "wisdom", "work", "people", "politics")
CANARY_PREFIX = "my number is "

# token ids 0-2 are reserved; characters follow
PAD, BOS, EOS = 0, 1, 2
_ALLOWED = set("abcdefghijklmnopqrstuvwxyz0123456789 .,;:!?'\"-()")


class FortunesMissingError(FileNotFoundError):
    """The fortunes corpus is not installed."""


def load_fortunes(
    directory: str | os.PathLike[str] = DEFAULT_FORTUNES_DIR,
    files: Sequence[str] = DEFAULT_FILES,
    max_chars: int = 100_000,
) -> list[str]:
    """Fortune entries (``%``-separated), lower-cased and cleaned, up to ``max_chars`` in all.

    Overstrike sequences (``x\\bx``) are removed, whitespace collapsed, and characters outside
    letters, digits and common punctuation dropped. Files are read in the order given.

    Raises:
      FortunesMissingError: the directory or every requested file is missing.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FortunesMissingError(
            f"{directory} not found: install Debian's fortunes corpus "
            "(apt-get install fortunes) or pass --fortunes-dir"
        )
    paths = [directory / name for name in files if (directory / name).is_file()]
    if not paths:
        raise FortunesMissingError(
            f"none of {list(files)} found in {directory}: install the fortunes package "
            "(apt-get install fortunes) or pass --files"
        )
    entries: list[str] = []
    total = 0
    for path in paths:
        text = path.read_text(encoding="latin-1")
        for raw in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            raw = re.sub(r".\x08", "", raw).lower()
            cleaned = "".join(c if c in _ALLOWED else " " for c in raw.replace("\t", " "))
            cleaned = " ".join(cleaned.split())
            if not cleaned:
                continue
            entries.append(cleaned)
            total += len(cleaned)
            if total >= max_chars:
                return entries
    return entries


def chunk_entries(entries: Sequence[str], width: int) -> list[str]:
    """Each entry wrapped at word boundaries into pieces of at most ``width`` characters."""
    chunks: list[str] = []
    for entry in entries:
        chunks += textwrap.wrap(entry, width=width, break_long_words=True)
    return chunks


class CharVocabulary:
    """Characters ↔ token ids, with padding, begin- and end-of-sequence tokens."""

    def __init__(self, texts: Sequence[str]) -> None:
        characters = sorted(set("".join(texts)) | _ALLOWED)
        self.characters = characters
        self.index = {c: i + 3 for i, c in enumerate(characters)}

    @property
    def size(self) -> int:
        return len(self.characters) + 3

    def encode(self, texts: Sequence[str], length: int, end: bool = True) -> np.ndarray:
        """``(len(texts), length)`` int32 ids: BOS, the characters, [EOS], then padding."""
        ids = np.full((len(texts), length), PAD, dtype=np.int32)
        for row, text in enumerate(texts):
            tokens = [BOS] + [self.index[c] for c in text] + ([EOS] if end else [])
            if len(tokens) > length:
                raise ValueError(f"{text!r} needs {len(tokens)} tokens, more than {length}")
            ids[row, : len(tokens)] = tokens
        return ids


def build_language_model(
    vocabulary_size: int, sequence_length: int, embedding_dim: int, units: int
) -> keras.Model:
    """Embedding → GRU (all time steps) → next-character logits.

    The GRU is unrolled: TensorFlow's vectorizer cannot convert the gradient of a
    recurrent ``while`` loop with respect to its input sequence, so without unrolling the
    DP engine computes per-example gradients one example at a time (exact, but slower).
    """
    return keras.Sequential(
        [
            keras.Input((sequence_length,), dtype="int32"),
            keras.layers.Embedding(vocabulary_size, embedding_dim),
            keras.layers.GRU(units, return_sequences=True, unroll=True),
            keras.layers.Dense(vocabulary_size),  # logits
        ]
    )


def scoring_model(model: keras.Model, length: int) -> keras.Model:
    """The same layers (shared weights) on inputs of ``length`` tokens."""
    inputs = keras.Input((length,), dtype="int32")
    outputs = inputs
    for layer in model.layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs)


def heldout_metrics(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per-character perplexity (e^cross-entropy) and next-character accuracy, padding
    excluded."""
    logits = model.predict(x, batch_size=512, verbose=0).astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    mask = y != PAD
    target_log_probs = np.take_along_axis(log_probs, y[..., None], axis=-1)[..., 0]
    cross_entropy = -target_log_probs[mask].mean()
    accuracy = (log_probs.argmax(axis=-1) == y)[mask].mean()
    return {"perplexity": float(math.exp(cross_entropy)), "accuracy": float(accuracy)}


def canary_exposures(
    model: keras.Model,
    vocabulary: CharVocabulary,
    canary_format: pt.CanaryFormat,
    canaries: Sequence[str],
    references: Sequence[str],
    candidate_space_size: int,
) -> dict[str, np.ndarray]:
    """Exposure of each canary among the references, by interpolation and extrapolation."""
    length = 1 + len(canary_format.candidate(0))  # BOS + text
    scorer = scoring_model(model, length - 1)
    score_from = 1 + len(CANARY_PREFIX)  # the first secret character

    def perplexities(texts: Sequence[str]) -> np.ndarray:
        ids = vocabulary.encode(texts, length, end=False)
        # in slices: the adapter holds all logits of its input in float64 at once
        return np.concatenate(
            [
                sequence_log_perplexities(
                    scorer, ids[i : i + 20_000], score_from=score_from, output="logits"
                )
                for i in range(0, len(ids), 20_000)
            ]
        )

    canary_px = perplexities(canaries)
    reference_px = perplexities(references)
    return {
        "log_perplexity": canary_px,
        "interpolation": np.asarray(
            pt.compute_exposure_interpolation(
                canary_px, reference_px, candidate_space_size=candidate_space_size
            )
        ),
        "extrapolation": np.asarray(pt.compute_exposure_extrapolation(canary_px, reference_px)),
    }


def plot_exposure(
    repetitions: Sequence[int],
    exposures: dict[str, np.ndarray],
    max_exposure: float,
    path: pathlib.Path,
) -> None:
    """Exposure (interpolation) of each canary vs its repetition count, one series a model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    counts = np.asarray(repetitions)
    levels = np.unique(counts)
    positions = {level: i for i, level in enumerate(levels)}
    x = np.array([positions[c] for c in counts], dtype=float)
    for (label, values), marker, offset in zip(
        exposures.items(), ["o", "s"], [-0.08, 0.08], strict=False
    ):
        means = [values[counts == level].mean() for level in levels]
        line = axes.plot(range(len(levels)), means, marker=marker, label=f"{label} (mean)")[0]
        axes.scatter(x + offset, values, color=line.get_color(), alpha=0.4, s=14)
    axes.axhline(max_exposure, color="grey", linestyle="--", label=f"log2|R| = {max_exposure:.1f}")
    axes.axhline(math.log2(math.e), color="grey", linestyle=":", label="chance (log2 e)")
    axes.set_xticks(range(len(levels)), [str(level) for level in levels])
    axes.set_xlabel("times the canary was inserted (0 = control, never inserted)")
    axes.set_ylabel("exposure (bits)")
    axes.set_ylim(0, max_exposure + 1)
    axes.set_title("Secret sharer on fortunes: exposure of inserted canaries")
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fortunes-dir", default=DEFAULT_FORTUNES_DIR)
    parser.add_argument("--files", nargs="+", default=list(DEFAULT_FILES))
    parser.add_argument("--max-chars", type=int, default=100_000, help="corpus size")
    parser.add_argument("--width", type=int, default=30, help="max characters per sequence")
    parser.add_argument("--digits", type=int, default=5, help="secret digits: |R| = 10^digits")
    parser.add_argument(
        "--repetitions", type=int, nargs="+", default=[0, 1, 4, 16, 64], help="insertion counts"
    )
    parser.add_argument("--canaries-per-count", type=int, default=3)
    parser.add_argument(
        "--max-references",
        type=int,
        default=100_000,
        help="rank among all candidates if |R| is at most this, else among a uniform sample",
    )
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20, help="non-private epochs")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--dp-epochs", type=int, default=10)
    parser.add_argument("--dp-learning-rate", type=float, default=3e-3)
    parser.add_argument("--l2-norm-clip", type=float, default=1.0)
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where to write the plot and JSON (default: a temp folder)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the experiment; print the table and return the results (also saved as JSON)."""
    args = parse_args(argv)
    with progress(show_progress(args.no_progress)) as bar:
        return _run(args, bar)


def _run(args: argparse.Namespace, bar) -> dict[str, Any]:
    started = time.perf_counter()
    if args.output_dir is None:
        output = pathlib.Path(tempfile.mkdtemp(prefix="keras_privacy_secret_sharer_"))
    else:
        output = pathlib.Path(args.output_dir)
        output.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    # --- corpus: fortune entries cut into short pieces; a held-out tenth for test metrics
    entries = load_fortunes(args.fortunes_dir, args.files, args.max_chars)
    chunks = chunk_entries(entries, args.width)
    order = rng.permutation(len(chunks))
    num_test = max(1, int(round(args.test_fraction * len(chunks))))
    test_chunks = [chunks[i] for i in order[:num_test]]
    train_chunks = [chunks[i] for i in order[num_test:]]

    # --- canaries: per repetition count, a few random secrets; count 0 = control
    canary_format = pt.CanaryFormat(CANARY_PREFIX + "{d}" * args.digits, {"d": "0123456789"})
    if len(canary_format.candidate(0)) > args.width:
        raise ValueError(f"--width {args.width} is shorter than a canary")
    repetitions = [r for r in args.repetitions for _ in range(args.canaries_per_count)]
    canaries = canary_format.sample(len(repetitions), seed=args.seed)
    train_units = pt.insert_canaries(train_chunks, canaries, repetitions, seed=args.seed)

    vocabulary = CharVocabulary(chunks + canaries)
    length = args.width + 2  # BOS + text + EOS
    train_ids = vocabulary.encode(train_units, length)
    test_ids = vocabulary.encode(test_chunks, length)
    x_train, y_train = train_ids[:, :-1], train_ids[:, 1:]
    x_test, y_test = test_ids[:, :-1], test_ids[:, 1:]

    # --- references: every other candidate, or a uniform sample of them
    if canary_format.space_size <= args.max_references:
        excluded = set(canaries)
        references = [c for c in canary_format.all_candidates() if c not in excluded]
    else:
        references = canary_format.sample(args.max_references, seed=args.seed + 1, exclude=canaries)
    max_exposure = math.log2(canary_format.space_size)

    print(
        f"corpus: {len(entries)} fortunes, {sum(map(len, entries)):,} characters, "
        f"{len(train_chunks)} training / {len(test_chunks)} test sequences of ≤ {args.width} "
        f"characters; vocabulary {vocabulary.size}"
    )
    print(
        f"canaries: {canary_format.pattern!r}, |R| = {canary_format.space_size:,}; "
        f"{sum(repetitions)} inserted copies → {len(train_units)} training sequences; "
        f"ranked among {len(references):,} references"
    )

    def build() -> keras.Model:
        return build_language_model(vocabulary.size, length - 1, args.embedding_dim, args.units)

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results: dict[str, Any] = {"models": {}}
    exposures: dict[str, np.ndarray] = {}

    # --- (a) non-private
    tic = time.perf_counter()
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss)
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=0,
        callbacks=[progress_callback(bar, "non-private model", args.epochs)],
    )
    seconds = time.perf_counter() - tic
    scores = canary_exposures(
        model, vocabulary, canary_format, canaries, references, canary_format.space_size
    )
    results["models"]["non-private"] = {
        **heldout_metrics(model, x_test, y_test),
        "epsilon": None,
        "train_seconds": seconds,
        "exposure": scores["interpolation"].tolist(),
        "exposure_extrapolated": scores["extrapolation"].tolist(),
    }
    exposures["non-private"] = scores["interpolation"]
    print(f"non-private model trained in {seconds:.0f} s")

    # --- (b) DP-SGD: same architecture, per-example clipping + Gaussian noise
    tic = time.perf_counter()
    base = build()
    private = kp.make_private(
        base, l2_norm_clip=args.l2_norm_clip, noise_multiplier=args.noise_multiplier
    )
    private.compile(optimizer=keras.optimizers.Adam(args.dp_learning_rate), loss=loss)
    private.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.dp_epochs,
        verbose=0,
        callbacks=[progress_callback(bar, "DP-SGD model", args.dp_epochs)],
    )
    seconds = time.perf_counter() - tic
    epsilon = private.privacy_spent(args.delta)
    scores = canary_exposures(
        base, vocabulary, canary_format, canaries, references, canary_format.space_size
    )
    results["models"]["DP-SGD"] = {
        **heldout_metrics(base, x_test, y_test),
        "epsilon": epsilon,
        "train_seconds": seconds,
        "exposure": scores["interpolation"].tolist(),
        "exposure_extrapolated": scores["extrapolation"].tolist(),
    }
    exposures["DP-SGD"] = scores["interpolation"]
    print(f"DP model trained in {seconds:.0f} s")

    # --- report
    table = pt.exposure_by_repetitions(exposures["non-private"], repetitions)[
        ["repetitions", "count", "mean"]
    ].rename(columns={"mean": "non-private"})
    table["DP-SGD"] = pt.exposure_by_repetitions(exposures["DP-SGD"], repetitions)["mean"]
    for name in ("non-private", "DP-SGD"):
        extrapolated = np.asarray(results["models"][name]["exposure_extrapolated"])
        table[f"{name} (extrap.)"] = pt.exposure_by_repetitions(extrapolated, repetitions)["mean"]
    print()
    print(f"Mean exposure (bits) by repetition count; max = log2 |R| = {max_exposure:.2f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print()
    for name, metrics in results["models"].items():
        epsilon_text = "∞" if metrics["epsilon"] is None else f"{metrics['epsilon']:.2f}"
        print(
            f"{name:>12}: test perplexity {metrics['perplexity']:.2f} per character, "
            f"accuracy {metrics['accuracy']:.3f}, ε = {epsilon_text} at δ = {args.delta:g}"
        )
    print(
        f"DP-SGD: σ = {args.noise_multiplier}, C = {args.l2_norm_clip}, "
        f"batch {args.batch_size}, {args.dp_epochs} epochs, N = {len(train_units)}"
    )

    plot_path = output / "secret_sharer_exposure.png"
    plot_exposure(repetitions, exposures, max_exposure, plot_path)
    results.update(
        {
            "canaries": canaries,
            "repetitions": repetitions,
            "candidate_space_size": canary_format.space_size,
            "max_exposure": max_exposure,
            "num_references": len(references),
            "num_train_sequences": len(train_units),
            "delta": args.delta,
            "table": table.to_dict(orient="records"),
            "plot": str(plot_path),
            "seconds": time.perf_counter() - started,
        }
    )
    (output / "secret_sharer_results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"plot: {plot_path}; total {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    try:
        main()
    except FortunesMissingError as error:
        sys.exit(f"error: {error}")
