"""A Chroma folder as a kill inside chromadb's own index save leaves it (see
vecflow/backends/chroma_connect.py), built deterministically from two real folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import chromadb
import numpy as np

DIM = 8
INDEX_FILES = ("header.bin", "data_level0.bin", "length.bin", "link_lists.bin")


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def damaged_chroma_folder(scratch: Path, into: Path, collection: str = "docs") -> Path:
    """Make `into` a Chroma folder whose collection's index files already hold 300 deletes, beside
    the id map and log position from before them.

    `before` has 1,000 records saved (chromadb saves its index every 1,000 log entries) and 300
    deletes only in its log; `after` is the same folder once 700 more inserts made chromadb save
    the index again. The damaged folder is `before` with `after`'s index files."""
    before, after = scratch / "before", scratch / "after"
    client = chromadb.PersistentClient(path=str(before))
    made = client.create_collection(collection, embedding_function=None)
    ids = [f"r{i}" for i in range(1000)]
    made.upsert(ids=ids, embeddings=_vectors(1000, 1))
    made.delete(ids=ids[:300])
    made.count()
    client.close()
    shutil.copytree(before, after)
    client = chromadb.PersistentClient(path=str(after))
    client.get_collection(collection, embedding_function=None).upsert(
        ids=[f"n{i}" for i in range(700)], embeddings=_vectors(700, 2))
    client.close()
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(before, into)
    (segment,) = [p.name for p in before.iterdir() if p.is_dir()]
    for name in INDEX_FILES:
        shutil.copyfile(after / segment / name, into / segment / name)
    return into
