"""Test-wide setup. The Keras backend is fixed per process (Keras reads KERAS_BACKEND at
import): run ``pytest --backend jax`` (or set KERAS_BACKEND) for another backend, and
``python scripts/test_all_backends.py`` for every backend, one process each."""

import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

BACKENDS = ("tensorflow", "jax", "torch")


def _backend_argument():
    """``--backend NAME`` from the command line, read at import: the conftests below this
    one import Keras before ``pytest_configure`` runs."""
    for i, arg in enumerate(sys.argv):
        if arg == "--backend" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


if _backend_argument():
    os.environ["KERAS_BACKEND"] = _backend_argument()
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend for this run (default: $KERAS_BACKEND, else tensorflow)",
    )


def pytest_configure(config):
    backend = config.getoption("--backend") or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != backend:
        raise pytest.UsageError(
            f"Keras was imported with backend {sys.modules['keras'].backend.backend()!r} "
            f"before --backend {backend} could take effect; run a separate process."
        )
    os.environ["KERAS_BACKEND"] = backend
    config.addinivalue_line(
        "markers", "tensorflow_only: needs the TensorFlow backend (skipped on others)"
    )
    config.addinivalue_line(
        "markers", "extended: a non-core case of a large matrix (slow on non-TF backends)"
    )
    config.addinivalue_line(
        "markers",
        "slow_on_jax: in the TensorFlow and PyTorch default suites; -m slow on JAX (whose "
        "default suite has no time to spare)",
    )
    config.addinivalue_line(
        "markers",
        "steps_per_execution: uses steps_per_execution > 1 (skipped on torch, whose Keras "
        "trainer refuses it)",
    )


def pytest_report_header(config):
    return f"keras backend: {os.environ['KERAS_BACKEND']}"


@pytest.hookimpl(tryfirst=True)  # before -m selects: "extended" items become "slow"
def pytest_collection_modifyitems(config, items):
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        return
    for item in items:
        if item.get_closest_marker("extended") is not None:
            # Cases of a large matrix beyond the core ones: in the default suite on
            # TensorFlow; on other backends (where each case compiles, ~10x slower) with
            # -m slow.
            item.add_marker(pytest.mark.slow)
        if backend == "jax" and item.get_closest_marker("slow_on_jax") is not None:
            # Covered on JAX by another default test (named where the marker is used), or
            # the same on every backend: the TensorFlow and PyTorch suites run it.
            item.add_marker(pytest.mark.slow)
        if backend == "torch" and item.get_closest_marker("steps_per_execution") is not None:
            item.add_marker(
                pytest.mark.skip(reason="Keras's torch trainer needs steps_per_execution=1")
            )
        marker = item.get_closest_marker("tensorflow_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(
                pytest.mark.skip(reason=f"TensorFlow backend only{': ' + reason if reason else ''}")
            )
