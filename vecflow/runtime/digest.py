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

The hashes are computed a page at a time (see the helpers below `canonical_metadata`), with
exactly the values of the record-by-record form in tests/digest_reference.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring
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
_TEXT = frozenset({str})
# One encoder for every record (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=True,
                         check_circular=False).encode


def canonical_metadata(metadata: dict[str, Any], version: int = VERSION) -> str:
    flat = (version != LEGACY and isinstance(metadata, dict) and _TEXT.issuperset(map(type, metadata))
            and _PLAIN.issuperset(map(type, metadata.values())))
    return _JSON(metadata if flat else _canonical_value(metadata, version))


# A record's hash is the BLAKE2b-128 (little-endian) of its id, vector bytes, document part
# (b"\x00" for None, b"\x01" + text) and canonical metadata, each prefixed with its length as 8
# bytes little-endian. The helpers below build those framed parts a column at a time.
_FRAME = struct.Struct("<Q").pack
_NO_DOCUMENT = _FRAME(1) + b"\x00"


def _framed_texts(texts: list[str]) -> list[bytes]:
    return [_FRAME(len(data)) + data for data in map(str.encode, texts)]


def _framed_documents(documents: list[str | None]) -> list[bytes]:
    return [_NO_DOCUMENT if document is None else _FRAME(len(data := document.encode()) + 1) + b"\x01" + data
            for document in documents]


def _metadata_texts(metadatas: list[Any], version: int) -> list[str]:
    """canonical_metadata of each. Where all are flat dicts with the same text keys (most pages),
    the JSON is written a field at a time: one call encodes a field's values for the whole page,
    and one template per page puts them in place."""
    first = metadatas[0] if metadatas else None
    keys = sorted(first) if type(first) is dict and _TEXT.issuperset(map(type, first)) else []
    columns = _field_columns(metadatas, keys) if version != LEGACY and keys else None
    if columns is None:
        return [canonical_metadata(metadata, version) for metadata in metadatas]
    template = "{" + ",".join(encode_basestring(key).replace("%", "%%") + ":%s" for key in keys) + "}"
    return list(map(template.__mod__, zip(*columns)))


def _field_columns(metadatas: list[Any], keys: list[Any]) -> list[list[str]] | None:
    """Each field's values as JSON, or None unless every metadata is a dict of exactly these text
    keys with plain values."""
    if (set(map(type, metadatas)) != {dict} or set(map(len, metadatas)) != {len(keys)}
            or not _TEXT.issuperset(map(type, itertools.chain.from_iterable(metadatas)))):
        return None
    columns = []
    for key in keys:
        try:
            values = list(map(operator.itemgetter(key), metadatas))
        except KeyError:
            return None
        types = set(map(type, values))
        if not _PLAIN.issuperset(types):
            return None
        if types == _TEXT:
            columns.append(list(map(encode_basestring, values)))
        elif str in types:
            columns.append(list(map(_JSON, values)))
        else:  # numbers, booleans and nulls: no commas inside a value
            columns.append(_JSON(values)[1:-1].split(","))
    return columns


def _framed_metadatas(metadatas: list[Any], version: int) -> list[bytes]:
    return _framed_texts(_metadata_texts(metadatas, version))


def _framed_native_metadatas(field_texts: list[str]) -> list[bytes]:
    """What a native record's hash has in the metadata slot, from the canonical text of its field
    map: {"fields": the field map}, canonical (the text canonical_metadata({"fields": fields})
    gives, without the nested canonical copy)."""
    return _framed_texts([f'{{"fields":{text}}}' for text in field_texts])


def _same_objects(first: list[Any], second: list[Any]) -> bool:
    """Whether each pair of dicts holds the very same key and value objects in the same order (as
    a layout's copy of a field map does), so that their canonical texts are the same."""
    if set(map(type, first)) != {dict} or set(map(type, second)) != {dict}:
        return False
    if list(map(len, first)) != list(map(len, second)):
        return False
    flat = itertools.chain.from_iterable
    return (all(map(operator.is_, flat(first), flat(second)))
            and all(map(operator.is_, flat(map(dict.values, first)), flat(map(dict.values, second)))))


