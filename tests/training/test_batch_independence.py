"""The fast engine's two lines of defence against batch mixing -- the allow-list
(``batch_mixing_reason``) and the numerical check (``independence.run_check``) -- and the
property they protect: removing one example moves the clipped sum by at most C, under
every engine, on every backend.

Each mixing pattern of the matrix is listed with the defences that catch it, so that a
pattern that slips through one of them is visible here (and the other must still catch
it).
"""

import warnings

import keras
import numpy as np
import pytest
from helpers import flat, reference_clipped_sum, to_numpy
from keras import ops
from test_fast_engine import LOSS

import keras_privacy as kp
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.fast import (
    batch_mixing_reason,
    guard,
    independence,
    register_per_example_layer,
)

L = keras.layers


def _center(z):
    return z - ops.mean(z, axis=0, keepdims=True)


def _pull(z):
    return z + 3.0 * ops.mean(z, axis=0, keepdims=True)


def _global_mean(z):
    return z - ops.mean(z)


def _cumsum(z):
    return ops.cumsum(z, axis=0)


def _outlier_flip(z):
    """Every row's sign follows the batch's largest entry: one outlier flips them all."""
    return z * ops.sign(ops.max(z, axis=0, keepdims=True) - 10.0)


class Vouched(L.Layer):
    """A custom layer that mixes the batch and that a user registered as per-example."""

    def call(self, x):
        return x - ops.mean(x, axis=0, keepdims=True)


register_per_example_layer(Vouched)


class MixingAttention(L.MultiHeadAttention):
    """Keeps MultiHeadAttention.call but mixes the batch in a method that call uses."""

    def _compute_attention(self, *args, **kwargs):
        out, scores = super()._compute_attention(*args, **kwargs)
        return out - ops.mean(out, axis=0, keepdims=True), scores


class MixBatch(L.Layer):
    """An unregistered custom layer that subtracts the batch mean."""

    def call(self, x):
        return x - ops.mean(x, axis=0, keepdims=True)


def _functional_op():
    inputs = keras.Input((6,))
    h = L.Dense(8)(inputs)
    return keras.Model(inputs, L.Dense(3)(h - ops.mean(h, axis=0)))


def _patched_call():
    dense = L.Dense(8)
    model = keras.Sequential([keras.Input((6,)), dense, L.Dense(3)])
    dense.call = lambda x, **kwargs: L.Dense.call(dense, x - ops.mean(x, axis=0))
    return model


def _mlp(activation=None, middle=None):
    layers = [keras.Input((6,)), L.Dense(8, activation=activation)]
    if middle is not None:
        layers.append(middle)
    return keras.Sequential([*layers, L.Dense(3)])


def _attention(layer_class):
    inputs = keras.Input((4, 6))
    h = layer_class(num_heads=2, key_dim=3)(inputs, inputs)
    return keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling1D()(h)))


# name -> (model builder, caught by the allow-list, caught by the numerical check)
MIXING = {
    "dense_activation_center": (lambda: _mlp(_center), True, True),
    "dense_activation_pull": (lambda: _mlp(_pull), True, True),
    "dense_activation_global_mean": (lambda: _mlp(_global_mean), True, True),
    "dense_activation_cumsum": (lambda: _mlp(_cumsum), True, True),
    "dense_activation_outlier_flip": (lambda: _mlp(_outlier_flip), True, True),
    "activation_layer_center": (lambda: _mlp(middle=L.Activation(_center)), True, True),
    "activation_layer_cumsum": (lambda: _mlp(middle=L.Activation(_cumsum)), True, True),
    "subclass_overrides_helper": (lambda: _attention(MixingAttention), True, True),
    "vouched_custom_layer": (lambda: _mlp(middle=Vouched()), False, True),
    "custom_layer": (lambda: _mlp(middle=MixBatch()), True, True),
    "functional_op": (_functional_op, True, True),
    "call_replaced_on_instance": (_patched_call, True, True),
}
# Per-example models the allow-list refuses (unknown callables) or accepts.
PER_EXAMPLE = {
    "activation_lambda_relu": (lambda: _mlp(middle=L.Activation(lambda z: ops.relu(z))), True),
    "dense_ops_relu": (lambda: _mlp(ops.relu), False),
    "dense_relu_dropout": (lambda: _mlp("relu", L.Dropout(0.5)), False),
    "dense_softmax_gaussian_noise": (lambda: _mlp("softmax", L.GaussianNoise(0.3)), False),
    "attention": (lambda: _attention(L.MultiHeadAttention), False),
}


