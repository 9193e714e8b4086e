"""User-level DP-SGD: Poisson sampling over users, each user's combined gradient clipped
as one unit (``fit(x, y, user_ids=...)``).

The privacy unit is a *user*: two datasets are neighbours when one holds all the rows of
one more user (add or remove a whole user). With ``M`` users, an expected ``B`` users per
update (``batch_size``) and ``q = B / M``, every update is::

    g = ( sum_{u in S} clip_C(G_u) + N(0, (sigma C)^2 I) ) / B,
    G_u = sum_{i in u, sampled} w_i grad loss_i,

where ``S`` is a Poisson sample of the users (each independently with probability ``q``)
and ``G_u`` the gradient of the user's summed loss over their rows in the update: at most
``k = max_examples_per_user`` of them (all when the user has no more; otherwise ``k``
drawn uniformly without replacement from that user's rows, afresh each time the user is
sampled -- a choice that depends on that user's rows alone). Adding or removing a user
changes the clipped sum by one term of norm at most ``C``, so each update is the
Poisson-subsampled Gaussian mechanism with noise multiplier ``sigma`` over the users, and
the accountant counts ``N = M`` users, expected batch ``B`` (the record's segment has
``privacy_unit="user"``).

How the DP step computes it (every backend, both engines): a batch holds the capacity's
worth of users, each user a block of ``k`` rows (its sampled rows first, then rows of
sample weight 0), sampled users first; the blocks are the clipping units of the engines'
microbatch path (one forward pass per block: the vectorized engine; the norm of the
block's summed gradient from the rules' per-unit sums: the fast engine -- for a Dense
layer ``||sum_{i in u} a_i^T b_i||``, never a sum of per-example norms). An engine's unit
gradient is that of the compiled loss of the block, which with Keras's default reduction
(``sum_over_batch_size``) is ``G_u / k``. Clipping ``G_u / k`` at ``C / k``, noising its
sum with ``sigma C / k`` and dividing by ``B / k`` is exactly the update above, so the DP
step runs with clip ``C / k`` and divisor ``B / k``: each user's contribution to the
noised sum is bounded by ``C`` whatever the loss reduction (for another reduction ``G_u``
is ``k`` times the gradient of that reduction over the user's rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.sampling import poisson_capacity


def check_user_ids(user_ids: Any, rows: int) -> np.ndarray:
    """``user_ids`` as a 1-D array with one id per training row (ints or strings)."""
    ids = np.asarray(user_ids)
    if ids.ndim != 1 or ids.shape[0] != rows:
        raise ValueError(
            f"user_ids must hold one id per training example: expected shape ({rows},), "
            f"received {ids.shape}."
        )
    if rows == 0:
        raise ValueError("user_ids: there are no training examples.")
    if ids.dtype.kind == "f" and not np.all(np.isfinite(ids)):
        raise ValueError("user_ids must not contain NaN or infinite ids.")
    if ids.dtype.kind not in "iufUSO":
        raise ValueError(f"user_ids must be integers or strings, received dtype {ids.dtype}.")
    return ids


class UserPoissonBatches:
    """An endless stream of user-level Poisson batches ``(x, y, sample_weight, mask)``.

    Each draw takes every one of the ``M`` users independently with probability
    ``q = expected_users / M``, and for each sampled user up to ``k`` of their rows (see
    the module docstring). The batch has ``capacity_users x k`` rows: user ``j`` of the
    draw fills rows ``j k .. j k + k - 1`` (its rows first), the sampled users first; the
    0/1 ``mask`` marks real rows, and padding rows are zeros with sample weight 0. A draw
    of more users than the capacity (chance below 1e-15) stops training, as for examples.

    Args:
      x, y, sample_weight: in-memory arrays (or nests) with N rows.
      user_ids: N ids (one per row).
      expected_users: B, the expected number of users per update.
      max_examples_per_user: k, the most rows of one user in one update (``None``: the
        largest user's row count, so every sampled user brings all their rows).
      rng: the random stream (a DP model keeps one for its lifetime).
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        sample_weight: Any,
        user_ids: Any,
        *,
        expected_users: int,
        max_examples_per_user: int | None,
        rng: np.random.Generator,
    ) -> None:
        self.x = keras.tree.map_structure(np.asarray, x)
        self.y = keras.tree.map_structure(np.asarray, y)
        sizes = {leaf.shape[0] for leaf in keras.tree.flatten((self.x, self.y))}
        if len(sizes) != 1:
            raise ValueError(
                f"x and y must have the same number of rows; received sizes {sorted(sizes)}."
            )
        rows = sizes.pop()
        ids = check_user_ids(user_ids, rows)
        if sample_weight is None:
            sample_weight = np.ones(rows, dtype="float32")
        self.sample_weight = np.asarray(sample_weight, dtype="float32")
        if self.sample_weight.shape != (rows,):
            raise ValueError(
                f"sample_weight must have shape ({rows},), received {self.sample_weight.shape}."
            )
        self._order = np.argsort(ids, kind="stable")
        _, self._starts, self._counts = np.unique(
            ids[self._order], return_index=True, return_counts=True
        )
        self.num_users = len(self._counts)
        if not 1 <= expected_users <= self.num_users:
            raise ValueError(
                "With user_ids, batch_size is the expected number of users per update and "
                f"must be between 1 and the number of users ({self.num_users}), received "
                f"{expected_users}."
            )
        largest = int(self._counts.max())
        if max_examples_per_user is not None and (
            isinstance(max_examples_per_user, bool)
            or not isinstance(max_examples_per_user, (int, np.integer))
            or max_examples_per_user < 1
        ):
            raise ValueError(
                "max_examples_per_user must be a positive integer, received "
                f"{max_examples_per_user!r}."
            )
        #: k: the rows of one user's block.
        self.user_rows = min(largest, int(max_examples_per_user or largest))
        self.expected_batch_size = int(expected_users)
        self.sampling_probability = expected_users / self.num_users
        #: N of the accountant: the number of users.
        self.dataset_size = self.num_users
        self.capacity_users = poisson_capacity(self.num_users, self.expected_batch_size)
        self.capacity = self.capacity_users * self.user_rows
        self._rng = rng
        self.failure: PrivacyError | None = None

    @property
    def updates_per_epoch(self) -> int:
        """Batches per epoch: an epoch is every user once, in expectation."""
        return max(1, round(self.num_users / self.expected_batch_size))

    def user_rows_of(self, user: int) -> np.ndarray:
        """The row indices of user ``user`` (0-based in sorted id order)."""
        start = self._starts[user]
        return self._order[start : start + self._counts[user]]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One draw as row indices ``[capacity]`` (int32; 0 for padding) and the 0/1 row
        mask ``[capacity]`` (float32)."""
        count = self._rng.binomial(self.num_users, self.sampling_probability)
        if count > self.capacity_users:
            self.failure = PrivacyError(
                f"A Poisson draw of {count} users exceeded the padded capacity "
                f"{self.capacity_users} (expected {self.expected_batch_size}). Dropping "
                "users would invalidate the privacy accounting, so training stops here."
            )
            raise self.failure
        users = np.sort(self._rng.choice(self.num_users, size=count, replace=False))
        return self.rows_of_users(users)

    def rows_of_users(self, users: Any) -> tuple[np.ndarray, np.ndarray]:
        """Row indices ``[capacity]`` and row mask ``[capacity]`` of a batch of the given
        users (0-based in sorted id order; at most the capacity), each with up to ``k``
        of their rows (a uniform draw without replacement when they have more)."""
        k = self.user_rows
        indices = np.zeros(self.capacity, dtype="int32")
        mask = np.zeros(self.capacity, dtype="float32")
        for j, user in enumerate(users):
            rows = self.user_rows_of(user)
            if len(rows) > k:
                rows = np.sort(self._rng.choice(rows, size=k, replace=False))
            indices[j * k : j * k + len(rows)] = rows
            mask[j * k : j * k + len(rows)] = 1.0
        return indices, mask

    def next_batch(self) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        return self.batch(*self.sample())

    def batch(self, indices: np.ndarray, mask: np.ndarray) -> tuple[Any, Any, Any, Any]:
        """The padded batch ``(x, y, sample_weight, mask)`` of a draw's rows and mask."""

        def gather(array: np.ndarray) -> np.ndarray:
            out = array[indices]
            out[mask == 0] = 0
            return out

        x = keras.tree.map_structure(gather, self.x)
        y = keras.tree.map_structure(gather, self.y)
        return x, y, self.sample_weight[indices] * mask, mask

    def __iter__(self) -> Iterator[tuple[Any, Any, np.ndarray, np.ndarray]]:
        while True:
            yield self.next_batch()

    def index_blocks(self, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The same draws as :meth:`next_batch`, ``block`` at a time, as row indices
        ``[block, capacity]`` and row masks ``[block, capacity]``, for a backend that
        gathers the rows itself (TensorFlow)."""
        while True:
            draws = [self.sample() for _ in range(block)]
            yield np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws])


def check_user_level_fit(model: Any, config: Any, x: Any, validation_split: float) -> None:
    """Refuse what user-level training does not support, each with its reason."""
    from keras_privacy.training.sampling import is_array_data

    def refuse(reason: str) -> None:
        raise PrivacyError(f"fit(user_ids=...) (user-level DP): {reason}")

    if not is_array_data(x):
        refuse(
            "x must be in-memory arrays (the model samples users itself), not a tf.data "
            "pipeline or generator."
        )
    if validation_split:
        refuse(
            "validation_split would cut rows by position, splitting users between training "
            "and validation. Split by user yourself and pass validation_data."
        )
    if config.sampling not in (None, "poisson"):
        refuse(f"users are Poisson-sampled; sampling={config.sampling!r} is not supported.")
    reasons = {
        "num_microbatches": config.num_microbatches is not None,
        "gradient_accumulation_steps > 1": config.gradient_accumulation_steps > 1,
        "adaptive clipping (AdaptiveClip)": config.adaptive_clip is not None,
        "sparsity_preserving": config.sparsity_preserving is not None,
    }
    for name, used in reasons.items():
        if used:
            refuse(f"{name} is not supported with user-level clipping yet.")
    plan = model._dp_distribution
    if plan.replicas > 1 or plan.workers > 1:
        refuse("training on several devices is not supported yet; train on one device.")


def user_unit_mask(row_mask: Any, user_rows: int) -> Any:
    """``[users x k] -> [users]``: 1 for a sampled user (its block's first row is real)."""
    from keras import ops

    return ops.reshape(row_mask, (-1, user_rows))[:, 0]


def expected_rows(expected_users: int, user_rows: int) -> float:
    """The public divisor the DP step uses: ``B / k`` (see the module docstring)."""
    return expected_users / user_rows


def clip_per_row(l2_norm_clip: float, user_rows: int) -> float:
    """The clip of a block's mean gradient, ``C / k`` (see the module docstring)."""
    return l2_norm_clip / user_rows
