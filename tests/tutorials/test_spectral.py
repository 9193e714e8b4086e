"""Private partial whitening (keras_privacy/tutorials/_spectral.py): sensitivity, noise,
and the whitening map."""

import dp_accounting
import numpy as np
import pytest

from keras_privacy.tutorials import _spectral


def _upper(matrix):
    return matrix[np.triu_indices(matrix.shape[0])]


def test_one_row_changes_the_sum_by_at_most_the_bound_squared():
    """Add-or-remove one row: the upper triangle of the clipped sum moves by <= R^2 in L2,
    however large the row (the clipping is enforced, not assumed)."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(50, 6))
    bound = 2.0
    for extra in (rng.normal(size=6) * 100, rng.normal(size=6) * 0.1, np.full(6, 1e6)):
        with_row = _spectral.clipped_second_moment_sum(np.vstack([rows, extra]), bound)
        without = _spectral.clipped_second_moment_sum(rows, bound)
        assert np.linalg.norm(_upper(with_row - without)) <= bound**2 * (1 + 1e-9)
    # rows inside the bound are summed exactly
    small = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    assert np.allclose(_spectral.clipped_second_moment_sum(small, bound, chunk=7), small.T @ small)


def test_a_non_finite_row_contributes_nothing_instead_of_making_the_release_nan():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(40, 5))
    without = _spectral.clipped_second_moment_sum(rows, 2.0)
    for bad in (np.nan, np.inf, -np.inf):
        extra = rng.normal(size=(1, 5))
        extra[0, 2] = bad
        with_row = _spectral.clipped_second_moment_sum(np.vstack([rows, extra]), 2.0, chunk=16)
        assert np.isfinite(with_row).all()
        np.testing.assert_allclose(with_row, without, rtol=1e-12)
    released, _ = _spectral.release_second_moment(with_row, 41, 2.0, 1.0, np.random.default_rng(0))
    assert np.isfinite(released).all()


def test_the_release_adds_symmetric_noise_of_the_documented_scale():
    d, n, bound, sigma = 40, 1000, 3.0, 2.5
    zero = np.zeros((d, d))
    released, event = _spectral.release_second_moment(
        zero, n, bound, sigma, np.random.default_rng(1)
    )
    assert event == dp_accounting.GaussianDpEvent(sigma)
    assert np.array_equal(released, released.T)
    noise = _upper(released) * n  # i.i.d. N(0, (sigma R^2)^2) on and above the diagonal
    assert noise.std() == pytest.approx(sigma * bound**2, rel=0.05)
    assert abs(noise.mean()) < 4 * sigma * bound**2 / np.sqrt(noise.size)
    with pytest.raises(ValueError, match="noise_multiplier"):
        _spectral.release_second_moment(zero, n, bound, 0.0, np.random.default_rng(1))


def test_partial_whitening_flattens_the_top_of_the_spectrum_only():
    rng = np.random.default_rng(2)
    basis, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    values = np.array([50.0, 20.0, 9.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    moment = basis @ np.diag(values) @ basis.T
    whitening = _spectral.PartialWhitening.from_second_moment(moment, k=3)
    # the map is linear: its matrix M gives the whitened second moment M S M^T
    matrix = whitening(np.eye(8)).T
    after = np.sort(np.linalg.eigvalsh(matrix @ moment @ matrix.T))[::-1]
    assert np.allclose(after[:4], 4.0)  # the top 3 scaled down to the 4th eigenvalue
    assert np.allclose(after[4:], values[4:])  # the rest untouched
    assert np.all((whitening.shrink >= 0) & (whitening.shrink < 1))
    with pytest.raises(ValueError, match="k must be"):
        _spectral.PartialWhitening.from_second_moment(moment, k=8)


def test_private_whitening_is_seeded_for_tests_and_fresh_otherwise():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(200, 10))
    total = _spectral.clipped_second_moment_sum(rows, 4.0)
    first, event = _spectral.private_partial_whitening(total, 200, 2, 1.0, 4.0, seed=5)
    again, _ = _spectral.private_partial_whitening(total, 200, 2, 1.0, 4.0, seed=5)
    fresh, _ = _spectral.private_partial_whitening(total, 200, 2, 1.0, 4.0)
    assert event == dp_accounting.GaussianDpEvent(1.0)
    assert np.array_equal(first.directions, again.directions)
    assert not np.allclose(np.abs(first.directions), np.abs(fresh.directions))
