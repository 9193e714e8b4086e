"""User-level DP-SGD in fit (``fit(x, y, user_ids=...)``): users are Poisson-sampled, each
user's summed gradient is clipped as one unit, and the accountant counts users.

The references are closed-form numpy gradients of a small tanh MLP (float64), per user:
``S = sum_u clip_C(G_u)`` with ``G_u = sum_{i in u} w_i grad loss_i``. Each test checks the
weight change of a noiseless fit with every user sampled (q = 1, SGD with learning rate 1,
so the change is ``-S / users``). Per-example clipping (``sum_i clip_C(g_i)``) would fail
them: the data give users several examples, and the tests check that the two references
differ.
"""

import math

import dp_accounting
import keras
import numpy as np
import pytest
from helpers import BACKEND, to_numpy

import keras_privacy as kp
from keras_privacy import accounting
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.record import TrainingRecord, TrainingSegment
from keras_privacy.training.users import UserPoissonBatches

ENGINES = ["vectorized", "fast"]
pytestmark = pytest.mark.filterwarnings("ignore:keras-privacy. noise_multiplier=0")
#: slow_on_jax below: the JAX default suite has no time to spare for their extra compiles.


def _data(rng, users=6, rows=20):
    x = rng.normal(size=(rows, 3)).astype("float32")
    y = rng.normal(size=(rows, 2)).astype("float32")
    # Every user has at least two rows; user 0 has many (7).
    ids = np.concatenate([np.zeros(7, int), np.repeat(np.arange(1, users), 2)])
    ids = np.concatenate([ids, rng.integers(1, users, size=rows - len(ids))])
    return x, y, rng.permutation(ids)


def _model(engine, clip, noise=0.0, **dp):
    keras.utils.set_random_seed(5)
    inner = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)]
    )
    model = kp.make_private(
        inner, l2_norm_clip=clip, noise_multiplier=noise, seed=1, engine=engine, **dp
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    return model


def _example_gradients(weights, x, y, w):
    """Each example's gradient of ``w_i mean_j (p_ij - y_ij)^2`` (float64), flattened."""
    k1, b1, k2, b2 = (np.asarray(v, "float64") for v in weights)
    x, y = x.astype("float64"), y.astype("float64")
    h = np.tanh(x @ k1 + b1)
    r = (h @ k2 + b2 - y) * w[:, None]  # d loss / d p = 2 r / 2
    dz = (r @ k2.T) * (1 - h**2)
    parts = [x[:, :, None] * dz[:, None, :], dz, h[:, :, None] * r[:, None, :], r]
    return np.concatenate([p.reshape(len(x), -1) for p in parts], axis=1)


def _clip(g, c):
    return g * min(1.0, c / max(np.linalg.norm(g), 1e-300))


def _user_reference(weights, x, y, ids, c, w=None):
    w = np.ones(len(x)) if w is None else w
    g = _example_gradients(weights, x, y, w)
    return sum(_clip(g[ids == u].sum(0), c) for u in np.unique(ids))


def _example_reference(weights, x, y, c):
    g = _example_gradients(weights, x, y, np.ones(len(x)))
    return sum(_clip(row, c) for row in g)


def _clipped_sum_by_fit(engine, clip, x, y, ids, **fit):
    """``S`` from one noiseless update with every user sampled: ``(w0 - w1) * users``."""
    model = _model(engine, clip)
    model.build((None, 3))
    before = [to_numpy(v.value) for v in model.trainable_variables]
    users = len(np.unique(ids))
    model.fit(x, y, user_ids=ids, batch_size=users, epochs=1, steps_per_epoch=1, verbose=0, **fit)
    assert model.dp_engine_used == engine
    after = [to_numpy(v.value) for v in model.trainable_variables]
    delta = np.concatenate([(a - b).reshape(-1) for a, b in zip(before, after, strict=True)])
    return before, delta.astype("float64") * users


@pytest.mark.parametrize(
    "engine,clip",
    [
        pytest.param("vectorized", 1e-3, marks=pytest.mark.slow_on_jax),
        pytest.param("vectorized", 1e6, marks=pytest.mark.slow_on_jax),
        ("fast", 1e-3),
        pytest.param("fast", 1e6, marks=pytest.mark.slow_on_jax),
    ],
)
def test_step_clips_each_users_summed_gradient(engine, clip, rng):
    x, y, ids = _data(rng)
    w = rng.uniform(0.5, 2.0, size=len(x)).astype("float32")
    weights, got = _clipped_sum_by_fit(engine, clip, x, y, ids, sample_weight=w)
    expected = _user_reference(weights, x, y, ids, clip, w.astype("float64"))
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-6 * max(1.0, clip * 1e-6))
    if clip < 1:  # per-example clipping would give a different sum (the tests' power)
        per_example = _example_reference(weights, x, y, clip)
        assert np.linalg.norm(per_example - expected) > 0.1 * np.linalg.norm(expected)


