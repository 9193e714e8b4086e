"""The recommendation tutorial's model and training loop (imports Keras).

Two-tower matrix factorisation: score(u, i) = <user_u, movie_i> + bias_i, with the user
table, the movie table and the movie bias as three Embedding layers, trained with a
sampled softmax (the positive movie of a rating among ``negatives`` random ones). With a
:class:`~keras_privacy.tutorials._recommender_context.TimeContext`, two more small tables:
score(u, i, t) = <user_u + era_t, movie_i + release_i> + bias_i.
"""

from __future__ import annotations

import dataclasses
import math
import time

import dp_accounting
import keras
import numpy as np

import keras_privacy as kp
from keras_privacy import privacy_tests as pt
from keras_privacy.training.fast import register_per_example_layer
from keras_privacy.tutorials._movielens import (
    Interactions,
    cap_per_user,
    hit_rate_and_ndcg,
    rank_of_held_out,
    sampled_examples,
)
from keras_privacy.tutorials._recommender_context import TimeContext, context_inputs
from keras_privacy.tutorials._report import Row
from keras_privacy.tutorials._training import EpochLines, quiet_accounting_logs, updates_per_epoch

__all__ = ["Scores", "Setting", "ranking_metrics", "score_matrix", "train_one", "two_tower"]


class Scores(keras.layers.Layer):
    """Inputs (user (b, 1, d), items (b, n, d), bias (b, n, 1)[, prior (b, n, 1)]) ->
    (b, n) scores, score[b, j] = <user[b, 0], items[b, j]> + bias[b, j, 0] (+ prior[b, j, 0]).

    Row b of the output uses row b of the inputs only; ``register_per_example_layer``
    declares that to the fast clipping engine (whose guard otherwise refuses an operation
    it does not know, and falls back to the slower vectorized engine)."""

    def call(self, inputs):
        user, items, bias, *prior = inputs
        scores = keras.ops.sum(user * items, axis=-1) + bias[..., 0]
        return scores + prior[0][..., 0] if prior else scores


register_per_example_layer(Scores)


def two_tower(
    num_users: int,
    num_items: int,
    candidates: int,
    dimension: int = 32,
    prior: np.ndarray | None = None,
    context: TimeContext | None = None,
):
    """Inputs {"user": (1,), "items": (candidates,)} int32 ids -> (candidates,) logits.

    ``prior`` (one number per item, already private) is added to every item's score by a
    frozen Embedding ``item_prior``: the DP popularity prior of :func:`popularity_prior`.
    ``context``: two more inputs, "era" (1,) (the rating's era) and "release"
    (candidates,) (each candidate's release bucket), whose embeddings ``era_table`` and
    ``release_table`` are added to the user and movie vectors."""
    if prior is not None and context is not None:
        raise ValueError("a time-context model takes its prior as a blend (prior_weight)")
    init = keras.initializers.RandomNormal(stddev=0.05)
    user = keras.Input((1,), dtype="int32", name="user")
    items = keras.Input((candidates,), dtype="int32", name="items")
    inputs = {"user": user, "items": items}
    user_vector = keras.layers.Embedding(
        num_users, dimension, embeddings_initializer=init, name="user_table"
    )(user)
    item_vectors = keras.layers.Embedding(
        num_items, dimension, embeddings_initializer=init, name="item_table"
    )(items)
    if context is not None:
        inputs["era"] = keras.Input((1,), dtype="int32", name="era")
        inputs["release"] = keras.Input((candidates,), dtype="int32", name="release")
        era = keras.layers.Embedding(
            context.num_eras, dimension, embeddings_initializer=init, name="era_table"
        )(inputs["era"])
        release = keras.layers.Embedding(
            context.num_release_buckets,
            dimension,
            embeddings_initializer=init,
            name="release_table",
        )(inputs["release"])
        user_vector = keras.layers.Add(name="user_in_era")([user_vector, era])
        item_vectors = keras.layers.Add(name="movie_with_release")([item_vectors, release])
    item_bias = keras.layers.Embedding(
        num_items, 1, embeddings_initializer="zeros", name="item_bias"
    )(items)
    parts = [user_vector, item_vectors, item_bias]
    if prior is not None:
        table = keras.layers.Embedding(
            num_items,
            1,
            embeddings_initializer=keras.initializers.Constant(
                np.asarray(prior, "float32").reshape(num_items, 1)
            ),
            trainable=False,
            name="item_prior",
        )
        parts.append(table(items))
    logits = Scores(name="scores")(parts)
    return keras.Model(inputs, logits, name="two_tower")


