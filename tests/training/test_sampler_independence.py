"""PoissonBatches: inclusions independent across examples and across draws.

Privacy amplification by subsampling needs each example to join each batch
independently with probability q. Right marginals are not enough: a sampler that takes a
contiguous run of examples (or whole pairs) includes each example with probability q but
not independently. This file tests the joint inclusions.

Every statistic is exactly Binomial under independence, so its two-sided p-value is exact
(no normal approximation):

* pairs of examples that are *disjoint* within a draw ((0,1), (2,3), ... or a random
  perfect matching) give independent Bernoulli(q^2) joint inclusions, so their total over
  all draws is Binomial(draws x pairs, q^2); each single pair's count is
  Binomial(draws, q^2) (tested for every adjacent pair, Bonferroni over the pairs);
* the same example in draws 2m and 2m+1: Binomial(draws/2 x N, q^2);
* the batch size: the number of draws with size <= t is Binomial(draws, F(t)) for the
  Binomial(N, q) cdf F, at five thresholds t around the mean;
* each example's inclusion count: Binomial(draws, q) (Bonferroni over examples), and the
  total: Binomial(draws x N, q).

A check rejects when any Bonferroni-adjusted p-value is below ``FAMILY_ALPHA / number of
statistics``, so a correct sampler fails a check with probability below
``FAMILY_ALPHA = 1e-7`` (< 1e-6). The seeds are fixed, so every run is the same.

Power is shown on samplers written here with the same interface and the right marginal
q: contiguous runs (right batch-size distribution too), pairs of examples, a single tied
pair, a repeated batch, and fixed-size batches.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from keras_privacy.training.sampling import PoissonBatches

#: Bound on the chance that a correct sampler fails one check (a whole test function).
FAMILY_ALPHA = 1e-7
DRAWS = 4000


# -- samplers with the right marginals but dependent inclusions ------------------------


class ContiguousRuns(PoissonBatches):
    """Binomial(N, q) examples, but as one cyclic run from a uniform start: each example
    is included with probability q and the batch size is Binomial(N, q), yet neighbours
    are almost always included together."""

    def sample_indices(self):
        count = self._rng.binomial(self.dataset_size, self.sampling_probability)
        start = self._rng.integers(self.dataset_size)
        return np.sort((start + np.arange(count)) % self.dataset_size)


class Pairs(PoissonBatches):
    """Examples 2j and 2j+1 join together, each pair with probability q."""

    def sample_indices(self):
        pairs = np.flatnonzero(self._rng.random(self.dataset_size // 2) < self.sampling_probability)
        return np.sort(np.concatenate([2 * pairs, 2 * pairs + 1]))


class OneTiedPair(PoissonBatches):
    """Independent Poisson sampling, except that example 1 joins exactly when example 0
    does (both still with probability q)."""

    def sample_indices(self):
        chosen = self._rng.random(self.dataset_size) < self.sampling_probability
        chosen[1] = chosen[0]
        return np.flatnonzero(chosen)


class RepeatedDraws(PoissonBatches):
    """Correct Poisson draws, each used for two consecutive batches."""

    _pending = None

    def sample_indices(self):
        if self._pending is not None:
            indices, self._pending = self._pending, None
            return indices
        self._pending = super().sample_indices()
        return self._pending


class FixedSize(PoissonBatches):
    """Exactly B distinct examples per batch (sampling without replacement)."""

    def sample_indices(self):
        return np.sort(self._rng.choice(self.dataset_size, self.expected_batch_size, replace=False))


# -- drawing and testing ----------------------------------------------------------------


def draw(sampler_class, n, b, seed, draws=DRAWS):
    """Inclusion indicators (draws x N) read back from ``next_batch``'s rows and mask."""
    x = np.arange(n, dtype="float32")[:, None]
    sampler = sampler_class(
        x, np.arange(n), None, expected_batch_size=b, rng=np.random.default_rng(seed)
    )
    included = np.zeros((draws, n), dtype=bool)
    for row in range(draws):
        bx, by, _, mask = sampler.next_batch()
        k = int(mask.sum())
        assert np.all(mask[:k] == 1) and np.all(mask[k:] == 0)
        ids = by[:k].astype(int)
        np.testing.assert_array_equal(bx[:k, 0].astype(int), ids)
        assert len(np.unique(ids)) == k  # no example twice in one batch
        included[row, ids] = True
    return included, sampler.sampling_probability


def two_sided(k, trials, p):
    """Exact two-sided binomial p-value (twice the smaller tail, capped at 1); vectorised."""
    k = np.asarray(k)
    return np.minimum(1.0, 2 * np.minimum(binom.cdf(k, trials, p), binom.sf(k - 1, trials, p)))


def bonferroni(p_values):
    p_values = np.asarray(p_values, dtype=float)
    return float(min(1.0, p_values.size * p_values.min()))


