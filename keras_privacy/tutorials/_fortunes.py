"""Debian's ``fortunes`` as character sequences for a language model, with canaries.

``apt-get install fortunes`` installs the corpus under ``/usr/share/games/fortunes``: plain
text files of entries separated by lines holding ``%``. Entries are lower-cased, overstrike
sequences (``x\\bx``) removed, characters outside letters, digits and common punctuation
turned into spaces, whitespace collapsed, and exact duplicates dropped. The vocabulary is
that fixed character set (48 characters, plus padding, begin and end tokens): it depends on
no training text, so building it reveals nothing.

The held-out split is by **fortune**: a fortune's pieces are all training or all held out.
Each fortune is then wrapped at word boundaries into sequences of at most ``width``
characters; a sequence is one training example.

Canaries (the secret sharer, Carlini et al. 2019): random "my number is ddddd" sequences,
a few inserted 0 (controls), 1, 4, 16 and 64 times each. After training, each canary's
log-perplexity of its secret digits (the prefix is context only) is ranked among every
other candidate of the format, and its exposure is log2 |R| - log2 rank (interpolation,
in [0, log2 |R|]) or -log2 F(Px) under a skew-normal fitted to the candidates'
log-perplexities (extrapolation, which can exceed log2 |R|).
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from keras_privacy import privacy_tests as pt

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FILES = ("fortunes", "computers", "science", "wisdom", "work", "people", "politics")
CANARY_PREFIX = "my number is "

PAD, BOS, EOS = 0, 1, 2  # reserved token ids; characters follow
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789 .,;:!?'\"-()"
VOCABULARY = 3 + len(CHARACTERS)
_INDEX = {c: i + 3 for i, c in enumerate(CHARACTERS)}


def read_fortunes(
    directory: str | Path = FORTUNES_DIR,
    files: Sequence[str] = FILES,
    max_chars: int | None = None,
) -> list[str]:
    """The cleaned, de-duplicated entries of ``files``, in file order (at most about
    ``max_chars`` characters in all).

    Raises:
      FileNotFoundError: the directory or every requested file is missing (the message
        says how to install the corpus).
    """
    directory = Path(directory)
    paths = [directory / name for name in files if (directory / name).is_file()]
    if not paths:
        raise FileNotFoundError(
            f"none of {list(files)} found in {directory}: install Debian's fortunes corpus "
            "with `apt-get install fortunes`"
        )
    entries: dict[str, None] = {}
    total = 0
    for path in paths:
        for raw in re.split(r"^%\s*$", path.read_text(encoding="latin-1"), flags=re.MULTILINE):
            raw = re.sub(r".\x08", "", raw).lower()
            cleaned = " ".join("".join(c if c in _INDEX else " " for c in raw).split())
            if cleaned and cleaned not in entries:
                entries[cleaned] = None
                total += len(cleaned)
                if max_chars is not None and total >= max_chars:
                    return list(entries)
    return list(entries)


def wrap(entries: Sequence[str], width: int) -> list[str]:
    """Each entry wrapped at word boundaries into pieces of at most ``width`` characters."""
    return [piece for entry in entries for piece in textwrap.wrap(entry, width=width)]


def encode(texts: Sequence[str], length: int, end: bool = True) -> np.ndarray:
    """``(len(texts), length)`` int32 ids: BOS, the characters, [EOS], then PAD."""
    ids = np.full((len(texts), length), PAD, dtype=np.int32)
    for row, text in enumerate(texts):
        tokens = [BOS, *(_INDEX[c] for c in text), *([EOS] if end else [])]
        if len(tokens) > length:
            raise ValueError(f"{text!r} needs {len(tokens)} tokens, more than {length}")
        ids[row, : len(tokens)] = tokens
    return ids


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Training and held-out sequences, and the canaries inserted into the training ones.

    ``train`` and ``test`` are (inputs, targets) id arrays of shape (n, width + 1): a
    sequence's tokens without its last, and without its first (position t predicts token
    t + 1). ``canaries[i]`` was inserted ``repetitions[i]`` times (0: a control);
    ``train_is_canary`` marks the training sequences that are canary copies.
    """

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    train_texts: list[str]
    test_texts: list[str]
    train_fortunes: list[str]
    test_fortunes: list[str]
    canary_format: pt.CanaryFormat
    canaries: list[str]
    repetitions: list[int]
    train_is_canary: np.ndarray

    @property
    def max_exposure(self) -> float:
        return math.log2(self.canary_format.space_size)


