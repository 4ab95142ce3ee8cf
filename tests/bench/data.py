"""Deterministic benchmark records: ids, float32 vectors, ~300-character documents, 6 metadata fields.

Records are generated in blocks of BLOCK, each from its own seed, so any range of records is the
same whoever asks for it and whatever else was generated first; nothing holds the whole corpus.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vecflow.batch import Batch

BLOCK = 1000
SEED = 20_240_601
# A fixed vocabulary of pseudo-words (2-9 letters), the same on every machine.
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
_VOCAB_RNG = np.random.default_rng(SEED)
VOCABULARY = ["".join(_LETTERS[_VOCAB_RNG.integers(0, 26, int(_VOCAB_RNG.integers(2, 10)))]) for _ in range(2000)]
AUTHORS = ["ada", "grace", "linus", "barbara", "donald", "edsger", "margaret", "ken"]
SOURCES = ["wiki", "manual", "forum", "paper", "blog"]
FIELDS = ("source", "author", "year", "page", "score", "draft")


def record_id(i: int) -> str:
    return f"doc-{i:08d}"


def _document(rng: np.random.Generator) -> str:
    words: list[str] = []
    length = -1
    while length < 300:
        word = VOCABULARY[int(rng.integers(0, len(VOCABULARY)))]
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:300].rstrip() + "."


def block(index: int, dim: int) -> Batch:
    """Records index*BLOCK .. (index+1)*BLOCK - 1."""
    rng = np.random.default_rng([SEED, dim, index])
    first = index * BLOCK
    vectors = rng.standard_normal((BLOCK, dim), dtype=np.float32)
    ids = [record_id(first + k) for k in range(BLOCK)]
    documents = [_document(rng) for _ in range(BLOCK)]
    metadatas = [{
        "source": SOURCES[int(rng.integers(0, len(SOURCES)))],
        "author": AUTHORS[int(rng.integers(0, len(AUTHORS)))],
        "year": int(rng.integers(1990, 2025)),
        "page": int(rng.integers(1, 900)),
        "score": float(np.round(rng.random(), 6)),
        "draft": bool(rng.integers(0, 2)),
    } for _ in range(BLOCK)]
    return Batch(ids, vectors, documents, metadatas)


def batches(n: int, dim: int) -> Iterator[Batch]:
    """The first n records, in blocks of BLOCK (the last one cut)."""
    for index in range((n + BLOCK - 1) // BLOCK):
        piece = block(index, dim)
        take = min(BLOCK, n - index * BLOCK)
        yield piece if take == BLOCK else piece.take(list(range(take)))
