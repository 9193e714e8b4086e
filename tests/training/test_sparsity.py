"""Sparsity-preserving DP-SGD (keras_privacy.training.sparsity): the update equals the
dense clipped sum restricted to the selected rows, each example's influence on the row
counts is bounded, the selection's error rates are those of the Gaussian threshold, a
row never selected never changes, and the accounting equals independent computations."""

import math

import dp_accounting
import keras
import numpy as np
import pytest
from helpers import engine_batch, reference_clipped_sum, tensorflow_only, to_numpy
from keras import ops

import keras_privacy as kp
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.sparsity import (
    SparseRows,
    SparsityPreserving,
    coalesce,
    coalesce_counts,
    combined_noise_multiplier,
    false_positive_ids,
    false_positive_mask,
    in_id_order,
    selected_values,
    split_noise_multiplier_tf_privacy,
    touched_selection,
)

VOCAB, DIM, TOKENS = 64, 3, 4
LOSS = keras.losses.MeanSquaredError()


def _model(sparsity, noise=0.0, engine="fast", seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((TOKENS,), dtype="int32")
    z = keras.layers.Embedding(VOCAB, DIM, name="table")(inputs)
    z = keras.layers.GlobalAveragePooling1D()(z)
    outputs = keras.layers.Dense(1, name="head")(z)
    return kp.DPModel(
        inputs,
        outputs,
        l2_norm_clip=0.5,
        noise_multiplier=noise,
        seed=seed,
        engine=engine,
        sparsity_preserving=sparsity,
    )


def _batch(rows=8, seed=0):
    """Every example touches the hot rows 0 and 1, and two rows of its own (10 + 2i,
    11 + 2i): hot rows have count ``rows * w`` (w = 1 / 2, four distinct rows), each
    example's own rows count 1 / 2; rows >= 10 + 2 rows are untouched."""
    rng = np.random.default_rng(seed)
    x = np.array([[0, 1, 10 + 2 * i, 11 + 2 * i] for i in range(rows)], "int32")
    y = rng.normal(size=(rows, 1)).astype("float32")
    return x, y


#: sigma_s tiny and tau between the counts: the selection is the hot rows, surely.
SURE = SparsityPreserving(selection_noise_multiplier=1e-3, threshold=1.0)


def test_update_is_the_dense_clipped_sum_on_the_selected_rows():
    model = _model(SURE)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    x, y = _batch()
    before = [to_numpy(v.value).astype("float64") for v in model.trainable_variables]
    reference = reference_clipped_sum(model, LOSS, x, y, 0.5)
    model.train_on_batch(x, y)
    after = [to_numpy(v.value).astype("float64") for v in model.trainable_variables]
    implied = [(b - a) * len(x) for b, a in zip(before, after, strict=True)]
    selected = np.zeros(VOCAB, bool)
    selected[[0, 1]] = True
    table = model.get_layer("table").embeddings
    for var, got, want in zip(model.trainable_variables, implied, reference, strict=True):
        if var is table:
            np.testing.assert_allclose(got[selected], want[selected], rtol=1e-5, atol=1e-6)
            # Touched but not selected, and untouched rows: exactly unchanged.
            assert np.all(got[~selected] == 0.0)
            assert np.any(want[~selected] != 0.0)  # the dense sum would move them
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.extended  # default suite on TensorFlow; -m slow on JAX and PyTorch
def test_row_counts_bound_each_examples_influence():
    """Remove-one: the counts' inputs move by at most c0 in L2 (the analysis's
    sensitivity), with equality for an example touching several rows."""
    bound = 0.7
    spec = SparsityPreserving(
        selection_noise_multiplier=1.0, threshold=1.0, contribution_bound=bound
    )
    model = _model(spec)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    x, y = _batch(rows=4)
    x[0] = [3, 3, 3, 3]  # one distinct row: contributes min(1, c0) = 0.7 to it

    def counts(xs, ys):
        batch = engine_batch(model, "fast", xs, ys, None, num_units=None, l2_norm_clip=0.5)
        (rows,) = [g for g in batch.grad_sum if isinstance(g, SparseRows)]
        out = np.zeros(VOCAB)
        np.add.at(
            out,
            to_numpy(rows.ids)[to_numpy(rows.ids) >= 0],
            to_numpy(rows.counts)[to_numpy(rows.ids) >= 0],
        )
        return out

    full = counts(x, y)
    for i in (0, 1):
        rest = counts(np.delete(x, i, 0), np.delete(y, i, 0))
        change = np.linalg.norm(full - rest)
        distinct = len(set(x[i].tolist()))
        np.testing.assert_allclose(change, min(bound, math.sqrt(distinct)), rtol=1e-5)
        assert change <= bound + 1e-6
        assert np.max(np.abs(full - rest)) <= 1.0 + 1e-6


def test_selection_error_rates_on_known_hot_rows():
    """Rows with count n are selected with probability P(n + N(0, s^2) > tau), untouched
    rows with p; hot rows (count 20, tau 2, s 1) are never missed."""
    spec = SparsityPreserving(selection_noise_multiplier=1.0, threshold=2.0)
    vocab, trials = 4000, 10
    ids = np.arange(300, dtype="int32")
    counts = np.where(ids < 100, 20.0, 1.0).astype("float32")  # 100 hot, 200 lukewarm
    rows = SparseRows(
        ops.convert_to_tensor(ids),
        ops.zeros((300, 2)),
        ops.convert_to_tensor(counts),
    )
    rng = np.random.default_rng(0)
    hot = lukewarm = false_pos = 0
    for _ in range(trials):
        normals = ops.convert_to_tensor(rng.normal(size=300).astype("float32"))
        chosen = to_numpy(touched_selection(rows, spec, normals))
        hot += chosen[:100].sum()
        lukewarm += chosen[100:].sum()
        uniforms = ops.convert_to_tensor(rng.random(vocab).astype("float32"))
        extra = to_numpy(false_positive_mask(rows, spec, uniforms, vocab))
        assert not extra[:300].any()  # touched rows are decided by their own count
        false_pos += extra.sum()
    assert hot == 100 * trials  # false negatives: P(N < -18) ~ 1e-72
    p_lukewarm = 0.5 * math.erfc(1.0 / math.sqrt(2))
    n = 200 * trials
    assert abs(lukewarm - n * p_lukewarm) < 5 * math.sqrt(n * p_lukewarm * (1 - p_lukewarm))
    p = spec.false_positive_probability
    np.testing.assert_allclose(p, 0.5 * math.erfc(2.0 / math.sqrt(2)))
    n = (vocab - 300) * trials
    assert abs(false_pos - n * p) < 5 * math.sqrt(n * p * (1 - p))


def test_several_tables_share_the_selection_budget():
    """Two tables, each example touching one row of each (count 1 per touched row): one
    example's contribution vectors have joint norm sqrt(2) c0, so each table's counts get
    noise sqrt(2) sigma_s c0 and a touched row is selected with P(1 + sqrt(2) Z > tau).
    With tau = 1 + sqrt(2) that is P(Z > 1) = 0.159; noise sigma_s c0 per table (the
    accountant's sigma_s would then be sqrt(2) too optimistic) selects P(Z > sqrt(2)) =
    0.079 of them."""
    rows = 1000
    keras.utils.set_random_seed(0)
    first = keras.Input((1,), dtype="int32", name="first")
    second = keras.Input((1,), dtype="int32", name="second")
    a = keras.layers.Embedding(rows, 2, name="a")(first)
    b = keras.layers.Embedding(rows, 2, name="b")(second)
    z = keras.layers.Flatten()(keras.layers.Add()([a, b]))
    spec = SparsityPreserving(selection_noise_multiplier=1.0, threshold=1.0 + math.sqrt(2))
    model = kp.DPModel(
        {"first": first, "second": second},
        keras.layers.Dense(1, name="head")(z),
        l2_norm_clip=1.0,
        noise_multiplier=0.0,
        seed=0,
        engine="fast",
        sparsity_preserving=spec,
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    ids = np.arange(rows, dtype="int32")[:, None]
    x = {"first": ids, "second": np.random.default_rng(1).permutation(ids)}
    y = np.random.default_rng(0).normal(size=(rows, 1)).astype("float32") + 3.0
    before = [to_numpy(model.get_layer(n).embeddings).copy() for n in "ab"]
    model.train_on_batch(x, y)
    after = [to_numpy(model.get_layer(n).embeddings) for n in "ab"]
    selected = sum(
        int(np.any(new != old, axis=1).sum()) for old, new in zip(before, after, strict=True)
    )
    n, p = 2 * rows, 0.5 * math.erfc(1.0 / math.sqrt(2))
    assert abs(selected - n * p) < 5 * math.sqrt(n * p * (1 - p)), selected


def test_coalesce_merges_repeated_rows():
    rows = SparseRows(
        ops.convert_to_tensor(np.array([5, -1, 2, 5, 2, 7], "int32")),
        ops.convert_to_tensor(np.arange(12, dtype="float32").reshape(6, 2)),
        ops.convert_to_tensor(np.array([1, 0, 2, 3, 4, 5], "float32")),
    )
    from keras_privacy.training.fast import units

    merged = coalesce(rows, lambda d, s, n: units.segment_sum(d, s, num_segments=n))
    ids = to_numpy(merged.ids)
    keep = ids >= 0
    assert sorted(ids[keep].tolist()) == [2, 5, 7]
    got = {
        int(i): (to_numpy(merged.values)[k], to_numpy(merged.counts)[k])
        for k, i in enumerate(ids)
        if i >= 0
    }
    np.testing.assert_allclose(got[2][0], [4 + 8, 5 + 9])
    np.testing.assert_allclose(got[5][1], 1 + 3)
    np.testing.assert_allclose(got[7][1], 5)


def test_coalesce_of_rows_in_id_order_skips_the_sort():
    """Rows already in id order (unused slots last), as the Embedding rule gives them,
    merge to the same rows without the sort; rows out of order are seen as such."""
    from keras_privacy.training.fast import units

    def segment_sum(d, s, n):
        return units.segment_sum(d, s, num_segments=n)

    ids = np.array([2, 2, 5, 5, 7, -1], "int32")
    rows = SparseRows(
        ops.convert_to_tensor(ids),
        ops.convert_to_tensor(np.arange(12, dtype="float32").reshape(6, 2)),
        ops.convert_to_tensor(np.array([1, 2, 3, 4, 5, 0], "float32")),
    )
    assert bool(to_numpy(in_id_order(rows.ids)))
    for unsorted in ([5, 2, 2, 5, 7, -1], [2, 2, -1, 5, 5, 7]):
        assert not bool(to_numpy(in_id_order(ops.convert_to_tensor(np.array(unsorted, "int32")))))
    fast = coalesce(rows, segment_sum, in_order=True)
    sorted_ = coalesce(rows, segment_sum)
    for a, b in zip(fast, sorted_, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_array_equal(to_numpy(fast.ids)[:3], [2, 5, 7])
    np.testing.assert_allclose(to_numpy(fast.values)[0], [0 + 2, 1 + 3])
    np.testing.assert_allclose(to_numpy(fast.counts)[:3], [3, 7, 5])


def _compress(x, mask):
    """Entries of ``x`` where ``mask`` holds (NumPy; the tests' dynamic-shape backend)."""
    return ops.convert_to_tensor(to_numpy(x)[to_numpy(mask)])


def test_selected_values_and_false_positive_ids_match_the_masks():
    """The dynamic-shape backends' shortcuts (TensorFlow, PyTorch) give what the mask
    forms give: the selected rows' merged values, and the untouched rows with u < p."""
    from keras_privacy.training.fast import units

    def segment_sum(d, s, n):
        return units.segment_sum(d, s, num_segments=n)

    def sorted_sum(d, s):
        count = int(to_numpy(s).max()) + 1 if to_numpy(s).size else 0
        return units.segment_sum(d, s, num_segments=count)

    rng = np.random.default_rng(3)
    ids = np.sort(rng.integers(0, 20, 30)).astype("int32")
    ids[-4:] = -1
    rows = SparseRows(
        ops.convert_to_tensor(ids),
        ops.convert_to_tensor(rng.normal(size=(30, 3)).astype("float32")),
        ops.convert_to_tensor(rng.random(30).astype("float32")),
    )
    full = coalesce(rows, segment_sum)
    merged, counts, slot_values, segment = coalesce_counts(rows, segment_sum, in_order=True)
    np.testing.assert_array_equal(to_numpy(merged), to_numpy(full.ids))
    selected = ops.convert_to_tensor((to_numpy(merged) >= 0) & (np.arange(30) % 3 != 1))
    picked = selected_values(slot_values, segment, selected, _compress, sorted_sum)
    np.testing.assert_allclose(
        to_numpy(picked), to_numpy(full.values)[to_numpy(selected)], rtol=1e-6
    )
    spec = SparsityPreserving(selection_noise_multiplier=1.0, threshold=0.5)  # p = 0.31
    uniforms = ops.convert_to_tensor(rng.random(20).astype("float32"))
    mask = to_numpy(false_positive_mask(full, spec, uniforms, 20))
    got = to_numpy(false_positive_ids(merged, spec, uniforms, 20, _compress))
    np.testing.assert_array_equal(got, np.flatnonzero(mask))
    assert len(got) > 0 and not set(got.tolist()) & set(ids[ids >= 0].tolist())


def test_never_selected_rows_never_change_and_accounting_is_combined():
    spec = SparsityPreserving(selection_noise_multiplier=2.0, threshold=30.0)
    model = _model(spec, noise=1.0)
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss=LOSS)
    x, y = _batch(rows=16)
    table = model.get_layer("table").embeddings
    before = to_numpy(table.value).copy()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    # tau = 15 sigma_s: P(any selection) over 3 x 2 updates x 64 rows < 1e-48.
    np.testing.assert_array_equal(to_numpy(table.value), before)
    segment = model.privacy_record.current
    assert segment.selection_noise_multiplier == 2.0
    sigma = combined_noise_multiplier(1.0, 2.0)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            8 / 16,
            dp_accounting.ComposedDpEvent(
                [dp_accounting.GaussianDpEvent(1.0), dp_accounting.GaussianDpEvent(2.0)]
            ),
        ),
        segment.updates,
    )
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(event)
    np.testing.assert_allclose(
        model.privacy_spent(1e-3, accountant="rdp"), rdp.get_epsilon(1e-3), rtol=1e-9
    )
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(8 / 16, dp_accounting.GaussianDpEvent(sigma)),
            segment.updates,
        )
    )
    np.testing.assert_allclose(model.privacy_spent(1e-3), pld.get_epsilon(1e-3), rtol=1e-9)