def load_corpus(
    width: int = 30,
    repetitions: Sequence[int] = (0, 1, 4, 16, 64),
    per_repetition: int = 3,
    digits: int = 5,
    test_fraction: float = 0.1,
    max_chars: int | None = None,
    max_train: int | None = None,
    seed: int = 0,
    directory: str | Path = FORTUNES_DIR,
) -> Corpus:
    """Read, split by fortune, wrap, insert canaries and encode (see the module docstring).

    ``max_train`` keeps only the first that many training sequences (before the canaries
    are inserted; for tests and quick trials).
    """
    fortunes = read_fortunes(directory, max_chars=max_chars)
    order = np.random.default_rng(seed).permutation(len(fortunes))
    cut = max(1, round(test_fraction * len(fortunes)))
    test_fortunes = [fortunes[i] for i in sorted(order[:cut])]
    train_fortunes = [fortunes[i] for i in sorted(order[cut:])]
    train_texts, test_texts = wrap(train_fortunes, width), wrap(test_fortunes, width)
    if max_train is not None:
        train_texts = train_texts[:max_train]
    canary_format = pt.CanaryFormat(CANARY_PREFIX + "{d}" * digits, {"d": "0123456789"})
    if len(canary_format.candidate(0)) > width:
        raise ValueError(f"width {width} is shorter than a canary")
    counts = [r for r in repetitions for _ in range(per_repetition)]
    canaries = canary_format.sample(len(counts), seed=seed)
    train_texts = pt.insert_canaries(train_texts, canaries, counts, seed=seed)
    train_ids, test_ids = encode(train_texts, width + 2), encode(test_texts, width + 2)
    return Corpus(
        train=(train_ids[:, :-1], train_ids[:, 1:]),
        test=(test_ids[:, :-1], test_ids[:, 1:]),
        train_texts=train_texts,
        test_texts=test_texts,
        train_fortunes=train_fortunes,
        test_fortunes=test_fortunes,
        canary_format=canary_format,
        canaries=canaries,
        repetitions=counts,
        train_is_canary=np.isin(np.asarray(train_texts, dtype=object), canaries),
    )


def token_log_probs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log P(target) at each position, shape ``targets.shape``, from logits (..., V)."""
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(axis=-1))
    chosen = np.take_along_axis(logits, np.asarray(targets)[..., None], axis=-1)[..., 0]
    return chosen - log_norm


def sequence_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each sequence's mean cross-entropy (nats) over its characters and EOS (PAD
    excluded): the per-example training loss, and the membership attack's score."""
    mask = targets != PAD
    return -(token_log_probs(logits, targets) * mask).sum(axis=1) / np.maximum(mask.sum(1), 1)


def heldout_metrics(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Per-character perplexity exp(mean cross-entropy) and next-character accuracy over
    every non-PAD target (characters and EOS)."""
    mask = targets != PAD
    cross_entropy = -token_log_probs(logits, targets)[mask].mean()
    accuracy = (np.asarray(logits).argmax(axis=-1) == targets)[mask].mean()
    return {"perplexity": float(math.exp(cross_entropy)), "accuracy": float(accuracy)}


def canary_exposures(
    log_perplexities: Callable[[np.ndarray, int], np.ndarray], corpus: Corpus
) -> dict[str, dict[int, float]]:
    """Mean exposure per repetition count, by interpolation and by extrapolation.

    ``log_perplexities(ids, score_from)`` returns each id sequence's log2-perplexity of
    its tokens from position ``score_from`` on (the secret digits), as
    :func:`keras_privacy.privacy_tests.sequence_log_perplexities` does. Every canary is
    ranked among all candidates that were not chosen as canaries (the controls included
    are not: they are canaries too, inserted 0 times).
    """
    length = 1 + len(corpus.canary_format.candidate(0))
    score_from = 1 + len(CANARY_PREFIX)
    chosen = set(corpus.canaries)
    references = [c for c in corpus.canary_format.all_candidates() if c not in chosen]
    canary_px = log_perplexities(encode(corpus.canaries, length, end=False), score_from)
    reference_px = log_perplexities(encode(references, length, end=False), score_from)
    interpolated = pt.compute_exposure_interpolation(
        canary_px, reference_px, candidate_space_size=corpus.canary_format.space_size
    )
    extrapolated = pt.compute_exposure_extrapolation(canary_px, reference_px)
    result = {}
    for name, values in (("interpolation", interpolated), ("extrapolation", extrapolated)):
        table = pt.exposure_by_repetitions(np.asarray(values), corpus.repetitions)
        pairs = zip(table["repetitions"], table["mean"], strict=True)
        result[name] = {int(r): float(m) for r, m in pairs}
    return result
