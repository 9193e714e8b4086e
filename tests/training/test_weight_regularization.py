"""Weight regularizers are added after clipping and noising, at full strength (issue 18, A10).

The DP update is ``(sum_u clip_C(grad l_u) + N(0, sigma^2 C^2)) / B + grad R(w)``: each
unit's loss ``l_u`` leaves out the weight regularizers' ``R(w)`` (it depends on no data),
keeps what is computed from the data (activity regularizers, ``add_loss``), and the
remove-one sensitivity of the clipped sum stays at most C. Both engines, every backend.
"""

import keras
import numpy as np
import pytest
from helpers import (
    engine_batch,
    engine_clipped_sum,
    flat,
    gradients,
    reference_clipped_sum,
    regularization_gradient,
    weights,
)

import keras_privacy as kp
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.fast import register_per_example_layer

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
L2 = 0.025  # dR/dw = 2 * 0.025 * w = 0.05 at w = 1


def _regularized(rng, ones=False):
    """Dense layers with kernel (L2), bias (L1) and a LayerNorm gamma (L2) regularizer."""
    init = "ones" if ones else "glorot_uniform"
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                8,
                activation="tanh",
                kernel_initializer=init,
                kernel_regularizer=keras.regularizers.L2(L2),
                bias_regularizer=keras.regularizers.L1(0.01),
            ),
            keras.layers.LayerNormalization(gamma_regularizer=keras.regularizers.L2(0.01)),
            keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(L2)),
        ]
    )
    return model, rng.normal(size=(8, 6)).astype("float32")


def _embedding(rng):
    model = keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(20, 4, embeddings_regularizer=keras.regularizers.L2(0.05)),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L1L2(0.01, 0.02)),
        ]
    )
    return model, rng.integers(0, 20, size=(8, 5)).astype("int32")


def _activity(rng):
    """An activity regularizer: a loss computed from each example's data."""
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activity_regularizer=keras.regularizers.L2(0.5)),
            keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(L2)),
        ]
    )
    return model, rng.normal(size=(8, 6)).astype("float32")


class _AddLoss(keras.layers.Layer):
    """``add_loss`` of a quantity computed from the inputs."""

    def call(self, x):
        self.add_loss(0.3 * keras.ops.sum(keras.ops.square(x)))
        return x


# Row-wise in its output (the add_loss is what keeps it off the fast engine).
register_per_example_layer(_AddLoss)


def _add_loss(rng):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, kernel_regularizer=keras.regularizers.L2(L2)),
            _AddLoss(),
            keras.layers.Dense(3),
        ]
    )
    return model, rng.normal(size=(8, 6)).astype("float32")


def _private(model, clip, engine="auto", lr=1.0, **kwargs):
    private = kp.make_private(
        model, l2_norm_clip=clip, noise_multiplier=0.0, engine=engine, seed=0, **kwargs
    )
    private.compile(optimizer=keras.optimizers.SGD(lr), loss=LOSS)
    return private


@pytest.mark.parametrize("engine", ["vectorized", "fast"])
def test_one_step_adds_the_regularizer_gradient_at_full_strength(engine, rng):
    """w' = w - lr * (clipped_sum / B + dR/dw) with C = 0.01: the kernel initialised to
    ones moves by lr * 2 * 0.025 = 0.05 (to ~0.95, as in TF Privacy), not by at most C
    (to ~0.997, when the regularizer was clipped with the data gradient)."""
    model, x = _regularized(rng, ones=True)
    y = rng.integers(0, 3, size=8)
    clip, lr = 0.01, 1.0
    clipped = flat(reference_clipped_sum(model, LOSS, x, y, clip))
    pull = flat(regularization_gradient(model))
    before = flat(weights(model))
    private = _private(model, clip, engine=engine, lr=lr)
    private.train_on_batch(x, y)
    assert private.dp_engine_used == engine
    after = flat(weights(private))
    np.testing.assert_allclose(after, before - lr * (clipped / 8 + pull), rtol=1e-5, atol=1e-6)
    kernel = weights(private)[0]
    # The data gradient (the clipped sum over B, of norm <= C) moves the kernel by at most
    # C * lr in L2 norm, whatever the initial weights; the pull is 0.05 on every entry.
    assert np.linalg.norm(kernel - (1.0 - lr * 2 * L2)) <= clip * lr + 1e-6
    assert kernel.mean() < 0.96


