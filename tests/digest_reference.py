"""The digests' canonical form, record by record: vecflow's digest code as it was before it hashed
a page at a time (vecflow/runtime/digest.py). Ledgers hold texts this code computed, so the fast
digests must give exactly its values (tests/test_digest_pages.py); tests/bench/digests.py measures
the fast digests against it."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import numpy as np

from vecflow.backends.base import NativePage
from vecflow.batch import Batch
from vecflow.runtime.digest import LEGACY, VERSION, Digest

_MOD = 1 << 128
_F32 = struct.Struct("<f")
_PLAIN = frozenset({str, int, float, bool, type(None)})


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
    framed = b"".join(len(part).to_bytes(8, "little") + part for part in parts)
    return int.from_bytes(hashlib.blake2b(framed, digest_size=16).digest(), "little")


def batch_digest(batch: Batch, include_vectors: bool = True, version: int = VERSION) -> Digest:
    vectors = np.asarray(batch.vectors, dtype="<f4")
    total = 0
    for i, rid in enumerate(batch.ids):
        vector = vectors[i].tobytes() if include_vectors else b""
        total += record_hash(rid, vector, batch.documents[i], batch.metadatas[i], version)
    return Digest(len(batch), total % _MOD, version)


def native_digest(page: NativePage, version: int = VERSION) -> Digest:
    vectors = np.asarray(page.batch.vectors, dtype="<f4")
    total = 0
    for i, native_id in enumerate(page.native_ids):
        native = page.natives[i]
        total += record_hash(native_id, vectors[i].tobytes(), native.text, {"fields": native.fields}, version)
    return Digest(len(page.native_ids), total % _MOD, version)


def ids_digest(ids: list[str]) -> int:
    """Verification's id-set digest (vecflow/runtime/verify.py SideDigest.ids)."""
    return sum(int.from_bytes(hashlib.blake2b(i.encode(), digest_size=16).digest(), "little") for i in ids) % _MOD
