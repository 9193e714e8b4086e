"""The fast engine on shared weights (one variable reached by several calls: a tied
input/output embedding, a layer applied twice), on ReversibleEmbedding and on Keras's
LoRA (``enable_lora``): clipped sums equal the per-example reference at a clip norm that
clips every example (``C = 1e-3``: tests the norms) and at one that clips none
(``C = 1e6``: tests the gradients), and removing one example moves the sum by at most
``C``."""

import keras
import numpy as np
import pytest
from helpers import engine_batch, flat, reference_clipped_sum, to_numpy

import keras_privacy as kp
from keras_privacy.training.fast import clip as fast_clip
from keras_privacy.training.fast import units

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
VOCAB, STEPS, WIDTH = 23, 5, 8


def _private(model, clip, engine="fast"):
    private = kp.make_private(model, l2_norm_clip=clip, noise_multiplier=0.0, engine=engine, seed=0)
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    return private


def _fast_sum(private, x, y, clip, num_units=None):
    batch = engine_batch(private, "fast", x, y, None, num_units=num_units, l2_norm_clip=clip)
    return flat([np.asarray(to_numpy(g), "float64") for g in batch.grad_sum]), batch


def _assert_matches_reference(model, x, y, clip, rtol=1e-5):
    private = _private(model, clip)
    got, batch = _fast_sum(private, x, y, clip)
    assert all(keras.backend.standardize_dtype(g.dtype) == "float32" for g in batch.grad_sum)
    want = flat(reference_clipped_sum(private, LOSS, x, y, clip))
    assert np.linalg.norm(got - want) <= rtol * np.linalg.norm(want)
    return private


def _ids(rng, n=8, steps=STEPS):
    ids = rng.integers(1, VOCAB, size=(n, steps)).astype("int32")
    ids[:, :2] = 3  # repeated tokens within and across examples
    return ids


def _tied_lm(tie=True, soft_cap=None, mask_zero=False, vocab=VOCAB, width=WIDTH):
    """A tiny language model whose output projection is its input embedding (tied)."""
    ids = keras.Input((STEPS,), dtype="int32")
    embedding = keras.layers.ReversibleEmbedding(
        vocab, width, tie_weights=tie, logit_soft_cap=soft_cap, mask_zero=mask_zero
    )
    h = embedding(ids)
    h = keras.layers.Dense(width, activation="tanh")(h)
    h = keras.layers.LayerNormalization()(h)
    return keras.Model(ids, embedding(h, reverse=True))


def _siamese(sequence):
    """One Dense + LayerNormalization tower applied to two inputs (shared weights), then a
    head."""
    shape = (STEPS, 6) if sequence else (6,)
    left, right = keras.Input(shape), keras.Input(shape)
    dense = keras.layers.Dense(WIDTH, activation="tanh")
    norm = keras.layers.LayerNormalization()

    def tower(x):
        return norm(dense(x))

    h = keras.layers.Concatenate()([tower(left), tower(right)])
    if sequence:
        h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model([left, right], keras.layers.Dense(3)(h))


def _twice_embedded():
    """One Embedding applied to two id inputs."""
    a, b = keras.Input((STEPS,), dtype="int32"), keras.Input((STEPS,), dtype="int32")
    table = keras.layers.Embedding(VOCAB, WIDTH)
    h = keras.layers.Concatenate()([table(a), table(b)])
    return keras.Model([a, b], keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(h)))


def _random_lora(model, rank=2):
    for layer in model._flatten_layers():
        for name in ("lora_kernel_b", "lora_embeddings_b"):
            if hasattr(layer, name):  # B starts at zero: A would get no gradient
                v = getattr(layer, name)
                v.assign(np.random.default_rng(1).normal(size=v.shape).astype("float32"))


def _lora_net():
    """Dense, EinsumDense (attention-style, and a plain one) and Embedding with LoRA."""
    ids = keras.Input((STEPS,), dtype="int32")
    table = keras.layers.Embedding(VOCAB, WIDTH)
    h = table(ids)
    query = keras.layers.EinsumDense("abc,cde->abde", (STEPS, 2, 4), bias_axes="de")
    h = keras.layers.Reshape((STEPS, WIDTH))(query(h))
    back = keras.layers.EinsumDense("abde,dec->abc", (STEPS, WIDTH), bias_axes="c")
    h = back(keras.layers.Reshape((STEPS, 2, 4))(h))
    dense = keras.layers.Dense(WIDTH, activation="tanh")
    h = keras.layers.GlobalAveragePooling1D()(dense(h))
    model = keras.Model(ids, keras.layers.Dense(3)(h))
    for layer in (table, query, back, dense):
        layer.enable_lora(2)
    _random_lora(model)
    return model


