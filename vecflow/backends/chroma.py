"""ChromaBackend: a Chroma store, embedded (a folder) or over HTTP (a `chroma run` server).

Chroma's traps (measured on chromadb 1.5.9), each handled here and described in
docs/backends/chroma.md: metadata holds only flat scalars (other values travel as marker JSON);
upsert merges metadata and keeps old documents (upsert() replaces records whole); cosine
collections return vectors a few ulps off (a reserved metadata key restores the written bits);
offset paging is O(offset) (scan() pages through a sorted id list fetched once per pass).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import chromadb
import httpx
import numpy as np
from chromadb.errors import ChromaError, InvalidArgumentError, NotFoundError

from vecflow.backends.base import METRICS, Backend, CollectionInfo, Hit
from vecflow.batch import Batch, Metadata
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    InvalidDataError,
    OperationError,
    VecflowError,
)

# A metadata string that begins with MARKER holds JSON. U+241E (SYMBOL FOR RECORD SEPARATOR) does
# not occur in ordinary text, and user strings that begin with it are themselves encoded.
MARKER = "\u241ejson:"
RESERVED_PREFIX = "vecflow:"
# Record metadata: the keys Chroma would refuse or drop, as marker JSON.
KEYS_KEY = "vecflow:keys"
# Record metadata (cosine collections): how to turn the vector Chroma returns into the one written.
BITS_KEY = "vecflow:bits"
# Collection metadata: the dimension, so describe() works on empty collections.
DIM_KEY = "vecflow:dim"
INFO_KEY = "vecflow:info"  # collection-level metadata (JSON)
# Chroma's HNSW defaults (1.5.9); describe() reports only settings that differ from these.
HNSW_DEFAULTS = {"ef_construction": 100, "ef_search": 100, "max_neighbors": 16,
                 "resize_factor": 1.2, "sync_threshold": 1000}

_INT64 = (-(2**63), 2**63 - 1)
_FLOAT32_MAX = 3.4e38
_FAILURES = (ChromaError, ValueError, TypeError, httpx.HTTPError, OSError)


class ChromaBackend(Backend):
    """A Chroma store: `path` opens an embedded store, `url` (http[s]://host:port) a server."""

    name = "chroma"
    # Chroma keeps cosine vectors unit-length internally; the BITS_KEY correction restores the
    # written bits on read, so digests need no normalising.
    normalises_cosine = False

    def __init__(self, path: str | None = None, url: str | None = None, tenant: str | None = None,
                 database: str | None = None, headers: dict[str, str] | str | None = None) -> None:
        if bool(path) == bool(url):
            raise ConfigError(
                "chroma store: set exactly one of 'path' (embedded) or 'url' (server)")
        if headers and not url:
            raise ConfigError("chroma store: 'headers' only applies to a server ('url')")
        if path:
            # chromadb shares one client system per path string: spell each folder one way.
            path = os.path.abspath(os.path.expanduser(path))
        self._where = path or _redacted(url)
        self._client: Any = None
        scope = {k: v for k, v in (("tenant", tenant), ("database", database)) if v}
        # Sorted ids per collection uuid, for scan(); see _sorted_ids.
        self._ids: dict[Any, list[str]] = {}
        try:
            if path:
                self._client = chromadb.PersistentClient(path=path, **scope)
            else:
                self._client = chromadb.HttpClient(
                    host=_check_url(url), ssl=url.startswith("https:"),
                    headers=_parse_headers(headers), **scope)
            self._client.heartbeat()
            self._max_batch = int(self._client.get_max_batch_size())
        except VecflowError:
            raise
        except _FAILURES as exc:
            if self._client is not None:
                self._client.close()
                self._client = None
            root = _root_cause(exc)
            if url and isinstance(root, (httpx.TransportError, OSError)):
                raise BackendError(
                    f"cannot reach Chroma at {self._where}: {_one_line(root)}") from exc
            where = (f"{self._where} (tenant {tenant or 'default_tenant'!r}, "
                     f"database {database or 'default_database'!r})")
            raise BackendError(f"cannot open Chroma at {where}: {_one_line(exc)}") from exc

    @property
    def client(self) -> Any:
        """The underlying chromadb client, for Chroma-specific needs (layouts, tests)."""
        return self._api

    # collections ---------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        with self._errors("listing collections"):
            return sorted(c.name for c in self._api.list_collections())

    def has_collection(self, name: str) -> bool:
        try:
            self._collection(name)
        except CollectionNotFoundError:
            return False
        return True

    def create_collection(self, name: str, dim: int, metric: str = "cosine", **params: Any) -> None:
        """params: `hnsw` (Chroma HNSW settings other than space) and `metadata` (collection
        metadata), as describe() reports them."""
        if metric not in METRICS:
            raise OperationError(f"Chroma collection {name!r}: unknown metric {metric!r}; "
                                 f"use one of {', '.join(METRICS)}")
        if int(dim) < 1:
            raise OperationError(
                f"Chroma collection {name!r}: dimension must be positive, got {dim}")
        hnsw = dict(params.pop("hnsw", None) or {})
        metadata = {k: v for k, v in (params.pop("metadata", None) or {}).items()
                    if not k.startswith(RESERVED_PREFIX)}
        if params:
            raise OperationError(f"Chroma collection {name!r}: unknown parameter(s) "
                                 f"{', '.join(sorted(params))}; Chroma takes 'hnsw' and 'metadata'")
        if self.has_collection(name):
            raise self._exists(name)
        with self._errors(f"creating collection {name!r}"):
            try:
                self._api.create_collection(
                    name, embedding_function=None, metadata={**metadata, DIM_KEY: int(dim)},
                    configuration={"hnsw": {**hnsw, "space": metric}})
            except ChromaError as exc:
                if "already exists" in str(exc):
                    raise self._exists(name) from exc
                _raise_if_name_rejected(name, exc)
                raise

    def drop_collection(self, name: str) -> None:
        collection = self._collection(name)
        with self._errors(f"dropping collection {name!r}"):
            self._api.delete_collection(name)
        self._ids.pop(collection.id, None)

    def rename_collection(self, old: str, new: str, batch_size: int = 1000) -> None:
        """Native rename: records, index, configuration and metadata stay in place."""
        collection = self._collection(old)
        if self.has_collection(new):
            raise self._exists(new)
        with self._errors(f"renaming collection {old!r} to {new!r}"):
            try:
                collection.modify(name=new)
            except ChromaError as exc:
                _raise_if_name_rejected(new, exc)
                raise
        self._ids.pop(collection.id, None)

    def count(self, name: str) -> int:
        collection = self._collection(name)
        with self._errors(f"counting collection {name!r}"):
            return int(collection.count())

    def describe(self, name: str) -> CollectionInfo:
        collection = self._collection(name)
        params: dict[str, Any] = {}
        hnsw = {k: v for k, v in (collection.configuration_json.get("hnsw") or {}).items()
                if k != "space" and v is not None and HNSW_DEFAULTS.get(k) != v}
        if hnsw:
            params["hnsw"] = hnsw
        metadata = {k: v for k, v in (collection.metadata or {}).items()
                    if not k.startswith((RESERVED_PREFIX, "hnsw:"))}
        if metadata:
            params["metadata"] = metadata
        return CollectionInfo(name, self._dim(collection), _metric(collection), params)

    def collection_metadata(self, name: str) -> dict[str, Any]:
        raw = (self._collection(name).metadata or {}).get(INFO_KEY)
        return json.loads(raw) if raw else {}

    def update_collection_metadata(self, name: str, values: dict[str, Any]) -> None:
        collection = self._collection(name)
        info = {**self.collection_metadata(name), **values}
        info = {k: v for k, v in info.items() if v is not None}
        # modify() replaces the whole map: resend every key but hnsw:*, which Chroma refuses to change.
        metadata = {k: v for k, v in (collection.metadata or {}).items() if not k.startswith("hnsw:")}
        metadata[INFO_KEY] = json.dumps(info, sort_keys=True)
        with self._errors(f"updating the metadata of collection {name!r}"):
            collection.modify(metadata=metadata)

    # records -------------------------------------------------------------------------------

    def scan(self, name: str, batch_size: int,
             cursor: str | None = None) -> tuple[Batch, str | None]:
        """One page of records in id order; the cursor is the last id returned, as JSON.

        The sorted id list is fetched at the start of a pass (cursor None) or when this instance
        has none yet, then reused: each page is one get(ids=...) of batch_size records.
        """
        if batch_size < 1:
            raise OperationError(f"scan of Chroma collection {name!r}: batch_size must be positive")
        collection = self._collection(name)
        ids = self._sorted_ids(collection, refresh=cursor is None)
        start = 0 if cursor is None else bisect.bisect_right(ids, _decode_cursor(name, cursor))
        page = ids[start:start + batch_size]
        batch = self._fetch(collection, page)
        more = start + batch_size < len(ids)
        return batch, (json.dumps([page[-1]], ensure_ascii=False) if more else None)

    def upsert(self, name: str, batch: Batch) -> None:
        """Replace records whole, by id: keys absent from the new metadata are removed and a None
        document clears the old one (Chroma alone would merge both)."""
        collection = self._collection(name)
        if not len(batch):
            return
        dim = self._dim(collection)
        if dim and batch.dim != dim:
            raise DimensionMismatchError(
                f"Chroma collection {name!r} has dimension {dim}; the batch has {batch.dim}")
        batch.check_finite(f"upsert into Chroma collection {name!r}")
        batch = _last_of_each_id(batch)
        encoded = [_encode_metadata(m, rid, name) for rid, m in zip(batch.ids, batch.metadatas)]
        cosine = _metric(collection) == "cosine"
        for lo in range(0, len(batch), self._max_batch):
            hi = lo + self._max_batch
            self._replace(collection, batch.ids[lo:hi], batch.vectors[lo:hi],
                          batch.documents[lo:hi], encoded[lo:hi], cosine)

    def update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Metadata-only write (Chroma's update): vectors and documents are not touched."""
        collection = self._collection(name)
        wanted = dict(zip(ids, metadatas))
        encoded = {rid: _encode_metadata(m, rid, name) for rid, m in wanted.items()}
        with self._errors(f"updating metadata in collection {name!r}"):
            for chunk in _chunks(list(encoded), self._max_batch):
                old = collection.get(ids=chunk, include=["metadatas"])
                if not old["ids"]:
                    continue
                writes = [_replacing(encoded[rid], meta, keep=(BITS_KEY,))
                          for rid, meta in zip(old["ids"], old["metadatas"])]
                collection.update(ids=old["ids"], metadatas=writes)

    def delete(self, name: str, ids: list[str]) -> None:
        collection = self._collection(name)
        unique = list(dict.fromkeys(ids))
        with self._errors(f"deleting from collection {name!r}"):
            for chunk in _chunks(unique, self._max_batch):
                collection.delete(ids=chunk)
        cached = self._ids.get(collection.id)
        if cached is not None and unique:
            gone = set(unique)
            self._ids[collection.id] = [rid for rid in cached if rid not in gone]

    def get(self, name: str, ids: list[str]) -> Batch:
        return self._fetch(self._collection(name), ids)

    def query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Nearest records per query vector: squared Euclidean distance for l2, 1 - cosine
        similarity for cosine, dot product for ip (Chroma itself reports 1 - dot)."""
        collection = self._collection(name)
        dim, metric = self._dim(collection), _metric(collection)
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if dim and queries.shape[1] != dim:
            raise DimensionMismatchError(f"Chroma collection {name!r} has dimension {dim}; "
                                         f"the query vectors have {queries.shape[1]}")
        if k < 1 or not len(queries):
            return [[] for _ in range(len(queries))]
        hits: list[list[Hit]] = []
        with self._errors(f"querying collection {name!r}"):
            for lo in range(0, len(queries), self._max_batch):
                result = collection.query(query_embeddings=queries[lo:lo + self._max_batch],
                                          n_results=k, include=["distances"])
                for row_ids, distances in zip(result["ids"], result["distances"] or []):
                    scores = [float(1.0 - d if metric == "ip" else d) for d in distances]
                    hits.append(list(zip(row_ids, scores)))
        return hits

    def encoded_fields(self, metadatas: list[dict[str, Any]]) -> dict[str, str]:
        """Fields that would be stored as marker JSON, or moved into the reserved key."""
        report: dict[str, str] = {}
        kinds: dict[str, set[str]] = {}
        for metadata in metadatas:
            for key, value in metadata.items():
                if _spilled(key):
                    report[key] = f"moves into {KEYS_KEY!r} (a key Chroma refuses or drops)"
                elif (why := _json_reason(value)) is not None:
                    kinds.setdefault(key, set()).add(why)
        for key, why in kinds.items():
            report[key] = f"becomes a {MARKER!r} JSON string for {', '.join(sorted(why))}"
        return report

    def close(self) -> None:
        """Release the client. An embedded store's files close with its last client, so a later
        connection to the same path reads fresh state."""
        client, self._client = self._client, None
        self._ids.clear()
        if client is not None:
            client.close()

    # internals -----------------------------------------------------------------------------

    @property
    def _api(self) -> Any:
        if self._client is None:
            raise BackendError(f"the connection to Chroma at {self._where} is closed")
        return self._client

    def _exists(self, name: str) -> CollectionExistsError:
        return CollectionExistsError(
            f"Chroma store {self._where} already has a collection {name!r}")

    def _collection(self, name: str) -> Any:
        try:
            with self._errors(f"opening collection {name!r}"):
                return self._api.get_collection(name, embedding_function=None)
        except CollectionNotFoundError:
            raise CollectionNotFoundError(
                f"Chroma store {self._where} has no collection {name!r}") from None

    def _dim(self, collection: Any) -> int:
        """Chroma's own dimension, else the one vecflow stored at creation, else one record's."""
        dim = collection.get_model().dimension or (collection.metadata or {}).get(DIM_KEY)
        if dim:
            return int(dim)
        with self._errors(f"reading collection {collection.name!r}"):
            sample = collection.get(limit=1, include=["embeddings"])["embeddings"]
        return len(sample[0]) if sample is not None and len(sample) else 0

    def _sorted_ids(self, collection: Any, refresh: bool) -> list[str]:
        if refresh or collection.id not in self._ids:
            with self._errors(f"listing ids of collection {collection.name!r}"):
                self._ids[collection.id] = sorted(collection.get(include=[])["ids"])
        return self._ids[collection.id]

    def _fetch(self, collection: Any, ids: list[str]) -> Batch:
        """The records with these ids that exist, in the order asked."""
        found: dict[str, tuple[np.ndarray, str | None, Metadata]] = {}
        with self._errors(f"reading collection {collection.name!r}"):
            for chunk in _chunks(list(dict.fromkeys(ids)), self._max_batch):
                result = collection.get(ids=chunk, include=["embeddings", "documents", "metadatas"])
                rows = np.asarray(result["embeddings"], dtype=np.float32)
                for i, rid in enumerate(result["ids"]):
                    stored = result["metadatas"][i] or {}
                    vector = _apply_bits(rows[i], stored.get(BITS_KEY))
                    found[rid] = (vector, result["documents"][i], _decode_metadata(stored))
        present = [rid for rid in ids if rid in found]
        if not present:
            return Batch.empty(self._dim(collection))
        return Batch(present, np.stack([found[rid][0] for rid in present]),
                     [found[rid][1] for rid in present], [found[rid][2] for rid in present])

    def _replace(self, collection: Any, ids: list[str], vectors: np.ndarray,
                 documents: list[str | None], metadatas: list[dict[str, Any]],
                 cosine: bool) -> None:
        """Upsert one chunk (at most the max batch size) with replace semantics."""
        with self._errors(f"upsert into collection {collection.name!r}"):
            old = collection.get(ids=ids, include=["metadatas", "documents"])
            before = {rid: (meta or {}, doc)
                      for rid, meta, doc in zip(old["ids"], old["metadatas"], old["documents"])}
            # Chroma cannot set a document back to None: delete those records and write them anew.
            cleared = [rid for rid, doc in zip(ids, documents)
                       if doc is None and rid in before and before[rid][1] is not None]
            for rid in cleared:
                del before[rid]
            writes = [_replacing(meta, before.get(rid, ({}, None))[0])
                      for rid, meta in zip(ids, metadatas)]
            if cleared:
                collection.delete(ids=cleared)
            collection.upsert(ids=ids, embeddings=vectors, documents=documents, metadatas=writes)
            if cosine:
                self._record_bits(collection, ids, vectors)
        cached = self._ids.get(collection.id)
        if cached is not None:
            new = [rid for rid in ids if rid not in before]
            if new:
                known = set(cached)
                self._ids[collection.id] = sorted(cached + [rid for rid in new if rid not in known])

    def _record_bits(self, collection: Any, ids: list[str], written: np.ndarray) -> None:
        """Read the vectors back and store, where Chroma changed bits, the correction."""
        back = collection.get(ids=ids, include=["embeddings"])
        rows = np.asarray(back["embeddings"], dtype=np.float32)
        position = {rid: i for i, rid in enumerate(ids)}
        fixes = {rid: bits for i, rid in enumerate(back["ids"])
                 if (bits := _bits_for(written[position[rid]], rows[i])) is not None}
        if fixes:
            collection.update(ids=list(fixes),
                              metadatas=[{BITS_KEY: bits} for bits in fixes.values()])

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn chromadb and transport exceptions into one-line vecflow errors."""
        try:
            yield
        except VecflowError:
            raise
        except NotFoundError as exc:
            raise CollectionNotFoundError(f"Chroma {action}: {_one_line(exc)}") from exc
        except (httpx.TransportError, OSError) as exc:
            raise BackendError(f"cannot reach Chroma at {self._where} ({action}): "
                               f"{_one_line(exc)}") from exc
        except _FAILURES as exc:
            raise BackendError(f"Chroma {action} failed: {_one_line(exc)}") from exc


# metadata encoding -----------------------------------------------------------------------------

def _encode_metadata(metadata: Metadata, record_id: str, collection: str) -> dict[str, Any]:
    """A Chroma-safe dict that _decode_metadata turns back into metadata exactly."""
    out: dict[str, Any] = {}
    spilled: dict[str, Any] = {}
    try:
        for key, value in metadata.items():
            if not isinstance(key, str):
                raise TypeError(f"metadata key {key!r} is not a string")
            if _spilled(key):
                spilled[key] = value
            else:
                out[key] = _encode_value(value)
        if spilled:
            out[KEYS_KEY] = MARKER + _to_json(spilled)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"Chroma collection {collection!r}, record {record_id!r}: "
                               f"metadata cannot be stored: {exc}") from exc
    return out


def _encode_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return value if _json_reason(value) is None else MARKER + _to_json(value)


def _json_reason(value: Any) -> str | None:
    """Why Chroma cannot hold this value natively (it then travels as marker JSON), else None.

    Chroma drops None, NaN and infinities, turns -0.0 into 0.0, refuses other types, and shifts
    floats by an ulp: the digest absorbs that ulp at float32 precision, not beyond its range."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if _INT64[0] <= value <= _INT64[1] else "ints beyond 64 bits"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN or infinity"
        if abs(value) >= _FLOAT32_MAX:
            return "floats beyond the float32 range"
        return "-0.0" if value == 0 and math.copysign(1, value) < 0 else None
    if isinstance(value, str):
        return "strings that begin with the marker" if value.startswith(MARKER) else None
    if value is None:
        return "None"
    return {list: "lists", tuple: "lists", dict: "dicts"}.get(type(value), type(value).__name__)


def _spilled(key: str) -> bool:
    """Keys Chroma refuses ("", "#...", "$...") or drops ("chroma:..."), and our reserved ones."""
    return not key or key[0] in "#$" or key.startswith(("chroma:", RESERVED_PREFIX))


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON-serialisable")


def _decode_metadata(stored: dict[str, Any]) -> Metadata:
    metadata: Metadata = {}
    for key, value in stored.items():
        if key == KEYS_KEY:
            spilled = _decode_value(value)
            metadata.update(spilled if isinstance(spilled, dict) else {})
        elif not key.startswith(RESERVED_PREFIX):
            metadata[key] = _decode_value(value)
    return metadata


def _decode_value(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(MARKER):
        try:
            return json.loads(value[len(MARKER):])
        except ValueError:
            return value  # not written by vecflow: leave it as Chroma holds it
    return value


def _replacing(new: dict[str, Any], old: dict[str, Any], keep: tuple[str, ...] = ()) -> dict | None:
    """What to send so that Chroma's merging write leaves exactly `new` (plus `keep` keys):
    a None value makes Chroma delete the key."""
    stale = {key: None for key in old if key not in new and key not in keep}
    return {**new, **stale} or None


# cosine vector bits ----------------------------------------------------------------------------
# A BITS_KEY value is base64 of: 8-byte BLAKE2b of the vector as Chroma returns it, then the
# zlib-compressed per-component difference of the float32 bit patterns (written - returned, as
# little-endian uint32 modulo 2**32). The hash makes a stale correction (the vector was rewritten
# by another client) harmless: it no longer matches and is ignored.

def _bits_for(written: np.ndarray, returned: np.ndarray) -> str | None:
    written_bits = np.ascontiguousarray(written, dtype="<f4").view("<u4")
    returned_bits = np.ascontiguousarray(returned, dtype="<f4").view("<u4")
    if np.array_equal(written_bits, returned_bits):
        return None
    delta = (written_bits - returned_bits).astype("<u4")
    payload = _vector_hash(returned_bits) + zlib.compress(delta.tobytes(), 9)
    return base64.b64encode(payload).decode("ascii")


def _apply_bits(returned: np.ndarray, bits: Any) -> np.ndarray:
    if not isinstance(bits, str):
        return returned
    returned_bits = np.ascontiguousarray(returned, dtype="<f4").view("<u4")
    try:
        payload = base64.b64decode(bits, validate=True)
        delta = np.frombuffer(zlib.decompress(payload[8:]), dtype="<u4")
    except (binascii.Error, zlib.error, ValueError):
        return returned
    if payload[:8] != _vector_hash(returned_bits) or delta.shape != returned_bits.shape:
        return returned
    return (returned_bits + delta).astype("<u4").view("<f4").astype(np.float32)


def _vector_hash(bits: np.ndarray) -> bytes:
    return hashlib.blake2b(bits.tobytes(), digest_size=8).digest()


# small helpers ---------------------------------------------------------------------------------

def _metric(collection: Any) -> str:
    config = collection.configuration_json or {}
    index = config.get("hnsw") or config.get("spann") or {}
    return index.get("space") or (collection.metadata or {}).get("hnsw:space") or "l2"


def _last_of_each_id(batch: Batch) -> Batch:
    """Chroma refuses repeated ids in one write; the last occurrence wins, as if written in turn."""
    last = {rid: i for i, rid in enumerate(batch.ids)}
    return batch if len(last) == len(batch) else batch.take(sorted(last.values()))


def _decode_cursor(collection: str, cursor: str) -> str:
    try:
        (last,) = json.loads(cursor)
        if isinstance(last, str):
            return last
    except (ValueError, TypeError):
        pass
    raise BackendError(f"scan of Chroma collection {collection!r}: invalid cursor {cursor[:80]!r}")


def _check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"chroma store: url must look like http://host:port, got {url!r}")
    return url


def _redacted(url: str) -> str:
    """The URL without a password, for messages."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()


def _parse_headers(headers: dict[str, str] | str | None) -> dict[str, str] | None:
    """Headers as a dict, or as 'Name: value' lines (as vecflow.ini gives them)."""
    if not headers or isinstance(headers, dict):
        return dict(headers) if headers else None
    pairs = [line.split(":", 1) for line in headers.strip().splitlines() if line.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ConfigError("chroma store: write headers as 'Name: value' lines, one per line")
    return {name.strip(): value.strip() for name, value in pairs}


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for lo in range(0, len(items), size):
        yield items[lo:lo + size]


def _raise_if_name_rejected(name: str, exc: ChromaError) -> None:
    text = _one_line(exc)
    if isinstance(exc, InvalidArgumentError) and "Expected a name" in text:
        rule = text[text.index("Expected a name"):].split(" Got")[0]
        raise BackendError(f"Chroma rejected collection name {name!r}: {rule}") from exc


def _root_cause(exc: BaseException) -> BaseException:
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
