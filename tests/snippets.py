"""Running the Python snippets of the README and the docs pages, as a reader would."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_snippet(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` as written in a fresh interpreter (this checkout importable, in ``cwd``),
    assert it exits 0 and return the finished process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
