"""Poisson sampling: the distribution, the padding, and what reaches the gradient."""

import keras
import numpy as np
import pytest
from helpers import flat, reference_clipped_sum, weights

import keras_privacy as kp
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.sampling import PoissonBatches, poisson_capacity

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_batches_follow_the_poisson_distribution():
    n, b = 1000, 50
    x = np.arange(n, dtype="float32")[:, None]
    sampler = PoissonBatches(
        x, np.arange(n), None, expected_batch_size=b, rng=np.random.default_rng(0)
    )
    sizes, hits = [], np.zeros(n)
    for _ in range(2000):
        bx, by, sw, mask = sampler.next_batch()
        k = int(mask.sum())
        sizes.append(k)
        assert bx.shape == (sampler.capacity, 1)  # fixed shape: no retracing
        assert np.all(mask[:k] == 1) and np.all(mask[k:] == 0)
        assert np.all(bx[k:] == 0) and np.all(sw[k:] == 0)
        np.testing.assert_array_equal(bx[:k, 0], by[:k])  # rows stay aligned
        assert len(set(by[:k])) == k  # no example twice
        hits[by[:k]] += 1
    q = b / n
    assert abs(np.mean(sizes) - b) < 4 * np.sqrt(n * q * (1 - q) / 2000)
    assert abs(np.var(sizes) / (n * q * (1 - q)) - 1) < 0.15  # Binomial variance
    # Every example is included with probability q, independently of its index.
    assert abs(hits.mean() / 2000 - q) < 0.002
    assert np.corrcoef(np.arange(n), hits)[0, 1] < 0.1


def test_capacity_has_headroom_and_overflow_raises(monkeypatch):
    assert poisson_capacity(60000, 256) >= 256 + 8 * 16
    assert poisson_capacity(100, 100) == 100
    sampler = PoissonBatches(np.zeros((100, 1)), np.zeros(100), None, expected_batch_size=10)

    class Unlucky:  # a generator whose binomial draw lands above the capacity
        def binomial(self, n, p):
            return sampler.capacity + 1

    monkeypatch.setattr(sampler, "_rng", Unlucky())
    with pytest.raises(PrivacyError, match="exceeded the padded capacity"):
        sampler.next_batch()


def _model():
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])


def test_padding_rows_contribute_nothing_and_the_divisor_is_the_expected_batch(rng):
    x = rng.normal(size=(60, 5)).astype("float32")
    y = rng.integers(0, 3, size=60)
    model = _model()
    private = kp.make_private(model, l2_norm_clip=0.05, noise_multiplier=0.0, seed=7)
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    # The same seed reproduces the sampler's draw: each fit samples from its own stream,
    # spawned from the model's.
    indices = PoissonBatches(
        x, y, None, expected_batch_size=10, rng=np.random.default_rng(7).spawn(1)[0]
    ).sample_indices()
    expected = flat(reference_clipped_sum(model, LOSS, x[indices], y[indices], 0.05)) / 10
    before = flat(weights(private))
    private.fit(x, y, batch_size=10, epochs=1, steps_per_epoch=1, verbose=0)
    np.testing.assert_allclose(before - flat(weights(private)), expected, rtol=1e-3, atol=1e-7)
    assert len(indices) != 10  # this seed draws a batch whose size differs from 10


def test_sampling_everyone_is_full_batch_sgd(rng):
    x = rng.normal(size=(40, 5)).astype("float32")
    y = rng.integers(0, 3, size=40)
    model = _model()
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    plain.compile(optimizer=keras.optimizers.SGD(0.3), loss=LOSS)
    private = kp.make_private(model, l2_norm_clip=1e9, noise_multiplier=0.0)
    private.compile(optimizer=keras.optimizers.SGD(0.3), loss=LOSS)
    private.fit(x, y, batch_size=40, epochs=1, verbose=0)  # q = 1
    plain.train_on_batch(x, y)
    np.testing.assert_allclose(flat(weights(private)), flat(weights(plain)), rtol=1e-5, atol=1e-6)


