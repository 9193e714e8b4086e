"""Run TensorFlow Privacy's own unit tests against ``keras_privacy.compat.tensorflow_privacy``.

    python scripts/tf_privacy_conformance.py PATH_TO_TF_PRIVACY_CHECKOUT [--files ...]
        [--timeout 900] [--details] [--json report.json]
    python scripts/tf_privacy_conformance.py PATH_TO_TF_PRIVACY_CHECKOUT --examples

With ``--examples`` it runs TF Privacy's Keras tutorials and membership-inference examples
the same way (import root rewritten, few epochs, and random data of MNIST's and CIFAR-10's
shapes in place of the downloads, so that it runs offline) and says which run to the end.

For each test file of a module the compatibility layer claims, the file is read from the
given TF Privacy checkout, only its import root is rewritten (``tensorflow_privacy`` →
``keras_privacy.compat.tensorflow_privacy``), written to a temporary directory (nothing is
kept or vendored) and run with pytest (TensorFlow backend) in its own process. Prints one
line per file (passed / failed / errors, or the import error that stopped collection) and,
with ``--details``, every failing test with the last line of its error.

The script imports keras-privacy from the checkout it lives in (``PYTHONPATH`` is set to the
repository root), not from wherever the package is installed. It is not part of the
default test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
COMPAT_ROOT = "keras_privacy.compat.tensorflow_privacy"

#: TF Privacy test files of the modules under keras_privacy.compat.tensorflow_privacy.
CLAIMED_TEST_FILES = (
    "tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy_test.py",
    "tensorflow_privacy/privacy/analysis/compute_noise_from_budget_test.py",
    "tensorflow_privacy/privacy/dp_query/dp_query_test.py",
    "tensorflow_privacy/privacy/dp_query/gaussian_query_test.py",
    "tensorflow_privacy/privacy/dp_query/nested_query_test.py",
    "tensorflow_privacy/privacy/dp_query/normalized_query_test.py",
    "tensorflow_privacy/privacy/dp_query/quantile_adaptive_clip_sum_query_test.py",
    "tensorflow_privacy/privacy/dp_query/quantile_estimator_query_test.py",
    "tensorflow_privacy/privacy/keras_models/dp_keras_model_test.py",
    "tensorflow_privacy/privacy/optimizers/dp_optimizer_keras_test.py",
    "tensorflow_privacy/privacy/privacy_tests/epsilon_lower_bound_test.py",
    "tensorflow_privacy/privacy/privacy_tests/membership_inference_attack/data_structures_test.py",
    "tensorflow_privacy/privacy/privacy_tests/membership_inference_attack/keras_evaluation_test.py",
    "tensorflow_privacy/privacy/privacy_tests/membership_inference_attack/"
    "membership_inference_attack_test.py",
    "tensorflow_privacy/privacy/privacy_tests/membership_inference_attack/privacy_report_test.py",
    "tensorflow_privacy/privacy/privacy_tests/membership_inference_attack/seq2seq_mia_test.py",
    "tensorflow_privacy/privacy/privacy_tests/secret_sharer/exposures_test.py",
)

_IMPORT_ROOT = re.compile(r"(?m)^(\s*(?:from|import)\s+)tensorflow_privacy(?=[.\s])")
_MODULE_PATH = re.compile(r"(?<![\w.])tensorflow_privacy(?=\.privacy\.)")


def rewrite_import_root(source: str) -> str:
    """``from tensorflow_privacy.X import Y`` / ``import tensorflow_privacy`` lines, and
    module paths in strings (``mock.patch('tensorflow_privacy.privacy....')``), get the
    compatibility root; nothing else in the file changes."""
    source = _IMPORT_ROOT.sub(lambda m: m.group(1) + COMPAT_ROOT, source)
    return _MODULE_PATH.sub(COMPAT_ROOT, source)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("E ") or "Error" in line or "assert" in line:
            return line[:200]
    return lines[-1][:200] if lines else ""


def run_file(checkout: Path, relative: str, workdir: Path, timeout: float) -> dict:
    """Run one rewritten test file; return counts and failures."""
    source = (checkout / relative).read_text(encoding="utf-8")
    target = workdir / Path(relative).name
    target.write_text(rewrite_import_root(source), encoding="utf-8")
    report = workdir / (target.stem + ".xml")
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MPLBACKEND": "Agg",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(target),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        "--rootdir",
        str(workdir),
    ]
    try:
        completed = subprocess.run(
            command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"file": relative, "timeout": True, "passed": 0, "failed": 0, "errors": 0}
    result = {"file": relative, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    if report.exists():
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            name = case.get("name")
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed" if child.tag == "failure" else "errors"
                    message = child.get("message") or ""
                    failures.append((name, child.tag, _last_line(message + "\n" + child.text)))
                elif child.tag == "skipped":
                    outcome = "skipped"
            result[outcome] += 1
    if result["passed"] + result["failed"] + result["errors"] == 0:
        result["collection_error"] = _last_line(completed.stdout + completed.stderr)
    result["failures"] = failures
    return result


#: TF Privacy's Keras tutorials and membership-inference examples, with flags that keep a
#: run short (epochs) on CPU.
EXAMPLES = (
    ("tutorials/mnist_dpsgd_tutorial_keras.py", ["--epochs=1"]),
    ("tutorials/mnist_dpsgd_tutorial_keras_model.py", ["--epochs=1"]),
    (
        "tensorflow_privacy/privacy/privacy_tests/membership_inference_attack/codelabs/example.py",
        [],
    ),
    (
        "tensorflow_privacy/privacy/privacy_tests/membership_inference_attack/"
        "keras_evaluation_example.py",
        ["--epochs=2"],
    ),
)

#: Run before an example: this machine may be offline, so Keras's dataset downloads are
#: replaced by random data of the same shapes and dtypes (MNIST, CIFAR-10).
_OFFLINE_DATASETS = """
import numpy as np
import keras