@pytest.mark.parametrize(
    "engine", [pytest.param("vectorized", marks=pytest.mark.slow_on_jax), "fast"]
)
def test_removing_one_user_changes_the_clipped_sum_by_at_most_c(engine, rng):
    """The user with 7 examples is removed: ``||S(D) - S(D')|| <= C`` (per-example
    clipping would let it move the sum by up to 7 C)."""
    x, y, ids = _data(rng)
    clip = 1e-3
    _, full = _clipped_sum_by_fit(engine, clip, x, y, ids)
    keep = ids != 0
    weights, without = _clipped_sum_by_fit(engine, clip, x[keep], y[keep], ids[keep])
    change = np.linalg.norm(full - without)
    assert change <= clip * (1 + 1e-3)
    assert change >= clip * 0.99  # its summed gradient is far above C: clipped to C
    per_example = _example_reference(weights, x, y, clip) - _example_reference(
        weights, x[keep], y[keep], clip
    )
    assert np.linalg.norm(per_example) > 1.5 * clip  # per-example clipping: out of bound


@pytest.mark.skipif(BACKEND != "tensorflow", reason="NumPy only: run once, with TensorFlow")
def test_users_are_poisson_sampled_with_all_their_rows(rng):
    """Each user is in each batch with probability q, with all (at most k) of their rows,
    and a capped user's k rows are a uniform draw of theirs."""
    n, users = 300, 50
    ids = rng.integers(0, users, size=n)
    ids[:12] = 7  # user 7 has at least 12 rows
    x = np.arange(n, dtype="float32")[:, None]
    sampler = UserPoissonBatches(
        x,
        np.zeros((n, 1), "float32"),
        None,
        ids,
        expected_users=10,
        max_examples_per_user=4,
        rng=np.random.default_rng(0),
    )
    assert sampler.sampling_probability == pytest.approx(10 / users)
    assert sampler.user_rows == 4 and sampler.dataset_size == users
    draws = 3000
    included = np.zeros(users)
    row_hits = np.zeros(n)
    counts = np.bincount(ids, minlength=users)
    for _ in range(draws):
        xb, _, sw, mask = sampler.next_batch()
        blocks = mask.reshape(-1, 4)
        rows = xb[:, 0].astype(int).reshape(-1, 4)
        seen = set()
        for block, block_rows in zip(blocks, rows, strict=True):
            if not block[0]:
                assert not block.any()
                continue
            owners = set(ids[block_rows[block > 0]])
            assert len(owners) == 1  # one user per block
            (user,) = owners
            assert user not in seen
            seen.add(user)
            assert block.sum() == min(4, counts[user])  # all their rows, or k of them
            assert len(set(block_rows[block > 0])) == block.sum()
            row_hits[block_rows[block > 0]] += 1
        included[list(seen)] += 1
        np.testing.assert_array_equal(sw, mask)
    q = 10 / users
    tolerance = 5 * math.sqrt(q * (1 - q) / draws)
    assert np.all(np.abs(included / draws - q) < tolerance)
    # User 7's rows: each in a batch with probability q * 4 / count.
    rows7 = np.flatnonzero(ids == 7)
    p = q * 4 / counts[7]
    assert np.all(np.abs(row_hits[rows7] / draws - p) < 5 * math.sqrt(p / draws) + 1e-3)


