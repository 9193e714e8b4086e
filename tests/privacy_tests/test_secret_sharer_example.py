"""The secret-sharer example (examples/secret_sharer_fortunes.py) at tiny scale."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "secret_sharer_fortunes.py"
FORTUNES = pathlib.Path("/usr/share/games/fortunes")


def _load_example():
    spec = importlib.util.spec_from_file_location("secret_sharer_fortunes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_corpus_names_the_package(tmp_path):
    example = _load_example()
    with pytest.raises(example.FortunesMissingError, match="apt-get install fortunes"):
        example.load_fortunes(tmp_path / "absent")
    with pytest.raises(example.FortunesMissingError, match="apt-get install fortunes"):
        example.load_fortunes(tmp_path, files=["no-such-file"])


@pytest.mark.slow
@pytest.mark.skipif(not FORTUNES.is_dir(), reason="needs Debian's fortunes package")
def test_tiny_run_memorizes_without_dp_only(tmp_path):
    example = _load_example()
    repetitions = [0, 32]
    results = example.main(
        [
            "--output-dir",
            str(tmp_path),
            "--files",
            "fortunes",
            "--max-chars",
            "12000",
            "--width",
            "24",
            "--digits",
            "3",
            "--repetitions",
            *map(str, repetitions),
            "--canaries-per-count",
            "2",
            "--embedding-dim",
            "16",
            "--units",
            "32",
            "--batch-size",
            "64",
            "--epochs",
            "15",
            "--learning-rate",
            "1e-2",
            "--dp-epochs",
            "1",
        ]
    )
    assert (tmp_path / "secret_sharer_exposure.png").stat().st_size > 0
    saved = json.loads((tmp_path / "secret_sharer_results.json").read_text())
    assert saved["candidate_space_size"] == 1000
    assert saved["num_references"] == 1000 - 4  # every other candidate
    assert math.isclose(saved["max_exposure"], math.log2(1000))
    assert saved["repetitions"] == [0, 0, 32, 32]
    assert [row["repetitions"] for row in saved["table"]] == repetitions
    assert set(results["models"]) == {"non-private", "DP-SGD"}
    for name, metrics in results["models"].items():
        assert len(metrics["exposure"]) == 4
        assert all(0.0 <= e <= saved["max_exposure"] + 1e-9 for e in metrics["exposure"])
        assert metrics["perplexity"] > 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
        assert (metrics["epsilon"] is None) == (name == "non-private")
    assert results["models"]["DP-SGD"]["epsilon"] > 0
    # the non-private model memorizes the canaries inserted 32 times, the DP one does not
    non_private = results["models"]["non-private"]["exposure"][2:]
    private = results["models"]["DP-SGD"]["exposure"][2:]
    assert min(non_private) > 6.0
    assert sum(non_private) > sum(private) + 4.0
