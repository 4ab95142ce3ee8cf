"""Order-independent digests of collections.

A digest is the record count plus the sum, modulo 2**128, of a 128-bit BLAKE2b hash of each
record's canonical form. Sums commute, so digests of batches and partitions merge by addition and
the scan order never matters.

Canonical form (version 2), chosen so a lossless round trip through any backend gives the same
digest and any change an application could read changes it:
- the id, the document (None distinct from ""), the vector as little-endian float32 bytes (vecflow's
  vectors are float32);
- metadata as JSON with sorted keys; floats exactly, as float64 (the shortest decimal that reads
  back as the same double: 1 and 1.0 differ, and so do 0.0 and -0.0); NaN and infinities as JSON's
  NaN / Infinity tokens, so they differ from the strings "nan" and "inf".

Version 1 (vecflow before exact floats) rounded every float below 3.4e38 to float32 first, which
hid the ulp Chroma changes in about 10% of floats (vecflow/backends/chroma_values.py) and with it
any float change smaller than float32 precision. Its texts are `count:hex`; version 2 texts are
`count:hex:v2`. A ledger an older vecflow wrote holds version 1 texts, so a digest to compare with
one is computed in version 1 (`version_of`); texts of two versions never compare equal. An empty
collection has one text, `0:000…`, in every version.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vecflow.batch import Batch

VERSION = 2
LEGACY = 1  # float32-rounded metadata floats
MIXED = 0  # a sum of digests of different versions: comparable only with a sum formed the same way
_MOD = 1 << 128
_F32 = struct.Struct("<f")


@dataclass(frozen=True)
class Digest:
    """count is None for a collection that does not exist; version is the canonical form's (it
    does not matter, and is VERSION, when there are no records)."""

    count: int | None
    value: int
    version: int = VERSION

    def __post_init__(self) -> None:
        if not self.count:
            object.__setattr__(self, "version", VERSION)

    @classmethod
    def absent(cls) -> Digest:
        return cls(None, 0)

    @classmethod
    def empty(cls) -> Digest:
        return cls(0, 0)

    def __add__(self, other: Digest) -> Digest:
        if not self.count or not other.count or self.version == other.version:
            version = self.version if self.count else other.version
        else:
            version = MIXED
        return Digest((self.count or 0) + (other.count or 0), (self.value + other.value) % _MOD, version)

    def to_text(self) -> str:
        if self.count is None:
            return "absent"
        text = f"{self.count}:{self.value:032x}"
        return text if self.version == LEGACY or not self.count else f"{text}:v{self.version}"

    @classmethod
    def from_text(cls, text: str) -> Digest:
        """ValueError for a text that is not a digest."""
        if text == "absent":
            return cls.absent()
        parts = text.split(":")
        if len(parts) == 3 and parts[2][:1] == "v":
            version, count, value = int(parts[2][1:]), parts[0], parts[1]
        elif len(parts) == 2:
            version, (count, value) = LEGACY, parts
        else:
            raise ValueError(f"not a digest: {text!r}")
        return cls(int(count), int(value, 16), version)

    def __str__(self) -> str:
        return self.to_text()


def version_of(text: str) -> int:
    """The digest version a digest or DigestPair text was computed in (VERSION when it holds no
    records, since those texts are the same in every version)."""
    versions = {Digest.from_text(part).version for part in text.split("|")}
    versions.discard(VERSION)
    return versions.pop() if versions else VERSION


def _canonical_value(value: Any, version: int) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if version != LEGACY:
            return value
        if not math.isfinite(value):
            return repr(value)
        return _F32.unpack(_F32.pack(value))[0] if abs(value) < 3.4e38 else value
    if isinstance(value, dict):
        return {str(k): _canonical_value(v, version) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical_value(v, version) for v in value]
    if isinstance(value, np.generic):
        return _canonical_value(value.item(), version)
    return str(value)


# Values json encodes exactly as _canonical_value leaves them (version 2): a flat metadata dict
# of these with text keys needs no canonical copy first.
_PLAIN = frozenset({str, int, float, bool, type(None)})


def canonical_metadata(metadata: dict[str, Any], version: int = VERSION) -> str:
    flat = version != LEGACY and all(type(k) is str and type(v) in _PLAIN for k, v in metadata.items())
    return json.dumps(metadata if flat else _canonical_value(metadata, version), sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"), allow_nan=True)


def record_hash(record_id: str, vector_bytes: bytes, document: str | None, metadata: dict[str, Any],
                version: int = VERSION) -> int:
    parts = (
        record_id.encode("utf-8"),
        vector_bytes,
        b"\x00" if document is None else b"\x01" + document.encode("utf-8"),
        canonical_metadata(metadata, version).encode("utf-8"),
    )
    # Each part prefixed with its length (8 bytes, little-endian), hashed in one call.
    framed = b"".join(len(part).to_bytes(8, "little") + part for part in parts)
    return int.from_bytes(hashlib.blake2b(framed, digest_size=16).digest(), "little")


def batch_digest(batch: Batch, include_vectors: bool = True, version: int = VERSION) -> Digest:
    """Digest of one batch. include_vectors=False leaves vectors out (used when a store normalises
    them and verification compares vectors separately, with a tolerance)."""
    vectors = np.asarray(batch.vectors, dtype="<f4")
    total = 0
    for i, rid in enumerate(batch.ids):
        vector = vectors[i].tobytes() if include_vectors else b""
        total += record_hash(rid, vector, batch.documents[i], batch.metadatas[i], version)
    return Digest(len(batch), total % _MOD, version)


def native_digest(page: Any, version: int = VERSION) -> Digest:
    """Digest of a NativePage: the store's own ids, the vectors as vecflow reads them (exact bits,
    see vecflow/backends/exact.py) and every other native part exactly as stored (the text slot,
    the whole field map / payload). It changes when any byte an application can read changes."""
    vectors = np.asarray(page.batch.vectors, dtype="<f4")
    total = 0
    for i, native_id in enumerate(page.native_ids):
        native = page.natives[i]
        total += record_hash(native_id, vectors[i].tobytes(), native.text, {"fields": native.fields}, version)
    return Digest(len(page.native_ids), total % _MOD, version)


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
        digest an op computed) is compared on its logical part. Texts of different versions never
        agree: compute the actual one in the expected one's version (`version_of`)."""
        if "|" in expected and "|" in actual:
            return expected == actual
        return expected.partition("|")[0] == actual.partition("|")[0]


def collection_digests(backend: Any, name: str, batch_size: int | None = None,
                       on_page: Callable[[], None] | None = None, version: int = VERSION) -> DigestPair:
    """Logical and native digests of a whole collection, in one streamed pass, in pages of
    batch_size records (None: the store's read_batch_size)."""
    if not backend.has_collection(name):
        return DigestPair(Digest.absent(), Digest.absent())
    logical, native = Digest.empty(), Digest.empty()
    for page, _ in backend.native_pages_ahead(name, batch_size):
        logical = logical + batch_digest(page.batch, version=version)
        native = native + native_digest(page, version)
        if on_page is not None:
            on_page()
    return DigestPair(logical, native)


def collection_digest(backend: Any, name: str, batch_size: int | None = None,
                      on_page: Callable[[], None] | None = None, version: int = VERSION) -> Digest:
    """Stream a whole collection through batch_digest; Digest.absent() when it does not exist.
    on_page is called after every page (the runner renews its lease there)."""
    if not backend.has_collection(name):
        return Digest.absent()
    total = Digest.empty()
    for batch, _ in backend.pages(name, batch_size):
        total = total + batch_digest(batch, version=version)
        if on_page is not None:
            on_page()
    return total