@pytest.mark.slow_on_jax
def test_accounting_is_over_users_and_equals_dp_accounting(rng):
    x, y, ids = _data(rng, users=6, rows=20)
    model = _model("fast", 1.0, noise=1.3)
    model.fit(x, y, user_ids=ids, batch_size=2, epochs=2, verbose=0)
    segment = model.privacy_record.current
    assert segment.privacy_unit == "user"
    assert segment.dataset_size == 6 and segment.expected_batch_size == 2
    steps = segment.updates
    assert steps == 6  # round(6 / 2) per epoch
    assert "user-level" in model.privacy_record.describe()
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(2 / 6, dp_accounting.GaussianDpEvent(1.3)), steps
    )
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(event)
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(event)
    delta = 1e-2
    assert model.privacy_spent(delta, "rdp") == pytest.approx(rdp.get_epsilon(delta), rel=1e-9)
    assert model.privacy_spent(delta, "pld") == pytest.approx(pld.get_epsilon(delta), rel=1e-2)
    # Saved and reloaded with the model: still user-level.
    data = model.privacy_record.to_dict()
    assert data["segments"][0]["privacy_unit"] == "user"
    assert TrainingRecord.from_dict(data).segments[0].privacy_unit == "user"


def test_user_and_example_level_training_are_not_composed():
    """A record with user-level and example-level updates (or other releases, which are
    example-level) has no single guarantee: the accountant refuses it."""
    user = TrainingSegment("poisson", 10, 2, 1.0, 1.0, updates=3, privacy_unit="user")
    example = TrainingSegment("poisson", 40, 8, 1.0, 1.0, updates=3)
    with pytest.raises(ValueError, match="mixes user-level"):
        accounting.epsilon_of_record(TrainingRecord([user, example]), 1e-3)
    with pytest.raises(ValueError, match="mixes user-level"):
        TrainingRecord([user, example]).privacy_unit  # noqa: B018
    with_release = TrainingRecord([user])
    with_release.add_release(dp_accounting.GaussianDpEvent(5.0), "features")
    with pytest.raises(ValueError, match="other releases"):
        accounting.epsilon_of_record(with_release, 1e-3)
    assert TrainingRecord([user]).privacy_unit == "user"


def test_privacy_state_file_keeps_the_privacy_unit():
    from keras_privacy.training import callbacks

    record = TrainingRecord(
        [TrainingSegment("poisson", 10, 2, 1.0, 1.0, updates=3, privacy_unit="user")]
    )
    state = callbacks.privacy_state(record)
    back = callbacks.record_from_state(state)
    assert back.segments[0].privacy_unit == "user"
    old = TrainingRecord([TrainingSegment("poisson", 10, 2, 1.0, 1.0, updates=3)])
    assert "privacy_unit" not in old.to_dict()["segments"][0]  # the old format
    assert callbacks.record_from_state(callbacks.privacy_state(old)).segments[0].privacy_unit == (
        "example"
    )


