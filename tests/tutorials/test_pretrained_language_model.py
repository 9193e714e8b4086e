"""The pretrained-language-model tutorial: its public corpus (cleaning, decontamination
against the private fortunes), its validation split, and (slow) the --quick run."""

from __future__ import annotations

import gzip
import json
import math
import re

import numpy as np
import pytest

from keras_privacy.tutorials import _fortunes, _public_corpus

needs_fortunes = pytest.mark.skipif(
    not (_fortunes.FORTUNES_DIR / "fortunes").is_file(),
    reason="Debian's fortunes is not installed (apt-get install fortunes)",
)
needs_gcide = pytest.mark.skipif(
    not _public_corpus.GCIDE_PATH.is_file(),
    reason="Debian's dict-gcide is not installed (apt-get install dict-gcide)",
)

DICTIONARY = """00-database-info
     This file was converted from the original database on: 2022

Abuse \\A*buse"\\, v. t. [F. abuser; L. abuti.]
   1. To put to a wrong use; to misapply; as, to abuse gold.
      [1913 Webster]

            Liberty may be endangered by the abuses of liberty.
                                                  --Madison.
      [1913 Webster]

   2. A stitch in time saves nine, said the tailor to his apprentice.
      [PJC]
"""


def _fake_dictionary(tmp_path):
    path = tmp_path / "gcide.dict.dz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(DICTIONARY)
    return path


def test_dictionary_paragraphs_are_cleaned_to_the_fortunes_characters(tmp_path):
    paragraphs = _public_corpus.read_gcide(_fake_dictionary(tmp_path))
    assert (
        paragraphs[0] == "abuse , v. t. 1. to put to a wrong use; to misapply; as, to abuse gold."
    )
    assert paragraphs[1] == "liberty may be endangered by the abuses of liberty."  # no --Madison
    assert not any("database" in p or "webster" in p or "\\" in p for p in paragraphs)
    assert all(set(p) <= set(_fortunes.CHARACTERS) for p in paragraphs)


def test_paragraphs_sharing_eight_words_with_a_private_text_are_dropped(tmp_path):
    paragraphs = _public_corpus.read_gcide(_fake_dictionary(tmp_path))
    private = ["as my aunt said: a stitch in time saves nine, said the tailor. amen"]
    kept, dropped = _public_corpus.decontaminate(paragraphs, private)
    assert dropped == 1 and len(kept) == len(paragraphs) - 1
    assert not any("stitch" in p for p in kept)
    # seven shared words are not enough
    kept, dropped = _public_corpus.decontaminate(paragraphs, ["a stitch in time saves nine, said"])
    assert dropped == 0
    with pytest.raises(FileNotFoundError, match="apt-get install dict-gcide"):
        _public_corpus.read_gcide(tmp_path / "missing.dict.dz")


@pytest.mark.slow  # reads the whole dictionary (about 10 s)
@needs_fortunes
@needs_gcide
def test_public_sequences_share_no_eight_words_with_any_fortune():
    fortunes = _fortunes.read_fortunes()
    x, y, counts = _public_corpus.public_sequences(fortunes, 30, max_chars=200_000)
    assert counts["dropped"] > 0 and counts["characters"] >= 200_000
    assert x.shape == y.shape == (counts["sequences"], 31)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the next tokens
    seen = set().union(*(_public_corpus.word_ngrams(f, 8) for f in fortunes))
    texts = ["".join(_fortunes.CHARACTERS[i - 3] for i in row if i >= 3) for row in x[:2000]]
    assert all(seen.isdisjoint(_public_corpus.word_ngrams(t, 8)) for t in texts)


@needs_fortunes
def test_validation_fortunes_are_held_out_whole_and_canaries_stay_in_training():
    from keras_privacy.tutorials.pretrained_language_model import WIDTH, split_validation

    corpus = _fortunes.load_corpus(WIDTH, (0, 1, 4), digits=3, max_train=3000)
    kept, validation = split_validation(corpus)
    assert len(kept.train[0]) == len(kept.train_texts) == len(kept.train_is_canary)
    assert len(kept.train[0]) < len(corpus.train[0]) and len(validation[0]) > 0
    assert kept.train_is_canary.sum() == corpus.train_is_canary.sum()  # every canary copy
    held = [f for f in corpus.train_fortunes if f not in set(kept.train_fortunes)]
    pieces = set(_fortunes.wrap(held, WIDTH))
    assert not pieces & {
        t for t, c in zip(kept.train_texts, kept.train_is_canary, strict=True) if not c
    }
    assert not set(kept.train_fortunes) & set(corpus.test_fortunes)


@pytest.mark.slow
@needs_fortunes
@needs_gcide
def test_quick_run_writes_a_report_comparing_the_three_ways(tmp_path, capsys):
    pytest.importorskip("keras_hub")
    from keras_privacy.tutorials import pretrained_language_model as tutorial

    argv = ["--quick", "--same-process", "--report-dir", str(tmp_path), "--noise-seed", "0"]
    assert tutorial.main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"pretrained \(\d+ s\): test perplexity \d+\.\d+", out)
    assert re.search(r"LoRA r=8 ε≤4: epoch\s+1/1\s+ε\s+\d\.\d+", out)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[1:7]
    ]
    assert [(r["model"], r["target ε"]) for r in body] == [
        (way, target) for way in tutorial.WAYS for target in ("non-private", "4")
    ]
    records = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    for row in body:
        assert 1.0 < float(row["perplexity"]) < _fortunes.VOCABULARY
        assert 0.0 <= float(row["exposure ×64"]) <= math.log2(1000) + 1e-9
        assert 0.0 <= float(row["MIA AUC"]) <= 1.0
    private = [r for r in records[:6] if r["target_epsilon"] is not None]
    assert all(0 < r["epsilon"] <= 4.0 and r["noise_multiplier"] > 0 for r in private)
    assert "gap closed" in report and "Learning-rate selection" in report
    for png in (
        "perplexity_vs_epsilon.png",
        "mia_auc_vs_epsilon.png",
        "exposure_16_vs_epsilon.png",
    ):
        assert (tmp_path / png).stat().st_size > 5000
