"""The fast engine's direct per-unit losses (built-in Keras losses in one batched call,
``keras_privacy.training.fast.unit_losses``): the same values as the compiled loss mapped
over units, and the same clipped sums as the per-example reference (masks, sample and
class weights, several outputs, the reductions)."""

import contextlib
import importlib

import keras
import numpy as np
import pytest
from helpers import BACKEND, engine_batch, gradients, to_numpy
from keras.src.losses.losses import LossFunctionWrapper as wrapper
from keras.src.trainers.data_adapters.data_adapter_utils import class_weight_to_sample_weights

import keras_privacy as kp
from keras_privacy.training.engine import to_units
from keras_privacy.training.fast import engine as fast_engine
from keras_privacy.training.fast.unit_losses import row_loss

ROWS, LENGTH, VOCAB = 6, 5, 7
EXTENDED = pytest.mark.extended
BACKEND_ENGINE = importlib.import_module(f"keras_privacy.training.backend.{BACKEND}.fast_engine")


def _sequence_model():
    """Tokens -> masked embedding (0 is padding) -> per-position logits: the loss is
    masked at the padded positions."""
    return keras.Sequential(
        [
            keras.Input((LENGTH,), dtype="int32"),
            keras.layers.Embedding(VOCAB, 4, mask_zero=True),
            keras.layers.Dense(VOCAB),
        ]
    )


def _two_output_model():
    inputs = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    out_a = keras.layers.Dense(VOCAB, name="a")(h)  # masked per position
    out_b = keras.layers.Dense(1, name="b")(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(inputs, {"a": out_a, "b": out_b})


def _case(name, rng):
    """(model, loss, loss_weights, x, y, sample_weight) of a named case."""
    ids = rng.integers(1, VOCAB, (ROWS, LENGTH)).astype("int32")
    ids[::2, -2:] = 0  # padded positions in every other row
    ids[1, :] = 0  # a row with no valid position (its loss is 0, not NaN)
    targets = rng.integers(0, VOCAB, (ROWS, LENGTH))
    row_weights = rng.random(ROWS).astype("float32") + 0.5
    if BACKEND == "torch":  # Keras's masked loss takes no row weights there (in place)
        row_weights = rng.random((ROWS, LENGTH)).astype("float32") + 0.5
    scce = keras.losses.SparseCategoricalCrossentropy
    if name == "mask_mean":
        return _sequence_model(), scce(from_logits=True), None, ids, targets, None
    if name == "mask_sum_row_weights":
        loss = scce(from_logits=True, reduction="sum")
        return _sequence_model(), loss, None, ids, targets, row_weights
    if name == "mask_mean_with_sample_weight":
        loss = scce(from_logits=True, reduction="mean_with_sample_weight")
        return _sequence_model(), loss, None, ids, targets, row_weights
    if name == "position_weights":  # sample weights [rows, positions]
        weights = rng.random((ROWS, LENGTH)).astype("float32")
        return _sequence_model(), scce(from_logits=True), None, ids, targets, weights
    if name == "class_weights":  # what fit(class_weight=...) passes on: row weights
        labels = rng.integers(0, 3, ROWS)
        weights = class_weight_to_sample_weights(labels, {0: 1.0, 1: 3.0, 2: 0.5})
        model = keras.Sequential(
            [keras.Input((LENGTH,), dtype="int32"), keras.layers.Embedding(VOCAB, 4),
             keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)]
        )  # fmt: skip
        return model, scce(from_logits=True), None, ids, labels, weights.astype("float32")
    if name == "two_outputs":
        y = {"a": targets, "b": rng.normal(size=(ROWS, 1)).astype("float32")}
        loss = {"a": scce(from_logits=True), "b": "mse"}
        weights = row_weights
        if BACKEND == "torch":  # one tensor per output: Keras's in-place masking of a
            # shared weights tensor there would carry output a's mask into output b
            weights = {"a": row_weights, "b": row_weights.copy()}
        return _two_output_model(), loss, {"a": 1.0, "b": 0.3}, ids, y, weights
    raise ValueError(name)


CASES = [
    "mask_mean",
    "mask_sum_row_weights",
    "mask_mean_with_sample_weight",
    "position_weights",
    "class_weights",
    "two_outputs",
]


def _private(name, rng, clip=1.0):
    model, loss, loss_weights, x, y, sw = _case(name, rng)
    private = kp.make_private(model, l2_norm_clip=clip, noise_multiplier=0.0, engine="fast")
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss, loss_weights=loss_weights)
    return private, x, y, sw


def _unit_losses(private, x, y, sw, num_units, direct):
    y_pred = private(x, training=True)
    return to_numpy(BACKEND_ENGINE._unit_losses(private, y, y_pred, sw, num_units, direct=direct))


