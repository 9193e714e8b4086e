"""Run the test suite once per Keras backend, each in its own process; fail if any fails.

    python scripts/test_all_backends.py [--backends tensorflow jax] [pytest arguments...]

Keras fixes its backend when it is imported, so each backend needs a separate process.
Extra arguments go to every pytest run (default: ``-m "not slow"``). Prints each
backend's result and wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    args, pytest_args = parser.parse_known_args(argv)
    pytest_args = pytest_args or ["-m", "not slow"]
    results = []
    for backend in args.backends:
        env = {**os.environ, "KERAS_BACKEND": backend}
        command = [sys.executable, "-m", "pytest", "--backend", backend, *pytest_args]
        print(f"== {backend}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command, env=env).returncode
        results.append((backend, code, time.perf_counter() - start))
    print("\n== results")
    for backend, code, seconds in results:
        print(
            f"{backend:<12}{'passed' if code == 0 else f'FAILED (exit {code})':<20}{seconds:8.0f} s"
        )
    return max((code for _, code, _ in results), default=0)


if __name__ == "__main__":
    sys.exit(main())
