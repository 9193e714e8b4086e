"""Run the test suite once per Keras backend, each in its own process; fail if any fails.

    python scripts/test_all_backends.py [--backends tensorflow jax] [pytest arguments...]

Keras fixes its backend when it is imported, so each backend needs a separate process.
Extra arguments go to every pytest run (default: ``-m "not slow"``). Before each backend
it prints which one runs (``[1/3] tensorflow``) and its usual duration; pytest then shows
a running count of tests (``-o console_output_style=count``, unless another style is
given); at the end, each backend's result and wall time.

How long (default suite, quiet 2-core machine): TensorFlow ~12 min, JAX ~16 min, PyTorch
~5 min, ~33 min in all; a machine under other load takes longer. One backend:
``python scripts/test_all_backends.py --backends jax`` or
``python -m pytest -m "not slow" --backend jax``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
#: Minutes the default suite takes per backend on a quiet 2-core machine (measured).
USUAL_MINUTES = {"tensorflow": 12, "jax": 16, "torch": 4}


def pytest_command(backend: str, pytest_args: list[str]) -> list[str]:
    """The pytest command line for one backend, with a running count of tests unless the
    caller chose an output style."""
    style = (
        []
        if any("console_output_style" in a for a in pytest_args)
        else [
            "-o",
            "console_output_style=count",
        ]
    )
    return [sys.executable, "-m", "pytest", "--backend", backend, *style, *pytest_args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    args, pytest_args = parser.parse_known_args(argv)
    pytest_args = pytest_args or ["-m", "not slow"]
    results = []
    total = len(args.backends)
    for i, backend in enumerate(args.backends, 1):
        env = {**os.environ, "KERAS_BACKEND": backend}
        command = pytest_command(backend, pytest_args)
        usual = USUAL_MINUTES[backend]
        print(
            f"\n== [{i}/{total}] {backend} (default suite: ~{usual} min on a quiet 2-core "
            f"machine): {' '.join(command)}",
            flush=True,
        )
        start = time.perf_counter()
        code = subprocess.run(command, env=env).returncode
        seconds = time.perf_counter() - start
        results.append((backend, code, seconds))
        print(f"== [{i}/{total}] {backend}: exit {code} after {seconds / 60:.1f} min", flush=True)
    print("\n== results")
    for backend, code, seconds in results:
        print(
            f"{backend:<12}{'passed' if code == 0 else f'FAILED (exit {code})':<20}{seconds:8.0f} s"
        )
    return max((code for _, code, _ in results), default=0)


if __name__ == "__main__":
    sys.exit(main())
