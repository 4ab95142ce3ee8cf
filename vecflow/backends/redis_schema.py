"""Where a Redis collection's records are and which hash field holds what: its *shape*.

A Redis collection is the set of hashes whose keys start with one key prefix (the separator
included), whoever wrote them. A shape comes from, first to last (see docs/backends/redis.md):

1. vecflow's state, for collections vecflow created (the catalogue: one entry per store);
2. the registry hash an earlier vecflow version kept in Redis (read, never updated);
3. the search module's `FT.INFO` of the index named `{key_prefix}{collection}` (prefix, vector
   field, its dimension, metric and type);
4. the store's options: a prefix declared in `collections`, or one derived from the collection's
   name in the layout's key scheme, which holds if hashes exist under it.

Scans page through a sorted snapshot of a collection's key suffixes taken once per pass (`SCAN`
returns keys in no order and may return one twice; see `snapshot`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import redis

from vecflow.backends.base import DETECTION_SAMPLE, METRICS
from vecflow.errors import BackendError, ConfigError

# vector_dtype -> numpy dtype of the stored bytes (little-endian, as redis-py clients write them)
DTYPES = {"float32": "<f4", "float64": "<f8", "float16": "<f2"}
# Separators a key scheme puts between a collection's prefix and a record's id, when none is set:
# LlamaIndex's default index (`llama_index/vector_<id>`) uses "_", everything else ":".
LLAMAINDEX_SEPARATOR, DEFAULT_SEPARATOR = "_", ":"
LLAMAINDEX_INFIX = "/vector"  # LlamaIndex names its default prefix `llama_index/vector`
# Field names the frameworks use, most usual first, for hashes whose fields no option names.
VECTOR_FIELDS = ("vector", "embedding", "content_vector")
TEXT_FIELDS = ("text", "content")
_SCAN_COUNT = 2000  # keys SCAN examines per round trip
_COUNT_CHUNK = 10_000  # keys per array while counting distinct keys
_GLOB = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class Shape:
    """One collection's key prefix and fields, and what vecflow knows of its vectors."""

    prefix: str  # the whole key prefix, separator included: "llama_index/vector_"
    vector_field: str = "vector"
    text_field: str = "text"
    dtype: str = "float32"
    dim: int | None = None  # None: read from a record
    metric: str = "cosine"
    params: dict[str, Any] = field(default_factory=dict)
    index: str | None = None  # the search index over the prefix, when there is one
    index_owned: bool = False  # vecflow created that index (dropping the collection drops it)
    origin: str = "created by vecflow"
    renaming_from: str | None = None  # set while a native rename into this collection runs

    def key(self, record_id: str) -> bytes:
        return self.prefix.encode() + record_id.encode("utf-8", "surrogateescape")

    def record_id(self, suffix: bytes) -> str:
        """The record id a key suffix stands for (bytes that are not UTF-8 survive a round trip)."""
        return suffix.decode("utf-8", "surrogateescape")

    def vectors(self, rows: list[tuple[bytes, bytes]]) -> np.ndarray:
        """(key, vector bytes) rows as a float32 (n, dim) array; a vector of another size is an error."""
        dtype = np.dtype(DTYPES[self.dtype])
        dim = self.dim or (len(rows[0][1]) // dtype.itemsize if rows else 0)
        for key, blob in rows:
            if len(blob) != dim * dtype.itemsize:
                raise BackendError(f"redis key {key.decode(errors='replace')!r} holds a vector of {len(blob)} bytes, "
                                   f"not {dim} {self.dtype} values")
        joined = b"".join(blob for _, blob in rows)
        return np.frombuffer(joined, dtype).astype(np.float32).reshape(len(rows), dim)

    def vector_bytes(self, vector: np.ndarray, stored: bytes | None = None) -> bytes:
        """The bytes to store for a float32 vector: the stored ones when they already hold exactly
        it (so a float64 or float16 hash keeps its bytes), else the vector in the collection's type."""
        vector = np.asarray(vector, dtype=np.float32)
        new = vector.astype(DTYPES[self.dtype]).tobytes()
        if stored is not None and len(stored) == len(new) and (
                stored == new or np.frombuffer(stored, DTYPES[self.dtype]).astype(np.float32).tobytes()
                == vector.tobytes()):
            return stored
        return new

    def to_entry(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Shape:
        return cls(**{k: v for k, v in entry.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_legacy(cls, entry: dict[str, Any]) -> Shape:
        """A collection an earlier vecflow version registered in Redis (`{key_prefix}vecflow:collections`)."""
        return cls(entry["prefix"], dim=int(entry["dim"]), metric=entry["metric"], params=entry.get("params", {}),
                   index=entry.get("index"), index_owned=bool(entry.get("index")),
                   origin="registered by an earlier vecflow version")



@dataclass(frozen=True)
class KeyScheme:
    """The store options that say where collections vecflow did not create keep their hashes."""

    key_prefix: str = ""
    separator: str | None = None
    vector_field: str | None = None
    text_field: str | None = None
    dtype: str = "float32"
    metric: str = "cosine"
    declared: dict[str, str] = field(default_factory=dict)  # collection -> key prefix (key_prefix included)

    @classmethod
    def from_options(cls, key_prefix: str, separator: str | None, vector_field: str | None,
                     text_field: str | None, vector_dtype: str, metric: str, collections: str | None) -> KeyScheme:
        dtype = (vector_dtype or "float32").lower()
        if dtype not in DTYPES:
            raise ConfigError(f"redis store: vector_dtype must be one of {', '.join(DTYPES)}, not {vector_dtype!r}")
        if metric not in METRICS:
            raise ConfigError(f"redis store: metric must be one of {', '.join(METRICS)}, not {metric!r}")
        if vector_field and vector_field == text_field:
            raise ConfigError(f"redis store: vector_field and text_field are both {vector_field!r}")
        declared = {name: f"{key_prefix or ''}{prefix}" for name, prefix in parse_declarations(collections).items()}
        return cls(key_prefix or "", separator or None, vector_field or None, text_field or None, dtype, metric,
                   declared)

    def derived(self, name: str, layout: str | None) -> list[str]:
        """The key prefixes the layouts' key schemes give collection `name` (both candidates when
        the layout is not known): `{key_prefix}{name}:` (vecflow, langchain-redis) and
        `{key_prefix}{name}/vector_` (LlamaIndex, whose default index `llama_index` keeps its
        hashes under `llama_index/vector_`)."""
        colon = f"{self.key_prefix}{name}{self.separator or DEFAULT_SEPARATOR}"
        llama = f"{self.key_prefix}{name}{LLAMAINDEX_INFIX}{self.separator or LLAMAINDEX_SEPARATOR}"
        return {"llamaindex": [llama], "raw": [colon], "langchain": [colon]}.get(layout or "", [colon, llama])

    def completed(self, prefix: str, key: bytes | None, layout: str | None) -> str:
        """A declared or indexed prefix with its separator, joined as RedisVL joins them
        (`prefix.rstrip(separator) + separator`). Without a `separator` option: a prefix ending
        in ':' or '_' is whole; else the character after it in a key tells ('_' or ':'); else the
        layout's separator."""
        if self.separator:
            return prefix.rstrip(self.separator) + self.separator
        if prefix.endswith((DEFAULT_SEPARATOR, LLAMAINDEX_SEPARATOR)):
            return prefix
        if key is not None:
            follows = key[len(prefix.encode()):len(prefix.encode()) + 1]
            return prefix + follows.decode() if follows in (b":", b"_") else prefix
        return prefix + (LLAMAINDEX_SEPARATOR if layout == "llamaindex" else DEFAULT_SEPARATOR)

    def indexed(self, index: str, info: dict[str, Any], keys: list[bytes], sample: list[dict[bytes, bytes]],
                layout: str | None) -> Shape:
        """The shape of an application's search index, from what FT.INFO says of it
        (redis_search.parse_index_info) and a few of its keys."""
        vector = info["vector"]
        if vector["dtype"] not in DTYPES or vector["metric"] is None:
            raise BackendError(f"redis index {index!r}: vectors of type {vector['dtype']} or metric "
                               f"{vector['metric']} are not supported (float32, float64, float16; cosine, l2, ip)")
        prefix = self.completed(info["prefixes"][0], keys[0] if keys else None, layout)
        return Shape(prefix, vector["field"], self.fields(sample, layout)[1], vector["dtype"], vector["dim"],
                     vector["metric"], vector["params"], index, False, f"search index {index!r}")

    def fields(self, sample: list[dict[bytes, bytes]], layout: str | None) -> tuple[str, str]:
        """The (vector, text) field names: the options', else those most sampled hashes have,
        else the layout's defaults."""
        return (self.vector_field or _most_common(sample, VECTOR_FIELDS) or default_fields(layout)[0],
                self.text_field or _most_common(sample, TEXT_FIELDS) or default_fields(layout)[1])


def default_fields(layout: str | None) -> tuple[str, str]:
    """(vector, text) fields of the hashes a layout writes: langchain-redis' `embedding` / `text`,
    LlamaIndex's and vecflow's `vector` / `text`."""
    return ("embedding", "text") if layout == "langchain" else ("vector", "text")


def parse_declarations(text: str | None) -> dict[str, str]:
    """`collections` option lines `NAME = KEY_PREFIX` -> {NAME: KEY_PREFIX}."""
    declared: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        name, sep, prefix = line.partition("=")
        if not sep or not name.strip() or not prefix.strip():
            raise ConfigError("redis store option collections: expected lines 'NAME = KEY_PREFIX', "
                              f"got {line.strip()!r}")
        declared[name.strip()] = prefix.strip()
    return declared


def overlapping(prefix: str, others: dict[str, str]) -> str | None:
    """The collection among others (name -> prefix) whose keys would mix with prefix's."""
    return next((name for name, other in others.items() if prefix.startswith(other) or other.startswith(prefix)),
                None)


# SCAN ------------------------------------------------------------------------------------------

def _pattern(prefix: str) -> bytes:
    return (_GLOB.sub(r"\\\1", prefix) + "*").encode()


def scan_keys(client: redis.Redis, prefix: str) -> Iterator[bytes]:
    """Every hash key under prefix, in no order, some perhaps twice (SCAN's guarantee: each key
    that exists for the whole walk comes at least once)."""
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, match=_pattern(prefix), count=_SCAN_COUNT, _type="HASH")
        yield from keys
        if int(cursor) == 0:
            return


def snapshot(client: redis.Redis, prefix: str) -> list[bytes]:
    """The sorted, distinct key suffixes (record ids as bytes) under prefix: one walk of the key
    space. Paging through it costs O(log n + page), whatever the position. Sorted as a list and
    deduplicated in order (no set of every key on the way: ~30 MB less at 1M keys)."""
    cut = len(prefix.encode())
    suffixes = [key[cut:] for key in scan_keys(client, prefix)]
    suffixes.sort()
    return [suffix for i, suffix in enumerate(suffixes) if not i or suffix != suffixes[i - 1]]


def count_keys(client: redis.Redis, prefix: str) -> int:
    """How many distinct hashes are under prefix (one walk of the key space). Counted in fixed-width
    arrays of the key suffixes, each ending in 0x01 so that the arrays' padding with NUL bytes
    cannot make two suffixes equal: ~15 MB at 1M keys of 12 bytes, not the ~110 MB of a set."""
    cut = len(prefix.encode())
    chunks, pending = [], []
    for key in scan_keys(client, prefix):
        pending.append(key[cut:] + b"\x01")
        if len(pending) == _COUNT_CHUNK:
            chunks.append(np.array(pending, dtype=bytes))
            pending = []
    if pending:
        chunks.append(np.array(pending, dtype=bytes))
    return int(np.unique(np.concatenate(chunks)).size) if chunks else 0


def first_keys(client: redis.Redis, prefix: str, limit: int) -> list[bytes]:
    """Up to limit distinct keys under prefix, stopping as soon as there are enough."""
    found: dict[bytes, None] = {}
    for key in scan_keys(client, prefix):
        found[key] = None
        if len(found) >= limit:
            break
    return list(found)


def hashes(client: redis.Redis, keys: list[bytes]) -> list[dict[bytes, bytes]]:
    """HGETALL of each key in one round trip ({} for a key that is gone)."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        return pipe.execute() if keys else []


def found_shape(client: redis.Redis, scheme: KeyScheme, name: str, layout: str | None) -> Shape | None:
    """The shape of the hashes under collection `name`'s declared or derived key prefix, if there
    are any: the fields most of a few of them have (or the options'), a record's dimension, and
    the store's metric."""
    if name in scheme.declared:
        keys = first_keys(client, scheme.declared[name], 1)
        candidates = [(scheme.completed(scheme.declared[name], keys[0], layout), "declared in the store's collections")
                      ] if keys else []
    else:
        candidates = [(prefix, "found under its key prefix") for prefix in scheme.derived(name, layout)]
    for prefix, origin in candidates:
        sample = [fields for fields in hashes(client, first_keys(client, prefix, DETECTION_SAMPLE)) if fields]
        if not sample:
            continue
        vector, text = scheme.fields(sample, layout)
        blob = next((fields[vector.encode()] for fields in sample if vector.encode() in fields), None)
        if blob is None:
            raise BackendError(f"redis hashes under {prefix!r} have no field {vector!r}; name the vector field "
                               "with the store's vector_field option")
        dim = len(blob) // np.dtype(DTYPES[scheme.dtype]).itemsize
        return Shape(prefix, vector, text, scheme.dtype, dim, scheme.metric, origin=origin)
    return None


def _most_common(sample: list[dict[bytes, bytes]], names: tuple[str, ...]) -> str | None:
    counts = {name: sum(1 for fields in sample if name.encode() in fields) for name in names}
    best = max(names, key=lambda name: counts[name])
    return best if counts[best] else None
