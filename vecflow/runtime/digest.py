"""Order-independent digests of collections.

A digest is the record count plus the sum, modulo 2**128, of a 128-bit BLAKE2b hash of each
record's canonical form. Sums commute, so digests of batches and partitions merge by addition and
the scan order never matters.

Canonical form, chosen so a lossless round trip through any backend gives the same digest:
- the id, the document (None distinct from ""), the vector as little-endian float32 bytes;
- metadata as JSON with sorted keys, where every float is first rounded to float32. Chroma returns
  about 10% of float metadata 1 ulp (float64) off; at float32 precision (about 7 significant
  digits) those collapse, with a collision chance of about 2**-29 per value.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vecflow.batch import Batch

_MOD = 1 << 128
_F32 = struct.Struct("<f")


@dataclass(frozen=True)
class Digest:
    """count is None for a collection that does not exist."""

    count: int | None
    value: int

    @classmethod
    def absent(cls) -> Digest:
        return cls(None, 0)

    @classmethod
    def empty(cls) -> Digest:
        return cls(0, 0)

    def __add__(self, other: Digest) -> Digest:
        return Digest((self.count or 0) + (other.count or 0), (self.value + other.value) % _MOD)

    def to_text(self) -> str:
        if self.count is None:
            return "absent"
        return f"{self.count}:{self.value:032x}"

    @classmethod
    def from_text(cls, text: str) -> Digest:
        if text == "absent":
            return cls.absent()
        count, _, value = text.partition(":")
        return cls(int(count), int(value, 16))

    def __str__(self) -> str:
        return self.to_text()


def _canonical_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return repr(value)
        return _F32.unpack(_F32.pack(value))[0] if abs(value) < 3.4e38 else value
    if isinstance(value, dict):
        return {str(k): _canonical_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical_value(v) for v in value]
    if isinstance(value, np.generic):
        return _canonical_value(value.item())
    return str(value)


def canonical_metadata(metadata: dict[str, Any]) -> str:
    return json.dumps(_canonical_value(metadata), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def record_hash(record_id: str, vector_bytes: bytes, document: str | None, metadata: dict[str, Any]) -> int:
    h = hashlib.blake2b(digest_size=16)
    for part in (
        record_id.encode("utf-8"),
        vector_bytes,
        b"\x00" if document is None else b"\x01" + document.encode("utf-8"),
        canonical_metadata(metadata).encode("utf-8"),
    ):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return int.from_bytes(h.digest(), "little")


def batch_digest(batch: Batch, include_vectors: bool = True) -> Digest:
    """Digest of one batch. include_vectors=False leaves vectors out (used when a store normalises
    them and verification compares vectors separately, with a tolerance)."""
    vectors = np.asarray(batch.vectors, dtype="<f4")
    total = 0
    for i, rid in enumerate(batch.ids):
        vector = vectors[i].tobytes() if include_vectors else b""
        total += record_hash(rid, vector, batch.documents[i], batch.metadatas[i])
    return Digest(len(batch), total % _MOD)


def native_digest(page: Any) -> Digest:
    """Digest of a NativePage: the store's own ids, the vectors as vecflow reads them (exact bits,
    see vecflow/backends/exact.py) and every other native part exactly as stored (the text slot,
    the whole field map / payload). It changes when any byte an application can read changes."""
    vectors = np.asarray(page.batch.vectors, dtype="<f4")
    total = 0
    for i, native_id in enumerate(page.native_ids):
        native = page.natives[i]
        total += record_hash(native_id, vectors[i].tobytes(), native.text, {"fields": native.fields})
    return Digest(len(page.native_ids), total % _MOD)


@dataclass(frozen=True)
class DigestPair:
    """A collection's logical and native digests, taken in one pass. Written `logical|native`."""

    logical: Digest
    native: Digest

    def to_text(self) -> str:
        if self.logical.count is None:
            return "absent"
        return f"{self.logical.to_text()}|{self.native.to_text()}"

    @staticmethod
    def same(expected: str, actual: str) -> bool:
        """Whether two digest texts agree; a text without a native part (an older ledger, or a
        digest an op computed) is compared on its logical part."""
        if "|" in expected and "|" in actual:
            return expected == actual
        return expected.partition("|")[0] == actual.partition("|")[0]


def collection_digests(backend: Any, name: str, batch_size: int = 1000,
                       on_page: Callable[[], None] | None = None) -> DigestPair:
    """Logical and native digests of a whole collection, in one streamed pass."""
    if not backend.has_collection(name):
        return DigestPair(Digest.absent(), Digest.absent())
    logical, native = Digest.empty(), Digest.empty()
    for page, _ in backend.native_pages(name, batch_size):
        logical = logical + batch_digest(page.batch)
        native = native + native_digest(page)
        if on_page is not None:
            on_page()
    return DigestPair(logical, native)


def collection_digest(backend: Any, name: str, batch_size: int = 1000,
                      on_page: Callable[[], None] | None = None) -> Digest:
    """Stream a whole collection through batch_digest; Digest.absent() when it does not exist.
    on_page is called after every page (the runner renews its lease there)."""
    if not backend.has_collection(name):
        return Digest.absent()
    total = Digest.empty()
    for batch, _ in backend.pages(name, batch_size):
        total = total + batch_digest(batch)
        if on_page is not None:
            on_page()
    return total
