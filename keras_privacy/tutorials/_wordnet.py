"""WordNet noun glosses labelled by lexicographer file, read from Debian's ``wordnet-base``.

``apt-get install wordnet-base`` installs the WordNet 3.0 database under
``/usr/share/wordnet``. Each line of ``data.noun`` is one synset: its offset, its
lexicographer file number (two digits; ``lexnames(5WN)`` names them: 05 = noun.animal,
13 = noun.food, ...), its words and pointers, then ``|`` and the gloss — a definition,
often followed by quoted example sentences. The task: read the definition, predict the
lexicographer file (the broad topic: animal, plant, artifact, person...).

Words are turned into ids with a fixed hash (CRC-32 of the lower-cased word, modulo the
vocabulary size), so the vocabulary is data-independent: building it reveals nothing
about the training text, unlike a vocabulary of the most frequent training words.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

WORDNET_DIR = Path("/usr/share/wordnet")

#: Noun lexicographer files (lexnames(5WN)), by number.
NOUN_LEXNAMES = {
    3: "Tops",
    4: "act",
    5: "animal",
    6: "artifact",
    7: "attribute",
    8: "body",
    9: "cognition",
    10: "communication",
    11: "event",
    12: "feeling",
    13: "food",
    14: "group",
    15: "location",
    16: "motive",
    17: "object",
    18: "person",
    19: "phenomenon",
    20: "plant",
    21: "possession",
    22: "process",
    23: "quantity",
    24: "relation",
    25: "shape",
    26: "state",
    27: "substance",
    28: "time",
}

_WORD = re.compile(r"[a-z]+")


def read_noun_glosses(directory: str | Path = WORDNET_DIR) -> list[tuple[int, str]]:
    """(lexicographer file number, definition) for every noun synset in ``data.noun``.

    Raises:
      FileNotFoundError: ``wordnet-base`` is not installed (the message says how).
    """
    path = Path(directory) / "data.noun"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: install Debian's WordNet with `apt-get install wordnet-base`"
        )
    glosses = []
    with path.open(encoding="latin-1") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:  # the licence header
                continue
            fields, gloss = line.split("|", 1)
            definition = gloss.split('; "', 1)[0].strip()
            glosses.append((int(fields.split()[1]), definition))
    return glosses


def hash_tokens(text: str, vocabulary_size: int, length: int) -> np.ndarray:
    """Word ids of ``text``: 1 + CRC-32(word) mod (vocabulary_size - 1); 0 pads to
    ``length`` (longer texts are cut)."""
    ids = [1 + zlib.crc32(w.encode()) % (vocabulary_size - 1) for w in _WORD.findall(text.lower())]
    ids = ids[:length]
    return np.asarray(ids + [0] * (length - len(ids)), dtype=np.int32)


def load_wordnet_topics(
    classes: int = 10,
    vocabulary_size: int = 4096,
    length: int = 24,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    """Noun definitions of the ``classes`` largest lexicographer files, hashed and split.

    Returns ``(x_train, y_train), (x_test, y_test), class_names``: x are int32 word ids
    of shape (n, length), y are class indices (ordered by class size, largest first). The
    split is a seeded random permutation.
    """
    glosses = read_noun_glosses()
    numbers, counts = np.unique([number for number, _ in glosses], return_counts=True)
    kept = [int(n) for n in numbers[np.argsort(-counts, kind="stable")][:classes]]
    index = {number: i for i, number in enumerate(kept)}
    rows = [(index[n], text) for n, text in glosses if n in index]
    x = np.stack([hash_tokens(text, vocabulary_size, length) for _, text in rows])
    y = np.asarray([label for label, _ in rows], dtype=np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(round(len(y) * (1 - test_fraction)))
    train, test = order[:cut], order[cut:]
    names = [f"noun.{NOUN_LEXNAMES.get(n, str(n))}" for n in kept]
    return (x[train], y[train]), (x[test], y[test]), names
