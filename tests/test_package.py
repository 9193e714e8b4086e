"""Package-level behaviour: lazy imports, datasets, the main job."""

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_privacy.datasets import FASHION_MNIST_DIR, load_fashion_mnist, read_idx

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_package_imports_no_framework():
    code = (
        "import sys, keras_privacy, keras_privacy.datasets;"
        "bad = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("first", ["keras_privacy", "keras"])
def test_keras_load_model_finds_the_dp_classes_after_a_plain_import(first, tmp_path):
    """``keras.models.load_model`` of a saved DP model needs only ``import keras_privacy``,
    before or after ``import keras`` (the classes register when Keras is imported)."""
    import keras

    import keras_privacy as kp

    model = kp.make_private(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
    )
    model.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError())
    path = tmp_path / "private.keras"
    model.save(path)
    second = "keras" if first == "keras_privacy" else "keras_privacy"
    code = (
        f"import {first}, {second}, keras;"
        f"m = keras.models.load_model({str(path)!r});"
        "assert type(m).__name__ == 'PrivateModel', type(m);"
        "assert m.dp_config.noise_multiplier == 1.0"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=os.environ)


@pytest.mark.parametrize(
    "first_import",
    [
        # TF Privacy's path through the compatibility layer, which imports Keras itself
        "from keras_privacy.compat.tensorflow_privacy.privacy.optimizers.dp_optimizer_keras"
        " import DPKerasSGDOptimizer",
        # a module the registration itself needs, imported first
        "from keras_privacy.training.optimizers import DPKerasSGDOptimizer",
    ],
)
def test_a_module_of_ours_importing_keras_first_imports_and_registers(first_import, tmp_path):
    """When the first ``import keras`` of a program is made by one of our modules, the
    classes cannot register at that moment (a module they need is only half imported):
    the import used to fail with a circular ``ImportError``; now the registration waits
    until that module is complete, and ``load_model`` finds the DP classes."""
    import keras

    import keras_privacy as kp

    model = kp.make_private(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
    )
    model.compile(optimizer="sgd", loss="mse")
    path = tmp_path / "private.keras"
    model.save(path)
    code = (
        "import sys;"
        "assert 'keras' not in sys.modules;"
        f"{first_import};"
        "import keras;"
        f"m = keras.models.load_model({str(path)!r});"
        "assert type(m).__name__ == 'PrivateModel', type(m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=os.environ)


def test_classes_register_when_keras_was_looked_up_before_it_was_imported():
    """TensorFlow calls ``importlib.util.find_spec("keras")`` while it loads, before Keras
    is imported: the hook must still fire on the real import (it did not, so a program
    that imported TensorFlow first could not load a saved DP model)."""
    code = (
        "import sys, importlib.util, keras_privacy;"
        "importlib.util.find_spec('keras');"
        "assert 'keras' not in sys.modules;"
        "import keras;"
        "assert 'keras_privacy.training.private' in sys.modules, 'not registered';"
        "assert keras.saving.get_registered_object('keras_privacy>PrivateModel') is not None"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=os.environ)


def _write_idx(path, array):
    codes = {np.dtype("uint8"): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_read_idx_round_trip_and_bad_files(tmp_path):
    array = np.arange(24, dtype="uint8").reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_shapes():
    (x, y), (xt, yt) = load_fashion_mnist()
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10)) and len(yt) == 10000


# The same tutorial runs on JAX in test_programs.py (no TensorFlow start-up lines): this
# one's report runs with -m slow there, in the TensorFlow and PyTorch default suites.
@pytest.mark.slow_on_jax
@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_main_job_runs_and_reports():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_privacy.tutorials.fashion_mnist",
            "--epochs",
            "1",
            "--train-examples",
            "2000",
            "--seed",
            "0",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for text in ("l2_norm_clip C=1.0", "noise_multiplier sigma=1.1", "test accuracy", "examples/s"):
        assert text in result.stdout
