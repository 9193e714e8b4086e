"""A *public* English corpus for pretraining, read offline from Debian's ``dict-gcide``.

``apt-get install dict-gcide`` installs the GNU Collaborative International Dictionary of
English (Webster's 1913 with later additions; GPL) as a dictd database,
``/usr/share/dictd/gcide.dict.dz``: gzip-compatible text, one blank-line separated
paragraph per headword, sense or quotation. Each paragraph is cleaned to plain prose:
pronunciations (``\\Ab*us"\\``), bracketed etymologies and sources (``[1913 Webster]``),
cross-reference braces and ``--Author.`` attributions are removed; then the text gets the
fortunes corpus's cleaning (lower case, the same fixed 48-character set), so that one
character vocabulary serves both corpora.

Public vs private. The tutorial's private data are Debian's fortunes. The dictionary
quotes literature, and so do fortunes, so a dictionary paragraph is dropped when it
shares any run of ``overlap`` consecutive words with any fortune (training or held-out):
pretraining then cannot have seen the private text, nor the held-out text that measures
perplexity (the decontamination rule of large-model evaluations, at a stricter n).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from keras_privacy.tutorials import _fortunes

GCIDE_PATH = Path("/usr/share/dictd/gcide.dict.dz")

_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_ATTRIBUTION = re.compile(r"--\s*[A-Z][\w.' ]{0,40}\.?")


def clean_paragraph(raw: str) -> str:
    """A dictionary paragraph as plain text in the fortunes' character set ('' if none)."""
    text = _BRACKETS.sub(" ", _PRONUNCIATION.sub(" ", raw))
    text = _ATTRIBUTION.sub(" ", text).replace("{", "").replace("}", "").lower()
    kept = "".join(c if c in _fortunes.CHARACTERS else " " for c in text)
    return " ".join(kept.split())


def read_gcide(path: str | Path = GCIDE_PATH, min_chars: int = 20) -> list[str]:
    """The dictionary's cleaned paragraphs of at least ``min_chars`` characters, in order.

    Raises:
      FileNotFoundError: ``dict-gcide`` is not installed (the message says how).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: install the public corpus with `apt-get install dict-gcide`"
        )
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        raw = f.read()
    paragraphs = (clean_paragraph(p) for p in re.split(r"\n\s*\n", raw))
    # the database's own header entries ("00-database-...") are not dictionary text
    return [p for p in paragraphs if len(p) >= min_chars and "database" not in p[:40]]


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def decontaminate(
    public: Iterable[str], private: Sequence[str], overlap: int = 8
) -> tuple[list[str], int]:
    """``public`` without every paragraph that shares ``overlap`` consecutive words with a
    ``private`` text; and how many were dropped."""
    seen: set[tuple[str, ...]] = set()
    for text in private:
        seen |= word_ngrams(text, overlap)
    kept, dropped = [], 0
    for paragraph in public:
        if seen.isdisjoint(word_ngrams(paragraph, overlap)):
            kept.append(paragraph)
        else:
            dropped += 1
    return kept, dropped


def public_sequences(
    private_texts: Sequence[str],
    width: int,
    max_chars: int | None = None,
    seed: int = 0,
    path: str | Path = GCIDE_PATH,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Pretraining (inputs, targets) from the dictionary, decontaminated against
    ``private_texts``, and counts for the report.

    ``max_chars``: a random sample of paragraphs (seeded) of about that many characters,
    spread over the whole alphabet. Paragraphs are wrapped at word boundaries into
    sequences of at most ``width`` characters and encoded as the fortunes are.
    """
    paragraphs = read_gcide(path)
    clean, dropped = decontaminate(paragraphs, private_texts)
    order = np.random.default_rng(seed).permutation(len(clean))
    chosen, total = [], 0
    for i in order:
        if max_chars is not None and total >= max_chars:
            break
        chosen.append(clean[i])
        total += len(clean[i])
    texts = _fortunes.wrap(chosen, width)
    ids = _fortunes.encode(texts, width + 2)
    counts = {
        "paragraphs": len(paragraphs),
        "dropped": dropped,
        "used": len(chosen),
        "characters": total,
        "sequences": len(texts),
    }
    return ids[:, :-1], ids[:, 1:], counts