def _data(rng, model, rows=8):
    shape = model.inputs[0].shape[1:]
    x = rng.normal(size=(rows, *shape)).astype("float32")
    x[0] *= 100.0  # an outlier: what a leak would carry into every other example
    return x, rng.integers(0, 3, rows)


def _private(model, engine, clip=1.0):
    private = kp.make_private(model, l2_norm_clip=clip, noise_multiplier=0.0, engine=engine, seed=0)
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    return private


def _clipped(private, x, y):
    batch = private._dp_clipped(x, y, None, num_units=None)
    return flat([to_numpy(g) for g in batch.grad_sum])


def _remove_one_sensitivity(private, x, y):
    """max_i || sum(batch) - sum(batch without example i) ||, noise 0."""
    full = _clipped(private, x, y)
    return max(
        np.linalg.norm(full - _clipped(private, np.delete(x, i, 0), np.delete(y, i)))
        for i in range(len(x))
    )


@pytest.mark.parametrize("name", sorted(MIXING))
def test_each_mixing_pattern_is_caught_by_the_defences_listed(name, rng):
    build, by_list, by_check = MIXING[name]
    model = build()
    x, _ = _data(rng, model)
    assert (batch_mixing_reason(model) is not None) == by_list, batch_mixing_reason(model)
    reason = independence.run_check(model, x)
    assert (reason is not None) == by_check, reason
    if by_check:
        assert "mixes the examples" in reason


@pytest.mark.parametrize("name", sorted(PER_EXAMPLE))
def test_per_example_models_pass_the_numerical_check(name, rng):
    build, refused_by_list = PER_EXAMPLE[name]
    model = build()
    x, _ = _data(rng, model)
    assert independence.run_check(model, x) is None
    assert (batch_mixing_reason(model) is not None) == refused_by_list


# Random layers draw new masks for every batch, so a remove-one comparison needs the
# deterministic models.
DETERMINISTIC = sorted(MIXING) + [
    n for n in sorted(PER_EXAMPLE) if "drop" not in n and "noise" not in n
]


#: (name, engine): a mixing model under "auto" falls back to the vectorized engine (the test
#: asserts it), so on JAX its explicit "vectorized" case repeats the same engine on the
#: same model and runs with -m slow (the default suite on TensorFlow and PyTorch).
REMOVE_ONE_CASES = [
    pytest.param(
        name,
        engine,
        marks=pytest.mark.slow_on_jax if name in MIXING and engine == "vectorized" else (),
    )
    for name in DETERMINISTIC
    for engine in ("auto", "vectorized")
]