def test_vectorized_engine_refuses_sparsity():
    model = _model(SURE, engine="vectorized")
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    x, y = _batch()
    with pytest.raises(PrivacyError, match="sparsity_preserving"):
        model.train_on_batch(x, y)


def test_settings_are_checked_and_saved():
    with pytest.raises(PrivacyError, match="threshold"):
        SparsityPreserving(selection_noise_multiplier=1.0, threshold=-1.0)
    with pytest.raises(PrivacyError, match="selection_noise_multiplier"):
        SparsityPreserving(selection_noise_multiplier=0.0, threshold=1.0)
    with pytest.raises(PrivacyError, match="gradient_accumulation_steps"):
        kp.DPSequential(
            [keras.layers.Dense(1)],
            l2_norm_clip=1.0,
            noise_multiplier=1.0,
            gradient_accumulation_steps=2,
            sparsity_preserving=SURE,
        )._dp_require_config()
    model = _model(SURE)
    assert model.get_config()["dp_config"]["sparsity_preserving"] == SURE.to_config()


def test_options_whose_noise_is_not_the_selected_rows_are_refused():
    """Sparse rows are noised with sigma C at a fixed C from the model's generator:
    adaptive clipping (C_t) and secure noise (OS CSPRNG) would be silently bypassed on the
    tables, so the combinations are refused."""
    adaptive = kp.AdaptiveClip(clipped_count_stddev=1.0)
    for settings in ({"l2_norm_clip": adaptive}, {"l2_norm_clip": 1.0, "secure_noise": True}):
        with pytest.raises(PrivacyError, match="sparsity_preserving cannot be combined"):
            kp.DPSequential(
                [keras.layers.Dense(1)], noise_multiplier=1.0, sparsity_preserving=SURE, **settings
            )._dp_require_config()


