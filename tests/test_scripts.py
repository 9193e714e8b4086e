"""scripts/test_all_backends.py says which backend runs and counts the tests."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runner_names_the_backend_and_counts_tests(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "def pytest_addoption(parser):\n    parser.addoption('--backend')\n"
    )
    (tmp_path / "test_tiny.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "test_all_backends.py"),
            str(tmp_path / "test_tiny.py"),
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "--backends",
            "torch",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert "[1/1] torch (default suite: ~4 min" in out
    assert "[2/2]" in out  # pytest's running count, not dots or percentages
    assert "torch       passed" in out
