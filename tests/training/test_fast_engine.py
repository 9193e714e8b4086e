"""The fast (norm-only) engine: same norms and clipped sums as the vectorized engine,
bounded contributions, the batch-independence guard, and the engine choice."""

import warnings
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from helpers import (
    BACKEND,
    core_cases,
    engine_batch,
    flat,
    gradients,
    reference_clipped_sum,
    sgd_step_sum,
    to_numpy,
)
from keras import ops

import keras_privacy as kp
from keras_privacy.training.fast import (
    LayerRule,
    batch_mixing_reason,
    probe,
    register_per_example_layer,
    register_rule,
)

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _private(model, clip=1.0, engine="auto", loss=LOSS, **kwargs):
    private = kp.make_private(
        model, l2_norm_clip=clip, noise_multiplier=0.0, engine=engine, seed=0, **kwargs
    )
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
    return private


def _both(model, x, y, sw=None, num_units=None, clip=1.0, loss=LOSS):
    """(fast, vectorized) ClippedBatch of the same batch."""
    private = _private(model, clip, engine="fast", loss=loss)
    args = (x, y, sw)
    kwargs = {"num_units": num_units, "l2_norm_clip": clip}
    fast = engine_batch(private, "fast", *args, **kwargs)
    ref = engine_batch(private, private._dp_engine, *args, **kwargs)
    return fast, ref


class _Loop:
    """Per-unit reference by a GradientTape loop (for EinsumDense: TensorFlow 2.21's
    vectorizer computes wrong per-example einsum gradients and can corrupt memory)."""

    def __init__(self, private, x, y, num_units, clip):
        rows = 1 if num_units is None else len(x) // num_units
        norms, total = [], None
        for i in range(0, len(x), rows):
            grads = gradients(
                private,
                lambda i=i: keras.ops.mean(
                    LOSS(y[i : i + rows], private(x[i : i + rows], training=True))
                ),
            )
            norm = np.sqrt(sum(np.sum(g**2) for g in grads))
            scaled = [min(1.0, clip / norm) * g for g in grads]
            total = scaled if total is None else [t + g for t, g in zip(total, scaled, strict=True)]
            norms.append(norm)
        self.norms, self.grad_sum = np.array(norms), total


def _assert_same(fast, ref, rtol=1e-5):
    f_norms, r_norms = np.asarray(fast.norms), np.asarray(ref.norms)
    np.testing.assert_array_equal(np.isfinite(f_norms), np.isfinite(r_norms))
    ok = np.isfinite(r_norms)
    np.testing.assert_allclose(f_norms[ok], r_norms[ok], rtol=rtol)
    # Relative 1e-5 per variable, and for a variable whose sum is small against the whole
    # (a bias whose per-example terms cancel; a key bias in attention, 0 up to rounding)
    # relative to a tenth of the whole clipped sum.
    floor = 0.1 * np.linalg.norm(flat([np.asarray(r, "float64") for r in ref.grad_sum]))
    for f, r in zip(fast.grad_sum, ref.grad_sum, strict=True):
        f, r = np.asarray(f, "float64"), np.asarray(r, "float64")
        assert f.shape == r.shape
        assert np.all(np.isfinite(f))
        assert np.linalg.norm(f - r) <= rtol * max(np.linalg.norm(r), floor) + 1e-30


def _mlp(rng, activation="tanh"):
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation=activation), keras.layers.Dense(3)]
    )
    return model, rng.normal(size=(12, 6)).astype("float32")