def popularity_prior(counts: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """log(1 + max(0, c_i + N(0, sigma^2))) for each item's training count c_i (or each
    (era, item) count of a time context): one
    Gaussian release of the counts (one rating moves one count by 1: L2 sensitivity 1),
    accounted as ``GaussianDpEvent(sigma)`` composed with the DP-SGD run. Under the
    sampled softmax with uniform negatives the logit's offset that fits the data is the
    log of the item's frequency, so the model learns the personal part on top of it."""
    noisy = np.asarray(counts, np.float64) + np.random.default_rng(seed + 7).normal(
        0.0, sigma, size=np.shape(counts)
    )
    return np.log1p(np.maximum(noisy, 0.0))


@dataclasses.dataclass(frozen=True)
class RankingContext:
    """What a time-context model ranks with: each user's era (that of their latest
    training rating) and each movie's release bucket."""

    user_eras: np.ndarray
    item_buckets: np.ndarray

    @classmethod
    def of(cls, context: TimeContext | None, data: Interactions) -> RankingContext | None:
        if context is None:
            return None
        return cls(context.user_eras(data), context.release_buckets(data.item_years))


def _table(model: keras.Model, name: str) -> np.ndarray:
    return np.asarray(model.get_layer(name).embeddings)


def score_matrix(model: keras.Model, ranking: RankingContext | None = None) -> np.ndarray:
    """(users, items) scores from the model's tables: U V^T + b (+ the prior); with a
    time context, (U + era[user's era]) (V + release[movie's bucket])^T + b."""
    users = _table(model, "user_table")
    items = _table(model, "item_table")
    has_context = any(layer.name == "era_table" for layer in model.layers)
    if has_context != (ranking is not None):
        raise ValueError("a time-context model is ranked with a RankingContext, others without")
    if ranking is not None:
        users = users + _table(model, "era_table")[ranking.user_eras]
        items = items + _table(model, "release_table")[ranking.item_buckets]
    bias = np.asarray(model.get_layer("item_bias").embeddings)[:, 0]
    if any(layer.name == "item_prior" for layer in model.layers):
        bias = bias + np.asarray(model.get_layer("item_prior").embeddings)[:, 0]
    return users @ items.T + bias


def model_scores(model: keras.Model, ranking: RankingContext | None = None) -> np.ndarray:
    """(users, items) scores of the tutorial's two-tower model or of its keras-rs ranker."""
    if model.name == "dcn_ranker":
        from keras_privacy.tutorials import _keras_rs_model

        return _keras_rs_model.score_matrix(model)
    return score_matrix(model, ranking)


def ranking_metrics(
    model: keras.Model,
    data: Interactions,
    offset: np.ndarray | None = None,
    ranking: RankingContext | None = None,
) -> dict[str, float]:
    """HR@10 and NDCG@10 of each user's held-out movie among all the user did not rate,
    ranked by the model's scores plus ``offset`` (the weighted DP popularity prior of a
    blend, :attr:`Setting.prior_weight`: one number per movie, or (users, movies) with a
    time context)."""
    scores = model_scores(model, ranking)
    if offset is not None:
        scores = scores + offset
    hr, ndcg = hit_rate_and_ndcg(rank_of_held_out(scores, data), 10)
    return {"HR@10": hr, "NDCG@10": ndcg}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row's training. ``user_cap``: None = every rating and example-level ε; k = at
    most k ratings per user and user-level ε (``max_examples_per_user=k``).

    ``learning_rate`` None (DP rows only) means "scaled to the noise": lr = ``noise_step``
    x B / σ, so that the noise moves each coordinate by about the same amount per update,
    lr σC / B, whatever ε is (σ is public, so this choice costs no privacy).
    """

    name: str
    target_epsilon: float | None
    batch_size: int
    epochs: int
    learning_rate: float | None
    noise_step: float = 0.002
    l2_norm_clip: float = 1.0
    user_cap: int | None = None
    negatives: int = 16
    dimension: int = 32
    optimizer: str = "sgd"
    weight_decay: float | None = None
    #: sparsity-preserving DP-SGD: the share of 1 / sigma_eff^2 spent on the row selection
    #: (None: plain DP-SGD) and the threshold tau, in examples.
    selection_share: float | None = None
    selection_threshold: float = 2.0
    #: noise multiplier of the popularity prior's count release (None: no prior).
    popularity_sigma: float | None = None
    #: None: the prior (if any) is a frozen offset inside the trained model. λ: a *blend*:
    #: the model is trained without the prior and movies are ranked by its score plus
    #: λ x the prior (post-processing of two DP releases, both accounted).
    prior_weight: float | None = None
    #: "mf": the two-tower matrix factorisation; "dcn": the keras-rs DCN ranker
    #: (:mod:`~keras_privacy.tutorials._keras_rs_model`).
    architecture: str = "mf"
    #: user-level DP by per-user clipping (``fit(..., user_ids=...)``, with ``user_cap``):
    #: Poisson over users, each user's summed gradient clipped to C, sigma and epsilon over
    #: users. ``batch_size`` then still gives the expected *ratings* per update; the
    #: expected users per update is ``batch_size`` x users / ratings.
    per_user_clipping: bool = False
    #: a time context (:mod:`~keras_privacy.tutorials._recommender_context`): the width of
    #: an era in years (None: no context) and of a release-year bucket.
    era_years: float | None = None
    release_bucket_years: int = 3

    def context(self) -> TimeContext | None:
        if self.era_years is None:
            return None
        return TimeContext(self.era_years, self.release_bucket_years)

    def other_releases(self) -> list:
        """The DpEvents released besides DP-SGD (the popularity prior's counts)."""
        if self.popularity_sigma is None or self.target_epsilon is None:
            return []
        return [dp_accounting.GaussianDpEvent(self.popularity_sigma)]

    def sparsity(self, sigma: float) -> tuple[float, kp.SparsityPreserving | None]:
        """(gradient sigma, sparsity settings) for the accounted sigma_eff: with a
        selection share s, sigma_s = sigma_eff / sqrt(s) and the gradient gets
        sigma_eff / sqrt(1 - s), so that (sigma^-2 + sigma_s^-2)^(-1/2) = sigma_eff."""
        if self.selection_share is None or sigma <= 0:
            return sigma, None
        share = self.selection_share
        spec = kp.SparsityPreserving(
            selection_noise_multiplier=sigma / math.sqrt(share),
            threshold=self.selection_threshold,
        )
        return sigma / math.sqrt(1.0 - share), spec

    def learning_rate_for(self, sigma: float, batch: int) -> float:
        """``learning_rate``, or lr = noise_step x B / σ for the update's divisor B (the
        expected examples, or users under per-user clipping, per update)."""
        if self.learning_rate is not None:
            return self.learning_rate
        if sigma <= 0:
            raise ValueError(f"{self.name}: a noise-scaled learning rate needs DP (σ > 0)")
        return float(f"{self.noise_step * batch / sigma:.3g}")

    def make_optimizer(self, learning_rate: float) -> keras.optimizers.Optimizer:
        if self.optimizer == "adam":
            return keras.optimizers.Adam(learning_rate, weight_decay=self.weight_decay)
        return keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=self.weight_decay)


class _EpsilonSoFar(keras.callbacks.Callback):
    """Puts the accountant's ε for the updates made so far into the epoch's logs (user-level
    with ``max_examples_per_user`` when the ratings were capped)."""

    def __init__(
        self, n: int, batch: int, sigma: float, delta: float, k: int | None, other=()
    ) -> None:
        super().__init__()
        self.n, self.batch, self.sigma, self.delta, self.k = n, batch, sigma, delta, k
        self.other = list(other)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epsilon"] = kp.compute_epsilon(
                self.n,
                self.batch,
                self.sigma,
                delta=self.delta,
                steps=self.model.privacy_record.total_updates,
                max_examples_per_user=self.k,
                other_releases=self.other,
            )


