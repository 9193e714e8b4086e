"""The secret sharer test (Carlini et al. 2019, "The Secret Sharer: Evaluating and Testing
Unintended Memorization in Neural Networks").

Random *canaries* — sequences such as "my number is 281265" drawn from a format and a
vocabulary — are inserted into a training corpus, some several times. After training, the
model's log-perplexity of each canary,

    Px(s) = −Σ_i log2 P(s_i | s_1 … s_{i−1}),

is compared with that of the other sequences of the same format that were never inserted.
With R the set of all candidate sequences (the randomness space) and rank(s) the position
of the canary s when all of R is sorted by increasing log-perplexity (rank 1 = most likely),

    exposure(s) = log2 |R| − log2 rank(s).

Exposure ranges from 0 (the canary is the least likely candidate) to log2 |R| (it is the
most likely one). Two ways to compute it:

* **interpolation**: count the candidates (all of R, or a uniform sample of it) with lower
  log-perplexity than the canary;
* **extrapolation**: fit a continuous distribution (a skew-normal, as in the paper) to the
  log-perplexities of reference candidates and use
  exposure ≈ −log2 Pr_{r ∈ R}[Px(r) ≤ Px(s)], which resolves exposures far beyond what a
  feasible sample can rank.

This module is framework-free: it takes perplexities. The Keras adapter
:func:`keras_privacy.privacy_tests.keras_adapters.sequence_log_perplexities` computes them
for a next-token model.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from keras_privacy.privacy_tests._arrays import one_dimensional_values

__all__ = [
    "CanaryFormat",
    "compute_exposure_extrapolation",
    "compute_exposure_interpolation",
    "exposure_by_repetitions",
    "insert_canaries",
    "log_perplexity",
]


class CanaryFormat:
    """A canary format: literal text with slots, each slot filled from a vocabulary.

    ``CanaryFormat("my number is {d}{d}{d}{d}{d}{d}", {"d": "0123456789"})`` has six slots,
    each a digit, so |R| = 10^6 candidates. A slot ``{name}`` draws from
    ``vocabularies[name]``; a plain sequence as ``vocabularies`` serves every slot. Vocabulary
    entries are strings (characters or whole words) inserted as they are.
    """

    def __init__(
        self, pattern: str, vocabularies: Mapping[str, Sequence[str]] | Sequence[str]
    ) -> None:
        self.pattern = pattern
        parsed = list(string.Formatter().parse(pattern))
        self._literals: list[str] = []
        self._slots: list[str] = []
        for literal, field, format_spec, conversion in parsed:
            self._literals.append(literal)
            if field is None:
                continue
            if format_spec or conversion:
                raise ValueError(f"slot {{{field}}} must not have a format spec or conversion")
            self._slots.append(field)
        if len(self._literals) == len(self._slots):
            self._literals.append("")
        if not self._slots:
            raise ValueError(f"the pattern {pattern!r} has no slots such as {{d}}")
        self.slot_vocabularies: list[tuple[str, ...]] = []
        for slot in self._slots:
            if isinstance(vocabularies, Mapping):
                if slot not in vocabularies:
                    raise ValueError(f"no vocabulary for slot {{{slot}}}")
                vocabulary = vocabularies[slot]
            else:
                vocabulary = vocabularies
            vocabulary = tuple(vocabulary)
            if not vocabulary:
                raise ValueError(f"the vocabulary of slot {{{slot}}} is empty")
            if len(set(vocabulary)) != len(vocabulary):
                raise ValueError(f"the vocabulary of slot {{{slot}}} has repeated entries")
            self.slot_vocabularies.append(vocabulary)

    @property
    def num_slots(self) -> int:
        return len(self._slots)

    @property
    def space_size(self) -> int:
        """|R|, the number of distinct candidates."""
        return math.prod(len(v) for v in self.slot_vocabularies)

    def fill(self, choices: Sequence[str]) -> str:
        """The candidate with the given slot fillers."""
        if len(choices) != self.num_slots:
            raise ValueError(f"expected {self.num_slots} fillers, received {len(choices)}")
        parts = [self._literals[0]]
        for choice, literal in zip(choices, self._literals[1:], strict=True):
            parts += [choice, literal]
        return "".join(parts)

    def candidate(self, index: int) -> str:
        """The ``index``-th candidate in mixed-radix order (0 ≤ index < |R|)."""
        if not 0 <= index < self.space_size:
            raise ValueError(f"index {index} outside [0, {self.space_size})")
        choices = []
        for vocabulary in reversed(self.slot_vocabularies):
            index, digit = divmod(index, len(vocabulary))
            choices.append(vocabulary[digit])
        return self.fill(choices[::-1])

    def all_candidates(self, max_size: int = 1_000_000) -> Iterator[str]:
        """Every candidate in R, in the same order as :meth:`candidate`."""
        if self.space_size > max_size:
            raise ValueError(
                f"the format has {self.space_size} candidates, more than max_size={max_size}; "
                "sample references instead"
            )
        for choices in itertools.product(*self.slot_vocabularies):
            yield self.fill(choices)

    def sample(self, num: int, seed: int | None = 0, exclude: Sequence[str] = ()) -> list[str]:
        """``num`` distinct candidates drawn uniformly at random, none of them in ``exclude``.

        Use it both to make canaries and to draw reference sequences.
        """
        excluded = set(exclude)
        if num < 0:
            raise ValueError(f"num must be ≥ 0, received {num}")
        if num > self.space_size - len(excluded):
            raise ValueError(f"cannot draw {num} distinct candidates from {self.space_size}")
        rng = np.random.default_rng(seed)
        chosen: list[str] = []
        seen = set(excluded)
        if num > self.space_size // 2:  # dense draw: shuffle the whole space
            for index in rng.permutation(self.space_size):
                text = self.candidate(int(index))
                if text not in seen:
                    chosen.append(text)
                    seen.add(text)
                if len(chosen) == num:
                    break
            return chosen
        while len(chosen) < num:
            text = self.fill([v[int(rng.integers(len(v)))] for v in self.slot_vocabularies])
            if text not in seen:
                chosen.append(text)
                seen.add(text)
        return chosen


def insert_canaries(
    corpus: Sequence[Any],
    canaries: Sequence[Any],
    repetitions: int | Sequence[int],
    seed: int | None = 0,
) -> list[Any]:
    """A copy of ``corpus`` with canary i inserted ``repetitions[i]`` times at random places.

    ``corpus`` is a sequence of training units (sentences, lines, token lists);
    ``repetitions`` is one count for all canaries or one per canary.
    """
    counts = [repetitions] * len(canaries) if isinstance(repetitions, int) else list(repetitions)
    if len(counts) != len(canaries):
        raise ValueError(f"{len(canaries)} canaries but {len(counts)} repetition counts")
    if any(count < 0 for count in counts):
        raise ValueError("repetition counts must be ≥ 0")
    inserted = [
        canary for canary, count in zip(canaries, counts, strict=True) for _ in range(count)
    ]
    combined = list(corpus) + inserted
    rng = np.random.default_rng(seed)
    # keep the corpus order, put each inserted copy at a random position
    order = np.argsort(
        np.concatenate(
            [np.arange(len(corpus), dtype=float), rng.uniform(-0.5, len(corpus), len(inserted))]
        ),
        kind="stable",
    )
    return [combined[i] for i in order]


def log_perplexity(token_probabilities: np.ndarray | Sequence[float], axis: int = -1) -> np.ndarray:
    """Px = −Σ log2 p over ``axis``, from the model's probabilities of the actual tokens."""
    probabilities = np.asarray(token_probabilities, dtype=np.float64)
    if np.any(probabilities < 0) or np.any(probabilities > 1) or np.any(np.isnan(probabilities)):
        raise ValueError("token probabilities must lie in [0, 1]")
    with np.errstate(divide="ignore"):
        return -np.sum(np.log2(probabilities), axis=axis)