def pair_statistics(included, q, seed=0):
    """p-values of the joint-inclusion statistics (name -> Bonferroni-adjusted p)."""
    draws, n = included.shape
    q2 = q * q
    even = included[:, 0 : n - 1 : 2] & included[:, 1:n:2]  # (0,1), (2,3), ...
    odd = included[:, 1 : n - 1 : 2] & included[:, 2:n:2]  # (1,2), (3,4), ...
    matching = np.random.default_rng(seed).permutation(n)[: n - n % 2].reshape(-1, 2)
    random_pairs = included[:, matching[:, 0]] & included[:, matching[:, 1]]
    adjacent = included[:, :-1] & included[:, 1:]  # every (i, i+1); counts tested one by one
    later = included[1 : draws - draws % 2 : 2] & included[0 : draws - 1 : 2]  # lag one draw
    return {
        "adjacent pairs (0,1),(2,3),...": two_sided(even.sum(), even.size, q2).item(),
        "adjacent pairs (1,2),(3,4),...": two_sided(odd.sum(), odd.size, q2).item(),
        "random disjoint pairs": two_sided(random_pairs.sum(), random_pairs.size, q2).item(),
        "each adjacent pair": bonferroni(two_sided(adjacent.sum(axis=0), draws, q2)),
        "each random pair": bonferroni(two_sided(random_pairs.sum(axis=0), draws, q2)),
        "same example in consecutive draws": two_sided(later.sum(), later.size, q2).item(),
    }


def size_statistics(included, q):
    """p-values for Binomial(N, q) batch sizes and for the marginal inclusion rate q."""
    draws, n = included.shape
    sizes = included.sum(axis=1)
    mean, sd = n * q, np.sqrt(n * q * (1 - q))
    thresholds = np.unique(np.floor(mean + sd * np.array([-2, -1, 0, 1, 2])).astype(int))
    cdf = binom.cdf(thresholds, n, q)
    below = np.array([(sizes <= t).sum() for t in thresholds])
    return {
        "batch-size cdf at mean +- 0,1,2 sd": bonferroni(two_sided(below, draws, cdf)),
        "total inclusions": two_sided(included.sum(), included.size, q).item(),
        "each example's inclusions": bonferroni(two_sided(included.sum(axis=0), draws, q)),
    }


def rejected(statistics):
    """Names of the statistics that reject independence at the family level."""
    level = FAMILY_ALPHA / len(statistics)
    return sorted(name for name, p in statistics.items() if p < level)


def all_statistics(included, q):
    return {**pair_statistics(included, q), **size_statistics(included, q)}


# -- the tests --------------------------------------------------------------------------


@pytest.mark.parametrize("n, b, seed", [(200, 20, 0), (200, 20, 1), (101, 50, 2)])
def test_poisson_batches_pass_every_independence_statistic(n, b, seed):
    included, q = draw(PoissonBatches, n, b, seed)
    statistics = all_statistics(included, q)
    assert not rejected(statistics), statistics
    # Sanity: the joint inclusion rate of neighbours is q^2 to within a few percent.
    joint = (included[:, :-1] & included[:, 1:]).mean()
    assert joint == pytest.approx(q * q, rel=0.05)


def test_contiguous_runs_are_rejected_although_marginals_and_sizes_are_right():
    included, q = draw(ContiguousRuns, 200, 20, seed=3)
    statistics = all_statistics(included, q)
    # The sizes and marginals look right: only the joint inclusions give it away.
    assert not rejected(size_statistics(included, q))
    assert {
        "adjacent pairs (0,1),(2,3),...",
        "adjacent pairs (1,2),(3,4),...",
        "each adjacent pair",
    } <= set(rejected(statistics))
    assert (included[:, :-1] & included[:, 1:]).mean() > 5 * q * q  # ~0.095 vs 0.01


def test_pairs_are_rejected():
    included, q = draw(Pairs, 200, 20, seed=4)
    found = rejected(all_statistics(included, q))
    assert "adjacent pairs (0,1),(2,3),..." in found
    assert "batch-size cdf at mean +- 0,1,2 sd" in found  # 2 x Binomial(N/2, q): too wide
    assert "adjacent pairs (1,2),(3,4),..." not in found  # across pairs: independent
    assert "each example's inclusions" not in found  # the marginals are right


def test_a_single_tied_pair_is_rejected():
    included, q = draw(OneTiedPair, 200, 20, seed=5)
    assert not rejected(size_statistics(included, q))
    assert "each adjacent pair" in rejected(pair_statistics(included, q))


def test_repeating_a_draw_is_rejected():
    included, q = draw(RepeatedDraws, 200, 20, seed=6)
    assert rejected(all_statistics(included, q)) == ["same example in consecutive draws"]


def test_fixed_size_batches_are_rejected():
    included, q = draw(FixedSize, 200, 20, seed=7)
    found = rejected(all_statistics(included, q))
    assert "batch-size cdf at mean +- 0,1,2 sd" in found
    assert "each example's inclusions" not in found


def test_the_exact_p_values_are_calibrated():
    """Under independence the family rejects rarely: 200 simulated draw matrices of
    independent Bernoulli(q) give no rejection, and the raw p-values are not too small
    (a two-sided exact binomial p-value is at least uniform: P(p <= a) <= a)."""
    rng = np.random.default_rng(8)
    n, q, draws = 200, 0.1, 400
    smallest = []
    for _ in range(200):
        included = rng.random((draws, n)) < q
        statistics = all_statistics(included, q)
        assert not rejected(statistics)
        smallest.append(min(statistics.values()))
    # With 9 statistics per matrix, P(min p <= 0.001) <= 0.009: expect ~2 of 200, allow 10.
    assert np.sum(np.array(smallest) <= 1e-3) <= 10
    # Power of the same statistics at this size: an inclusion rate of 0.11 for q = 0.1.
    assert "total inclusions" in rejected(all_statistics(rng.random((draws, n)) < 0.11, q))
