"""White-box audits of the real DP step, on this backend and both engines.

The model is a linear classifier on 8 informative features and ``NUM_CANARIES`` features
that are always 0: the data never move the weights of those, so each canary's score is
exactly ``T·[included] + N(0, T σ²)`` on a correct build. The broken builds are made here
by monkeypatching (never by flags in the library): clipping off, noise halved, noise
added once per epoch instead of once per update. Each must be flagged (bound above the
accountant's ε), and the correct build never.

Only :func:`test_canaries_are_inert_when_not_included` runs in the default suite (on
TensorFlow); the audits are ``slow`` (each under ~20 s on this machine).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_privacy import DPSequential
from keras_privacy.auditing import (
    GradientCanaries,
    input_space_audit,
    white_box_audit,
    white_box_multi_run_audit,
)
from keras_privacy.training import clipping
from keras_privacy.training.config import DPConfig

ROWS, FEATURES, NUM_CANARIES = 64, 8, 1000
ENGINES = ["fast", "vectorized"]


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.backend.clear_session()
    yield


def _data(canary_features=NUM_CANARIES):
    rng = np.random.default_rng(0)
    informative = rng.normal(size=(ROWS, FEATURES))
    x = np.concatenate([informative, np.zeros((ROWS, canary_features))], axis=1)
    y = (informative[:, 0] + 0.5 * rng.normal(size=ROWS) > 0).astype("float32")[:, None]
    return x.astype("float32"), y


def _model(engine, noise_multiplier, seed=None, canary_features=NUM_CANARIES, **compile_args):
    model = DPSequential(
        [keras.Input((FEATURES + canary_features,)), keras.layers.Dense(1)],
        l2_norm_clip=1.0,
        noise_multiplier=noise_multiplier,
        engine=engine,
        seed=seed,
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.BinaryCrossentropy(from_logits=True),
        **compile_args,
    )
    model.build((None, FEATURES + canary_features))
    return model


CANARY_COORDINATES = np.arange(FEATURES, FEATURES + NUM_CANARIES)  # kernel rows of the zeros


def _flat_weights(model):
    return np.concatenate(
        [np.ravel(keras.ops.convert_to_numpy(v.value)) for v in model.trainable_variables]
    )


@pytest.mark.extended  # default suite on TensorFlow; -m slow elsewhere (compiles twice)
def test_canaries_are_inert_when_not_included():
    # Same seed, same initial weights: training with the canary hook installed (and no
    # canary included) gives bit-identical weights to ordinary training, and the model
    # gets its own engines back when the block ends.
    x, y = _data(canary_features=4)
    plain = _model("vectorized", 1.0, seed=7, canary_features=4)
    audited = _model("vectorized", 1.0, seed=7, canary_features=4)
    audited.set_weights(plain.get_weights())
    canaries = GradientCanaries(
        audited, 4, coordinates=np.arange(FEATURES, FEATURES + 4), included=np.zeros(4, bool)
    )
    with canaries.installed():
        assert "_dp_engines" in audited.__dict__
        audited.fit(x, y, batch_size=ROWS, epochs=2, verbose=0)
    assert "_dp_engines" not in audited.__dict__
    assert audited.train_function is None  # retraced with the class's engines next time
    plain.fit(x, y, batch_size=ROWS, epochs=2, verbose=0)
    np.testing.assert_array_equal(_flat_weights(audited), _flat_weights(plain))


def test_white_box_arguments_are_checked():
    x, y = _data(canary_features=4)
    model = _model("vectorized", 1.0, canary_features=4)
    with pytest.raises(ValueError, match="distinct"):
        GradientCanaries(model, 2, coordinates=[3, 3])
    with pytest.raises(ValueError, match="gradient_scale"):
        GradientCanaries(model, 2, gradient_scale=0.5)
    model.compile(keras.optimizers.Adam(), keras.losses.BinaryCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="plain SGD"):
        white_box_audit(model, x, y, epochs=1, num_canaries=4)
    noiseless = _model("vectorized", 0.0, canary_features=4)
    with pytest.raises(ValueError, match="no noise"):
        white_box_audit(noiseless, x, y, epochs=1, num_canaries=4)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_included_canary_adds_exactly_the_clip_norm(engine, monkeypatch):
    # Without noise the canary's coordinate moves by exactly lr * C / B per update; with
    # the library's clipping switched off by exactly gradient_scale times that.
    x, y = _data(canary_features=2)
    coordinates = np.arange(FEATURES, FEATURES + 2)
    for clip_off in (False, True):
        if clip_off:
            monkeypatch.setattr(
                clipping, "clip_factors", lambda norms, clip, mask=None: keras.ops.ones_like(norms)
            )
        model = _model(engine, 0.0, canary_features=2)
        canaries = GradientCanaries(model, 2, coordinates=coordinates, included=[True, False])
        before = canaries.weights()
        with canaries.installed():
            model.fit(x, y, batch_size=ROWS, epochs=3, verbose=0)
        scores = canaries.scores(before, learning_rate=0.1, divisor=ROWS)
        expected = 3 * (canaries.gradient_scale if clip_off else 1.0)
        np.testing.assert_allclose(scores, [expected, 0.0], atol=1e-4)


def _one_run(engine, noise_multiplier, epochs, **arguments):
    x, y = _data()
    model = _model(engine, noise_multiplier, run_eagerly=arguments.pop("run_eagerly", False))
    return white_box_audit(
        model,
        x,
        y,
        epochs=epochs,
        num_canaries=NUM_CANARIES,
        coordinates=CANARY_COORDINATES,
        seed=arguments.pop("seed", 0),
        **arguments,
    )


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_correct_build_stays_below_the_accountant(engine):
    # sigma = 2 over 4 full-batch updates: the Gaussian mechanism of noise 1 (eps 4.38).
    for statistic in ("sum", "median"):
        result = _one_run(engine, 2.0, 4, statistic=statistic)
        print(engine, statistic, result.summary())
        assert not result.violates_claim
        assert result.epsilon_claimed == pytest.approx(4.377, abs=0.01)
    assert result.fraction_of_claimed > 0.15


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_clipping_off_is_flagged(engine, monkeypatch):
    monkeypatch.setattr(
        clipping, "clip_factors", lambda norms, clip, mask=None: keras.ops.ones_like(norms)
    )
    result = _one_run(engine, 4.0, 4)  # claimed: eps 1.99
    print(engine, result.summary())
    assert result.violates_claim


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_noise_once_per_epoch_is_flagged(engine, monkeypatch):
    # 4 updates per epoch (Poisson, expected batch 16 of 64); the broken build noises only
    # the first update of each epoch. Run eagerly so the patched noise scale is read per
    # update. The canaries are still in every update: claimed eps is for 8 Gaussians.
    noise_on = [True]
    monkeypatch.setattr(
        DPConfig,
        "noise_stddev",
        property(lambda self: self.noise_multiplier * self.l2_norm_clip * float(noise_on[0])),
    )
    schedule = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: noise_on.__setitem__(0, batch == 0)
    )
    result = _one_run(
        engine,
        4.0,
        2,
        batch_size=16,
        statistic="median",
        callbacks=[schedule],
        run_eagerly=True,
    )
    print(engine, result.summary())
    assert result.violates_claim


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_noise_halved_is_flagged(engine, monkeypatch):
    # One run cannot tell sigma from sigma / 2 at these eps; the multi-run audit against
    # the accountant's Gaussian profile can. Claimed: sigma = 1 over 2 updates (mu = 1.41).
    x, y = _data(canary_features=1)
    arguments = dict(steps=2, num_trials=120, coordinate=FEATURES, seed=0)

    def build():
        return _model(engine, 1.0, canary_features=1)

    correct = white_box_multi_run_audit(build, x, y, **arguments)
    print(engine, "correct:", correct.summary())
    assert not correct.violates_claim
    monkeypatch.setattr(
        DPConfig,
        "noise_stddev",
        property(lambda self: 0.5 * self.noise_multiplier * self.l2_norm_clip),
    )
    halved = white_box_multi_run_audit(build, x, y, **arguments)
    print(engine, "halved:", halved.summary())
    assert halved.violates_claim


@pytest.mark.slow
def test_input_space_audit_of_a_fit():
    # Black-box: 200 out-of-distribution canaries, canary i the one-hot input e_(4+i)
    # (features the real data never use) labelled 1, each added with probability 1/2 and
    # Poisson-sampled with the rest; scored by minus their loss. Looser than gradient
    # canaries (a canary is sampled in only some updates, its gradient is not at the clip
    # norm), and never above the accountant's eps for this fit. Zero initial weights: random
    # ones would add spread the black-box auditor cannot remove (measured: 2.3-2.6 here,
    # against 0-0.3 with Glorot initialization).
    rng = np.random.default_rng(0)
    informative = rng.normal(size=(400, 4))
    x = np.concatenate([informative, np.zeros((400, 200))], axis=1).astype("float32")
    y = (informative[:, 0] > 0).astype("float32")[:, None]
    canary_x = np.concatenate([np.zeros((200, 4)), 3.0 * np.eye(200)], axis=1).astype("float32")
    canary_y = np.ones((200, 1), "float32")
    model = DPSequential(
        [keras.Input((204,)), keras.layers.Dense(1, kernel_initializer="zeros")],
        l2_norm_clip=1.0,
        noise_multiplier=0.8,
    )
    model.compile(keras.optimizers.SGD(0.5), keras.losses.BinaryCrossentropy(from_logits=True))
    result = input_space_audit(
        model, x, y, canary_x, canary_y, batch_size=250, epochs=10, delta=1e-4, seed=0
    )
    print(result.summary())
    assert result.canary_kind == "input-space" and result.num_canaries == 200
    assert result.epsilon_claimed == pytest.approx(
        model.privacy_spent(1e-4, allow_large_delta=True)
    )
    assert not result.violates_claim
    assert result.epsilon_lower_bound > 0