class _RankingLog(keras.callbacks.Callback):
    """Puts HR@10 on the held-out ratings into the epoch's logs (for the progress line)."""

    def __init__(
        self,
        scored: keras.Model,
        data: Interactions,
        every: int,
        epochs: int,
        offset=None,
        ranking: RankingContext | None = None,
    ):
        super().__init__()
        self.scored, self.data, self.every, self.epochs = scored, data, every, epochs
        self.offset, self.ranking = offset, ranking

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if logs is not None and (done % self.every == 0 or done == self.epochs):
            metrics = ranking_metrics(self.scored, self.data, self.offset, self.ranking)
            logs["HR@10"] = metrics["HR@10"]


def membership_sets(data: Interactions, negatives: int, seed: int):
    """Members: one random training rating per user; non-members: each user's
    membership-inference holdout (a random earlier rating, never trained on); both in the
    training input format, with fresh random negatives."""
    rng = np.random.default_rng(seed + 1000)
    order = rng.permutation(data.num_train)
    users_in_order = data.train_users[order]
    users, first = np.unique(users_in_order, return_index=True)
    chosen = order[first]
    members = sampled_examples(
        data.train_users[chosen], data.train_items[chosen], data.num_items, negatives, seed + 1
    )
    held_out = data.mia_items if data.mia_items is not None else data.test_items
    non_members = sampled_examples(users, held_out[users], data.num_items, negatives, seed + 2)
    return members, non_members


