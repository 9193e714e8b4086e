"""The text tutorial's data (Debian's wordnet-base) and canaries, without training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keras_privacy.tutorials import _canaries, _wordnet

needs_wordnet = pytest.mark.skipif(
    not (_wordnet.WORDNET_DIR / "data.noun").is_file(),
    reason="Debian's wordnet-base is not installed (apt-get install wordnet-base)",
)


def test_hash_tokens_is_fixed_padded_and_cut():
    ids = _wordnet.hash_tokens("A dog, a DOG!", 4096, 6)
    assert ids.dtype == np.int32 and ids.shape == (6,)
    assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]  # case-insensitive
    assert list(ids[4:]) == [0, 0] and np.all((ids[:4] >= 1) & (ids[:4] < 4096))
    assert len(_wordnet.hash_tokens("one two three four", 4096, 2)) == 2


@needs_wordnet
def test_wordnet_glosses_are_the_real_noun_database():
    glosses = _wordnet.read_noun_glosses()
    assert len(glosses) == 82115  # noun synsets in WordNet 3.0
    by_text = dict((text, number) for number, text in glosses)
    assert _wordnet.NOUN_LEXNAMES[by_text["an entity that has physical existence"]] == "Tops"
    (x_train, y_train), (x_test, y_test), names = _wordnet.load_wordnet_topics(classes=10)
    assert names[:4] == ["noun.artifact", "noun.person", "noun.plant", "noun.animal"]
    assert len(y_train) + len(y_test) == 63245 and x_train.shape[1] == 24
    assert np.bincount(y_train).argmax() == 0


def test_canaries_are_inserted_as_often_as_asked_and_found_by_exposure():
    canaries = _canaries.make_canaries((1, 4), per_repetition=2, seed=3)
    assert sorted(r for r, _ in canaries) == [1, 1, 4, 4]
    assert len({code for _, code in canaries}) == 4
    x = np.zeros((10, 12), np.int32)
    y = np.ones(10, np.int32)
    x_all, y_all = _canaries.insert_canaries(x, y, canaries, label=0, vocabulary_size=4096)
    assert len(x_all) == 20 and int((y_all == 0).sum()) == 10
    _, code = canaries[2]
    row = _wordnet.hash_tokens(_canaries.code_text(code), 4096, 12)
    assert int(np.all(x_all == row, axis=1).sum()) == canaries[2][0]

    # A "model" whose loss is lowest exactly on the canaries: maximal exposure for them.
    canary_rows = {
        _wordnet.hash_tokens(_canaries.code_text(c), 4096, 12).tobytes() for _, c in canaries
    }

    def losses_of(xs, ys):
        return np.array([0.0 if r.tobytes() in canary_rows else 1.0 + i for i, r in enumerate(xs)])

    found = _canaries.exposures(losses_of, canaries, 0, 4096, 12)
    assert set(found) == {1, 4}
    assert found[1] == pytest.approx(math.log2(10**4 - 4 + 1))
