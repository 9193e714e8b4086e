"""Private partial whitening: flatten the top of the features' spectrum, with DP.

DP-SGD clips every example's gradient to C and adds isotropic noise. For a linear model on
features x the per-example gradient is (p - y) x^T, so a few directions in which the
features vary a lot (the top of their second-moment spectrum; for the group-normalised
scattering features of Fashion-MNIST the top 3 of 3,969 eigenvalues hold 31% of the
trace) dominate every clipped gradient, while the noise is spread evenly. Scaling those
directions down ("partial whitening") lets the clipped gradients carry more of the
directions that separate the classes, and SGD converges in fewer (so less noisy) steps.

The second moment is computed on the private training set, so it is released with the
Gaussian mechanism (the "Analyze Gauss" construction of Dwork, Talwar, Thakurta & Zhang,
2014), under the add-or-remove-one-example relation:

* every example's feature vector is scaled to L2 norm at most ``R`` (``R^2 = d`` for
  group-normalised features, whose norm is below that by construction; the clipping is
  enforced anyway), so adding or removing one example changes ``S = sum_i x_i x_i^T`` by
  ``x x^T``, whose upper triangle (with the diagonal) has L2 norm at most ``R^2``;
* ``S`` gets i.i.d. Gaussian noise of standard deviation ``sigma_s R^2`` on each entry of
  its upper triangle (mirrored below the diagonal): ``dp_accounting.GaussianDpEvent(
  sigma_s)``, composed with the DP-SGD run by the accountant
  (``compute_noise_multiplier(..., other_releases=...)``).

The exact sum is computed once; each release adds fresh noise to it.

Everything after the noise is post-processing: the top ``k`` eigenvectors ``v_i`` of the
noisy ``S / N`` with eigenvalues ``l_1 >= ... >= l_k > l_(k+1)``, and the map

    x -> x - sum_{i<=k} (1 - sqrt(l_(k+1) / l_i)) (v_i . x) v_i

which scales direction ``v_i`` so that its second moment becomes ``l_(k+1)`` and leaves the
rest of the space alone. It is applied to training and test features alike.
"""

from __future__ import annotations

import dataclasses

import dp_accounting
import numpy as np
import scipy.linalg

__all__ = [
    "PartialWhitening",
    "clipped_second_moment_sum",
    "private_partial_whitening",
    "release_second_moment",
]


def clipped_second_moment_sum(
    features: np.ndarray, norm_bound: float, chunk: int = 5000
) -> np.ndarray:
    """``sum_i x_i x_i^T`` (float64) with each row ``x_i`` scaled to norm <= ``norm_bound``.

    A row with a non-finite entry (NaN, inf) contributes nothing, as DP-SGD gives a
    non-finite gradient weight 0: one such row would otherwise make the whole sum, and so
    the release, NaN. The bound on one row's contribution (``norm_bound^2``) is unchanged,
    and how many rows were left out is not released.

    Not private: release it only through :func:`release_second_moment`.
    """
    if norm_bound <= 0:
        raise ValueError("norm_bound must be positive")
    d = features.shape[1]
    moment = np.zeros((d, d), dtype=np.float64)
    for start in range(0, len(features), chunk):
        part = np.asarray(features[start : start + chunk], dtype=np.float64)
        part = np.where(np.isfinite(part).all(axis=1, keepdims=True), part, 0.0)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        part = part * np.minimum(1.0, norm_bound / np.maximum(norms, 1e-30))
        moment += part.T @ part
    return moment


def release_second_moment(
    moment_sum: np.ndarray,
    number_of_examples: int,
    norm_bound: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dp_accounting.DpEvent]:
    """``(moment_sum + E) / N`` and the release's DpEvent (add-or-remove one row).

    ``E`` is symmetric with i.i.d. N(0, (noise_multiplier * norm_bound^2)^2) entries on and
    above the diagonal; ``moment_sum`` must come from :func:`clipped_second_moment_sum`
    with the same ``norm_bound``. ``N`` is public; dividing by it is post-processing.
    """
    if noise_multiplier <= 0:
        raise ValueError("noise_multiplier must be positive")
    d = moment_sum.shape[0]
    noise = np.triu(rng.normal(0.0, noise_multiplier * norm_bound**2, (d, d)))
    released = (moment_sum + noise + np.triu(noise, 1).T) / number_of_examples
    return released, dp_accounting.GaussianDpEvent(noise_multiplier)


@dataclasses.dataclass(frozen=True)
class PartialWhitening:
    """``x -> x - ((x @ directions) * shrink) @ directions.T`` (see the module docstring).

    ``directions``: (d, k) orthonormal columns; ``shrink``: (k,) in [0, 1).
    """

    directions: np.ndarray
    shrink: np.ndarray

    @classmethod
    def from_second_moment(cls, moment: np.ndarray, k: int) -> PartialWhitening:
        """From the top ``k + 1`` eigenpairs of a symmetric ``moment`` (noisy or not)."""
        d = moment.shape[0]
        if not 1 <= k < d:
            raise ValueError(f"k must be in [1, {d - 1}], received {k!r}")
        values, vectors = scipy.linalg.eigh(moment, subset_by_index=[d - k - 1, d - 1])
        values, vectors = values[::-1], vectors[:, ::-1]
        floor = max(float(values[k]), 1e-12 * float(values[0]), 1e-30)
        shrink = 1.0 - np.sqrt(floor / np.maximum(values[:k], floor))
        return cls(vectors[:, :k].astype(np.float32), shrink.astype(np.float32))

    def __call__(self, features: np.ndarray, chunk: int = 5000) -> np.ndarray:
        out = np.empty(features.shape, dtype=np.float32)
        for start in range(0, len(features), chunk):
            part = np.asarray(features[start : start + chunk], dtype=np.float32)
            out[start : start + chunk] = (
                part - ((part @ self.directions) * self.shrink) @ self.directions.T
            )
        return out


def private_partial_whitening(
    moment_sum: np.ndarray,
    number_of_examples: int,
    k: int,
    noise_multiplier: float,
    norm_bound: float,
    seed: int | None = None,
) -> tuple[PartialWhitening, dp_accounting.DpEvent]:
    """:class:`PartialWhitening` of the top ``k`` directions of the privately released
    second moment (``moment_sum`` from :func:`clipped_second_moment_sum`). ``seed=None``
    draws the noise from the operating system's entropy (tests pass a seed)."""
    moment, event = release_second_moment(
        moment_sum, number_of_examples, norm_bound, noise_multiplier, np.random.default_rng(seed)
    )
    return PartialWhitening.from_second_moment(moment, k), event