def _canary_values(canary_perplexities: Any) -> np.ndarray:
    """All canary perplexities as one 1-D array (mapping values may be sequences)."""
    if not isinstance(canary_perplexities, Mapping):
        return one_dimensional_values("canary_perplexities", canary_perplexities)
    if not canary_perplexities:
        raise ValueError("canary_perplexities is empty")
    parts = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in canary_perplexities.values()]
    for part in parts:
        if part.ndim != 1:
            raise ValueError("each value of canary_perplexities must be a number or 1-D")
    return one_dimensional_values("canary_perplexities", np.concatenate(parts))


def _keep_mapping(canary_perplexities: Any, exposures: np.ndarray) -> Any:
    """Exposures in the shape of the input: an array, ``{key: exposure}`` for a mapping of
    numbers, or ``{key: array of exposures}`` for a mapping of sequences (TF Privacy's
    form, e.g. keyed by the number of repetitions)."""
    if not isinstance(canary_perplexities, Mapping):
        return exposures
    result, start = {}, 0
    for key, value in canary_perplexities.items():
        if np.ndim(value) == 0:
            result[key] = float(exposures[start])
            start += 1
        else:
            size = np.asarray(value).size
            result[key] = exposures[start : start + size]
            start += size
    return result


def compute_exposure_interpolation(
    canary_perplexities: Mapping[Any, float] | Sequence[float] | np.ndarray,
    reference_perplexities: Sequence[float] | np.ndarray,
    candidate_space_size: int | None = None,
) -> Any:
    """Exposure by ranking each canary among reference candidates.

    rank(s) = 1 + #{references r: Px(r) < Px(s)} (ties favour the canary), and
    exposure = log2 |R| − log2 rank.

    * ``candidate_space_size=None``: the references are *all other* candidates, so
      |R| = len(references) + 1 and the rank is exact.
    * otherwise the references are a uniform sample of the other candidates and the rank in
      R is estimated as 1 + #{r: Px(r) < Px(s)} · (|R| − 1) / len(references).

    Each canary is ranked against the references only (not against the other canaries).
    Returns an array of exposures, or a dict when ``canary_perplexities`` is a mapping
    (of numbers, or of sequences as TF Privacy's ``{repetitions: perplexities}``).

    TF Privacy's version takes |R| = len(references) = n (the canary not counted) and puts
    references tied with a canary ahead of it. Its exposure is therefore lower by
    ``log2((n + 1) / n)`` (and by the ties), and negative, ``log2(n / (n + 1))``, for a
    canary that every reference beats; here exposure is always in ``[0, log2 |R|]``.
    """
    canaries = _canary_values(canary_perplexities)
    references = np.sort(one_dimensional_values("reference_perplexities", reference_perplexities))
    lower = np.searchsorted(references, canaries, side="left").astype(np.float64)
    if candidate_space_size is None:
        space = references.size + 1
        rank = 1.0 + lower
    else:
        if candidate_space_size < references.size + 1:
            raise ValueError(
                f"candidate_space_size={candidate_space_size} is smaller than the "
                f"{references.size} references plus the canary"
            )
        space = candidate_space_size
        rank = 1.0 + lower * (space - 1) / references.size
    exposures = math.log2(space) - np.log2(rank)
    return _keep_mapping(canary_perplexities, exposures)