def _fake(shape_train, shape_test, classes, label_shape):
    rng = np.random.default_rng(0)
    def load_data(*args, **kwargs):
        x_train = rng.integers(0, 256, (shape_train[0], *shape_train[1:]), dtype=np.uint8)
        x_test = rng.integers(0, 256, (shape_test[0], *shape_test[1:]), dtype=np.uint8)
        y_train = rng.integers(0, classes, (shape_train[0], *label_shape), dtype=np.uint8)
        y_test = rng.integers(0, classes, (shape_test[0], *label_shape), dtype=np.uint8)
        return (x_train, y_train), (x_test, y_test)
    return load_data

keras.datasets.mnist.load_data = _fake((6000, 28, 28), (1000, 28, 28), 10, ())
keras.datasets.cifar10.load_data = _fake((5000, 32, 32, 3), (1000, 32, 32, 3), 10, (1,))
"""


def run_example(checkout: Path, relative: str, flags: list[str], workdir: Path, timeout: float):
    """Run one rewritten example script (offline datasets); return (ok, last lines)."""
    source = rewrite_import_root((checkout / relative).read_text(encoding="utf-8"))
    target = workdir / ("example_" + Path(relative).name)
    target.write_text(source, encoding="utf-8")
    runner = workdir / "run_example.py"
    runner.write_text(
        _OFFLINE_DATASETS
        + "\nimport runpy, sys\nsys.argv = sys.argv[1:]\n"
        + "runpy.run_path(sys.argv[0], run_name='__main__')\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MPLBACKEND": "Agg",
    }
    command = [sys.executable, str(runner), str(target), *flags]
    try:
        completed = subprocess.run(
            command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False, "timed out"
    output = (completed.stdout + completed.stderr).strip().splitlines()
    return completed.returncode == 0, " | ".join(output[-3:])[:600]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a TF Privacy checkout (repository root)")
    parser.add_argument("--files", nargs="*", default=list(CLAIMED_TEST_FILES))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per file")
    parser.add_argument("--details", action="store_true", help="list every failing test")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--examples", action="store_true", help="run the tutorials and examples instead"
    )
    args = parser.parse_args(argv)
    results = []
    if args.examples:
        with tempfile.TemporaryDirectory(prefix="tfp_examples_") as directory:
            for relative, flags in EXAMPLES:
                ok, tail = run_example(
                    args.checkout, relative, flags, Path(directory), args.timeout
                )
                print(f"{'runs' if ok else 'FAILS':5s} {relative} {' '.join(flags)}")
                if not ok or args.details:
                    print(f"      {tail}")
        return 0
    with tempfile.TemporaryDirectory(prefix="tfp_conformance_") as directory:
        for relative in args.files:
            result = run_file(args.checkout, relative, Path(directory), args.timeout)
            results.append(result)
            total = result["passed"] + result["failed"] + result["errors"]
            line = f"{result['passed']:4d}/{total:<4d} {relative}"
            if result.get("timeout"):
                line += "  (timed out)"
            elif "collection_error" in result:
                line += f"  (not collected: {result['collection_error']})"
            print(line, flush=True)
            if args.details:
                for name, kind, message in result["failures"]:
                    print(f"      {kind:7s} {name}: {message}")
    passed = sum(r["passed"] for r in results)
    total = sum(r["passed"] + r["failed"] + r["errors"] for r in results)
    print(f"{passed}/{total} tests pass with only the import root changed")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