def _lm(table_layer, sparsity):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((TOKENS,), dtype="int32")
    if isinstance(table_layer, keras.layers.ReversibleEmbedding):
        z = table_layer(inputs)
        logits = keras.layers.GlobalAveragePooling1D()(table_layer(z, reverse=True))
        outputs = keras.layers.Dense(1)(logits)
    else:  # one table looked up twice (a shared table)
        z = keras.layers.Add()([table_layer(inputs), table_layer(inputs)])
        outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(z))
    model = kp.DPModel(
        inputs,
        outputs,
        l2_norm_clip=0.5,
        noise_multiplier=0.0,
        engine="fast",
        seed=0,
        sparsity_preserving=sparsity,
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_shared_tables_are_refused(tied):
    """A tied output projection touches every row of the table, and a table reached by
    several calls would be selected per call: neither comes by row; both are refused
    rather than trained as if they did."""
    layer = (
        keras.layers.ReversibleEmbedding(VOCAB, DIM, tie_weights=True)
        if tied
        else keras.layers.Embedding(VOCAB, DIM)
    )
    model = _lm(layer, SURE)
    x, y = _batch()
    with pytest.raises(PrivacyError, match="sparsity_preserving"):
        model.train_on_batch(x, y)


# -- accounting, backend-free --------------------------------------------------------


@tensorflow_only
def test_combined_noise_multiplier_is_dp_accountings_composition():
    """Unsampled: PLD's numerical composition of the two Gaussians is one Gaussian with
    the combined multiplier; sampled: RDP's composition inside the Poisson event agrees."""
    sigma, selection = 1.3, 0.9
    combined = combined_noise_multiplier(sigma, selection)
    composed = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(sigma), dp_accounting.GaussianDpEvent(selection)]
    )
    for eps in (0.5, 2.0):
        a = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
        a.compose(dp_accounting.SelfComposedDpEvent(composed, 3))
        b = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
        b.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(combined), 3))
        np.testing.assert_allclose(a.get_delta(eps), b.get_delta(eps), rtol=1e-2)
    a = dp_accounting.rdp.RdpAccountant()
    a.compose(dp_accounting.PoissonSampledDpEvent(0.01, composed), 1000)
    b = dp_accounting.rdp.RdpAccountant()
    b.compose(
        dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(combined)), 1000
    )
    np.testing.assert_allclose(a.get_epsilon(1e-6), b.get_epsilon(1e-6), rtol=1e-12)


