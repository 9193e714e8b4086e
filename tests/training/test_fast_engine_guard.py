"""The fast engine's batch-independence guard, its fallbacks, and the engine setting."""

import keras
import numpy as np
import pytest
from helpers import flat, reference_clipped_sum
from keras import ops
from test_fast_engine import LOSS, Scale, ScaleRule, _assert_same, _both, _private

import keras_privacy as kp
from keras_privacy.training.config import DPConfig
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.fast import batch_mixing_reason, register_rule


class MixBatch(keras.layers.Layer):
    """Subtracts the batch mean: every example's output depends on all the others."""

    def call(self, x):
        return x - ops.mean(x, axis=0, keepdims=True)


def _mixing_model():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8), MixBatch(), keras.layers.Dense(3)]
    )


def test_guard_catches_batch_mixing_layer(rng):
    assert "MixBatch" in batch_mixing_reason(_mixing_model())
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.integers(0, 3, 8)
    private = _private(_mixing_model(), engine="fast")
    with pytest.raises(PrivacyError, match="mix_batch"):
        private.train_on_batch(x, y)


def test_auto_falls_back_on_mixing_layer_and_stays_bounded(rng):
    """With the mixing layer, auto uses the vectorized engine (each example alone), so
    removing one example moves the clipped sum by at most C."""
    x = rng.normal(size=(8, 6)).astype("float32") * 5
    y = rng.integers(0, 3, 8)
    clip = 0.1
    private = _private(_mixing_model(), clip)
    with pytest.warns(UserWarning, match="vectorized clipping engine"):
        batch = private._dp_clipped(x, y, None, num_units=None)
    assert private.dp_engine_used == "vectorized"
    full = flat([np.asarray(g) for g in batch.grad_sum])
    for i in range(len(x)):
        rest = private._dp_clipped(np.delete(x, i, 0), np.delete(y, i), None, num_units=None)
        assert np.linalg.norm(full - flat([np.asarray(g) for g in rest.grad_sum])) <= clip * (
            1 + 1e-5
        )


def test_functional_op_mixing_is_caught():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4)(inputs)
    h = h - ops.mean(h, axis=0)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    assert "not known to treat the examples" in batch_mixing_reason(model)


def test_constant_like_ops_pass_and_mixing_after_them_is_still_caught():
    """``ops.ones_like(token_ids)`` (a padding mask built in a functional model) reads no
    value of its input: it passes; a batch mean after it is still refused."""
    ids = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(10, 4)(ids * ops.ones_like(ids) + ops.zeros_like(ids))
    model = keras.Model(ids, keras.layers.Dense(2)(h))
    assert batch_mixing_reason(model) is None
    mixed = keras.Model(ids, keras.layers.Dense(2)(h - ops.mean(h, axis=0)))
    assert "not known to treat the examples" in batch_mixing_reason(mixed)


class TermlessScale(Scale):
    """A layer whose rule gives no cross terms (``LayerRule.terms`` not overridden)."""


def _shared(rng):
    """Shared weights are exact on the fast engine (tests/training/test_fast_engine_shared.py)
    where the rules give cross terms; a rule without them is refused."""
    register_rule(TermlessScale, ScaleRule())
    scale = TermlessScale()
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(scale(scale(inputs))))
    return model, rng.normal(size=(8, 6)).astype("float32")


def _activity_regularized(rng):
    """A loss computed from the data (weight regularizers alone are fine for the fast
    engine: see test_weight_regularization.py)."""
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(3, activity_regularizer=keras.regularizers.L2(0.1)),
        ]
    )
    return model, rng.normal(size=(8, 6)).astype("float32")


def _conv(rng):
    """A per-example layer without a rule (DepthwiseConv2D)."""
    model = keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            keras.layers.DepthwiseConv2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    return model, rng.normal(size=(8, 5, 5, 2)).astype("float32")


def _patched(rng):
    """A Dense whose call is replaced on the instance (here: to mix the batch)."""
    dense = keras.layers.Dense(4)
    model = keras.Sequential([keras.Input((6,)), dense, keras.layers.Dense(3)])
    dense.call = lambda x, **kwargs: keras.layers.Dense.call(dense, x - ops.mean(x, axis=0))
    return model, rng.normal(size=(8, 6)).astype("float32")


@pytest.mark.parametrize(
    "builder, reason",
    [
        (_patched, "replaced on the instance"),
        (_shared, "shares weights between 2 calls"),
        (_activity_regularized, "losses computed from the data"),
        (_conv, "no exact fast rule"),
    ],
)
def test_not_exact_falls_back_or_refuses(builder, reason, rng):
    model, x = builder(rng)
    y = rng.integers(0, 3, len(x))
    private = _private(model, engine="fast")
    with pytest.raises(PrivacyError, match=reason):
        private._dp_clipped(x, y, None, num_units=None)
    model, x = builder(rng)
    private = _private(model)
    with pytest.warns(UserWarning, match=reason):
        got = private._dp_clipped(x, y, None, num_units=None)
    assert private.dp_engine_used == "vectorized"
    want = reference_clipped_sum(private, LOSS, x, y, 1.0)
    np.testing.assert_allclose(flat(got.grad_sum), flat(want), rtol=1e-4, atol=1e-6)


def test_engine_argument_validated_and_saved(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(PrivacyError, match="engine must be one of"):
        kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0, engine="ghost")
    with pytest.raises(PrivacyError, match="engine must be one of"):
        kp.DPSequential(1.0, 1.0, engine=None, layers=[keras.layers.Dense(2)])
    private = kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0, engine="vectorized")
    assert private.get_config()["dp_config"]["engine"] == "vectorized"
    private.compile(optimizer="sgd", loss=LOSS)
    private.train_on_batch(np.zeros((4, 3), "float32"), np.zeros(4, "int32"))
    assert private.dp_engine_used == "vectorized"
    path = str(tmp_path / "m.keras")
    private.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_config()["dp_config"]["engine"] == "vectorized"
    sequential = kp.DPSequential(1.0, 1.0, engine="fast", layers=[keras.layers.Dense(2)])
    assert sequential.get_config()["dp_config"]["engine"] == "fast"
    assert DPConfig(1.0, 1.0).engine == "auto"


def test_frozen_batch_normalization_runs_per_example(rng):
    """A frozen BatchNormalization uses its moving statistics (per example): allowed, and
    equal to the vectorized engine; a trainable one is refused before any engine runs."""
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), bn, keras.layers.Dense(3)])
    bn.trainable = False
    assert batch_mixing_reason(model) is None
    x = rng.normal(size=(10, 6)).astype("float32")
    fast, ref = _both(model, x, rng.integers(0, 3, 10))
    _assert_same(fast, ref)
    bn.trainable = True
    assert "batch statistics" in batch_mixing_reason(model)
