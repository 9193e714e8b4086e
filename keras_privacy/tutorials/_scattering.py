"""A 2-D scattering transform in NumPy: fixed (data-independent) image features.

The scattering transform (Mallat 2012; Bruna & Mallat 2013) cascades wavelet convolutions
and complex moduli, then averages with a low-pass filter. It has no learned parameters, so
computing it on private images costs no privacy: each image's features depend on that
image alone. Tramèr & Boneh (2021, "Differentially private learning needs better features
(or much more data)") trained DP-SGD linear models on these features.

For an image x, J scales and L orientations (here J = 2, L = 8):

    S0 x           = (x * phi_J)(2^J n)
    S1 x[j, t]     = (|x * psi_{j,t}| * phi_J)(2^J n)                      j < J
    S2 x[j1,t1,j2,t2] = (||x * psi_{j1,t1}| * psi_{j2,t2}| * phi_J)(2^J n)  j1 < j2 < J

1 + J L + L^2 J (J - 1) / 2 channels (81 for J = 2, L = 8), each (M / 2^J) x (N / 2^J)
(7 x 7 for 28 x 28 images).

Filters (built in space, periodised, then Fourier transformed): a Gabor filter

    g(u) = exp(-u^T R diag(1, s^2) R^T u / (2 sigma^2) + i xi (u_1 cos t + u_2 sin t))
           / (2 pi sigma^2 / s)

with R the rotation by t; the Morlet wavelet psi_{j,t} = g_{xi} - K g_0, with K chosen so
that psi has zero mean, sigma = 0.8 2^j, xi = 3 pi / (4 2^j), s = 4 / L; the low-pass
phi_J is the Gaussian (Gabor filter with xi = 0, s = 1) of sigma = 0.8 2^(J-1). These are
the usual parameters of the Morlet filter bank in the scattering literature (and in the
Kymatio package, whose 0.3.0 release does not import with SciPy >= 1.17). The filters are
symmetric, g(-u) = conj(g(u)), so their Fourier transforms are real.

Images are reflect-padded by 2^J on each side (28 -> 36), every convolution is a product
in the Fourier domain (so circular on the padded image), the final subsampling by 2^J is a
periodisation of the spectrum, and one output row/column is cut at each border.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

__all__ = ["Scattering2D", "group_normalize"]


def _gabor(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter on a size x size grid, periodised over the neighbouring periods."""
    c, s = math.cos(theta), math.sin(theta)
    rotation = np.array([[c, -s], [s, c]])
    curvature = rotation @ np.diag([1.0, slant * slant]) @ rotation.T / (2 * sigma * sigma)
    filt = np.zeros((size, size), dtype=np.complex128)
    for ex in (-2, -1, 0, 1, 2):
        for ey in (-2, -1, 0, 1, 2):
            u1, u2 = np.mgrid[ex * size : (ex + 1) * size, ey * size : (ey + 1) * size]
            quad = curvature[0, 0] * u1 * u1 + 2 * curvature[0, 1] * u1 * u2
            quad = quad + curvature[1, 1] * u2 * u2
            filt += np.exp(-quad + 1j * xi * (u1 * c + u2 * s))
    return filt * slant / (2 * math.pi * sigma * sigma)


def _morlet(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    wave = _gabor(size, sigma, theta, xi, slant)
    envelope = _gabor(size, sigma, theta, 0.0, slant)
    return wave - (wave.sum() / envelope.sum()) * envelope


class Scattering2D:
    """The scattering transform of square images up to order 2 (see the module docstring).

    ``Scattering2D(J=2, L=8, size=28)(images)`` maps float images of shape (n, size, size)
    to features of shape (n, channels, size / 2^J, size / 2^J), float32. ``size`` must be a
    multiple of 2^J.
    """

    def __init__(self, J: int = 2, L: int = 8, size: int = 28) -> None:
        if J < 1 or L < 1 or size % (2**J):
            raise ValueError("need J >= 1, L >= 1 and size a multiple of 2**J")
        self.J, self.L, self.size = J, L, size
        self.pad = 2**J
        self.padded = size + 2 * self.pad
        p = self.padded
        self.phi = np.real(scipy.fft.fft2(_gabor(p, 0.8 * 2 ** (J - 1), 0.0, 0.0, 1.0)))
        self.psi = {}
        for j in range(J):
            for t in range(L):
                theta = t * math.pi / L
                spatial = _morlet(p, 0.8 * 2**j, theta, 3 * math.pi / 4 / 2**j, 4.0 / L)
                self.psi[j, t] = np.real(scipy.fft.fft2(spatial)).astype(np.float32)
        self.phi = self.phi.astype(np.float32)

    @property
    def channels(self) -> int:
        J, L = self.J, self.L
        return 1 + J * L + L * L * J * (J - 1) // 2

    @property
    def output_size(self) -> int:
        return self.size // 2**self.J

    def _low_pass(self, spectrum: np.ndarray) -> np.ndarray:
        """(spectrum * phi) inverse-transformed, subsampled by 2^J and cropped: real part."""
        k = 2**self.J
        m = self.padded // k
        folded = (spectrum * self.phi).reshape(*spectrum.shape[:-2], k, m, k, m)
        folded = folded.mean(axis=(-4, -2))
        out = np.real(scipy.fft.ifft2(folded, workers=1))
        return out[..., 1:-1, 1:-1]

    def __call__(self, images: np.ndarray, chunk: int = 500) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.shape[1:] != (self.size, self.size):
            raise ValueError(f"expected images of shape (n, {self.size}, {self.size})")
        out = np.empty(
            (len(images), self.channels, self.output_size, self.output_size), dtype=np.float32
        )
        for start in range(0, len(images), chunk):
            out[start : start + chunk] = self._transform(images[start : start + chunk])
        return out

    def _transform(self, images: np.ndarray) -> np.ndarray:
        J, L, pad = self.J, self.L, self.pad
        x = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
        spectrum = scipy.fft.fft2(x, workers=1).astype(np.complex64)
        features = [self._low_pass(spectrum)[:, None]]
        first, second = [], []
        for j1 in range(J):
            for t1 in range(L):
                u1 = np.abs(scipy.fft.ifft2(spectrum * self.psi[j1, t1], workers=1))
                u1_spectrum = scipy.fft.fft2(u1, workers=1).astype(np.complex64)
                first.append(self._low_pass(u1_spectrum))
                for j2 in range(j1 + 1, J):
                    products = u1_spectrum[:, None] * np.stack(
                        [self.psi[j2, t2] for t2 in range(L)]
                    )
                    u2 = np.abs(scipy.fft.ifft2(products, workers=1))
                    second.append(self._low_pass(scipy.fft.fft2(u2, workers=1)))
        features.append(np.stack(first, axis=1))
        if second:
            features.append(np.concatenate(second, axis=1))
        return np.concatenate(features, axis=1)


def group_normalize(features: np.ndarray, groups: int, eps: float = 1e-5) -> np.ndarray:
    """Per-example group normalisation of (n, channels, h, w) features, no learned scale.

    Channels are split into ``groups`` consecutive groups; each example's group is shifted
    and scaled to mean 0 and variance 1 over its channels and positions. Each example is
    normalised by its own statistics only, so the map uses nothing of other examples and
    costs no privacy.
    """
    n, c = features.shape[:2]
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} groups")
    grouped = features.reshape(n, groups, -1).astype(np.float32)
    mean = grouped.mean(axis=2, keepdims=True)
    var = grouped.var(axis=2, keepdims=True)
    return ((grouped - mean) / np.sqrt(var + eps)).reshape(features.shape)
