"""The secret sharer: canary formats, insertion, exposure by interpolation and extrapolation."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
from scipy import stats

from keras_privacy.privacy_tests import (
    CanaryFormat,
    compute_exposure_extrapolation,
    compute_exposure_interpolation,
    exposure_by_repetitions,
    insert_canaries,
    log_perplexity,
)

DIGITS = "0123456789"


def test_format_space_enumeration_and_indexing():
    fmt = CanaryFormat("pin {a}{b}-{a}", {"a": "xy", "b": "012"})
    assert fmt.num_slots == 3 and fmt.space_size == 12
    candidates = list(fmt.all_candidates())
    assert len(set(candidates)) == 12
    assert candidates[0] == "pin x0-x" and candidates[-1] == "pin y2-y"
    assert [fmt.candidate(i) for i in range(12)] == candidates
    with pytest.raises(ValueError, match="max_size"):
        list(CanaryFormat("{d}" * 7, DIGITS).all_candidates())


@pytest.mark.parametrize(
    "pattern, vocabularies, message",
    [
        ("no slots", DIGITS, "no slots"),
        ("{d}", {"x": DIGITS}, "no vocabulary"),
        ("{d}", "", "empty"),
        ("{d}", "aa", "repeated"),
        ("{d:>3}", DIGITS, "format spec"),
    ],
)
def test_format_errors(pattern, vocabularies, message):
    with pytest.raises(ValueError, match=message):
        CanaryFormat(pattern, vocabularies)


def test_sampling_is_distinct_reproducible_and_excludes():
    fmt = CanaryFormat("my number is {d}{d}{d}", DIGITS)
    canaries = fmt.sample(5, seed=1)
    assert canaries == fmt.sample(5, seed=1)
    assert all(c.startswith("my number is ") and len(c) == 16 for c in canaries)
    references = fmt.sample(995, seed=2, exclude=canaries)  # dense draw: the whole rest
    assert len(set(references)) == 995 and not set(references) & set(canaries)
    with pytest.raises(ValueError):
        fmt.sample(996, exclude=canaries)


def test_insert_canaries_keeps_corpus_order_and_counts():
    corpus = [f"line {i}" for i in range(100)]
    new = insert_canaries(corpus, ["A", "B", "C"], [3, 0, 5], seed=0)
    assert len(new) == 108
    counts = collections.Counter(new)
    assert counts["A"] == 3 and counts["B"] == 0 and counts["C"] == 5
    assert [line for line in new if line.startswith("line")] == corpus
    with pytest.raises(ValueError, match="repetition counts"):
        insert_canaries(corpus, ["A"], [1, 2])


def test_log_perplexity_definition():
    assert log_perplexity([0.5, 0.25]) == pytest.approx(3.0)
    np.testing.assert_allclose(log_perplexity([[1.0, 0.5], [0.125, 1.0]]), [1.0, 3.0])
    with pytest.raises(ValueError):
        log_perplexity([1.5])


def brute_force_exposure(perplexity: dict[str, float], canary: str) -> float:
    """Sort every candidate by log-perplexity, ties placing the canary first; exposure =
    log2 |R| − log2 rank."""
    order = sorted(perplexity, key=lambda s: (perplexity[s], s != canary))
    return math.log2(len(order)) - math.log2(order.index(canary) + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interpolated_exposure_equals_brute_force_rank(seed):
    fmt = CanaryFormat("{a}{a}{b}", {"a": "wxyz", "b": DIGITS})  # 160 candidates
    rng = np.random.default_rng(seed)
    # rounding to one decimal creates ties
    perplexity = {s: float(np.round(rng.gamma(3.0, 2.0), 1)) for s in fmt.all_candidates()}
    canaries = fmt.sample(6, seed=seed)
    references = [perplexity[s] for s in perplexity if s not in canaries]
    exposures = compute_exposure_interpolation({c: perplexity[c] for c in canaries}, references)
    for canary in canaries:
        others = {s: p for s, p in perplexity.items() if s not in canaries or s == canary}
        assert exposures[canary] == pytest.approx(brute_force_exposure(others, canary))


def test_interpolation_extremes_and_sampled_references():
    references = np.arange(1.0, 1024.0)  # 1023 references: |R| = 1024
    assert compute_exposure_interpolation([0.5], references)[0] == pytest.approx(10.0)
    assert compute_exposure_interpolation([2000.0], references)[0] == pytest.approx(0.0)
    # a uniform sample of 1023 out of 2^20 candidates; the canary beats all but 1: rank ≈ 1 +
    # (2^20 − 1)/1023
    sampled = compute_exposure_interpolation([1.5], references, candidate_space_size=2**20)[0]
    assert sampled == pytest.approx(20 - math.log2(1 + (2**20 - 1) / 1023))
    with pytest.raises(ValueError, match="smaller"):
        compute_exposure_interpolation([1.0], references, candidate_space_size=10)
    with pytest.raises(ValueError, match="empty"):
        compute_exposure_interpolation([1.0], [])
    with pytest.raises(ValueError, match="NaN"):
        compute_exposure_interpolation([np.nan], references)


def test_extrapolation_matches_the_true_tail_probability():
    distribution = stats.skewnorm(4.0, loc=20.0, scale=5.0)
    references = distribution.rvs(size=20_000, random_state=np.random.default_rng(0))
    canaries = distribution.ppf([1e-2, 1e-4, 1e-8])
    exposures = compute_exposure_extrapolation(canaries, references)
    np.testing.assert_allclose(
        exposures, [-math.log2(1e-2), -math.log2(1e-4), -math.log2(1e-8)], rtol=0.1
    )
    # and it agrees with interpolation where the sample can still rank
    interpolated = compute_exposure_interpolation(canaries[:1], references)
    assert exposures[0] == pytest.approx(interpolated[0], abs=0.3)
    with pytest.raises(ValueError, match="3 distinct"):
        compute_exposure_extrapolation([1.0], [2.0, 2.0, 2.0])


class CharNgramModel:
    """A character n-gram model with add-α smoothing: a model that memorizes its corpus."""

    def __init__(self, corpus: list[str], order: int = 6, alpha: float = 0.01):
        self.order, self.alpha = order, alpha
        self.alphabet = sorted(set("".join(corpus)) | set(DIGITS))
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for line in corpus:
            padded = "^" * (order - 1) + line
            for i in range(order - 1, len(padded)):
                self.counts[padded[i - order + 1 : i]][padded[i]] += 1

    def log_perplexity(self, text: str) -> float:
        padded = "^" * (self.order - 1) + text
        probabilities = []
        for i in range(self.order - 1, len(padded)):
            counts = self.counts.get(padded[i - self.order + 1 : i], collections.Counter())
            total = sum(counts.values())
            probabilities.append(
                (counts[padded[i]] + self.alpha) / (total + self.alpha * len(self.alphabet))
            )
        return float(log_perplexity(probabilities))


def test_exposure_of_memorized_canaries_is_high_and_of_unseen_ones_low():
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "my", "number", "is", "dog", "ran"]
    corpus = [" ".join(rng.choice(words, 6)) for _ in range(1500)]
    fmt = CanaryFormat("my number is {d}{d}{d}{d}", DIGITS)
    canaries = fmt.sample(8, seed=1)
    repetitions = [0, 0, 0, 0, 1, 2, 5, 20]
    model = CharNgramModel(insert_canaries(corpus, canaries, repetitions, seed=0))
    perplexity = {s: model.log_perplexity(s) for s in fmt.all_candidates()}
    references = [p for s, p in perplexity.items() if s not in canaries]
    exposures = compute_exposure_interpolation([perplexity[c] for c in canaries], references)
    max_exposure = math.log2(fmt.space_size)
    assert exposures[-1] > max_exposure - 0.5  # 20 copies: the most likely candidate
    assert exposures[-2] > max_exposure - 1.0
    assert np.mean(exposures[:4]) < 5.0  # never inserted: near a random rank
    table = exposure_by_repetitions(exposures, repetitions)
    assert list(table["repetitions"]) == [0, 1, 2, 5, 20]
    assert table["mean"].is_monotonic_increasing
