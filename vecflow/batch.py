"""Batch: the columnar unit in which records move between vecflow and a backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vecflow.errors import InvalidDataError

Metadata = dict[str, Any]


@dataclass
class Record:
    """One record, for tests and small conveniences; hot paths use Batch."""

    id: str
    vector: np.ndarray
    document: str | None = None
    metadata: Metadata = field(default_factory=dict)


@dataclass
class Batch:
    """Columnar records: ids[i], vectors[i], documents[i] and metadatas[i] describe record i.

    vectors is always a C-contiguous float32 array of shape (n, dim); metadatas are plain dicts
    (never None; an empty dict means no metadata). extras[i] is what record i's framework layout
    keeps beside its text and metadata (see vecflow/layouts/base.py); {} for most records. Extras
    travel with a record between stores but are not part of its logical digest.
    """

    ids: list[str]
    vectors: np.ndarray
    documents: list[str | None]
    metadatas: list[Metadata]
    extras: list[Metadata] | None = None

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        n = len(self.ids)
        if self.extras is None:
            self.extras = [{} for _ in range(n)]
        if self.vectors.ndim != 2:
            if n == 0:
                self.vectors = self.vectors.reshape(0, 0)
            else:
                raise InvalidDataError(f"vectors must be 2-D (n, dim), got shape {self.vectors.shape}")
        if (self.vectors.shape[0] != n or len(self.documents) != n or len(self.metadatas) != n
                or len(self.extras) != n):
            raise InvalidDataError(
                f"batch columns disagree: {n} ids, {self.vectors.shape[0]} vectors, "
                f"{len(self.documents)} documents, {len(self.metadatas)} metadatas"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    @classmethod
    def empty(cls, dim: int = 0) -> Batch:
        return cls([], np.zeros((0, dim), dtype=np.float32), [], [])

    @classmethod
    def from_records(cls, records: list[Record], dim: int = 0) -> Batch:
        if not records:
            return cls.empty(dim)
        return cls(
            [r.id for r in records],
            np.stack([np.asarray(r.vector, dtype=np.float32) for r in records]),
            [r.document for r in records],
            [dict(r.metadata) for r in records],
        )

    def records(self) -> Iterator[Record]:
        for i, rid in enumerate(self.ids):
            yield Record(rid, self.vectors[i], self.documents[i], self.metadatas[i])

    def take(self, positions: list[int]) -> Batch:
        """The records at the given positions, in that order."""
        return Batch(
            [self.ids[i] for i in positions],
            self.vectors[positions] if positions else np.zeros((0, self.dim), np.float32),
            [self.documents[i] for i in positions],
            [self.metadatas[i] for i in positions],
            [self.extras[i] for i in positions],
        )

    @classmethod
    def concat(cls, batches: list[Batch]) -> Batch:
        """The records of these batches, in order, as one batch."""
        filled = [batch for batch in batches if len(batch)]
        if len(filled) <= 1:
            return filled[0] if filled else (batches[0] if batches else cls.empty())
        return cls([rid for batch in filled for rid in batch.ids], np.concatenate([batch.vectors for batch in filled]),
                   [doc for batch in filled for doc in batch.documents],
                   [meta for batch in filled for meta in batch.metadatas],
                   [extra for batch in filled for extra in batch.extras])

    def with_metadatas(self, metadatas: list[Metadata]) -> Batch:
        return Batch(self.ids, self.vectors, self.documents, metadatas, self.extras)

    def without_extras(self) -> Batch:
        return Batch(self.ids, self.vectors, self.documents, self.metadatas)

    def check_finite(self, where: str) -> None:
        """Refuse NaN or infinite vectors, naming the first bad record."""
        if len(self) and not np.isfinite(self.vectors).all():
            bad = int(np.nonzero(~np.isfinite(self.vectors).all(axis=1))[0][0])
            raise InvalidDataError(f"{where}: record {self.ids[bad]!r} has a NaN or infinite vector")

    def check_text(self, where: str) -> None:
        """Refuse what no store holds as written, naming the first bad record: ids that are not
        strings, documents that are neither None nor a string, metadata keys that are not strings,
        and strings UTF-8 cannot encode (lone surrogates, which JSON's "\\ud800" gives)."""
        for i, rid in enumerate(self.ids):
            if not isinstance(rid, str):
                raise InvalidDataError(f"{where}: record id {rid!r} is not a string")
            document = self.documents[i]
            problem = (_unencodable(rid, "its id") or _not_text(document)
                       or _unencodable(document, "its document") or metadata_problem(self.metadatas[i]))
            if problem:
                raise InvalidDataError(f"{where}: record {rid!r}: {problem}")


# Metadata values metadata_problem has nothing to check in.
_SCALARS = (int, float, bool, type(None))


def metadata_problem(value: Any, path: str = "metadata") -> str | None:
    """Why a metadata value cannot be written (a key that is not a string, a string UTF-8 cannot
    encode), or None."""
    if isinstance(value, str):
        return _unencodable(value, path)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} key {key!r} is not a string"
            if key.isascii() and (type(item) in _SCALARS or (type(item) is str and item.isascii())):
                continue  # nothing to check (the common case, without building a path)
            problem = _unencodable(key, f"{path} key") or metadata_problem(item, f"{path}[{key!r}]")
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for item in value:
            if problem := metadata_problem(item, path):
                return problem
    return None


def _not_text(document: Any) -> str | None:
    return None if document is None or isinstance(document, str) else f"its document is a {type(document).__name__}"


def _unencodable(text: Any, what: str) -> str | None:
    if not isinstance(text, str) or text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{what} holds {text[exc.start:exc.end]!r}, which UTF-8 cannot encode (a lone surrogate)"
    return None