def _vector_rows(vectors: np.ndarray) -> tuple[bytes, list[memoryview]]:
    """The framing of one vector (all have the same length) and each row's little-endian float32
    bytes, as views of the batch's one buffer."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    size = vectors.shape[1] * 4
    view = memoryview(vectors.reshape(-1)).cast("B")
    return _FRAME(size), [view[k * size:(k + 1) * size] for k in range(len(vectors))]


def _sum(hashes: list[bytes]) -> int:
    """The sum of 16-byte little-endian hashes modulo 2**128, added by numpy as 32-bit limbs (each
    limb's sum fits in 64 bits below 2**32 records)."""
    limbs = np.frombuffer(b"".join(hashes), dtype="<u4").reshape(-1, 4).sum(axis=0, dtype=np.uint64)
    return sum(int(limb) << (32 * k) for k, limb in enumerate(limbs)) % _MOD


def _hashes(ids: list[bytes], vectors: np.ndarray | None, documents: list[bytes],
            metadatas: list[bytes]) -> list[bytes]:
    """Each record's hash from its framed parts; vectors None leaves the vector part empty."""
    blake2b = hashlib.blake2b
    if vectors is None:
        empty = _FRAME(0)
        return [blake2b(b"".join((rid, empty, document, metadata)), digest_size=16).digest()
                for rid, document, metadata in zip(ids, documents, metadatas, strict=True)]
    frame, rows = _vector_rows(vectors)
    hashes = []
    for row, rid, document, metadata in zip(rows, ids, documents, metadatas, strict=True):
        record = blake2b(rid + frame, digest_size=16)
        record.update(row)  # a view: joining the parts first would copy it
        record.update(document + metadata)
        hashes.append(record.digest())
    return hashes


def _pair_hashes(ids: list[bytes], vectors: np.ndarray, documents: list[bytes], metadatas: list[bytes],
                 native_metadatas: list[bytes]) -> list[bytes]:
    """Each record's logical and native hash, in turn, for records whose native id and text are
    their logical id and document: the shared start (id, vector, document) is hashed once."""
    blake2b = hashlib.blake2b
    frame, rows = _vector_rows(vectors)
    hashes = []
    records = zip(rows, ids, documents, metadatas, native_metadatas, strict=True)
    for row, rid, document, metadata, native_metadata in records:
        logical = blake2b(rid + frame, digest_size=16)
        logical.update(row)
        logical.update(document)
        native = logical.copy()
        logical.update(metadata)
        native.update(native_metadata)
        hashes += (logical.digest(), native.digest())
    return hashes


def batch_digest(batch: Batch, include_vectors: bool = True, version: int = VERSION) -> Digest:
    """Digest of one batch. include_vectors=False leaves vectors out (used when a store normalises
    them and verification compares vectors separately, with a tolerance)."""
    hashes = _hashes(_framed_texts(batch.ids), batch.vectors if include_vectors else None,
                     _framed_documents(batch.documents), _framed_metadatas(batch.metadatas, version))
    return Digest(len(batch), _sum(hashes), version)


def native_digest(page: Any, version: int = VERSION) -> Digest:
    """Digest of a NativePage: the store's own ids, the vectors as vecflow reads them (exact bits,
    see vecflow/backends/exact.py) and every other native part exactly as stored (the text slot,
    the whole field map / payload). It changes when any byte an application can read changes."""
    hashes = _hashes(_framed_texts(page.native_ids), page.batch.vectors,
                     _framed_documents([native.text for native in page.natives]),
                     _framed_native_metadatas(_metadata_texts([native.fields for native in page.natives], version)))
    return Digest(len(page.native_ids), _sum(hashes), version)


def ids_digest(ids: list[str]) -> int:
    """The sum of each id's own hash: an order-independent digest of an id set."""
    blake2b = hashlib.blake2b
    return _sum([blake2b(data, digest_size=16).digest() for data in map(str.encode, ids)])


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


def page_digests(page: Any, version: int = VERSION) -> DigestPair:
    """batch_digest of a NativePage's batch and its native_digest, in one pass where the two
    forms share their start (the store's ids and texts are the logical ids and documents)."""
    batch = page.batch
    texts = [native.text for native in page.natives]
    if page.native_ids != batch.ids or texts != batch.documents:
        return DigestPair(batch_digest(batch, version=version), native_digest(page, version))
    metadata_texts = _metadata_texts(batch.metadatas, version)
    fields = [native.fields for native in page.natives]
    field_texts = metadata_texts if _same_objects(fields, batch.metadatas) else _metadata_texts(fields, version)
    hashes = _pair_hashes(_framed_texts(batch.ids), batch.vectors, _framed_documents(texts),
                          _framed_texts(metadata_texts), _framed_native_metadatas(field_texts))
    return DigestPair(Digest(len(batch), _sum(hashes[0::2]), version), Digest(len(batch), _sum(hashes[1::2]), version))


def collection_digests(backend: Any, name: str, batch_size: int | None = None,
                       on_page: Callable[[], None] | None = None, version: int = VERSION) -> DigestPair:
    """Logical and native digests of a whole collection, in one streamed pass, in pages of
    batch_size records (None: the store's read_batch_size)."""
    if not backend.has_collection(name):
        return DigestPair(Digest.absent(), Digest.absent())
    logical, native = Digest.empty(), Digest.empty()
    for page, _ in backend.native_pages_ahead(name, batch_size):
        digests = page_digests(page, version)
        logical, native = logical + digests.logical, native + digests.native
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
