"""Secret-sharer canaries for a text classifier: insert, then measure their exposure.

A canary is a made-up training row "the secret code is a b", where each of the two slots
takes one of 100 nonsense words of its own (so the code is recoverable even by a model
that ignores word order); the candidate space R holds all 10^4 codes. Canaries are
inserted ``repetitions`` times each into the training set with a fixed label. A model
that memorises words rather than word pairs also scores the cross combinations of
inserted words highly; they stay among the candidates a canary is ranked against.

After training, every candidate code is scored by the model's loss for that label (its
log-perplexity as a one-token "sequence"), and a canary's exposure is

    exposure = log2 |R| - log2 rank,    rank = 1 + #{other candidates with lower loss}

(:func:`keras_privacy.privacy_tests.secret_sharer.compute_exposure_interpolation`): about
log2 e ~ 1.4 bits on average for a code the model never saw, up to log2 10^4 ~ 13.3 bits
when the canary is the model's most likely code.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from keras_privacy.privacy_tests.secret_sharer import compute_exposure_interpolation
from keras_privacy.tutorials._wordnet import hash_tokens

SLOTS = 2
CHOICES = 100
PREFIX = "the secret code is"


def slot_word(slot: int, value: int) -> str:
    """The nonsense word for ``value`` (0-99) in ``slot`` (letters only: "zqaab", ...)."""
    letters = "abcdefghij"
    return "zq" + letters[slot] + letters[value // 10] + letters[value % 10]


def code_text(code: Sequence[int]) -> str:
    return PREFIX + " " + " ".join(slot_word(i, v) for i, v in enumerate(code))


def all_codes() -> np.ndarray:
    """Every code, shape (CHOICES**SLOTS, SLOTS)."""
    return np.asarray(list(itertools.product(range(CHOICES), repeat=SLOTS)), dtype=np.int32)


def make_canaries(
    repetitions: Sequence[int], per_repetition: int, seed: int = 0
) -> list[tuple[int, tuple[int, ...]]]:
    """``per_repetition`` distinct random codes for each repetition count."""
    rng = np.random.default_rng(seed)
    count = len(repetitions) * per_repetition
    picks = rng.choice(CHOICES**SLOTS, size=count, replace=False)
    codes = all_codes()[picks]
    counts = [r for r in repetitions for _ in range(per_repetition)]
    return [(r, tuple(int(v) for v in code)) for r, code in zip(counts, codes, strict=True)]


def insert_canaries(
    x: np.ndarray,
    y: np.ndarray,
    canaries: Sequence[tuple[int, tuple[int, ...]]],
    label: int,
    vocabulary_size: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` with each canary added ``repetitions`` times (label ``label``), shuffled."""
    length = x.shape[1]
    rows = [hash_tokens(code_text(code), vocabulary_size, length) for r, code in canaries]
    repeats = [r for r, _ in canaries]
    extra_x = np.repeat(np.stack(rows), repeats, axis=0)
    extra_y = np.full(len(extra_x), label, dtype=y.dtype)
    x_all, y_all = np.concatenate([x, extra_x]), np.concatenate([y, extra_y])
    order = np.random.default_rng(seed).permutation(len(y_all))
    return x_all[order], y_all[order]


def exposures(
    losses_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
    canaries: Sequence[tuple[int, tuple[int, ...]]],
    label: int,
    vocabulary_size: int,
    length: int,
) -> dict[int, float]:
    """Mean exposure of the canaries of each repetition count.

    ``losses_of(x, y)`` returns the model's per-example loss. Each canary is ranked among
    all codes that were not inserted (exact interpolation).
    """
    codes = all_codes()
    x = np.stack([hash_tokens(code_text(code), vocabulary_size, length) for code in codes])
    losses = np.asarray(losses_of(x, np.full(len(codes), label, dtype=np.int32)), np.float64)
    index = {tuple(int(v) for v in code): i for i, code in enumerate(codes)}
    inserted = np.zeros(len(codes), dtype=bool)
    for _, code in canaries:
        inserted[index[code]] = True
    references = losses[~inserted]
    by_count: dict[int, list[float]] = {}
    for count, code in canaries:
        exposure = compute_exposure_interpolation([losses[index[code]]], references)
        by_count.setdefault(count, []).append(float(exposure[0]))
    return {count: float(np.mean(values)) for count, values in sorted(by_count.items())}