def compute_exposure_extrapolation(
    canary_perplexities: Mapping[Any, float] | Sequence[float] | np.ndarray,
    reference_perplexities: Sequence[float] | np.ndarray,
    distribution: Any = stats.skewnorm,
) -> Any:
    """Exposure from a distribution fitted to reference log-perplexities.

    exposure(s) = −log2 F(Px(s)), F the CDF of ``distribution`` (a ``scipy.stats``
    continuous distribution, skew-normal by default) fitted by maximum likelihood to the
    references. Computed with ``logcdf``, so exposures far in the tail stay finite.
    """
    canaries = _canary_values(canary_perplexities)
    references = one_dimensional_values("reference_perplexities", reference_perplexities)
    if references.size < 3 or np.ptp(references) == 0:
        raise ValueError("need at least 3 distinct reference perplexities to fit a distribution")
    if not np.all(np.isfinite(references)):
        raise ValueError("reference_perplexities must be finite to fit a distribution")
    parameters = distribution.fit(references)
    exposures = -distribution.logcdf(canaries, *parameters) / math.log(2.0)
    return _keep_mapping(canary_perplexities, np.maximum(exposures, 0.0))


def exposure_by_repetitions(
    exposures: Sequence[float] | np.ndarray, repetitions: Sequence[int] | np.ndarray
) -> Any:
    """Mean, min and max exposure per repetition count, as a ``pandas.DataFrame``."""
    import pandas as pd

    exposures = np.asarray(exposures, dtype=np.float64)
    repetitions = np.asarray(repetitions)
    if exposures.shape != repetitions.shape:
        raise ValueError(
            f"{exposures.shape[0]} exposures but {repetitions.shape[0]} repetition counts"
        )
    frame = pd.DataFrame({"repetitions": repetitions, "exposure": exposures})
    summary = frame.groupby("repetitions")["exposure"].agg(["count", "mean", "min", "max"])
    return summary.reset_index()