def _lora_lm(tie=True):
    """The tiny language model with LoRA on its ReversibleEmbedding (``E = E0 + s A B``):
    tied, ``A`` and ``B`` are reached by the lookup and the output projection."""
    model = _tied_lm(tie=tie)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.ReversibleEmbedding):
            layer.enable_lora(2, lora_alpha=3.0)  # scale s = 1.5
    _random_lora(model)
    return model


def _inputs(name, rng):
    if name.startswith("siamese"):
        shape = (8, STEPS, 6) if name == "siamese_sequence" else (8, 6)
        return [rng.normal(size=shape).astype("float32") for _ in range(2)]
    if name == "embedding_twice":
        return [_ids(rng), _ids(rng)]
    return _ids(rng)


BUILDERS = {
    "tied": lambda: _tied_lm(),
    "untied": lambda: _tied_lm(tie=False),
    "tied_soft_cap_mask": lambda: _tied_lm(soft_cap=2.0, mask_zero=True),
    "siamese": lambda: _siamese(False),
    "siamese_sequence": lambda: _siamese(True),
    "embedding_twice": _twice_embedded,
    "lora": _lora_net,
    "tied_lora": _lora_lm,
    "untied_lora": lambda: _lora_lm(tie=False),
}
LM = ("tied", "untied", "tied_soft_cap_mask", "tied_lora", "untied_lora")
# The matrix is in TensorFlow's default suite and runs with -m slow elsewhere (JAX's suite
# has little room); every backend's default suite checks the tied model against the
# reference in test_dropping_the_cross_term_is_caught (the materialised projection) and
# test_tied_head_on_the_double_sum_equals_reference (the position double sum).
CORE: set = set()


def _labels(name, rng, n=8):
    return rng.integers(0, VOCAB, (n, STEPS)) if name in LM else rng.integers(0, 3, n)


@pytest.mark.parametrize(
    "name, clip",
    [
        pytest.param(n, c, marks=() if (n, c) in CORE else pytest.mark.extended)
        for n in BUILDERS
        for c in (1e-3, 1e6)
    ],
)
def test_fast_equals_per_example_reference(name, clip, rng):
    keras.utils.set_random_seed(0)
    model = BUILDERS[name]()
    x = _inputs(name, rng)
    _assert_matches_reference(model, x, _labels(name, rng), clip)


def test_dropping_the_cross_term_is_caught(rng, monkeypatch):
    """The tied model's test has power: without the lookup/projection cross term the
    norms are wrong and the clipped sum misses the reference."""
    keras.utils.set_random_seed(0)
    model, x = _tied_lm(), _ids(rng)
    y = _labels("tied", rng)
    _assert_matches_reference(model, x, y, 1e-3)
    monkeypatch.setattr(fast_clip, "_cross", lambda calls, units: None)
    with pytest.raises(AssertionError):
        _assert_matches_reference(model, x, y, 1e-3)


@pytest.mark.extended  # ~30 s on JAX: TensorFlow's default suite, -m slow elsewhere
def test_lora_on_a_tied_embedding_trains_on_the_fast_engine(rng, monkeypatch):
    """LoRA on a tied ReversibleEmbedding: only ``A`` and ``B`` are trainable, each reached
    by the lookup and the projection; the sum equals the reference, and without the cross
    terms it does not."""
    keras.utils.set_random_seed(0)
    model, x = _lora_lm(), _ids(rng)
    y = _labels("tied_lora", rng)
    _assert_matches_reference(model, x, y, 1e-3)  # engine="fast": exact, or it raises
    monkeypatch.setattr(fast_clip, "_cross", lambda calls, units: None)
    with pytest.raises(AssertionError):
        _assert_matches_reference(model, x, y, 1e-3)


# Vocabulary and width at which the tied projection's norm takes the position double sum
# (2 S (V + D) <= V D), as a real LM head does, rather than materialising [V, D].
GHOST_VOCAB, GHOST_WIDTH = 200, 16


@pytest.mark.parametrize(
    "float64_gram_bytes, clip",
    [
        (0, 1e-3),
        pytest.param(0, 1e6, marks=pytest.mark.extended),
        pytest.param(units.FLOAT64_GRAM_BYTES, 1e-3, marks=pytest.mark.extended),
    ],
)
def test_tied_head_on_the_double_sum_equals_reference(float64_gram_bytes, clip, rng, monkeypatch):
    """The tied projection's norm by the position double sum, with the Gram matrices of
    float64 copies or (``FLOAT64_GRAM_BYTES = 0``: every Gram, as a 32k-vocabulary LM
    head's logit gradients get) of float32 products, against the per-example reference."""
    assert 2 * STEPS * (GHOST_VOCAB + GHOST_WIDTH) <= GHOST_VOCAB * GHOST_WIDTH
    monkeypatch.setattr(units, "FLOAT64_GRAM_BYTES", float64_gram_bytes)
    keras.utils.set_random_seed(0)
    model = _tied_lm(vocab=GHOST_VOCAB, width=GHOST_WIDTH)
    x = rng.integers(1, GHOST_VOCAB, size=(8, STEPS)).astype("int32")
    x[:, :2] = 3
    _assert_matches_reference(model, x, rng.integers(0, GHOST_VOCAB, (8, STEPS)), clip)