def test_poisson_accumulation_equals_one_large_batch(rng):
    """n chunks of B rows are the same logical Poisson batch as one batch of n B."""
    x = rng.normal(size=(200, 5)).astype("float32")
    y = rng.integers(0, 3, size=200)
    results = []
    for batch_size, steps in ((40, 1), (10, 4)):
        keras.utils.set_random_seed(0)
        model = kp.make_private(
            _model(),
            l2_norm_clip=0.1,
            noise_multiplier=0.0,
            gradient_accumulation_steps=steps,
            seed=3,
        )
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
        model.fit(x, y, batch_size=batch_size, epochs=2, verbose=0)
        assert model.privacy_record.current.updates == 2 * 5  # N / (B n) per epoch
        assert model.privacy_record.current.expected_batch_size == 40
        results.append(flat(weights(model)))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_record_counts_updates_across_fits_and_epochs(rng):
    x = rng.normal(size=(100, 5)).astype("float32")
    y = rng.integers(0, 3, size=100)
    model = kp.make_private(_model(), l2_norm_clip=1.0, noise_multiplier=1.0)
    model.compile(optimizer="sgd", loss=LOSS)
    model.fit(x, y, batch_size=20, epochs=3, verbose=0)
    model.fit(x, y, batch_size=20, epochs=4, initial_epoch=2, verbose=0)
    record = model.privacy_record
    assert [s.updates for s in record.segments] == [15, 10]
    assert record.total_updates == int(model.optimizer.iterations.numpy()) == 25
    first = record.segments[0]
    assert (first.sampling, first.dataset_size, first.expected_batch_size) == ("poisson", 100, 20)
    assert first.sampling_probability == pytest.approx(0.2)
    assert kp.TrainingRecord.from_dict(record.to_dict()).total_updates == 25


def test_shuffle_sampling_is_recorded_as_such(rng):
    x = rng.normal(size=(100, 5)).astype("float32")
    y = rng.integers(0, 3, size=100)
    model = kp.make_private(_model(), l2_norm_clip=1.0, noise_multiplier=1.0, sampling="shuffle")
    model.compile(optimizer="sgd", loss=LOSS)
    model.fit(x, y, batch_size=25, epochs=2, verbose=0)
    segment = model.privacy_record.current
    assert (segment.sampling, segment.updates, segment.expected_batch_size) == ("shuffle", 8, 25)


def test_tf_data_is_trained_on_but_recorded_as_not_poisson_with_one_warning(rng):
    import tensorflow as tf

    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 3, size=64)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    model = kp.make_private(_model(), l2_norm_clip=1.0, noise_multiplier=1.0)
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.warns(kp.SamplingWarning, match="NOT Poisson-sampled"):
        model.fit(dataset, epochs=2, verbose=0, dataset_size=64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", kp.SamplingWarning)
        model.fit(dataset, epochs=1, verbose=0)  # warned once per model
    first = model.privacy_record.segments[0]
    assert (first.sampling, first.updates, first.dataset_size) == ("fixed_batches", 8, 64)
    assert first.expected_batch_size == 16


def test_a_seeded_model_never_repeats_batches_across_fits(rng):
    """Each fit continues the model's sampler stream: repeating the first fit's batches
    would make the sampling of the second fit dependent on the first."""
    x = np.arange(200, dtype="float32")[:, None]
    y = np.zeros(200, "int64")
    model = kp.make_private(
        keras.Sequential([keras.Input((1,)), keras.layers.Dense(3)]),
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        seed=5,
    )
    model.compile(optimizer="sgd", loss=LOSS)
    seen = []
    original = PoissonBatches.sample_indices

    def spy(self):
        indices = original(self)
        seen.append(tuple(indices))
        return indices

    import unittest.mock

    with unittest.mock.patch.object(PoissonBatches, "sample_indices", spy):
        model.fit(x, y, batch_size=20, epochs=1, steps_per_epoch=3, verbose=0)
        first = list(seen)
        model.fit(x, y, batch_size=20, epochs=1, steps_per_epoch=3, verbose=0)
    assert not set(first) & set(seen[len(first) :])


def test_shuffled_batches_divide_by_the_configured_batch_size_also_for_the_last(rng):
    """Dividing the last, smaller batch by its own size would reveal N (which neighbouring
    datasets differ in); the divisor is the public batch size instead."""
    x = rng.normal(size=(30, 5)).astype("float32")
    y = rng.integers(0, 3, size=30)
    model = _model()
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    private = kp.make_private(model, l2_norm_clip=0.05, noise_multiplier=0.0, sampling="shuffle")
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    private.fit(x, y, batch_size=20, epochs=1, shuffle=False, verbose=0)  # batches 20 + 10
    # The same two updates by hand: both divided by 20.
    for rows in (slice(0, 20), slice(20, 30)):
        grad_sum = reference_clipped_sum(reference, LOSS, x[rows], y[rows], 0.05)
        new = zip(reference.get_weights(), grad_sum, strict=True)
        reference.set_weights([w - g / 20 for w, g in new])
    np.testing.assert_allclose(
        flat(weights(private)), flat(weights(reference)), rtol=1e-5, atol=1e-6
    )
    assert private.privacy_record.current.updates == 2


def test_the_tensorflow_pipeline_draws_exactly_the_samplers_batches(rng):
    x = {"a": rng.normal(size=(300, 4)).astype("float32"), "b": np.arange(300)}
    y = rng.integers(0, 3, size=300)
    weights = rng.random(300).astype("float32")
    model = kp.make_private(_model(), l2_norm_clip=1.0, noise_multiplier=1.0)
    if not hasattr(model, "_dp_poisson_stream"):
        pytest.skip("this backend hands Keras the sampler's own batches")
    stream = model._dp_poisson_stream(
        PoissonBatches(x, y, weights, expected_batch_size=20, rng=np.random.default_rng(5))
    )
    reference = PoissonBatches(x, y, weights, expected_batch_size=20, rng=np.random.default_rng(5))
    for got in stream.take(40):  # more than one block of draws
        want = reference.next_batch()
        got = keras.tree.map_structure(np.asarray, got)
        count = int(want[3].sum())
        np.testing.assert_array_equal(got[3], want[3])
        np.testing.assert_array_equal(got[0]["a"][:count], want[0]["a"][:count])
        np.testing.assert_array_equal(got[0]["b"][:count], want[0]["b"][:count])
        np.testing.assert_array_equal(got[1][:count], want[1][:count])
        # Padding rows carry zero weight, as in the sampler's own batches.
        np.testing.assert_array_equal(got[2], want[2])


def test_a_seeded_model_trains_the_same_over_several_fits(rng):
    x = rng.normal(size=(400, 5)).astype("float32")
    y = rng.integers(0, 3, size=400)
    results = []
    for _ in range(2):
        model = kp.make_private(_model(), l2_norm_clip=1.0, noise_multiplier=0.5, seed=4)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=LOSS)
        model.set_weights([np.full(w.shape, 0.1, "float32") for w in model.get_weights()])
        for _ in range(3):  # each fit's pipeline may draw ahead by a different amount
            model.fit(x, y, batch_size=20, epochs=1, steps_per_epoch=2, verbose=0)
        results.append(flat(weights(model)))
    np.testing.assert_array_equal(results[0], results[1])


