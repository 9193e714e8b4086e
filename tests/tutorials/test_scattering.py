"""The NumPy scattering transform of the Fashion-MNIST table: known properties."""

from __future__ import annotations

import numpy as np
import pytest

from keras_privacy.tutorials._scattering import Scattering2D, group_normalize


@pytest.fixture(scope="module")
def scattering():
    return Scattering2D(J=2, L=8, size=28)


def _images(n: int, seed: int = 0, sharp: bool = False) -> np.ndarray:
    """Blobs on a zero border, like Fashion-MNIST's centred objects (``sharp``: narrow)."""
    rng = np.random.default_rng(seed)
    u, v = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for k in range(n):
        for _ in range(3):
            cu, cv = rng.uniform(8, 20, size=2)
            width = rng.uniform(0.7, 1.2) if sharp else rng.uniform(2, 5)
            images[k] += np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * width**2))
    return images


def test_shape_and_channel_count(scattering):
    assert scattering.channels == 1 + 2 * 8 + 8 * 8 == 81
    features = scattering(_images(3))
    assert features.shape == (3, 81, 7, 7) and features.dtype == np.float32
    # (n, 28, 28, 1) images, as the loader returns them, are accepted too
    np.testing.assert_allclose(scattering(_images(3)[..., None]), features)
    assert Scattering2D(J=1, L=4, size=28).channels == 1 + 4


def test_filters_low_pass_has_unit_mean_and_wavelets_zero_mean(scattering):
    assert scattering.phi[0, 0] == pytest.approx(1.0, abs=1e-6)
    for psi in scattering.psi.values():
        assert abs(psi[0, 0]) < 1e-6


def test_a_constant_image_gives_its_value_at_order_0_and_nothing_else(scattering):
    features = scattering(np.full((2, 28, 28), 0.7, dtype=np.float32))
    np.testing.assert_allclose(features[:, 0], 0.7, rtol=1e-5)
    assert np.abs(features[:, 1:]).max() < 1e-5


def test_orders_one_and_two_are_non_negative_and_features_are_linear_at_order_0(scattering):
    x = _images(4)
    features = scattering(x)
    assert features[:, 1:].min() > -1e-5  # moduli averaged by a positive low-pass
    np.testing.assert_allclose(scattering(3 * x)[:, 0], 3 * features[:, 0], rtol=1e-4, atol=1e-5)
    # every order is positively homogeneous: S(a x) = a S(x) for a > 0
    np.testing.assert_allclose(scattering(2 * x), 2 * features, rtol=1e-4, atol=1e-6)


def test_rotating_a_wavelet_by_90_degrees_gives_the_wavelet_four_orientations_on(scattering):
    # Orientation t is the angle t pi / 8; +90 degrees is t + 4. Angles past pi are the
    # orientation t - 4 with the frequency reversed: psi_hat(-k) (same modulus |x * psi|).
    p = scattering.padded
    minus = (-np.arange(p)) % p
    for (j, t), psi in scattering.psi.items():
        rotated = psi.T[minus, :]  # rotated[k1, k2] = psi[k2, -k1]
        reversed_ = scattering.psi[j, (t + 4) % 8][minus][:, minus]
        expected = scattering.psi[j, t + 4] if t < 4 else reversed_
        np.testing.assert_allclose(rotated, expected, atol=1e-5)


def test_nearly_invariant_to_small_translations(scattering):
    x = _images(8, seed=1, sharp=True)
    shifted = np.roll(x, 1, axis=2)
    features, moved = scattering(x), scattering(shifted)
    pixel_change = np.linalg.norm(shifted - x) / np.linalg.norm(x)
    feature_change = np.linalg.norm(moved - features) / np.linalg.norm(features)
    assert feature_change < 0.5 * pixel_change


def test_energy_is_of_the_order_of_the_image_energy(scattering):
    # The Morlet frame is not tight, but the features' energy (times 2^(2J) for the
    # subsampling) stays within a factor of a few of the image's.
    x = _images(6, seed=2)
    ratio = 16 * (scattering(x) ** 2).sum(axis=(1, 2, 3)) / (x**2).sum(axis=(1, 2))
    assert np.all((ratio > 0.3) & (ratio < 3.0))


def test_chunking_does_not_change_the_result(scattering):
    x = _images(5, seed=3)
    np.testing.assert_allclose(scattering(x, chunk=2), scattering(x), rtol=1e-6)


def test_group_normalize_uses_each_example_alone():
    rng = np.random.default_rng(0)
    features = rng.normal(3.0, 2.0, size=(4, 81, 7, 7)).astype(np.float32)
    normal = group_normalize(features, 27)
    grouped = normal.reshape(4, 27, -1)
    np.testing.assert_allclose(grouped.mean(axis=2), 0.0, atol=1e-5)
    np.testing.assert_allclose(grouped.var(axis=2), 1.0, atol=1e-3)
    alone = np.concatenate([group_normalize(features[i : i + 1], 27) for i in range(4)])
    np.testing.assert_array_equal(alone, normal)
    with pytest.raises(ValueError):
        group_normalize(features, 10)


def test_features_are_cached_by_content_and_prepared_in_chunks(tmp_path):
    from keras_privacy.tutorials import _fashion_table

    x = _images(6, seed=4)
    first = _fashion_table.scattering_features(x, tmp_path)
    assert len(list(tmp_path.glob("scattering_*.npy"))) == 1
    again = _fashion_table.scattering_features(x, tmp_path)  # read back from the cache
    np.testing.assert_array_equal(np.asarray(again), first)
    _fashion_table.scattering_features(x[:3], tmp_path)  # other images: another file
    assert len(list(tmp_path.glob("scattering_*.npy"))) == 2
    whole = _fashion_table.prepare(first, chunk=100)
    np.testing.assert_array_equal(_fashion_table.prepare(first, chunk=4), whole)
    assert whole.shape == (6, 81 * 7 * 7)
    np.testing.assert_allclose(whole, group_normalize(first, 27).reshape(6, -1), rtol=1e-6)
