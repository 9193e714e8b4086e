"""The privacy mechanics: every example's contribution is clipped to C, the sum is exact.

Each test compares one DP step (SGD, learning rate 1, no noise) against a slow per-example
loop with GradientTape, so the DP step's implied clipped sum ``(w_before - w_after) * B``
must equal ``sum_i clip_C(g_i)`` computed the obvious way.
"""

import keras
import numpy as np
import pytest
from helpers import (
    core_cases,
    engine_batch,
    engine_clipped_sum,
    flat,
    gradients,
    reference_clipped_sum,
    regularization_gradient,
    sgd_step_sum,
    tensorflow_only,
    to_numpy,
    unit_gradients,
    weights,
)

import keras_privacy as kp

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _dense(rng):
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
    ), rng.normal(size=(12, 6)).astype("float32")


def _conv1d(rng):
    return keras.Sequential(
        [
            keras.Input((10, 2)),
            keras.layers.Conv1D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    ), rng.normal(size=(12, 10, 2)).astype("float32")


def _conv2d(rng):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2, 1),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    ), rng.normal(size=(12, 8, 8, 1)).astype("float32")


def _embedding(rng):
    return keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(20, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    ), rng.integers(0, 20, size=(12, 5)).astype("int32")


def _layer_norm(rng):
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.01)),
        ]
    ), rng.normal(size=(12, 6)).astype("float32")


def _lstm(rng):
    return keras.Sequential(
        [keras.Input((4, 3)), keras.layers.LSTM(5), keras.layers.Dense(3)]
    ), rng.normal(size=(12, 4, 3)).astype("float32")


def _embedding_gru(rng):
    """A text model: the recurrent layer needs input gradients, which TensorFlow's
    vectorizer cannot convert; the engine falls back to an exact per-example loop."""
    return keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(20, 4, mask_zero=True),
            keras.layers.GRU(5, return_sequences=True),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    ), rng.integers(0, 20, size=(12, 6)).astype("int32")


def _multi_input(rng):
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(5)(a), b])
    model = keras.Model([a, b], keras.layers.Dense(3)(h))
    return model, [
        rng.normal(size=(12, 4)).astype("float32"),
        rng.normal(size=(12, 3)).astype("float32"),
    ]


def _image_model(conv, shape=(6, 6, 2)):
    def build(rng):
        return keras.Sequential(
            [keras.Input(shape), conv, keras.layers.Flatten(), keras.layers.Dense(3)]
        ), rng.normal(size=(12, *shape)).astype("float32")

    return build


def _group_norm(rng):
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            keras.layers.GroupNormalization(groups=2),
            keras.layers.Dense(3),
        ]
    ), rng.normal(size=(12, 6)).astype("float32")


# MultiHeadAttention and EinsumDense under tf.vectorized_map hit TensorFlow 2.21's
# broadcast batch-matmul bug (see training/backend/tensorflow/vectorization.py), which the
# engine's own vectorizer rule avoids: this case failed or aborted before it.
def _attention(rng):
    inputs = keras.Input((5, 4))
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)(inputs, inputs)
    h = keras.layers.EinsumDense("btd,de->bte", output_shape=(None, 6), bias_axes="e")(h)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(inputs, out), rng.normal(size=(12, 5, 4)).astype("float32")


def _recurrent(rng):
    return keras.Sequential(
        [
            keras.Input((4, 3)),
            keras.layers.Bidirectional(keras.layers.SimpleRNN(3, return_sequences=True)),
            keras.layers.SimpleRNN(4),
            keras.layers.Dense(3),
        ]
    ), rng.normal(size=(12, 4, 3)).astype("float32")