def test_bad_user_level_input_is_refused(rng):
    x, y, ids = _data(rng)
    model = _model("fast", 1.0)
    with pytest.raises(ValueError, match="one id per training example"):
        model.fit(x, y, user_ids=ids[:-1], verbose=0)
    with pytest.raises(PrivacyError, match="validation_split"):
        model.fit(x, y, user_ids=ids, validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="pass user_ids too"):
        model.fit(x, y, max_examples_per_user=3, verbose=0)
    with pytest.raises(ValueError, match="max_examples_per_user must be a positive"):
        model.fit(x, y, user_ids=ids, batch_size=2, max_examples_per_user=0, verbose=0)
    with pytest.raises(ValueError, match="expected number of users"):
        model.fit(x, y, user_ids=ids, batch_size=7, verbose=0)
    with pytest.raises(ValueError, match="NaN"):
        model.fit(x, y, user_ids=np.where(ids == 0, np.nan, ids), batch_size=2, verbose=0)
    with pytest.raises(PrivacyError, match="in-memory arrays"):
        model.fit(iter([(x, y)]), user_ids=ids, verbose=0)
    micro = _model("fast", 1.0, num_microbatches=2)
    with pytest.raises(PrivacyError, match="num_microbatches"):
        micro.fit(x, y, user_ids=ids, batch_size=2, verbose=0)
    adaptive = _model(
        "fast",
        kp.AdaptiveClip(
            initial=1.0, target_quantile=0.5, learning_rate=0.2, clipped_count_stddev=1.0
        ),
    )
    with pytest.raises(PrivacyError, match="adaptive clipping"):
        adaptive.fit(x, y, user_ids=ids, batch_size=2, verbose=0)
    assert model.privacy_record.total_updates == 0


@pytest.mark.slow_on_jax
def test_fast_engine_sums_a_users_repeated_embedding_rows_before_the_norm(rng):
    """Every row of a user looks up the same user-table row (and items repeat): the fast
    engine's per-user norm must add those rows' gradients before taking the norm. Its
    clipped sum equals the vectorized engine's (one forward pass per user) at C = 1e-3."""
    n = 40
    users = rng.integers(0, 6, size=n)
    x = {
        "user": users.reshape(-1, 1).astype("int32"),
        "items": rng.integers(0, 9, size=(n, 3)).astype("int32"),
    }
    y = rng.integers(0, 3, size=n)

    def build():
        keras.utils.set_random_seed(3)
        user = keras.Input((1,), dtype="int32", name="user")
        items = keras.Input((3,), dtype="int32", name="items")
        vectors = [
            keras.layers.Flatten()(keras.layers.Embedding(6, 4)(user)),
            keras.layers.Flatten()(keras.layers.Embedding(9, 4)(items)),
        ]
        logits = keras.layers.Dense(3)(keras.layers.Concatenate()(vectors))
        return keras.Model({"user": user, "items": items}, logits)

    sums = {}
    for engine in ENGINES:
        model = kp.make_private(build(), l2_norm_clip=1e-3, noise_multiplier=0.0, engine=engine)
        model.compile(
            optimizer=keras.optimizers.SGD(1.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        before = [to_numpy(v.value) for v in model.trainable_variables]
        model.fit(x, y, user_ids=users, batch_size=6, steps_per_epoch=1, verbose=0)
        assert model.dp_engine_used == engine
        after = [to_numpy(v.value) for v in model.trainable_variables]
        sums[engine] = np.concatenate([(a - b).ravel() for a, b in zip(before, after, strict=True)])
    np.testing.assert_allclose(sums["fast"], sums["vectorized"], rtol=1e-4, atol=1e-9)
    assert np.linalg.norm(sums["fast"]) * 6 <= 6e-3 * (1 + 1e-4)  # six users, each <= C


def test_privacy_statement_of_a_user_level_run():
    from keras_privacy.accounting import statement

    text = statement.compute_dp_sgd_privacy_statement(
        100, 10, 2, 1.2, 1e-3, used_microbatching=False, privacy_unit="user"
    )
    assert "N = 100 users" in text and "User-level" in text and "Example-level" not in text
    assert "each user's summed gradient" in text
    report = statement.compute_dp_sgd_privacy_report(
        100, 10, 1.2, 1e-3, num_epochs=2, privacy_unit="user"
    )
    example = statement.compute_dp_sgd_privacy_report(100, 10, 1.2, 1e-3, num_epochs=2)
    assert report.epsilon == example.epsilon  # the same mechanism, over users
    assert report.to_dict()["privacy_unit"] == "user"
    with pytest.raises(ValueError, match="already protects whole users"):
        statement.compute_dp_sgd_privacy_report(
            100, 10, 1.2, 1e-3, num_epochs=2, privacy_unit="user", max_examples_per_user=4
        )
