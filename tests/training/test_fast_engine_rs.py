"""keras-rs layers under DP (skipped without keras-rs, the ``recommenders`` extra):
DCN's ``FeatureCross`` and DLRM's ``DotInteraction`` on the fast engine against the
per-example reference, a keras-rs ranking loss as a per-example loss, and the guard
refusing what mixes the batch: an override of ``FeatureCross.call``, and in-batch
retrieval logits post-processed by ``RemoveAccidentalHits``."""

import keras
import numpy as np
import pytest
from helpers import engine_batch, flat, reference_clipped_sum, to_numpy
from keras import ops

import keras_privacy as kp
from keras_privacy.training.fast import batch_mixing_reason

keras_rs = pytest.importorskip("keras_rs")

USERS, ITEMS, LIST, DIM, N = 7, 11, 3, 4, 6


def _ranking_model(projection_dim=None):
    """Per candidate: [user, item] embeddings -> FeatureCross -> Dense(1); plus a
    DotInteraction of the first candidate's user and item vectors."""
    user = keras.Input((LIST,), dtype="int32", name="user")  # the user id per candidate
    items = keras.Input((LIST,), dtype="int32", name="items")
    u = keras.layers.Embedding(USERS, DIM)(user)
    v = keras.layers.Embedding(ITEMS, DIM)(items)
    x = keras.layers.Concatenate()([u, v])
    x = keras_rs.layers.FeatureCross(projection_dim=projection_dim, diag_scale=0.1)(x)
    scores = keras.layers.Reshape((LIST,))(keras.layers.Dense(1)(x))
    dots = keras_rs.layers.DotInteraction()(
        [keras.layers.Flatten()(u[:, :1]), keras.layers.Flatten()(v[:, :1])]
    )
    return keras.Model({"user": user, "items": items}, scores + keras.layers.Dense(1)(dots))


def _batch(rng):
    users = np.repeat(rng.integers(0, USERS, (N, 1)), LIST, axis=1).astype("int32")
    x = {"user": users, "items": rng.integers(0, ITEMS, (N, LIST)).astype("int32")}
    labels = np.zeros((N, LIST), "float32")
    labels[:, 0] = 1.0  # the positive first, then the example's own sampled negatives
    return x, labels


@pytest.mark.parametrize(
    "projection_dim, clip",
    [
        pytest.param(None, 1e-3, marks=pytest.mark.extended),  # slow on JAX's compile
        *(
            pytest.param(p, c, marks=pytest.mark.slow)
            for p, c in [(2, 1e-3), (None, 1e6), (2, 1e6)]
        ),
    ],
)
def test_keras_rs_layers_and_loss_equal_per_example_reference(projection_dim, clip, rng):
    keras.utils.set_random_seed(0)
    model = _ranking_model(projection_dim)
    assert batch_mixing_reason(model) is None
    loss = keras_rs.losses.PairwiseLogisticLoss()
    private = kp.make_private(model, l2_norm_clip=clip, noise_multiplier=0.0, engine="fast")
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
    x, y = _batch(rng)
    batch = engine_batch(private, "fast", x, y, None, num_units=None, l2_norm_clip=clip)
    got = flat([np.asarray(to_numpy(g), "float64") for g in batch.grad_sum])
    want = flat(reference_clipped_sum(private, loss, x, y, clip))
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


class CrossWithBatchMean(keras_rs.layers.FeatureCross):
    """A FeatureCross that also subtracts the batch mean: mixes the examples."""

    def call(self, x0, x=None):
        out = super().call(x0, x)
        return out - ops.mean(out, axis=0, keepdims=True)


def test_guard_refuses_an_override_of_feature_cross():
    inputs = keras.Input((DIM,))
    model = keras.Model(inputs, keras.layers.Dense(1)(CrossWithBatchMean()(inputs)))
    assert "overrides FeatureCross.call" in batch_mixing_reason(model)


class InBatchLogits(keras.layers.Layer):
    """Retrieval logits with in-batch negatives: every query against every candidate of
    the batch, so one example's candidate is every other example's negative."""

    def call(self, inputs):
        queries, candidates = inputs
        return ops.matmul(queries, ops.transpose(candidates))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], N)  # the test's batches have N examples


def test_in_batch_retrieval_is_refused(rng):
    """keras-rs's retrieval post-processing of in-batch logits is not on the allow-list,
    nor is the in-batch matmul: the fast engine refuses the model, whichever names it."""
    user = keras.Input((1,), dtype="int32")
    item = keras.Input((1,), dtype="int32")
    candidate_ids = keras.Input((N,), dtype="int32")
    q = keras.layers.Flatten()(keras.layers.Embedding(USERS, DIM)(user))
    c = keras.layers.Flatten()(keras.layers.Embedding(ITEMS, DIM)(item))
    logits = InBatchLogits()([q, c])
    labels = keras.layers.Identity()(logits)
    logits = keras_rs.layers.RemoveAccidentalHits()(labels, logits, candidate_ids)
    model = keras.Model([user, item, candidate_ids], logits)
    reason = batch_mixing_reason(model)
    assert reason is not None and "InBatchLogits" in reason
    private = kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0, engine="fast")
    private.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    x = [
        rng.integers(0, USERS, (N, 1)).astype("int32"),
        rng.integers(0, ITEMS, (N, 1)).astype("int32"),
        np.tile(np.arange(N, dtype="int32"), (N, 1)),
    ]
    with pytest.raises(kp.PrivacyError):
        private.train_on_batch(x, np.eye(N, dtype="float32"))
