"""Offline datasets for tutorials, examples and benchmarks (numpy only, no downloads).

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package, which installs the
original idx files under ``/usr/share/datasets/fashion-mnist/``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed), the format of (Fashion-)MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {array.size} values")
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(
    directory: str | os.PathLike | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST as ``(x_train, y_train), (x_test, y_test)``.

    Images are float32 in [0, 1] with shape (n, 28, 28, 1); labels are int64 in 0..9.
    ``directory`` defaults to ``$KERAS_PRIVACY_FASHION_MNIST`` or Debian's location.
    """
    directory = Path(
        directory or os.environ.get("KERAS_PRIVACY_FASHION_MNIST") or FASHION_MNIST_DIR
    )
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    for key, name in names.items():
        candidates = [directory / f"{name}.gz", directory / name]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {name}(.gz) not found in {directory}. Install Debian's "
                "package: apt-get install dataset-fashion-mnist (or set "
                "KERAS_PRIVACY_FASHION_MNIST to a folder holding the idx files)."
            )
        arrays[key] = read_idx(path)
    prepare = lambda images: (images.astype("float32") / 255.0)[..., None]
    return (
        (prepare(arrays["x_train"]), arrays["y_train"].astype("int64")),
        (prepare(arrays["x_test"]), arrays["y_test"].astype("int64")),
    )