def _sequence_dense(rng, steps, width, features=4):
    """Dense on [B, T, d]: short sequences take the norm-only path, long ones the
    materialised one (the rule picks from static shapes)."""
    model = keras.Sequential(
        [
            keras.Input((steps, features)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    return model, rng.normal(size=(12, steps, features)).astype("float32")


def _einsum(rng):
    inputs = keras.Input((5, 4))
    h = keras.layers.EinsumDense("abc,cde->abde", (5, 2, 3), bias_axes="de")(inputs)
    h = keras.layers.EinsumDense("abde,dec->abc", (5, 6), bias_axes="c", activation="tanh")(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.EinsumDense("ab,bc->ac", (3,))(h)
    return keras.Model(inputs, outputs), rng.normal(size=(12, 5, 4)).astype("float32")


def _embedding(rng, mask_zero=False):
    model = keras.Sequential(
        [
            keras.Input((7,), dtype="int32"),
            keras.layers.Embedding(30, 4, mask_zero=mask_zero),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    ids = rng.integers(0, 30, size=(12, 7)).astype("int32")
    ids[:, :3] = 5  # repeated tokens within and across examples
    ids[::2, -2:] = 0  # padding (masked with mask_zero)
    return model, ids


def _norms(rng):
    layers = [keras.Input((5, 6)), keras.layers.Dense(8), keras.layers.LayerNormalization()]
    if hasattr(keras.layers, "RMSNormalization"):
        layers.append(keras.layers.RMSNormalization())
    layers += [
        keras.layers.GroupNormalization(groups=2),
        keras.layers.GroupNormalization(groups=4, center=False),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ]
    return keras.Sequential(layers), rng.normal(size=(12, 5, 6)).astype("float32")


def _transformer(rng, dropout=0.0):
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(40, 8)(inputs)
    a = keras.layers.MultiHeadAttention(2, 4, dropout=dropout)(h, h)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, a]))
    f = keras.layers.Dense(16, activation="relu")(h)
    f = keras.layers.Dropout(dropout)(keras.layers.Dense(8)(f))
    h = keras.layers.LayerNormalization()(h + f)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(inputs, outputs), rng.integers(0, 40, size=(12, 6)).astype("int32")


def _conv_net(rng, rank, padding, strides, dilation):
    shape = (9, 3) if rank == 1 else (8, 7, 2)
    conv = keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D
    model = keras.Sequential(
        [
            keras.Input(shape),
            conv(4, 3, strides=strides, padding=padding, dilation_rate=dilation, activation="relu"),
            conv(3, 2, padding="same" if padding != "causal" else "causal", use_bias=False),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    return model, rng.normal(size=(12, *shape)).astype("float32")


def _conv_layers_net(rng, shape, *layers):
    model = keras.Sequential(
        [keras.Input(shape), *layers, keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    return model, rng.normal(size=(12, *shape)).astype("float32")


CONV = keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D
BUILDERS = {
    "conv2d_groups": lambda rng: _conv_layers_net(
        rng,
        (7, 6, 4),
        CONV[1](6, 3, groups=2, padding="same", activation="relu"),
        CONV[1](6, 2, groups=3, strides=2),
    ),
    # Two output positions per example and wide groups: the double sum is cheaper.
    "conv2d_groups_double_sum": lambda rng: _conv_layers_net(
        rng, (4, 3, 16), CONV[1](32, 3, groups=2)
    ),
    "conv1d_depthwise_causal": lambda rng: _conv_layers_net(
        rng, (9, 4), CONV[0](4, 3, groups=4, padding="causal", dilation_rate=2)
    ),
    "conv3d": lambda rng: _conv_layers_net(
        rng,
        (5, 6, 4, 2),
        CONV[2](4, (2, 3, 2), strides=(1, 2, 1), padding="same", activation="relu"),
        CONV[2](3, 2, dilation_rate=2, padding="same", use_bias=False),
    ),
    "mlp": _mlp,
    "mlp_linear": lambda rng: _mlp(rng, None),
    "sequence_ghost": lambda rng: _sequence_dense(rng, 2, 32, features=16),
    "sequence_materialised": lambda rng: _sequence_dense(rng, 20, 4),
    "embedding": _embedding,
    "embedding_mask_zero": lambda rng: _embedding(rng, True),
    "norm_layers": _norms,
    "conv1d_causal_dilated": lambda rng: _conv_net(rng, 1, "causal", 1, 2),
    "conv1d_same_strided": lambda rng: _conv_net(rng, 1, "same", 2, 1),
    "conv2d_valid_strided": lambda rng: _conv_net(rng, 2, "valid", 2, 1),
    "conv2d_same_dilated": lambda rng: _conv_net(rng, 2, "same", 1, 2),
}


#: On JAX, norm_layers with 4 units runs with -m slow: the norm rules share
#: _ScaleOffsetRule, whose per-unit sums JAX's default suite checks on LayerNormalization
#: (test_weight_regularization.py, test_fast_engine_equals_vectorized_on_a_regularized_model
#: with 4 units), and norm_layers runs there per example.
FAST_EQUALS_VECTORIZED = [
    pytest.param(
        case.values[0],
        num_units,
        marks=[
            *case.marks,
            *(
                [pytest.mark.slow_on_jax]
                if (case.values[0], num_units) == ("norm_layers", 4)
                else []
            ),
        ],
    )
    for case in core_cases(
        sorted(BUILDERS),
        {"mlp", "sequence_ghost", "embedding", "norm_layers", "conv2d_valid_strided"},
    )
    for num_units in (None, 4)
]


@pytest.mark.parametrize("name, num_units", FAST_EQUALS_VECTORIZED)
def test_fast_equals_vectorized(name, num_units, rng):
    model, x = BUILDERS[name](rng)
    y = rng.integers(0, 3, len(x))
    fast, ref = _both(model, x, y, num_units=num_units)
    _assert_same(fast, ref)
    np.testing.assert_allclose(np.asarray(fast.unit_losses), np.asarray(ref.unit_losses), 1e-5)


@pytest.mark.parametrize("num_units", [None, 4])
def test_grouped_conv3d_equals_reference(num_units, rng):
    """TensorFlow's vectorizer cannot run a grouped Conv3D on the CPU: compared with the
    one-example-at-a-time reference instead."""
    model, x = _conv_layers_net(rng, (4, 4, 3, 4), CONV[2](4, 2, groups=2, padding="valid"))
    y = rng.integers(0, 3, len(x))
    private = _private(model, engine="fast")
    fast = engine_batch(private, "fast", x, y, None, num_units=num_units, l2_norm_clip=1.0)
    _assert_same(fast, _Loop(private, x, y, num_units, 1.0))


@pytest.mark.parametrize("num_units", [None, 4])
def test_einsum_dense_equals_reference(num_units, rng):
    model, x = _einsum(rng)
    y = rng.integers(0, 3, len(x))
    private = _private(model, engine="fast")
    fast = engine_batch(private, "fast", x, y, None, num_units=num_units, l2_norm_clip=1.0)
    _assert_same(fast, _Loop(private, x, y, num_units, 1.0))


@pytest.mark.slow_on_jax  # JAX: test_auto_picks_fast_and_trains_exactly[transformer]
def test_transformer_block_equals_reference(rng):
    """MultiHeadAttention + Dense + LayerNormalization + Embedding (the vectorized engine
    miscomputes per-example einsum gradients on TensorFlow 2.21, so the reference is the
    GradientTape loop). On JAX (38 s there) with -m slow: its default suite checks the
    same block's step against the per-example reference in
    ``test_auto_picks_fast_and_trains_exactly[transformer]``."""
    model, x = _transformer(rng)
    y = rng.integers(0, 3, len(x))
    private = _private(model, clip=0.5, engine="fast")
    fast = engine_batch(private, "fast", x, y, None, num_units=None, l2_norm_clip=0.5)
    expected = reference_clipped_sum(private, LOSS, x, y, 0.5)
    got = flat([np.asarray(g, "float64") for g in fast.grad_sum])
    assert np.linalg.norm(got - flat(expected)) <= 1e-5 * np.linalg.norm(flat(expected))
    _assert_same(fast, _Loop(private, x, y, None, 0.5))
    fast = engine_batch(private, "fast", x, y, None, num_units=3, l2_norm_clip=0.5)
    _assert_same(fast, _Loop(private, x, y, 3, 0.5))


def test_sample_weights_and_multiple_outputs(rng):
    inputs = [keras.Input((4,)), keras.Input((3,))]
    h = keras.layers.Dense(5, activation="tanh")(keras.layers.Concatenate()(inputs))
    out_a = keras.layers.Dense(3, name="a")(h)
    out_b = keras.layers.Dense(1, name="b")(h)
    model = keras.Model(inputs, {"a": out_a, "b": out_b})
    x = [rng.normal(size=(10, 4)).astype("float32"), rng.normal(size=(10, 3)).astype("float32")]
    y = {"a": rng.integers(0, 3, 10), "b": rng.normal(size=(10, 1)).astype("float32")}
    sw = rng.random(10).astype("float32")
    loss = {"a": LOSS, "b": keras.losses.MeanSquaredError()}
    fast, ref = _both(model, x, y, sw=sw, loss=loss)
    _assert_same(fast, ref)


@pytest.mark.parametrize(
    "name",
    [
        "mlp_linear",
        "embedding",
        "sequence_ghost",
        "sequence_materialised",
        # JAX runs the vectorized reference twice here (NaN spreads in its vmap of a
        # grouped convolution): with -m slow there, where the grouped conv rule's scaled
        # path is checked by conv2d_groups_double_sum.
        pytest.param("conv2d_groups", marks=pytest.mark.slow_on_jax),
        "conv2d_groups_double_sum",
        "conv3d",
    ],
)
def test_adversarial_rows(name, rng):
    """Rows x1e30 (squares overflow float32: the scaled path) and NaN rows (contribute
    exactly zero) give the vectorized engine's norms and sums."""
    model, x = BUILDERS[name](rng)
    y = rng.integers(0, 3, len(x))
    if name == "embedding":
        model.layers[0].embeddings.assign(model.layers[0].embeddings * 1e30)
    else:
        x[1] *= 1e30
        x[4] = np.nan
    # Labels the saturated softmax gets wrong, so that the gradients are ~1e30.
    y = (np.argmax(to_numpy(model(x)), axis=-1) + 1) % 3
    fast, ref = _both(model, x, y)
    if BACKEND != "tensorflow" and name.startswith("conv2d_groups"):
        # JAX's vmap of a grouped convolution spreads one row's NaN to every row of the
        # vectorized reference (all its norms NaN): the reference of the other rows,
        # with row 4 non-finite, is what the fast engine must give.
        _, rest = _both(model, np.delete(x, 4, axis=0), np.delete(y, 4))
        ref = SimpleNamespace(
            norms=np.insert(np.asarray(rest.norms), 4, np.nan), grad_sum=rest.grad_sum
        )
    norms = np.asarray(ref.norms)
    assert np.any(norms > 1e20)
    if name != "embedding":
        assert not np.isfinite(norms[4])
    _assert_same(fast, ref)


@pytest.mark.parametrize(
    "name",
    [
        "mlp",
        "embedding",
        # 20-30 s each on JAX: -m slow there, where the bound of the conv and einsum rules
        # is checked by test_clipping_mechanics.py's
        # test_each_example_contribution_is_bounded_by_clip[conv2d|attention_einsum] (the
        # fast engine) and their sums by test_fast_equals_vectorized and
        # test_einsum_dense_equals_reference.
        *(
            pytest.param(n, marks=pytest.mark.slow_on_jax)
            for n in ("einsum", "conv2d_same_dilated", "conv2d_groups")
        ),
    ],
)
def test_each_unit_contributes_at_most_clip(name, rng):
    """Removing any one example changes the fast engine's clipped sum by at most C."""
    model, x = _einsum(rng) if name == "einsum" else BUILDERS[name](rng)
    y = rng.integers(0, 3, len(x))
    clip = 0.1
    private = _private(model, clip, engine="fast")
    engine = private._dp_engines["fast"]

    def total(xs, ys):
        batch = engine_batch(private, engine, xs, ys, None, num_units=None, l2_norm_clip=clip)
        return flat([np.asarray(g, "float64") for g in batch.grad_sum])

    full = total(x, y)
    for i in range(len(x)):
        rest = total(np.delete(x, i, axis=0), np.delete(y, i))
        assert np.linalg.norm(full - rest) <= clip * (1 + 1e-5)


def _tutorial_cnn(rng):
    from keras_privacy.models import tutorial_cnn

    return tutorial_cnn(), rng.normal(size=(8, 28, 28, 1)).astype("float32")


@pytest.mark.parametrize(
    "name",
    # tutorial_cnn (19 s on JAX): -m slow there, whose default suite checks the conv rule's
    # step against the per-example reference in test_clipping_mechanics.py (conv2d).
    [
        "mlp",
        "embedding",
        "transformer",
        pytest.param("tutorial_cnn", marks=pytest.mark.slow_on_jax),
    ],
)
def test_auto_picks_fast_and_trains_exactly(name, rng):
    """One SGD(lr=1) step without noise through train_on_batch moves the weights by
    exactly the per-example reference's clipped sum / B."""
    special = {"transformer": _transformer, "tutorial_cnn": _tutorial_cnn}
    model, x = special[name](rng) if name in special else BUILDERS[name](rng)
    y = rng.integers(0, 3, len(x))
    private = _private(model, clip=0.5)
    expected = reference_clipped_sum(private, LOSS, x, y, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        got = sgd_step_sum(private, x, y, len(x))
    assert private.dp_engine_used == "fast"
    assert np.linalg.norm(flat(got) - flat(expected)) <= 1e-4 * np.linalg.norm(flat(expected))


# 36 s on JAX (a transformer's fit compiles): -m slow there, whose default suite checks
# per-example dropout masks on the DP step (test_clipping_mechanics.py,
# test_dropout_gives_every_example_its_own_mask_and_stays_bounded) and the transformer on
# the fast engine (test_auto_picks_fast_and_trains_exactly[transformer]).
@pytest.mark.slow_on_jax
def test_dropout_trains_with_fast_engine(rng):
    model, x = _transformer(rng, dropout=0.5)
    y = rng.integers(0, 3, len(x))
    private = _private(model, clip=0.5)
    private.fit(x, y, batch_size=6, epochs=1, verbose=0)
    assert private.dp_engine_used == "fast"
    # Identical rows get their own dropout masks, so their gradient norms differ.
    same = np.repeat(x[:1], 6, axis=0)
    batch = private._dp_clipped(same, np.repeat(y[:1], 6), None, num_units=None)
    assert len(np.unique(np.round(np.asarray(batch.norms), 6))) > 1


class Scale(keras.layers.Layer):
    """y = x * w, per feature."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


class ScaleRule(LayerRule):
    def variables(self, layer):
        return [layer.w]

    def forward(self, layer, inputs, *args, **kwargs):
        z = probe(inputs * layer.w)  # where the computation goes on from z (JAX taps it)
        return z, {"a": inputs}, {"z": z}

    def _grads(self, call):
        return ops.cast(call.saved["a"] * call.grads["z"], "float32")

    def squared_norms(self, call, units):
        return ops.sum(ops.square(self._grads(call)), axis=1)

    def norms(self, call, units):
        return ops.sqrt(self.squared_norms(call, units))

    def clipped_sums(self, call, units, factors, safe):
        return [ops.sum(self._grads(call) * factors[:, None], axis=0)]


def test_register_rule_for_custom_layer(rng):
    def model():
        return keras.Sequential([keras.Input((6,)), Scale(), keras.layers.Dense(3)])

    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.integers(0, 3, 8)
    assert "Scale" in batch_mixing_reason(model())
    register_rule(Scale, ScaleRule())
    fast, ref = _both(model(), x, y)
    _assert_same(fast, ref)
    with pytest.raises(TypeError):
        register_rule(Scale, object())
    with pytest.raises(TypeError):
        register_per_example_layer(int)


@pytest.mark.tensorflow_only(reason="tf.function")
def test_fast_engine_inside_tf_function_keeps_model_unchanged(rng):
    model, x = _mlp(rng)
    private = _private(model)
    y = rng.integers(0, 3, len(x))

    import tensorflow as tf

    @tf.function
    def step():
        return private._dp_clipped(x, y, None, num_units=None).norms

    step()
    assert all("call" not in vars(layer) for layer in model.layers)
    np.testing.assert_allclose(to_numpy(model(x)), to_numpy(model(x)))


@pytest.mark.parametrize(
    # norm_layers on JAX with -m slow: mixed precision there by mlp and embedding, the
    # norm rules in float32 by test_fast_equals_vectorized[norm_layers-None].
    "name",
    ["mlp", "embedding", pytest.param("norm_layers", marks=pytest.mark.slow_on_jax)],
)
def test_mixed_precision_matches_vectorized(name, rng):
    """Under mixed_float16 both engines compute in float16 and clip in float32; they agree
    to float16 rounding."""
    keras.config.set_dtype_policy("mixed_float16")
    model, x = BUILDERS[name](rng)
    y = rng.integers(0, 3, len(x))
    fast, ref = _both(model, x, y)
    assert all(keras.backend.standardize_dtype(g.dtype) == "float32" for g in fast.grad_sum)
    _assert_same(fast, ref, rtol=2e-3)


def test_the_matmul_rule_picks_the_double_sum_or_materialising_from_static_shapes():
    from keras_privacy.training.fast import DenseRule

    rng = np.random.default_rng(3)
    for positions, d_in, d_out, materialised in ((2, 16, 32, False), (20, 4, 4, True)):
        a = rng.normal(size=(3, positions, d_in)).astype("float32")
        d = rng.normal(size=(3, positions, d_out)).astype("float32")
        keep = {}
        sq = keras.ops.convert_to_numpy(DenseRule()._kernel_sq(a, d, positions, keep=keep))
        assert ("G" in keep) == materialised
        want = [np.sum((a[u].T.astype("float64") @ d[u]) ** 2) for u in range(3)]
        np.testing.assert_allclose(sq, want, rtol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="traces a tf.function")
def test_conv_positions_are_known_for_a_batch_of_unknown_size():
    """Poisson batches have a dynamic size; the rule must still see 196 output positions
    per example (else it picks the position double sum: 196^2 terms per example)."""
    import tensorflow as tf

    from keras_privacy.training.fast import ConvRule
    from keras_privacy.training.fast.rules import RuleCall
    from keras_privacy.training.fast.units import Units

    layer = keras.layers.Conv2D(16, 8, strides=2, padding="same")
    layer.build((None, 28, 28, 1))
    rule, seen = ConvRule(), {}

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1])])
    def trace(x):
        out, saved, probes = rule.forward(layer, x)
        call = RuleCall(layer, rule, saved, probes, grads={"z": probes["z"]})
        keep = {}
        a, d = rule._kernel_2d(call, Units(None))
        rule._kernel_sq(a, d, call.cache["positions"], keep=keep)
        seen.update(positions=call.cache["positions"], materialised="G" in keep)
        return out

    trace.get_concrete_function()
    assert seen == {"positions": 196, "materialised": True}


@pytest.mark.skipif(BACKEND != "jax", reason="JAX: the heap XLA's compile of the DP step frees")
def test_jax_heap_freed_by_the_step_compile_is_released_once(monkeypatch):
    """The fast engine's trace arms one release of the freed C heap, done after the next
    XLA compile (the step's), before the step's own buffers are allocated."""
    from keras_privacy.training.backend.jax import fast_engine as jax_fast

    released = []
    monkeypatch.setattr(jax_fast, "release_freed_heap", lambda: released.append(1) or True)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    private = _private(model, engine="fast", sampling="shuffle")
    x, y = np.ones((4, 3), "float32"), np.zeros(4, "int32")
    private.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert private.dp_engine_used == "fast"
    assert released == [1] and not jax_fast._heap_release.armed


# PyTorch's route (its segment_max reduced in float32); on JAX with -m slow, whose default
# suite checks the embedding rule against the per-example reference (embedding cases above
# and in test_clipping_mechanics.py).
@pytest.mark.slow_on_jax
@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_embedding_keys_above_float32_precision(clip, rng):
    """The embedding rule groups rows by the int64 key ``id * U + unit``; with a
    1,048,576-row table and 20 units the keys pass 2^24, where Keras's PyTorch
    ``segment_max`` (float32) rounded them: rows went to the wrong unit and id. Norms and
    clipped sums equal the per-example reference at a binding and a loose clip."""
    vocab = 1 << 20
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(vocab, 2),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    x = rng.integers(vocab - 8, vocab, size=(20, 3)).astype("int32")
    y = rng.integers(0, 3, len(x))
    fast, ref = _both(model, x, y, clip=clip)
    _assert_same(fast, ref)
    expected = reference_clipped_sum(model, LOSS, x, y, clip)
    for f, r in zip(fast.grad_sum, expected, strict=True):
        np.testing.assert_allclose(np.asarray(f, "float64"), r, rtol=1e-5, atol=1e-7 * clip)


# PyTorch's routes (recomputed sums, class-major gradients); on JAX with -m slow, whose
# default suite checks the materialised sequence Dense against the vectorized engine
# (test_adversarial_rows[sequence_materialised]) and the double sum (sequence_ghost).
@pytest.mark.slow_on_jax
@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_sequence_dense_recomputed_and_class_major_sums(clip, rng, monkeypatch):
    """Per-token labels (64 classes) over 10 positions of 32 features. The hidden
    Dense(32)'s per-unit gradients are materialised for its norm (32 x 32 against
    2 x 10 x 64) but larger than its inputs, so on PyTorch they are not kept and the
    clipped sum recomputes them. The head (a double sum) gets its output gradient from
    Keras's cross-entropy laid out class-major, which PyTorch sums unit by unit rather
    than copying. Both equal the per-example reference at a binding and a loose clip."""
    from keras_privacy.training.fast import units as fast_units

    seen = {"kept": [], "views": []}
    keep, outer = fast_units.backend_ops["keep_materialised"], fast_units.backend_ops["outer_sum"]

    def spy_keep(grads, a, d):
        seen["kept"].append(keep(grads, a, d))
        return seen["kept"][-1]

    def spy_outer(a, d):
        flat = ops.reshape(ops.convert_to_tensor(d), (-1, d.shape[-1]))
        if BACKEND == "torch":
            seen["views"].append(flat.data_ptr() == ops.convert_to_tensor(d).data_ptr())
        return outer(a, d)

    monkeypatch.setitem(fast_units.backend_ops, "keep_materialised", spy_keep)
    monkeypatch.setitem(fast_units.backend_ops, "outer_sum", spy_outer)
    model = keras.Sequential(
        [keras.Input((10, 32)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(64)]
    )
    x = rng.normal(size=(6, 10, 32)).astype("float32")
    y = rng.integers(0, 64, (6, 10))
    fast, ref = _both(model, x, y, clip=clip)
    _assert_same(fast, ref)
    expected = reference_clipped_sum(model, LOSS, x, y, clip)
    for f, r in zip(fast.grad_sum, expected, strict=True):
        np.testing.assert_allclose(np.asarray(f, "float64"), r, rtol=1e-5, atol=1e-7 * clip)
    assert seen["kept"] == [BACKEND != "torch"]  # the hidden layer; the head is a double sum
    if BACKEND == "torch":
        assert False in seen["views"]  # the head's class-major output gradient
