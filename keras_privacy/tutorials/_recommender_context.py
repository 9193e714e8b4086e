"""Time as context for the recommendation tutorial's model (NumPy only).

MovieLens users rate in an *era*: someone active in 2000 watches what came out around
2000, and each user's test item is their latest rating. A context-free model (and the DP
popularity baseline) ranks the same all-time favourites for everyone; a model that knows
when the user is can rank the movies of their time first.

Two features, both cheap to make private because they are small:

- **era of the rating**: the rating's time, in bins of ``era_years`` since
  :data:`~keras_privacy.tutorials._movielens.TIME_ORIGIN`. It is part of the rating, so a
  training example (one rating: user, movie, era) still holds one rating's data and
  example-level DP-SGD protects it as before. At ranking time the user's era is that of
  their latest training rating: their own data, used for their own recommendations only
  (as the "not already rated" filter already is): the DP guarantee covers the trained
  model, and so every *other* user's recommendations (joint DP).
- **release bucket of the movie**: its release year (from the public catalogue title) in
  bins of ``release_bucket_years``, one extra bucket for titles without a year. Public
  metadata: it costs no privacy.

The model adds an era embedding to the user vector and a release-bucket embedding to the
movie vector: score(u, i, t) = <user_u + era_t, movie_i + release_i> + bias_i.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from keras_privacy.tutorials._movielens import TIME_SPAN_YEARS, Interactions


@dataclasses.dataclass(frozen=True)
class TimeContext:
    """Bin widths of the two context features (chosen on the validation split)."""

    era_years: float = 2.0
    release_bucket_years: int = 3
    #: Release years before this one share its bucket (few ratings, public cut-off).
    first_release_year: int = 1930
    last_release_year: int = 2016

    def __post_init__(self) -> None:
        if not self.era_years > 0:
            raise ValueError(f"era_years must be positive, got {self.era_years}")
        if self.release_bucket_years < 1:
            raise ValueError(f"release_bucket_years must be >= 1, got {self.release_bucket_years}")

    @property
    def num_eras(self) -> int:
        return math.ceil(TIME_SPAN_YEARS / self.era_years)

    def eras(self, times: np.ndarray) -> np.ndarray:
        """Era id (int32) of each time in years since the origin; times outside the
        public span fall into the first or last era."""
        ids = np.floor(np.asarray(times, np.float64) / self.era_years)
        return np.clip(ids, 0, self.num_eras - 1).astype(np.int32)

    @property
    def num_release_buckets(self) -> int:
        """Known-year buckets, plus one for titles without a year."""
        span = self.last_release_year - self.first_release_year
        return span // self.release_bucket_years + 2

    def release_buckets(self, item_years: np.ndarray) -> np.ndarray:
        """Release bucket id (int32) of each movie; NaN years get the last bucket."""
        years = np.asarray(item_years, np.float64)
        known = np.isfinite(years)
        clipped = np.clip(
            np.where(known, years, self.first_release_year),
            self.first_release_year,
            self.last_release_year,
        )
        ids = (clipped - self.first_release_year) // self.release_bucket_years
        return np.where(known, ids, self.num_release_buckets - 1).astype(np.int32)

    def user_eras(self, data: Interactions) -> np.ndarray:
        """Each user's era for ranking: the era of their latest training rating."""
        return self.eras(data.latest_times())

    def era_item_counts(self, data: Interactions) -> np.ndarray:
        """(eras, items) training-rating counts: each rating adds 1 to one cell (L2
        sensitivity 1 per rating, as the all-time counts)."""
        counts = np.zeros((self.num_eras, data.num_items))
        np.add.at(counts, (self.eras(data.train_times), data.train_items), 1.0)
        return counts


#: The tutorial's context (era and release-bucket widths), chosen on the validation split
#: (see :data:`keras_privacy.tutorials._recommendation_recipes.CONTEXT_RECIPE`).
TUTORIAL_CONTEXT = TimeContext(era_years=2.0, release_bucket_years=3)


def context_inputs(
    context: TimeContext, data: Interactions, candidates: np.ndarray
) -> dict[str, np.ndarray]:
    """The context model's extra inputs for the training ratings: ``era`` (N, 1), each
    rating's own era, and ``release`` (N, candidates), each candidate movie's bucket."""
    if data.train_times is None or data.item_years is None:
        raise ValueError("time context needs the ratings' times and the movies' years")
    buckets = context.release_buckets(data.item_years)
    return {
        "era": context.eras(data.train_times).reshape(-1, 1),
        "release": buckets[candidates],
    }
