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


def _distributed_embedding_model(rng):
    """Three features on two tables of a ``DistributedEmbedding`` (default device): a
    user id ("mean"), a bag of items with per-id weights ("sqrtn"), and a second bag
    looked up in the same item table (one ``EmbedReduce`` called twice, so its table's
    norm needs the calls' cross term)."""
    users = keras_rs.layers.TableConfig(
        name="users", vocabulary_size=USERS, embedding_dim=DIM, combiner="mean"
    )
    items = keras_rs.layers.TableConfig(
        name="items", vocabulary_size=ITEMS, embedding_dim=DIM, combiner="sqrtn"
    )
    features = {
        "user": keras_rs.layers.FeatureConfig(
            name="user", table=users, input_shape=(None, 1), output_shape=(None, DIM)
        ),
        "bag": keras_rs.layers.FeatureConfig(
            name="bag", table=items, input_shape=(None, LIST), output_shape=(None, DIM)
        ),
        "history": keras_rs.layers.FeatureConfig(
            name="history", table=items, input_shape=(None, LIST), output_shape=(None, DIM)
        ),
    }
    inputs = {
        "user": keras.Input((1,), dtype="int32", name="user"),
        "bag": keras.Input((LIST,), dtype="int32", name="bag"),
        "history": keras.Input((LIST,), dtype="int32", name="history"),
    }
    weights = {
        "user": keras.Input((1,), name="user_weight"),
        "bag": keras.Input((LIST,), name="bag_weight"),
        "history": keras.Input((LIST,), name="history_weight"),
    }
    embedded = keras_rs.layers.DistributedEmbedding(features)(inputs, weights)
    x = keras.layers.Concatenate()([embedded["user"], embedded["bag"], embedded["history"]])
    model = keras.Model(
        {**inputs, **{f"{k}_weight": w for k, w in weights.items()}}, keras.layers.Dense(1)(x)
    )
    x = {
        "user": rng.integers(0, USERS, (N, 1)).astype("int32"),
        "bag": rng.integers(0, ITEMS, (N, LIST)).astype("int32"),
        "history": rng.integers(0, ITEMS, (N, LIST)).astype("int32"),
        "user_weight": rng.uniform(0.5, 2.0, (N, 1)).astype("float32"),
        "bag_weight": rng.uniform(0.5, 2.0, (N, LIST)).astype("float32"),
        "history_weight": rng.uniform(0.5, 2.0, (N, LIST)).astype("float32"),
    }
    x["bag"][0, 1] = x["bag"][0, 0]  # a repeated id within one example
    return model, x, rng.normal(size=(N, 1)).astype("float32")


@pytest.mark.parametrize(
    "clip",
    [pytest.param(1e-3, marks=pytest.mark.extended), pytest.param(1e6, marks=pytest.mark.slow)],
)
def test_distributed_embedding_equals_per_example_reference(clip, rng):
    """keras-rs's DistributedEmbedding on the default device: its EmbedReduce tables (a
    shared table, weights, mean and sqrtn reductions) clip exactly as the reference."""
    keras.utils.set_random_seed(0)
    model, x, y = _distributed_embedding_model(rng)
    assert batch_mixing_reason(model) is None
    loss = keras.losses.MeanSquaredError()
    private = kp.make_private(model, l2_norm_clip=clip, noise_multiplier=0.0, engine="fast")
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
    batch = engine_batch(private, "fast", x, y, None, num_units=None, l2_norm_clip=clip)
    got = flat([np.asarray(to_numpy(g), "float64") for g in batch.grad_sum])
    want = flat(reference_clipped_sum(private, loss, x, y, clip))
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


class EmbeddingWithBatchMean(keras_rs.layers.DistributedEmbedding):
    """A DistributedEmbedding that centres its outputs on the batch mean: mixes examples."""

    def call(self, inputs, weights=None, training=False):
        out = super().call(inputs, weights, training)
        return {k: v - ops.mean(v, axis=0, keepdims=True) for k, v in out.items()}


def test_guard_checks_distributed_embedding():
    """Allowed on the default device; refused when overridden or placed on a SparseCore
    (whose TPU lookups have no rule)."""
    table = keras_rs.layers.TableConfig(name="t", vocabulary_size=ITEMS, embedding_dim=DIM)
    feature = {
        "f": keras_rs.layers.FeatureConfig(
            name="f", table=table, input_shape=(None, LIST), output_shape=(None, DIM)
        )
    }

    def model_with(layer):
        inputs = {"f": keras.Input((LIST,), dtype="int32", name="f")}
        return keras.Model(inputs, keras.layers.Dense(1)(layer(inputs)["f"]))

    assert "overrides DistributedEmbedding.call" in batch_mixing_reason(
        model_with(EmbeddingWithBatchMean(feature))
    )
    layer = keras_rs.layers.DistributedEmbedding(feature)
    model = model_with(layer)
    assert batch_mixing_reason(model) is None
    layer._placement_to_path_to_feature_config = {"sparsecore": {}}  # as on a TPU
    assert "SparseCore" in batch_mixing_reason(model)


@pytest.mark.extended
def test_distributed_embedding_tables_train_sparsity_preserving(rng):
    """Its EmbedReduce tables come by row, so sparsity-preserving DP-SGD applies: with a
    threshold no noisy count reaches, no row of any table changes (the dense layer does)."""
    tables = [
        keras_rs.layers.TableConfig(name=n, vocabulary_size=ITEMS, embedding_dim=DIM)
        for n in ("users", "items")
    ]
    features = {
        n: keras_rs.layers.FeatureConfig(
            name=n, table=t, input_shape=(None, LIST), output_shape=(None, DIM)
        )
        for n, t in zip(("user", "item"), tables, strict=True)
    }
    inputs = {n: keras.Input((LIST,), dtype="int32", name=n) for n in features}
    embedding = keras_rs.layers.DistributedEmbedding(features)
    out = embedding(inputs)
    model = kp.DPModel(
        inputs,
        keras.layers.Dense(1)(keras.layers.Concatenate()([out["user"], out["item"]])),
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        engine="fast",
        seed=0,
        sparsity_preserving=kp.SparsityPreserving(selection_noise_multiplier=2.0, threshold=40.0),
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    x = {n: rng.integers(0, ITEMS, (N, LIST)).astype("int32") for n in features}
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    model.fit(x, rng.normal(size=(N, 1)).astype("float32"), batch_size=N, epochs=2, verbose=0)
    after = [to_numpy(v) for v in model.trainable_variables]
    tables_after = {id(t) for t in embedding.trainable_variables}
    for variable, old, new in zip(model.trainable_variables, before, after, strict=True):
        if id(variable) in tables_after:  # tau = 20 sigma_s: no selection (p < 1e-80)
            np.testing.assert_array_equal(new, old)
        else:
            assert not np.array_equal(new, old)