@pytest.mark.parametrize("name, engine", REMOVE_ONE_CASES)
def test_remove_one_sensitivity_at_most_clip(name, engine, rng):
    """The property the guard protects: with noise 0, removing any one example (here an
    outlier among them) moves the clipped sum by at most C."""
    build = (MIXING.get(name) or PER_EXAMPLE[name])[0]
    model = build()
    x, y = _data(rng, model)
    clip = 0.5
    private = _private(model, engine, clip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sensitivity = _remove_one_sensitivity(private, x, y)
    assert sensitivity <= clip * (1 + 1e-4)
    if name in MIXING:
        assert private.dp_engine_used == "vectorized"
    elif engine == "auto" and not PER_EXAMPLE[name][1]:
        assert private.dp_engine_used == "fast"


@pytest.mark.parametrize("name", sorted(MIXING))
def test_engine_fast_refuses_every_mixing_model(name, rng):
    model = MIXING[name][0]()
    x, y = _data(rng, model)
    private = _private(model, "fast")
    with pytest.raises(PrivacyError, match="engine='fast' cannot train"):
        private._dp_clipped(x, y, None, num_units=None)


@pytest.mark.parametrize("activation", [_center, _outlier_flip, _cumsum])
def test_planted_regression_caught_by_the_numerical_check_alone(activation, rng, monkeypatch):
    """With the allow-list's callable check removed (as a regression would), the
    numerical check alone keeps mixing activations off the fast engine."""
    monkeypatch.setattr(guard, "_callable_reason", lambda layer: None)
    model = _mlp(activation)
    assert batch_mixing_reason(model) is None  # the list is blind now
    x, y = _data(rng, model)
    private = _private(model, "fast")
    with pytest.raises(PrivacyError, match="numerical batch-independence check"):
        private._dp_clipped(x, y, None, num_units=None)
    private = _private(_mlp(activation), "auto", clip=0.5)
    with pytest.warns(UserWarning, match="numerical batch-independence check"):
        sensitivity = _remove_one_sensitivity(private, x, y)
    assert private.dp_engine_used == "vectorized"
    assert sensitivity <= 0.5 * (1 + 1e-4)


def test_numerical_check_runs_once_per_input_signature(rng, monkeypatch):
    calls = []
    real = independence.run_check
    monkeypatch.setattr(
        independence, "run_check", lambda model, x: calls.append(1) or real(model, x)
    )
    model = _mlp("relu")
    x, y = _data(rng, model)
    private = _private(model, "auto")
    for rows in (8, 8, 5):
        private._dp_clipped(x[:rows], y[:rows], None, num_units=None)
    assert len(calls) == 1
    assert private.dp_engine_used == "fast"


def test_numerical_check_reads_torch_variables_without_copies(rng):
    """Issue 24: on PyTorch the check's variable values are the variables' own storage
    (a NumPy copy of a 1,000,000-row table was +256 MB of peak memory), and the check
    still passes a per-example model and catches a mixing one with them."""
    if keras.backend.backend() != "torch":
        pytest.skip("PyTorch's variable reads")
    from keras_privacy.training.fast import units as fast_units

    model = _mlp("relu")
    x, _ = _data(rng, model)
    values = fast_units.backend_ops["variable_values"](model.trainable_variables)
    for v, value in zip(model.trainable_variables, values, strict=True):
        assert value.data_ptr() == v.value.data_ptr()
        assert not value.requires_grad
    assert independence.run_check(model, x) is None
    mixing = keras.Sequential([keras.Input(x.shape[1:]), L.Lambda(_center), L.Dense(3)])
    assert independence.MIXES in independence.run_check(mixing, x)


def _masked_embedding():
    inputs = keras.Input((6,), dtype="int32")
    h = L.Embedding(12, 5, mask_zero=True)(inputs)
    return keras.Model(inputs, L.Dense(4)(L.Dense(5, activation="tanh")(h)))


def _masking():
    return keras.Sequential(
        [keras.Input((6, 3)), L.Masking(0.0), L.Dense(5, activation="tanh"), L.Dense(4)]
    )


@pytest.mark.parametrize("builder", [_masked_embedding, _masking])
def test_fast_engine_masks_per_token_losses_as_keras_does(builder, rng):
    """Padded positions carry no loss: the fast engine's clipped sum equals the
    per-example reference (each example through Keras alone, mask and all)."""
    model = builder()
    if builder is _masking:
        x = rng.normal(size=(8, 6, 3)).astype("float32")
        x[:, 4:] = 0.0
        x[2, 1:] = 0.0
    else:
        x = rng.integers(1, 12, (8, 6))
        x[:, 4:] = 0
        x[3, 1:] = 0
    y = rng.integers(0, 4, (8, 6))
    private = _private(model, "fast", clip=0.3)
    got = private._dp_clipped(x, y, None, num_units=None)
    want = reference_clipped_sum(private, LOSS, x, y, 0.3)
    np.testing.assert_allclose(
        flat([to_numpy(g) for g in got.grad_sum]), flat(want), rtol=1e-4, atol=1e-6
    )
    assert private.dp_engine_used == "fast"


@pytest.mark.parametrize("engine", ["auto", "vectorized"])
def test_a_model_that_mixes_the_batch_is_told_what_the_vectorized_engine_does(engine, rng):
    model = _mlp(middle=MixBatch())
    x, y = _data(rng, model)
    private = _private(model, engine)
    with pytest.warns(kp.BatchMixingWarning, match="one example at a time"):
        private._dp_clipped(x, y, None, num_units=None)
    assert private.dp_engine_used == "vectorized"
    with warnings.catch_warnings():  # said once per model
        warnings.simplefilter("error", kp.BatchMixingWarning)
        private._dp_clipped(x, y, None, num_units=None)


def test_the_numerical_check_runs_under_a_strict_warnings_filter(rng):
    """Warnings raised inside the probe passes (deprecations) must not make a per-example
    model fail the check when the user turns warnings into errors."""
    model = _mlp("relu", L.Dropout(0.2))
    x, _ = _data(rng, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert independence.run_check(model, x) is None


def test_the_numerical_check_feeds_dict_inputs_by_key(rng):
    """A dict of inputs whose insertion order is not its key order (``{"b": ..., "a":
    ...}``): each probe leaf must reach the input it was made for. Feeding the leaves in
    insertion order gave a 1-wide input to the 3-wide one on PyTorch, so the check could
    not run and a per-example model was refused."""
    inputs = {"b": keras.Input((3,), name="b"), "a": keras.Input((1,), name="a")}
    model = keras.Model(inputs, L.Add()([L.Dense(1)(inputs["b"]), L.Dense(1)(inputs["a"])]))
    x = {
        "b": rng.normal(size=(4, 3)).astype("float32"),
        "a": rng.normal(size=(4, 1)).astype("float32"),
    }
    assert independence.run_check(model, x) is None
