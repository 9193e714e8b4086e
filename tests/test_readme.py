"""Every Python snippet in the README runs as written (each in a fresh interpreter)."""

import re
from pathlib import Path

import pytest
from snippets import run_snippet

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
NEEDS_DATA = not Path("/usr/share/datasets/fashion-mnist").exists()


def test_readme_has_snippets():
    assert len(BLOCKS) >= 2


@pytest.mark.skipif(NEEDS_DATA, reason="apt-get install dataset-fashion-mnist")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, tmp_path):
    run_snippet(BLOCKS[index], tmp_path)