def _activity_regularized(rng):
    """An activity regularizer adds a per-example loss term through add_loss."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activity_regularizer=keras.regularizers.L2(0.1)),
            keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L1(0.01)),
        ]
    ), rng.normal(size=(12, 6)).astype("float32")


def _dict_input(rng):
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(5)(a), b])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(3)(h))
    return model, {
        "a": rng.normal(size=(12, 4)).astype("float32"),
        "b": rng.normal(size=(12, 3)).astype("float32"),
    }


BUILDERS = {
    "activity_regularized": _activity_regularized,
    "attention_einsum": _attention,
    "conv2d_transpose": _image_model(keras.layers.Conv2DTranspose(3, 3, strides=2)),
    "conv3d": _image_model(keras.layers.Conv3D(2, 2, padding="same"), shape=(4, 4, 3, 2)),
    "depthwise_conv2d": _image_model(keras.layers.DepthwiseConv2D(3, depth_multiplier=2)),
    "dict_input": _dict_input,
    "group_norm": _group_norm,
    "recurrent": _recurrent,
    "separable_conv2d": _image_model(keras.layers.SeparableConv2D(3, 3, padding="same")),
    "dense": _dense,
    "conv1d": _conv1d,
    "conv2d": _conv2d,
    "embedding": _embedding,
    "embedding_gru": _embedding_gru,
    "layer_norm": _layer_norm,
    "lstm": _lstm,
    "multi_input": _multi_input,
}


def _private(model, clip, noise=0.0, **kwargs):
    private = kp.make_private(model, l2_norm_clip=clip, noise_multiplier=noise, **kwargs)
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    return private


# The core cases; the others run in the default suite on TensorFlow and with -m slow on
# the other backends (each case compiles a step there).
CORE = {"activity_regularized", "attention_einsum", "conv2d", "dense", "dict_input", "lstm"}


@pytest.mark.parametrize("name", core_cases(sorted(BUILDERS), CORE | {"embedding"}))
@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_dp_step_equals_per_example_loop(name, clip, rng):
    model, x = BUILDERS[name](rng)
    y = rng.integers(0, 3, size=12)
    expected = flat(reference_clipped_sum(model, LOSS, x, y, clip))
    private = _private(model, clip)
    # The engine's sum, exactly as the step uses it ...
    got = flat(engine_clipped_sum(private, x, y))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * min(clip, 1.0))
    # ... and the whole step: (w_before - w_after) * B with SGD(lr=1), up to float32
    # rounding of the weights (~1e-7 |w| B), whatever C is: a tolerance that grew with C
    # could not fail at C = 1e6. Weight regularizers add B * dR/dw, after clipping.
    scale = np.abs(flat(weights(private))).max()
    expected = expected + 12 * flat(regularization_gradient(private))
    stepped = flat(sgd_step_sum(private, x, y, batch_size=12))
    np.testing.assert_allclose(stepped, expected, rtol=1e-3, atol=2e-6 * 12 * max(scale, 1.0))


def test_huge_clip_and_no_noise_is_plain_sgd_on_the_mean_loss(rng):
    model, x = _conv2d(rng)
    y = rng.integers(0, 3, size=12)
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    dp = kp.make_private(model, l2_norm_clip=1e9, noise_multiplier=0.0)
    dp.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    plain.train_on_batch(x, y)
    dp.train_on_batch(x, y)
    np.testing.assert_allclose(flat(weights(dp)), flat(weights(plain)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", core_cases(sorted(BUILDERS), CORE))
def test_each_example_contribution_is_bounded_by_clip(name, rng):
    """One example per step: the whole update (times B = 1) less the weight regularizers'
    gradient (which depends on no example) has norm <= C."""
    model, x = BUILDERS[name](rng)
    y = rng.integers(0, 3, size=12)
    clip = 0.01
    private = _private(model, clip)
    for i in range(3):
        xi = keras.tree.map_structure(lambda a, i=i: a[i : i + 1], x)
        regularization = flat(regularization_gradient(private))
        contribution = flat(sgd_step_sum(private, xi, y[i : i + 1], batch_size=1))
        contribution = contribution - regularization
        assert np.linalg.norm(contribution) <= clip * (1 + 1e-5)
        assert np.linalg.norm(contribution) > 0.5 * clip  # actually clipped, not zeroed


@pytest.mark.parametrize("scale", [1e30, -1e30])
def test_adversarially_scaled_inputs_stay_bounded(scale, rng):
    model, x = _dense(rng)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(3)]
    )  # linear: gradients scale with the input and overflow float32 squares
    x = x * scale
    y = rng.integers(0, 3, size=12)
    private = _private(model, clip=0.5)
    contribution = flat(sgd_step_sum(private, x[:1], y[:1], batch_size=1))
    assert np.all(np.isfinite(contribution))
    assert np.linalg.norm(contribution) <= 0.5 * (1 + 1e-5)
    total = flat(sgd_step_sum(private, x, y, batch_size=12))
    assert np.all(np.isfinite(total))
    assert np.linalg.norm(total) <= 12 * 0.5 * (1 + 1e-5)


def test_non_finite_example_contributes_exactly_zero(rng):
    model, x = _dense(rng)
    y = rng.integers(0, 3, size=12)
    clip = 0.1
    clean = reference_clipped_sum(model, LOSS, x[1:], y[1:], clip)
    poisoned = x.copy()
    poisoned[0, 2] = np.nan
    got = engine_clipped_sum(_private(model, clip), poisoned, y)
    assert np.all(np.isfinite(flat(got)))
    np.testing.assert_allclose(flat(got), flat(clean), rtol=1e-4, atol=1e-7)


def test_sample_weights_are_applied_before_clipping(rng):
    """A weight of 1e6 scales an example's loss, never its clipped contribution."""
    model, x = _dense(rng)
    y = rng.integers(0, 3, size=12)
    w = np.where(np.arange(12) % 2, 1e6, 0.5).astype("float32")
    clip = 1e-2
    expected = [np.zeros(v.shape) for v in model.trainable_variables]
    for i in range(12):

        def loss(i=i):
            logits = model(x[i : i + 1])
            return (
                w[i]
                * keras.losses.sparse_categorical_crossentropy(
                    y[i : i + 1], logits, from_logits=True
                )[0]
            )

        grads = gradients(model, loss)
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        expected = [e + min(1, clip / norm) * g for e, g in zip(expected, grads, strict=True)]
    private = _private(model, clip)
    before = weights(private)
    private.train_on_batch(x, y, sample_weight=w)
    stepped = [(b - a) * 12 for b, a in zip(before, weights(private), strict=True)]
    np.testing.assert_allclose(flat(stepped), flat(expected), rtol=1e-3, atol=1e-6)
    assert np.linalg.norm(flat(stepped)) <= 12 * clip * (1 + 1e-5)