def membership_auc(scores: np.ndarray, members, non_members, seed: int = 0) -> float:
    """Best AUC of the loss-threshold and logistic-regression membership attacks on the
    model's logits for each row's candidates, read from the score matrix (the same numbers
    the model outputs, without a Keras predict per model)."""

    def logits(x):
        return scores[x["user"][:, :1], x["items"]]

    (x_in, y_in), (x_out, y_out) = members, non_members
    attack_input = pt.AttackInputData(
        logits_train=logits(x_in), logits_test=logits(x_out), labels_train=y_in, labels_test=y_out
    )
    results = pt.run_attacks(
        attack_input,
        attack_types=[pt.AttackType.THRESHOLD_ATTACK, pt.AttackType.LOGISTIC_REGRESSION],
        seed=seed,
    )
    return float(results.get_result_with_max_auc().get_auc())


def train_one(
    setting: Setting,
    data: Interactions,
    delta: float,
    seed: int,
    noise_seed: int | None,
    hits: dict | None = None,
) -> Row:
    """Train one model (privately unless ``setting.target_epsilon`` is None), print one
    progress line per quarter of the epochs, and return its measured :class:`Row`.
    ``hits``: if given, ``hits[(name, target ε, seed)]`` gets each user's hit (held-out
    movie in the top 10: 0 or 1), for paired comparisons on the same users.

    sigma is planned with :func:`keras_privacy.compute_noise_multiplier` for the updates
    ``fit`` makes (``epochs x round(N / B)``, Poisson sampling, PLD) and the ε reported is
    the accountant's value for the updates the DP step counted.
    """
    quiet_accounting_logs()
    keras.utils.set_random_seed(seed)
    if setting.user_cap is not None:
        data = cap_per_user(data, setting.user_cap, seed=seed)
    n, batch = data.num_train, setting.batch_size
    fit_options = {}
    if setting.per_user_clipping:
        if setting.user_cap is None:
            raise ValueError(f"{setting.name}: per-user clipping needs a user_cap")
        # The privacy unit is a user: N and B count users, each user brings <= cap ratings.
        users = int(np.unique(data.train_users).size)
        n, batch = users, max(1, min(users, round(batch * users / data.num_train)))
        fit_options = {"user_ids": data.train_users, "max_examples_per_user": setting.user_cap}
    group_size = None if setting.per_user_clipping else setting.user_cap
    x, y = sampled_examples(
        data.train_users, data.train_items, data.num_items, setting.negatives, seed
    )
    context = setting.context()
    ranking = RankingContext.of(context, data)
    if context is not None:
        x = {**x, **context_inputs(context, data, x["items"])}
    other = setting.other_releases()
    prior = offset = None
    if other:
        # All-time counts, or (era, movie) counts with a time context: sensitivity 1 either way.
        counts = data.item_counts() if context is None else context.era_item_counts(data)
        prior = popularity_prior(counts, setting.popularity_sigma, seed)
    if setting.prior_weight is not None:
        if prior is None:
            raise ValueError(f"{setting.name}: a prior_weight needs a popularity_sigma")
        # A blend: the model trains without the prior; ranking adds λ x the prior (each
        # user's era's row of it with a time context).
        weighted = setting.prior_weight * prior
        prior, offset = None, weighted if ranking is None else weighted[ranking.user_eras]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if setting.architecture == "dcn":
        from keras_privacy.tutorials import _keras_rs_model

        if prior is not None or context is not None:
            raise ValueError("the keras-rs ranker takes no popularity prior or time context")
        model = _keras_rs_model.dcn_ranker(
            data.num_users, data.num_items, setting.negatives + 1, setting.dimension
        )
        x, y = _keras_rs_model.listwise_inputs(x, y)
        loss = _keras_rs_model.ranking_loss()
    else:
        model = two_tower(
            data.num_users,
            data.num_items,
            setting.negatives + 1,
            setting.dimension,
            prior,
            context,
        )
    trained, sigma, callbacks = model, 0.0, []
    steps = setting.epochs * updates_per_epoch(n, batch)
    if setting.target_epsilon is not None:
        # sigma (sigma_eff with sparsity preservation) for what the popularity prior leaves.
        sigma = kp.compute_noise_multiplier(
            setting.target_epsilon, delta, n, batch, steps=steps,
            max_examples_per_user=group_size, other_releases=other,
        )  # fmt: skip
        gradient_sigma, sparsity = setting.sparsity(sigma)
        trained = kp.make_private(
            model,
            l2_norm_clip=setting.l2_norm_clip,
            noise_multiplier=gradient_sigma,
            seed=noise_seed,
            sparsity_preserving=sparsity,
        )
        callbacks.append(_EpsilonSoFar(n, batch, sigma, delta, group_size, other))
    every = max(1, setting.epochs // 4)
    callbacks.append(_RankingLog(model, data, every, setting.epochs, offset, ranking))
    private = setting.target_epsilon is not None
    label = setting.name + (f" ε≤{setting.target_epsilon:g}" if private else " non-private")
    callbacks.append(EpochLines(label, setting.epochs, "HR@10", every))
    learning_rate = setting.learning_rate_for(sigma, batch)
    trained.compile(
        optimizer=setting.make_optimizer(learning_rate),
        loss=loss,
    )
    start = time.perf_counter()
    trained.fit(
        x, y, batch_size=batch, epochs=setting.epochs, callbacks=callbacks, verbose=0,
        **fit_options,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    epsilon = math.inf
    if private:
        made = trained.privacy_record.total_updates
        epsilon = kp.compute_epsilon(
            n, batch, sigma, delta=delta, steps=made, max_examples_per_user=group_size,
            other_releases=other,
        )  # fmt: skip
    members, non_members = membership_sets(data, setting.negatives, seed)
    scores = model_scores(model, ranking) + (0.0 if offset is None else offset)
    ranks = rank_of_held_out(scores, data)
    if hits is not None:
        hits[(setting.name, setting.target_epsilon, seed)] = (ranks <= 10).astype(np.float64)
    hr, ndcg = hit_rate_and_ndcg(ranks, 10)
    return Row(
        model=setting.name,
        target_epsilon=setting.target_epsilon,
        epsilon=float(epsilon),
        noise_multiplier=float(sigma),
        l2_norm_clip=setting.l2_norm_clip if private else None,
        batch_size=batch,
        epochs=setting.epochs,
        learning_rate=learning_rate,
        accountant="pld" if private else "—",
        metrics={"HR@10": hr, "NDCG@10": ndcg},
        mia_auc=membership_auc(scores, members, non_members, seed),
        seconds=seconds,
        seed=seed,
    )
