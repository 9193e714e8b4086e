"""Every Python snippet of the documentation pages (``docs/*.md``) runs as written, each in a
fresh interpreter, as the README's do (``tests/test_readme.py``). Blocks that are not meant
to run (command lines, output, formulas) use another fence language than ``python``.

``docs/coming_from_tf_privacy.md`` is left to ``tests/test_coming_from_tf_privacy.py``,
which runs its snippets and also checks them against TF Privacy's import root;
``docs/distributed.md`` to ``tests/training/test_distributed.py`` (slow), whose
subprocesses run the same settings with several devices or processes.

The default suite runs each snippet on one backend, the three taking turns by position;
``-m slow`` runs every snippet on every backend (CI's default suites run in about 20
minutes per backend at most, and a snippet costs a fresh interpreter: 5-30 s).
"""

import os
import re
from pathlib import Path

import pytest
from snippets import run_snippet

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OWN_TEST = {"coming_from_tf_privacy.md", "distributed.md"}
# Snippets that take more than ~30 s on TensorFlow, by page and a text they contain (not by
# position, which moves when a block is added): run with ``-m slow``.
SLOW = {
    "privacy_testing.md": ["train_shadow_models(build_model"],  # LiRA: 16 models, 24–37 s
    "privacy_report.md": ["kp.make_private("],  # trains and attacks a model
    "auditing.md": ["result = white_box_audit("],  # a DP fit: 28-30 s on a loaded machine
}
NEEDS_DATA = not Path("/usr/share/datasets/fashion-mnist").exists()


def _blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


PAGES = sorted(p for p in DOCS.rglob("*.md") if p.name not in OWN_TEST)


def _is_slow(page: Path, code: str) -> bool:
    return any(text in code for text in SLOW.get(page.name, []))


#: Each snippet runs in a fresh interpreter (5-30 s each): in the default suite every
#: snippet runs on one backend, taken in turn by its position (so each backend runs a
#: third of them and every snippet runs somewhere); ``-m slow`` runs all of them on every
#: backend.
DEFAULT_ROTATION = ("tensorflow", "jax", "torch")
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


def _runs_by_default_here(position: int) -> bool:
    return DEFAULT_ROTATION[position % len(DEFAULT_ROTATION)] == BACKEND


_SNIPPETS = [(page, index, code) for page in PAGES for index, code in enumerate(_blocks(page))]
CASES = [
    pytest.param(
        page,
        index,
        id=f"{page.relative_to(DOCS)}[{index}]",
        marks=[pytest.mark.slow]
        if _is_slow(page, code) or not _runs_by_default_here(position)
        else [],
    )
    for position, (page, index, code) in enumerate(_SNIPPETS)
]


def test_the_slow_markers_find_their_snippets():
    for name, texts in SLOW.items():
        code = "".join(_blocks(DOCS / name))
        assert all(text in code for text in texts), name


def test_the_pages_have_snippets():
    assert len(CASES) >= 8


def test_snippets_are_fenced_as_python_or_something_else():
    """A block fenced ``py``/``python3``/``pycon`` would look like Python and never run."""
    for page in [*PAGES, ROOT / "README.md"]:
        fences = re.findall(r"^```(\S*)", page.read_text(encoding="utf-8"), re.M)
        odd = [f for f in fences if f.lower() in {"py", "python3", "pycon", "py3"}]
        assert not odd, (page, odd)


@pytest.mark.skipif(NEEDS_DATA, reason="apt-get install dataset-fashion-mnist")
@pytest.mark.parametrize(("page", "index"), CASES)
def test_docs_snippet_runs(page, index, tmp_path):
    run_snippet(_blocks(page)[index], tmp_path)
