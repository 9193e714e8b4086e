"""The recommendation tutorial's keras-rs model (optional: ``keras-privacy[recommenders]``).

A DCN-style ranker (Wang et al., "Deep & Cross Network", 2017) built from keras-rs's
``FeatureCross``: for each candidate movie of a rating, ``x = [user_u; movie_i]`` (two
Embedding tables, dimension d), ``score = w . FeatureCross(x) + bias_i`` with
``FeatureCross(x) = x * (W x + b) + x`` (a learned bilinear interaction of the user and
the movie), trained with keras-rs's ``PairwiseLogisticLoss`` on each rating's own list
(the rated movie, label 1, above its own uniformly drawn negatives, label 0).

Every example is one rating with its own candidate list: nothing is shared across the
batch (no in-batch negatives, which would mix examples and are refused; see
:mod:`keras_privacy.training.fast.rs_rules`). The DP engines see ``FeatureCross``
(allow-listed with a check, then the numerical batch-independence check), its ``Dense``
(a rule), the Embedding tables (rules; sparsity-preserving DP-SGD applies to them) and
the loss per list.
"""

from __future__ import annotations

import keras
import numpy as np


def _keras_rs():
    try:
        import keras_rs
    except ImportError as error:  # an optional extra
        raise ImportError(
            "the keras-rs model needs keras-rs: pip install keras-rs "
            "(or keras-privacy[recommenders])"
        ) from error
    return keras_rs


def dcn_ranker(num_users: int, num_items: int, candidates: int, dimension: int = 8):
    """Inputs {"user": (candidates,) the rating's user id repeated, "items":
    (candidates,)} -> (candidates,) scores."""
    keras_rs = _keras_rs()
    init = keras.initializers.RandomNormal(stddev=0.05)
    user = keras.Input((candidates,), dtype="int32", name="user")
    items = keras.Input((candidates,), dtype="int32", name="items")
    u = keras.layers.Embedding(num_users, dimension, embeddings_initializer=init, name="user_table")
    v = keras.layers.Embedding(num_items, dimension, embeddings_initializer=init, name="item_table")
    bias = keras.layers.Embedding(num_items, 1, embeddings_initializer="zeros", name="item_bias")
    x = keras.layers.Concatenate(name="pair")([u(user), v(items)])
    crossed = keras_rs.layers.FeatureCross(name="cross")(x)
    score = keras.layers.Dense(1, name="score")(crossed)
    logits = keras.layers.Add(name="logits")(
        [keras.layers.Flatten()(score), keras.layers.Flatten()(bias(items))]
    )
    return keras.Model({"user": user, "items": items}, logits, name="dcn_ranker")


def ranking_loss():
    """keras-rs's pairwise logistic loss, one candidate list per example."""
    return _keras_rs().losses.PairwiseLogisticLoss()


def listwise_inputs(x: dict, y: np.ndarray) -> tuple[dict, np.ndarray]:
    """The tutorial's sampled-softmax inputs (user (n, 1), items (n, L), label 0) as the
    ranker takes them: the user id repeated per candidate, and a 0/1 label per
    candidate (1 for the rated movie, in position 0)."""
    candidates = x["items"].shape[1]
    labels = np.zeros((len(y), candidates), "float32")
    labels[np.arange(len(y)), y] = 1.0
    users = np.repeat(x["user"][:, :1], candidates, axis=1)
    return {"user": users, "items": x["items"]}, labels


def score_matrix(model: keras.Model, chunk: int = 32) -> np.ndarray:
    """(users, items) scores of every user for every movie, from the trained layers
    called on all pairs (``chunk`` users at a time)."""
    users = np.asarray(model.get_layer("user_table").embeddings)
    items = np.asarray(model.get_layer("item_table").embeddings)
    bias = np.asarray(model.get_layer("item_bias").embeddings)[:, 0]
    cross, score = model.get_layer("cross"), model.get_layer("score")
    out = np.empty((len(users), len(items)), "float32")
    for start in range(0, len(users), chunk):
        block = users[start : start + chunk]
        pairs = np.concatenate(
            [
                np.broadcast_to(block[:, None, :], (len(block), len(items), block.shape[1])),
                np.broadcast_to(items[None], (len(block), *items.shape)),
            ],
            axis=-1,
        )
        values = keras.ops.convert_to_numpy(score(cross(pairs)))[..., 0]
        out[start : start + len(block)] = values + bias
    return out