def test_microbatches_clip_each_microbatch_mean(rng):
    model, x = _dense(rng)
    y = rng.integers(0, 3, size=12)
    clip = 1e-3
    # Reference: 4 microbatches of 3 consecutive examples, mean gradient of each clipped.
    expected = [np.zeros(v.shape) for v in model.trainable_variables]
    for m in range(4):
        grads = gradients(
            model,
            lambda m=m: keras.ops.mean(LOSS(y[3 * m : 3 * m + 3], model(x[3 * m : 3 * m + 3]))),
        )
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        expected = [e + min(1, clip / norm) * g for e, g in zip(expected, grads, strict=True)]
    private = _private(model, clip, num_microbatches=4)
    got = engine_clipped_sum(private, x, y, num_units=4)
    np.testing.assert_allclose(flat(got), flat(expected), rtol=1e-4, atol=1e-8)
    # The step averages over the 4 microbatches, not over the 12 examples.
    stepped = sgd_step_sum(private, x, y, batch_size=4)
    np.testing.assert_allclose(flat(stepped), flat(expected), rtol=1e-2, atol=1e-6)


def test_num_microbatches_must_divide_the_batch(rng):
    model, x = _dense(rng)
    private = _private(model, 1.0, num_microbatches=5)
    with pytest.raises(Exception, match="num_microbatches=5 must divide the batch size"):
        private.train_on_batch(x, rng.integers(0, 3, size=12))


@pytest.mark.parametrize("seed", [None, 3])
def test_dropout_gives_every_example_its_own_mask_and_stays_bounded(rng, seed):
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dropout(0.5, seed=seed),
            keras.layers.Dense(3, use_bias=False),
        ]
    )
    private = _private(model, clip=1e6)
    x = np.ones((6, 20), "float32")  # identical examples: only the masks can differ
    y = np.zeros(6, "int64")
    per_example = unit_gradients(private, x, y)[0].reshape(6, -1)
    distinct = {tuple(np.round(g, 6)) for g in per_example}
    assert len(distinct) == 6
    # The masks are fresh on the next step too.
    again = unit_gradients(private, x, y)[0]
    assert not np.allclose(again.reshape(6, -1), per_example)
    # Bounded like any other layer.
    private_small = _private(model, clip=0.01)
    contribution = flat(sgd_step_sum(private_small, x[:1], y[:1], batch_size=1))
    assert np.linalg.norm(contribution) <= 0.01 * (1 + 1e-5)


@pytest.mark.parametrize("seed", [None, 3])
def test_dropout_masks_differ_between_the_chunks_of_a_logical_batch(rng, seed):
    """Under gradient accumulation each chunk is a separate engine call at another unit
    offset: the same examples at another offset must not reuse the first chunk's masks."""
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dropout(0.5, seed=seed),
            keras.layers.Dense(3, use_bias=False),
        ]
    )
    private = _private(model, clip=1e6)
    x, y = np.ones((6, 20), "float32"), np.zeros(6, "int64")
    kwargs = {"num_units": None, "l2_norm_clip": 1e6}
    first = engine_batch(private, "vectorized", x, y, None, unit_offset=0, **kwargs)
    second = engine_batch(private, "vectorized", x, y, None, unit_offset=6, **kwargs)
    assert not np.allclose(to_numpy(first.grad_sum[0]), to_numpy(second.grad_sum[0]))


@tensorflow_only
def test_the_exact_loop_takes_an_empty_poisson_batch(rng):
    """A Poisson batch can be empty; the per-example loop (TensorFlow's fallback for
    models it cannot vectorize) then adds nothing instead of indexing a missing row."""
    model, x = _embedding_gru(rng)
    private = _private(model, 0.01)
    y = rng.integers(0, 3, size=len(x))
    with pytest.warns(UserWarning, match="one example at a time"):
        batch = engine_batch(
            private, private._dp_engine, x[:0], y[:0], None, num_units=None, l2_norm_clip=0.01
        )
    for g in batch.grad_sum:
        np.testing.assert_array_equal(np.asarray(g), 0.0)
    assert np.asarray(batch.unit_losses).shape == (0,)


@tensorflow_only
def test_unvectorizable_models_fall_back_to_an_exact_loop_with_one_warning(rng):
    model, x = _embedding_gru(rng)
    y = rng.integers(0, 3, size=12)
    private = _private(model, 0.01)
    with pytest.warns(UserWarning, match="computing them one example at a time"):
        private.fit(x, y, batch_size=4, epochs=1, verbose=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        private.train_on_batch(x, y)  # retraced for another input path: no second warning