#: Units of two rows: row weights ``[2]`` do not broadcast against a unit's mask
#: ``[2, positions]`` (Keras fails on such a unit too), so those cases are rows only.
UNIT_CASES = [
    (name, num_units)
    for name in CASES
    for num_units in (None, 3)
    if num_units is None or name in ("mask_mean", "position_weights", "class_weights")
]


#: In every backend's default suite (the rest: TF default, -m slow elsewhere).
CORE = (("two_outputs", None), ("mask_mean", 3))


@pytest.mark.parametrize(
    ("name", "num_units"),
    [pytest.param(*case, marks=() if case in CORE else EXTENDED) for case in UNIT_CASES],
)
def test_direct_unit_losses_equal_the_mapped_compiled_loss(name, num_units, rng, monkeypatch):
    private, x, y, sw = _private(name, rng)
    taken = []
    original = fast_engine.direct_unit_losses

    def spy(*args, **kwargs):
        taken.append(original(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(fast_engine, "direct_unit_losses", spy)
    direct = _unit_losses(private, x, y, sw, num_units, direct=True)
    assert taken and taken[-1] is not None  # the direct path computed them
    mapped = _unit_losses(private, x, y, sw, num_units, direct=False)
    assert direct.shape == mapped.shape == (ROWS if num_units is None else num_units,)
    np.testing.assert_allclose(direct, mapped, rtol=1e-6, atol=1e-7)


def _reference(private, x, y, sw, clip):
    """sum_i clip_C(grad of the compiled loss of example i alone)."""
    total = [np.zeros(v.shape, "float64") for v in private.trainable_variables]
    for i in range(ROWS):
        part = keras.tree.map_structure(lambda a, i=i: a[i : i + 1], (x, y))
        sw_i = None if sw is None else keras.tree.map_structure(lambda a, i=i: a[i : i + 1], sw)

        def loss(part=part, sw_i=sw_i):
            pred = private(part[0], training=True)
            return private._compute_loss(y=part[1], y_pred=pred, sample_weight=sw_i)

        grads = gradients(private, loss)
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        if np.isfinite(norm):  # a unit of non-finite norm contributes nothing
            factor = min(1.0, clip / norm) if norm > 0 else 0.0
            total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return total


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n == "two_outputs" else pytest.mark.extended) for n in CASES],
)
@pytest.mark.parametrize("clip", [1e-3, pytest.param(1e6, marks=EXTENDED)])
def test_fast_engine_with_direct_losses_equals_the_reference(name, clip, rng):
    private, x, y, sw = _private(name, rng, clip)
    batch = engine_batch(private, "fast", x, y, sw, num_units=None, l2_norm_clip=clip)
    reference = _reference(private, x, y, sw, clip)
    scale = np.sqrt(sum(np.sum(r**2) for r in reference))
    for got, want in zip(batch.grad_sum, reference, strict=True):
        np.testing.assert_allclose(to_numpy(got), want, rtol=2e-5, atol=2e-6 * scale)


def test_user_losses_and_other_axes_are_mapped_over_units(rng):
    """Only built-in row losses take the direct path: a user's function (it could mix
    rows) and a built-in loss over another axis are mapped over units."""

    def mixing(y_true, y_pred):
        return keras.ops.mean((y_pred - keras.ops.mean(y_pred, axis=0)) ** 2, axis=-1)

    assert not row_loss(wrapper(mixing))
    assert not row_loss(keras.losses.CategoricalCrossentropy(axis=0))
    assert not row_loss(keras.losses.SparseCategoricalCrossentropy(reduction=None))
    assert row_loss(keras.losses.SparseCategoricalCrossentropy())
    assert row_loss(wrapper(keras.losses.mean_squared_error))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    private = kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=0.0, engine="fast")
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=mixing)
    x = rng.normal(size=(4, 3)).astype("float32")
    y = rng.normal(size=(4, 2)).astype("float32")
    kwargs = dict(to_units=lambda t, n: t, scope=contextlib.nullcontext)
    assert fast_engine.direct_unit_losses(private, y, private(x), None, None, **kwargs) is None


def test_shapes_a_unit_cannot_broadcast_are_left_to_the_mapped_loss(rng):
    """Row weights against a two-row unit's mask ``[2, positions]``: Keras cannot
    broadcast them on the unit, so the direct path declines rather than computing
    something else."""
    private, x, y, _ = _private("mask_sum_row_weights", rng)
    sw = rng.random(ROWS).astype("float32")
    y_pred = private(x, training=True)
    kwargs = dict(to_units=to_units, scope=contextlib.nullcontext)
    assert fast_engine.direct_unit_losses(private, y, y_pred, sw, 3, **kwargs) is None
    rows = fast_engine.direct_unit_losses(private, y, y_pred, sw, None, **kwargs)
    # on torch Keras multiplies the row weights into the mask in place, which fails
    assert (rows is None) == (BACKEND == "torch")
