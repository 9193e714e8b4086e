"""The snippets of docs/coming_from_tf_privacy.md run, and differ from TF Privacy code only
in the import root."""

import re
from pathlib import Path

import pytest
from snippets import run_snippet

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "coming_from_tf_privacy.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE, re.S)


def _as_tf_privacy(code: str) -> str:
    """The snippet with TF Privacy's import root put back."""
    code = code.replace(
        "from keras_privacy.compat import tensorflow_privacy", "import tensorflow_privacy"
    )
    return code.replace("keras_privacy.compat.tensorflow_privacy", "tensorflow_privacy")


def test_page_has_the_three_snippets():
    assert len(BLOCKS) == 3
    assert "DPSequential" in BLOCKS[0] and "compute_dp_sgd_privacy_statement" in BLOCKS[0]
    assert "run_attacks" in BLOCKS[1] and "run_membership_probability_analysis" in BLOCKS[1]
    assert "compute_exposure_interpolation" in BLOCKS[2]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_uses_keras_privacy_only_as_the_import_root(index):
    code = BLOCKS[index]
    assert "keras_privacy.compat" in code
    assert "keras_privacy" not in _as_tf_privacy(code)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(index, tmp_path):
    result = run_snippet(BLOCKS[index], tmp_path)
    assert "inf" not in result.stdout.split()