@pytest.mark.extended
@pytest.mark.parametrize("name", ["tied", pytest.param("lora", marks=pytest.mark.slow)])
def test_each_example_moves_the_sum_by_at_most_clip(name, rng):
    keras.utils.set_random_seed(0)
    model, x = BUILDERS[name](), _inputs(name, rng)
    y = _labels(name, rng)
    clip = 0.05
    private = _private(model, clip)
    full, _ = _fast_sum(private, x, y, clip)
    for i in range(len(y)):
        rest = keras.tree.map_structure(lambda a, i=i: np.delete(a, i, axis=0), x)
        part, _ = _fast_sum(private, rest, np.delete(y, i, axis=0), clip)
        assert np.linalg.norm(full - part) <= clip * (1 + 1e-5)


@pytest.mark.extended
def test_microbatches_of_a_tied_model(rng):
    keras.utils.set_random_seed(0)
    model, x = _tied_lm(), _ids(rng)
    y = _labels("tied", rng)
    private = _private(model, 0.01)
    fast = engine_batch(private, "fast", x, y, None, num_units=4, l2_norm_clip=0.01)
    ref = engine_batch(private, "vectorized", x, y, None, num_units=4, l2_norm_clip=0.01)
    np.testing.assert_allclose(to_numpy(fast.norms), to_numpy(ref.norms), rtol=1e-5)
    got = flat([to_numpy(g) for g in fast.grad_sum])
    want = flat([to_numpy(g) for g in ref.grad_sum])
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


@pytest.mark.extended
def test_lora_clips_only_the_trainable_variables(rng):
    keras.utils.set_random_seed(0)
    model = _lora_net()
    private = _private(model, 1e-3, engine="auto")
    x, y = _ids(rng), _labels("lora", rng)
    frozen = [
        getattr(layer, "_kernel", None) if hasattr(layer, "lora_kernel_a") else layer._embeddings
        for layer in model._flatten_layers()
        if getattr(layer, "lora_enabled", False)
    ]
    assert len(frozen) == 4 and not any(v.trainable for v in frozen)
    trainable = {id(v) for v in private.trainable_variables}
    assert not trainable & {id(v) for v in frozen}
    private.train_on_batch(x, y)
    assert private.dp_engine_used == "fast"


@pytest.mark.parametrize(
    "policy, name",
    [
        pytest.param("mixed_bfloat16", "tied", marks=pytest.mark.extended),
        pytest.param("mixed_float16", "tied", marks=pytest.mark.slow),
        pytest.param("mixed_bfloat16", "lora", marks=pytest.mark.slow),
    ],
)
def test_mixed_precision_sums_in_float32_and_bounds_each_example(policy, name, rng):
    """Under a mixed policy the layers compute in 16 bits; the norms, cross terms and
    clipped sums are accumulated in float32 (float64 for the cross terms), agree with
    the vectorized engine to 16-bit rounding, and each example moves the sum by at most
    C."""
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model, x = BUILDERS[name](), _inputs(name, rng)
    y = _labels(name, rng)
    clip = 0.05
    private = _private(model, clip)
    full, batch = _fast_sum(private, x, y, clip)
    assert all(keras.backend.standardize_dtype(g.dtype) == "float32" for g in batch.grad_sum)
    assert keras.backend.standardize_dtype(batch.norms.dtype) == "float32"
    ref = engine_batch(private, "vectorized", x, y, None, num_units=None, l2_norm_clip=clip)
    np.testing.assert_allclose(to_numpy(batch.norms), to_numpy(ref.norms), rtol=3e-2)
    want = flat([to_numpy(g) for g in ref.grad_sum])
    assert np.linalg.norm(full - want) <= 3e-2 * np.linalg.norm(want)
    for i in (0, len(y) // 2, len(y) - 1):
        rest = keras.tree.map_structure(lambda a, i=i: np.delete(a, i, axis=0), x)
        part, _ = _fast_sum(private, rest, np.delete(y, i, axis=0), clip)
        assert np.linalg.norm(full - part) <= clip * (1 + 1e-5)
