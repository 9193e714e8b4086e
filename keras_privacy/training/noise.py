"""Gaussian noise for DP-SGD updates, drawn by the Box–Muller transform.

An update adds ``N(0, (sigma C)^2)`` independently to every coordinate of the clipped
gradient sum, once per update. The backend draws uniform numbers from a counter-based
generator keyed by the model's noise seed and the update's number (on TensorFlow:
ThreeFry, compiled by XLA); this module turns them into Gaussians::

    u1, u2 ~ U[0, 1) independent,   r = sqrt(-2 ln(1 - u1)),   theta = 2 pi u2
    z1 = r cos(theta),   z2 = r sin(theta)

``z1`` and ``z2`` are independent standard normals (Box & Muller, 1958): ``r^2`` is
exponential with mean 2, the angle is uniform, and the pair is rotation invariant. One
draw of ``ceil(n / 2)`` pairs noises all ``n`` coordinates of an update at once.

Why not the backend's own normal sampler: on one CPU core TensorFlow's
``Generator.normal`` runs Box–Muller per element with scalar ``log``/``sin``/``cos`` and
took 8.3 ms for the 670k coordinates of a 784-512-512-10 MLP, against 8.2 ms for the whole
forward and backward pass; XLA-compiled ThreeFry uniforms took 1.1-1.3 ms and the
vectorized transform here 1.8-2 ms more. The result is the same distribution with the
same float32 resolution: float32 uniforms carry 23 random bits, so ``1 - u1`` is a
multiple of ``2^-23`` in ``(0, 1]`` and ``|z| <= sqrt(2 * 23 ln 2) = 5.65`` (TensorFlow's
own sampler stops at 5.68, from its ``u1 >= 1e-7`` clamp); the exact Gaussian exceeds 5.65
with probability ``1.6e-8``. Like every floating-point
Gaussian sampler in DP libraries, this is not hardened against the floating-point attacks
of Mironov (2012).

**Secure noise** (``secure_noise=True``, :func:`secure_standard_normals`): every update's
noise comes from fresh bytes of the operating system's cryptographically secure generator
(``os.urandom``: the kernel's CSPRNG) instead of a seeded pseudo-random generator, and
each coordinate is ``(z1 + z2 + z3 + z4) / 2`` for four float64 Box–Muller normals from
53-bit uniforms, rounded once to float32.

* What it protects against: an attacker who learns or predicts the generator's state
  (a Mersenne Twister's state can be rebuilt from 624 outputs; a counter-based key leaks
  with a checkpoint, a log or a reused seed) and subtracts the noise from the released
  weights. No generator state is kept between updates, nothing is seeded from a guessable
  value, and ``seed`` is refused with it.
* Floating-point attacks (Mironov 2012 for the Laplace sampler; Holohan & Braghin 2021,
  "Secure Random Sampling in Differential Privacy", for Box–Muller Gaussians): the set of
  floating-point values a sampler can output near ``x + noise`` depends on ``x``, so low
  bits can reveal the noiseless value. The sum of four normals is the mitigation Holohan &
  Braghin propose and Opacus's ``secure_mode`` uses: it makes the reachable set dense
  enough that their attack no longer separates neighbouring inputs. It is a mitigation,
  not a proof: keras-privacy does **not** sample a discrete Gaussian (Canonne, Kamath &
  Steinke 2020) and does **not** snap the output to a grid (Mironov's defence), and the
  noise is still added in float32 on the accelerator. The float64 normals are exact to
  ``|z| <= sqrt(2 * 53 ln 2) = 8.57`` per term (a tail mass below 1e-17).
* Not covered: the Poisson sampler's choices (which examples join an update) still come
  from NumPy's PCG64 seeded with OS entropy, which is unpredictable but not a CSPRNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from keras import ops


def pairs_needed(sizes: Sequence[int]) -> int:
    """Box–Muller pairs for noising tensors of these sizes: ``ceil(sum / 2)``."""
    return -(-sum(sizes) // 2)


def gaussians_from_uniforms(uniforms: Any, stddev: float) -> Any:
    """``[2, m]`` independent U[0, 1) numbers → ``2 m`` independent N(0, stddev^2).

    Computed in float32 (the dtype of ``uniforms``): ``log1p(-u1)`` keeps ``ln(1 - u1)``
    accurate for small ``u1``, and is finite because ``u1 < 1``.
    """
    radius = ops.sqrt(-2.0 * ops.log1p(-uniforms[0])) * stddev
    angle = (2.0 * math.pi) * uniforms[1]
    return ops.concatenate([radius * ops.cos(angle), radius * ops.sin(angle)], axis=0)


def secure_standard_normals(count: int) -> np.ndarray:
    """``count`` independent N(0, 1) numbers (float32) from ``os.urandom`` bytes.

    Each is ``(z1 + z2 + z3 + z4) / 2`` (variance 1) of four float64 Box–Muller normals
    whose uniforms are the top 53 bits of fresh 64-bit words (``u1`` in ``(0, 1]`` so the
    logarithm is finite): ``4 count`` normals from ``2 count`` pairs, ``32 count`` bytes of
    OS entropy (see the module docstring for what this protects)."""
    count = int(count)
    pairs = 2 * count
    words = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64).reshape(2, pairs)
    uniforms = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(1.0 - uniforms[0]))  # 1 - u1 in (0, 1]
    angle = (2.0 * math.pi) * uniforms[1]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
    return (normals.reshape(4, count).sum(axis=0) * 0.5).astype(np.float32)


def split_noise(flat: Any, shapes: Sequence[Sequence[int]]) -> list:
    """Cut one flat noise vector into tensors of ``shapes`` (each gets its own coordinates;
    the last odd coordinate, if any, is unused)."""
    sizes = [math.prod(shape) for shape in shapes]
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(ops.reshape(flat[start : start + size], shape))
        start += size
    return out