def test_shuffled_passes_hold_every_example_once_per_pass(rng):
    from keras_privacy.training.sampling import ShuffledPasses

    passes = ShuffledPasses(np.arange(23), None, None, logical_batch_size=5, shuffle=True, rng=rng)
    assert passes.batches_per_pass == 5
    stream = passes.index_batches()
    orders = []
    for _ in range(3):
        batches = [next(stream) for _ in range(5)]
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]  # the last one shorter
        order = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(order), np.arange(23))
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])  # a fresh permutation per pass
    in_order = ShuffledPasses(
        np.arange(7), None, None, logical_batch_size=3, shuffle=False, rng=rng
    )
    got = [next(in_order.index_batches()) for _ in range(1)][0]
    np.testing.assert_array_equal(got, [0, 1, 2])


def test_the_shuffle_pipeline_gathers_each_batchs_rows(rng):
    from keras_privacy.training.sampling import ShuffledPasses

    model = kp.make_private(_model(), l2_norm_clip=1.0, noise_multiplier=1.0, sampling="shuffle")
    if not hasattr(model, "_dp_shuffle_stream"):
        pytest.skip("this backend hands Keras the arrays")
    x = {"a": rng.normal(size=(11, 4)).astype("float32"), "b": np.arange(11)}
    y, w = rng.integers(0, 3, 11), rng.random(11).astype("float32")
    for targets, row_weights in ((y, w), (y, None), (None, None)):
        passes = ShuffledPasses(
            x, targets, row_weights, logical_batch_size=4, shuffle=True, rng=rng
        )
        reference = ShuffledPasses(
            x, targets, row_weights, logical_batch_size=4, shuffle=True, rng=None
        )
        reference._rng = np.random.default_rng(9)
        passes._rng = np.random.default_rng(9)
        indices = reference.index_batches()
        for got in model._dp_shuffle_stream(passes).take(7):
            rows = next(indices)
            got = keras.tree.map_structure(np.asarray, got)
            np.testing.assert_array_equal(got[0]["b"], rows)
            np.testing.assert_array_equal(got[0]["a"], x["a"][rows])
            assert len(got) == 1 + (targets is not None) + (row_weights is not None)
            if targets is not None:
                np.testing.assert_array_equal(got[1], y[rows])
            if row_weights is not None:
                np.testing.assert_array_equal(got[2], w[rows])


@pytest.mark.parametrize("engine", ["auto", "vectorized"])
def test_an_empty_poisson_draw_is_a_noise_only_update(engine):
    """q = 1/100: about a third of the 100 draws are empty (all 100 non-empty: chance
    ~1e-20). Each is still one noised update (the accountant counts every step), and the
    weights stay finite."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 5)).astype("float32"), rng.integers(0, 2, 100)
    model = kp.DPSequential(
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        engine=engine,
        seed=0,
        layers=[keras.Input((5,)), keras.layers.Dense(2)],
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    model.fit(x, y, batch_size=1, epochs=1, verbose=0)
    counts = model._dp_counters()
    assert model.privacy_record.total_updates == counts["updates"] == 100
    assert all(np.isfinite(w).all() for w in weights(model))