@pytest.mark.parametrize("engine", ["vectorized", "fast"])
@pytest.mark.parametrize(
    "builder",
    # _embedding (15 s per engine on JAX): -m slow there, where _regularized checks the
    # bound on each engine and test_fast_engine_equals_vectorized_on_a_regularized_model
    # the embedding regularizer's sums.
    [_regularized, pytest.param(_embedding, marks=pytest.mark.slow_on_jax), _activity],
)
def test_remove_one_sensitivity_of_the_clipped_sum_is_at_most_clip(builder, engine, rng):
    """Removing any one example changes the clipped sum by at most C, whatever the weight
    regularizers' pull; and an example's whole update (B = 1) less dR/dw is at most C."""
    if builder is _activity and engine == "fast":
        pytest.skip("the fast engine refuses losses computed from the data (tested below)")
    model, x = builder(rng)
    y = rng.integers(0, 3, size=8)
    clip = 0.01
    private = _private(model, clip, engine=engine)
    full = flat(engine_clipped_sum(private, x, y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        neighbour = flat(engine_clipped_sum(private, x[keep], y[keep]))
        assert np.linalg.norm(full - neighbour) <= clip * (1 + 1e-5)
    assert private.dp_engine_used == engine
    pull = flat(regularization_gradient(private))
    assert np.linalg.norm(pull) > clip  # the regularizer alone would exceed C
    before = flat(weights(private))
    private.train_on_batch(x[:1], y[:1])  # B = 1, SGD(1): update = clip_C(g) + dR/dw
    contribution = before - flat(weights(private)) - pull
    assert np.linalg.norm(contribution) <= clip * (1 + 1e-5)
    assert np.linalg.norm(contribution) > 0.5 * clip


@pytest.mark.parametrize("builder", [_regularized, _embedding])
@pytest.mark.parametrize("num_units", [None, 4])
def test_fast_engine_equals_vectorized_on_a_regularized_model(builder, num_units, rng):
    model, x = builder(rng)
    y = rng.integers(0, 3, size=8)
    clip = 0.05
    private = _private(model, clip, engine="fast")
    kwargs = {"num_units": num_units, "l2_norm_clip": clip}
    fast = engine_batch(private, "fast", x, y, None, **kwargs)
    ref = engine_batch(private, private._dp_engine, x, y, None, **kwargs)
    np.testing.assert_allclose(np.asarray(fast.norms), np.asarray(ref.norms), rtol=1e-5)
    got, want = flat(fast.grad_sum), flat(ref.grad_sum)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(
        np.asarray(fast.unit_losses), np.asarray(ref.unit_losses), rtol=1e-5, atol=1e-6
    )
    # Whole steps from the same weights: the same update on both engines.
    stepped = {}
    for engine in ("fast", "vectorized"):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        dp = _private(copy, clip, engine=engine, num_microbatches=num_units)
        logs = dp.train_on_batch(x, y, return_dict=True)
        assert dp.dp_engine_used == engine
        stepped[engine] = (flat(weights(dp)), logs["loss"])
    np.testing.assert_allclose(stepped["fast"][0], stepped["vectorized"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stepped["fast"][1], stepped["vectorized"][1], rtol=1e-5)


@pytest.mark.parametrize("builder", [_activity, _add_loss])
def test_losses_from_the_data_stay_in_each_examples_clipped_loss(builder, rng):
    """Activity regularizers and add_loss depend on the data: the vectorized engine clips
    them with each example's loss (the reference puts them in each example's loss), and
    the fast engine refuses the model (auto falls back, with the reason)."""
    refused, x = builder(rng)
    y = rng.integers(0, 3, size=8)
    clip = 0.01
    with pytest.raises(PrivacyError, match="losses computed from the data"):
        _private(refused, clip, engine="fast")._dp_clipped(x, y, None, num_units=None)
    model, x = builder(rng)
    expected = flat(reference_clipped_sum(model, LOSS, x, y, clip))
    private = _private(model, clip)
    with pytest.warns(UserWarning, match="losses computed from the data"):
        got = flat(engine_clipped_sum(private, x, y))
    assert private.dp_engine_used == "vectorized"
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    # Without the data losses in the clipped loss, the sum would differ.
    assert np.linalg.norm(got - flat(_without_data_losses(model, x, y, clip))) > 1e-4


def _without_data_losses(model, x, y, clip):
    """The clipped sum of the compiled loss alone (no activity / add_loss terms)."""
    total = 0
    for i in range(len(y)):
        grads = gradients(
            model, lambda i=i: keras.ops.mean(LOSS(y[i : i + 1], model(x[i : i + 1])))
        )
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        total = total + min(1.0, clip / norm) * flat(grads)
    return [total]


def test_logged_loss_includes_the_regularization_loss(rng):
    """As Keras logs it: the mean unit loss plus R(w) (before the update)."""
    model, x = _regularized(rng)
    y = rng.integers(0, 3, size=8)
    data_loss = float(keras.ops.convert_to_numpy(keras.ops.mean(LOSS(y, model(x)))))
    penalty = sum(
        float(keras.ops.convert_to_numpy(keras.ops.sum(v.regularizer(v))))
        for v in model.trainable_variables
        if v.regularizer is not None
    )
    private = _private(model, 1.0)
    logs = private.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], data_loss + penalty, rtol=1e-5)


def test_accumulation_adds_the_regularizer_gradient_once_per_update(rng):
    model, x = _regularized(rng, ones=True)
    y = rng.integers(0, 3, size=8)
    clip = 0.01
    clipped = flat(reference_clipped_sum(model, LOSS, x, y, clip))
    pull = flat(regularization_gradient(model))
    before = flat(weights(model))
    private = _private(model, clip, gradient_accumulation_steps=2)
    private.train_on_batch(x, y)
    np.testing.assert_allclose(
        flat(weights(private)), before - (clipped / 8 + pull), rtol=1e-5, atol=1e-6
    )