@tensorflow_only
def test_subsampled_two_gaussians_are_one_gaussian_numerically():
    """One sampled update, by direct 2-D integration of the hockey-stick divergence
    between (1-q) N(0, I) + q N(mu, I) and N(0, I), mu = (1/sigma, 1/sigma_s) (both
    directions), against dp_accounting's PLD for the 1-D subsampled Gaussian."""
    sigma, selection, q, eps = 1.1, 0.8, 0.3, 0.5
    mu = np.array([1 / sigma, 1 / selection])
    grid = np.linspace(-9, 11, 801)
    step = grid[1] - grid[0]
    u, v = np.meshgrid(grid, grid, indexing="ij")

    def density(cu, cv):
        return np.exp(-0.5 * ((u - cu) ** 2 + (v - cv) ** 2)) / (2 * np.pi)

    null = density(0, 0)
    mixture = (1 - q) * null + q * density(*mu)
    delta_add = np.sum(np.maximum(mixture - math.exp(eps) * null, 0)) * step**2
    delta_remove = np.sum(np.maximum(null - math.exp(eps) * mixture, 0)) * step**2
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(
            q, dp_accounting.GaussianDpEvent(combined_noise_multiplier(sigma, selection))
        )
    )
    np.testing.assert_allclose(accountant.get_delta(eps), max(delta_add, delta_remove), rtol=2e-3)


