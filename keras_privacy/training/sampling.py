"""Poisson sampling of in-memory training data, in fixed shapes.

Under Poisson sampling each of the N examples joins each logical batch independently
with probability ``q = expected_batch_size / N``: the batch size is random, distributed
Binomial(N, q). This is the sampling that privacy amplification by subsampling (and so
the usual DP-SGD accounting) assumes.

To keep the compiled training step from retracing on every new size, each batch is
padded to a fixed ``capacity`` rows: the sampled rows come first, the padding rows after,
and a 0/1 ``mask`` marks them. Padding rows never reach the gradient. The capacity leaves
eight standard deviations of headroom above the expected size; a draw above it (chance
below 1e-15 per batch) raises an error rather than dropping examples, which would break
the sampling that the accountant assumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_privacy.training.errors import PrivacyError


def is_array_data(x: Any) -> bool:
    """True for in-memory arrays (or nests of them): what ``fit`` can Poisson-sample."""
    if x is None:
        return False
    leaves = keras.tree.flatten(x)
    return bool(leaves) and all(
        isinstance(leaf, np.ndarray) or (hasattr(leaf, "shape") and hasattr(leaf, "__array__"))
        for leaf in leaves
    )


def poisson_capacity(dataset_size: int, expected_batch_size: int) -> int:
    """Rows to allocate so that a Binomial(N, q) batch fits with overwhelming probability."""
    q = expected_batch_size / dataset_size
    std = math.sqrt(dataset_size * q * (1.0 - q))
    return min(dataset_size, expected_batch_size + math.ceil(8.0 * std) + 8)


class PoissonBatches:
    """An endless stream of Poisson-sampled, padded batches ``(x, y, sample_weight, mask)``.

    Args:
      x, y, sample_weight: in-memory arrays (or nests of arrays) with N rows.
      expected_batch_size: B; each example is in each batch with probability B / N.
      rng: the random stream to draw from (a DP model keeps one for its lifetime), or
        ``None`` for a fresh one from OS entropy.
      capacity_multiple: round the padded capacity up to a multiple of this (the number of
        replicas a batch is split across: equal shards, each with its sampled rows first).
      shard: ``(index, count)``: draw only from the rows ``index, index + count, ...`` (one
        worker of ``count``), each still with the global probability ``q = B / N``. The
        workers' draws are independent (each has its own ``rng``), so their union is a
        Poisson sample of all N rows with rate q -- the sample the accountant assumes --
        and every row is in exactly one worker's shard. The capacity then covers the
        largest shard's Binomial(ceil(N / count), q) draw (the same on every worker).
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        sample_weight: Any,
        *,
        expected_batch_size: int,
        rng: np.random.Generator | None = None,
        capacity_multiple: int = 1,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.x = keras.tree.map_structure(np.asarray, x)
        self.y = None if y is None else keras.tree.map_structure(np.asarray, y)
        sizes = {leaf.shape[0] for leaf in keras.tree.flatten((self.x, self.y))}
        if len(sizes) != 1:
            raise ValueError(
                f"x and y must have the same number of rows; received sizes {sorted(sizes)}."
            )
        self.dataset_size = sizes.pop()
        if sample_weight is None:
            sample_weight = np.ones(self.dataset_size, dtype="float32")
        self.sample_weight = np.asarray(sample_weight, dtype="float32")
        if self.sample_weight.shape != (self.dataset_size,):
            raise ValueError(
                f"sample_weight must have shape ({self.dataset_size},), received "
                f"{self.sample_weight.shape}."
            )
        if not 1 <= expected_batch_size <= self.dataset_size:
            raise ValueError(
                f"batch_size must be between 1 and the number of examples "
                f"({self.dataset_size}), received {expected_batch_size}."
            )
        self.expected_batch_size = expected_batch_size
        self.sampling_probability = expected_batch_size / self.dataset_size
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count: {shard}")
        self.shard = shard
        # The rows this sampler draws from (all of them unless sharded).
        self._rows = None if count == 1 else np.arange(index, self.dataset_size, count)
        if count == 1:
            capacity = poisson_capacity(self.dataset_size, expected_batch_size)
        else:
            largest = -(-self.dataset_size // count)
            capacity = poisson_capacity(
                largest, max(1, math.ceil(largest * self.sampling_probability))
            )
        self.capacity = -(-capacity // capacity_multiple) * capacity_multiple
        self._rng = rng if rng is not None else np.random.default_rng()
        self.failure: PrivacyError | None = None

    @property
    def updates_per_epoch(self) -> int:
        """Batches per epoch: an epoch is N examples in expectation."""
        return max(1, round(self.dataset_size / self.expected_batch_size))

    def sample_indices(self) -> np.ndarray:
        """One Poisson draw: a Binomial(N, q) count, then that many distinct examples."""
        rows = self.dataset_size if self._rows is None else len(self._rows)
        count = self._rng.binomial(rows, self.sampling_probability)
        if count > self.capacity:
            # Kept for fit: raised inside an input pipeline (TensorFlow's tf.data) the
            # error reaches the caller as the pipeline's own; fit re-raises this one.
            self.failure = PrivacyError(
                f"A Poisson batch of {count} examples exceeded the padded capacity "
                f"{self.capacity} (expected {self.expected_batch_size}). Dropping examples "
                "would invalidate the privacy accounting, so training stops here."
            )
            raise self.failure
        drawn = np.sort(self._rng.choice(rows, size=count, replace=False))
        return drawn if self._rows is None else self._rows[drawn]

    def _pad(self, array: np.ndarray, indices: np.ndarray) -> np.ndarray:
        out = np.zeros((self.capacity, *array.shape[1:]), dtype=array.dtype)
        out[: len(indices)] = array[indices]
        return out

    def next_batch(self) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        indices = self.sample_indices()
        x = keras.tree.map_structure(lambda a: self._pad(a, indices), self.x)
        y = keras.tree.map_structure(lambda a: self._pad(a, indices), self.y)
        sample_weight = self._pad(self.sample_weight, indices)
        mask = np.zeros(self.capacity, dtype="float32")
        mask[: len(indices)] = 1.0
        return x, y, sample_weight, mask

    def __iter__(self) -> Iterator[tuple[Any, Any, np.ndarray, np.ndarray]]:
        while True:
            yield self.next_batch()

    def index_blocks(self, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """An endless stream of the same draws as :meth:`next_batch`, as indices only, for
        a backend that gathers the rows itself: ``block`` draws at a time, as int32
        indices ``[block, capacity]`` (each row's sampled indices first, then zeros) and
        their counts ``[block]``."""
        while True:
            indices = np.zeros((block, self.capacity), dtype="int32")
            counts = np.zeros(block, dtype="int32")
            for i in range(block):
                drawn = self.sample_indices()
                indices[i, : len(drawn)] = drawn
                counts[i] = len(drawn)
            yield indices, counts


class ShuffledPasses:
    """An endless stream of passes over in-memory data, each cut into logical batches.

    Each pass is a fresh uniform permutation (or the data's order, without ``shuffle``)
    cut into ``ceil(N / L)`` batches of ``L = logical_batch_size`` row indices, the last
    one shorter when ``L`` does not divide ``N``: every example is in exactly one batch
    of each pass, and no batch spans two passes (what the accounting of
    ``sampling="shuffle"`` assumes).
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        sample_weight: Any,
        *,
        logical_batch_size: int,
        shuffle: bool,
        rng: np.random.Generator,
    ) -> None:
        self.x = keras.tree.map_structure(np.asarray, keras.tree.lists_to_tuples(x))
        self.y = None if y is None else keras.tree.map_structure(np.asarray, y)
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        self.dataset_size = len(keras.tree.flatten(self.x)[0])
        self.logical_batch_size = logical_batch_size
        self.shuffle = shuffle
        self._rng = rng

    @property
    def batches_per_pass(self) -> int:
        return -(-self.dataset_size // self.logical_batch_size)

    def index_batches(self) -> Iterator[np.ndarray]:
        """Row indices (int32) of each logical batch, pass after pass."""
        while True:
            order = (
                self._rng.permutation(self.dataset_size)
                if self.shuffle
                else np.arange(self.dataset_size)
            ).astype("int32")
            for start in range(0, self.dataset_size, self.logical_batch_size):
                yield order[start : start + self.logical_batch_size]
