"""The language-model tutorial's data (Debian's fortunes), canaries and exposure
bookkeeping, without training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keras_privacy.tutorials import _fortunes

needs_fortunes = pytest.mark.skipif(
    not (_fortunes.FORTUNES_DIR / "fortunes").is_file(),
    reason="Debian's fortunes is not installed (apt-get install fortunes)",
)

FAKE = """A Stitch in TIME\tsaves nine.
%
Overstrike: b\x08bold and _\x08u.
%
a stitch in time saves nine.
%
%
Numbers 123 and {braces} & more.
%
"""


def _fake_corpus_dir(tmp_path, fortunes: int = 40):
    lines = [
        f"fortune number {i} says: the {'quick ' * (i % 5)}brown fox." for i in range(fortunes)
    ]
    (tmp_path / "fortunes").write_text("\n%\n".join(lines) + "\n%\n", encoding="latin-1")
    return tmp_path


def _decode(row: np.ndarray) -> str:
    return "".join(_fortunes.CHARACTERS[i - 3] for i in row if i >= 3)


def test_missing_corpus_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        _fortunes.read_fortunes(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        _fortunes.read_fortunes(tmp_path, files=["no-such-file"])


def test_entries_are_cleaned_and_deduplicated(tmp_path):
    (tmp_path / "fortunes").write_text(FAKE, encoding="latin-1")
    entries = _fortunes.read_fortunes(tmp_path, files=["fortunes"])
    assert entries == [
        "a stitch in time saves nine.",
        "overstrike: bold and u.",
        "numbers 123 and braces more.",
    ]
    assert _fortunes.read_fortunes(tmp_path, files=["fortunes"], max_chars=10) == entries[:1]


def test_encode_marks_begin_end_and_padding():
    ids = _fortunes.encode(["ab", ""], 5)
    assert ids.tolist() == [[1, 3, 4, 2, 0], [1, 2, 0, 0, 0]]
    assert _fortunes.encode(["ab"], 3, end=False).tolist() == [[1, 3, 4]]
    with pytest.raises(ValueError, match="more than 3"):
        _fortunes.encode(["abc"], 3)
    assert _fortunes.VOCABULARY == 51 and ids.dtype == np.int32


def test_corpus_split_is_by_fortune_and_canaries_are_inserted_as_asked(tmp_path):
    corpus = _fortunes.load_corpus(
        width=24, repetitions=(0, 1, 4), per_repetition=2, digits=3,
        directory=_fake_corpus_dir(tmp_path), test_fraction=0.25,
    )  # fmt: skip
    assert len(corpus.test_fortunes) == 10 and len(corpus.train_fortunes) == 30
    assert not set(corpus.test_fortunes) & set(corpus.train_fortunes)
    assert corpus.repetitions == [0, 0, 1, 1, 4, 4]
    assert len(set(corpus.canaries)) == 6
    for canary, count in zip(corpus.canaries, corpus.repetitions, strict=True):
        assert corpus.train_texts.count(canary) == count
        assert canary not in corpus.test_texts
        assert canary.startswith("my number is ") and len(canary) == 16
    assert int(corpus.train_is_canary.sum()) == 10
    assert len(corpus.train_texts) == len(_fortunes.wrap(corpus.train_fortunes, 24)) + 10
    x, y = corpus.train
    assert x.shape == y.shape == (len(corpus.train_texts), 25)
    assert np.array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert [_decode(row) for row in x] == corpus.train_texts
    assert [_decode(row) for row in corpus.test[1]] == corpus.test_texts
    assert math.isclose(corpus.max_exposure, math.log2(1000))


@needs_fortunes
def test_the_real_corpus_is_read_whole_and_split_disjointly():
    corpus = _fortunes.load_corpus()
    fortunes = corpus.train_fortunes + corpus.test_fortunes
    assert len(fortunes) == len(set(fortunes)) > 4000
    assert sum(map(len, fortunes)) > 700_000
    assert not set(corpus.train_fortunes) & set(corpus.test_fortunes)
    assert 0.09 < len(corpus.test_fortunes) / len(fortunes) < 0.11
    assert len(corpus.train[0]) > 25_000 and corpus.train[0].max() < _fortunes.VOCABULARY
    for canary, count in zip(corpus.canaries, corpus.repetitions, strict=True):
        assert corpus.train_texts.count(canary) == count
    assert sorted(set(corpus.repetitions)) == [0, 1, 4, 16, 64]


def test_perplexity_and_accuracy_exclude_padding():
    targets = np.array([[3, 4, 2, 0, 0]])
    vocabulary = 6
    sure = np.full((1, 5, vocabulary), -50.0)
    sure[0, np.arange(5), [3, 4, 2, 5, 5]] = 50.0  # right on every real target, wrong on PAD
    metrics = _fortunes.heldout_metrics(sure, targets)
    assert metrics["accuracy"] == 1.0 and metrics["perplexity"] == pytest.approx(1.0)
    uniform = _fortunes.heldout_metrics(np.zeros((1, 5, vocabulary)), targets)
    assert uniform["perplexity"] == pytest.approx(vocabulary)
    losses = _fortunes.sequence_losses(np.zeros((2, 5, vocabulary)), np.vstack([targets] * 2))
    assert losses == pytest.approx([math.log(vocabulary)] * 2)


def test_exposure_bookkeeping_ranks_canaries_among_every_other_candidate(tmp_path):
    corpus = _fortunes.load_corpus(
        width=24, repetitions=(0, 1, 16), per_repetition=2, digits=3,
        directory=_fake_corpus_dir(tmp_path),
    )  # fmt: skip
    inserted = {c: r for c, r in zip(corpus.canaries, corpus.repetitions, strict=True) if r}
    seen = []

    def log_perplexities(ids, score_from):
        assert score_from == 1 + len("my number is ")
        texts = [_decode(row) for row in ids]
        seen.extend(texts)
        # an inserted canary is more likely the more often it was inserted; others by digits
        return np.array([-inserted[t] if t in inserted else 1.0 + int(t[-3:]) for t in texts])

    found = _fortunes.canary_exposures(log_perplexities, corpus)
    assert len(seen) == 1000 and set(seen) == set(corpus.canary_format.all_candidates())
    interpolated, extrapolated = found["interpolation"], found["extrapolation"]
    assert set(interpolated) == set(extrapolated) == {0, 1, 16}
    ceiling = math.log2(1000)
    assert interpolated[1] == pytest.approx(ceiling) and interpolated[16] == pytest.approx(ceiling)
    assert 0.0 <= interpolated[0] < ceiling - 1
    assert extrapolated[16] > extrapolated[1] > extrapolated[0]