@tensorflow_only
def test_tf_privacy_split_keeps_the_total_noise():
    for fraction in (0.1, 0.5, 0.8):
        selection, gradient = split_noise_multiplier_tf_privacy(1.2, fraction)
        np.testing.assert_allclose(combined_noise_multiplier(gradient, selection), 1.2)
    with pytest.raises(PrivacyError):
        split_noise_multiplier_tf_privacy(1.0, 1.0)


def test_tf_privacy_config_through_the_compatibility_layer():
    from keras_privacy.compat.tensorflow_privacy.privacy.keras_models import dp_keras_model

    config = dp_keras_model.SparsityPreservingDPSGDConfig(
        sparse_selection_privacy_budget_fraction=0.5, sparse_selection_threshold=3
    )
    model = dp_keras_model.DPSequential(
        1.0,
        1.2,
        layers=[
            keras.Input((TOKENS,), dtype="int32"),
            keras.layers.Embedding(VOCAB, DIM),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ],
        sparsity_preserving_dpsgd_config=config,
    )
    dp = model._dp_require_config()
    selection, gradient = split_noise_multiplier_tf_privacy(1.2, 0.5)
    assert dp.noise_multiplier == gradient
    assert dp.sparsity_preserving == SparsityPreserving(selection, 3.0, 1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    x, y = _batch(rows=16)
    model.fit(x, y, batch_size=8, verbose=0)
    np.testing.assert_allclose(model.privacy_record.current.accounted_noise_multiplier, 1.2)
    plain = dp_keras_model.DPSequential(
        1.0,
        1.2,
        layers=[keras.layers.Dense(1)],
        sparsity_preserving_dpsgd_config=dp_keras_model.SparsityPreservingDPSGDConfig(),
    )
    assert plain._dp_require_config().sparsity_preserving is None
    assert plain._dp_require_config().noise_multiplier == 1.2
