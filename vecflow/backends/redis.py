"""Redis adapter: a collection is the set of HASHes under one key prefix, whoever wrote them.

vecflow's own hashes (the `raw` layout: id, vector, text, metadata JSON and flat copies), those of
langchain-redis and langchain_community (`langchain`) and of LlamaIndex (`llamaindex`,
`llama_index/vector_<id>`) are all read and written as their writer does; see
vecflow/backends/redis_layouts.py. Where a collection's hashes are and which field holds the
vector and the text (its *shape*) comes from vecflow's state for collections vecflow created,
from `FT.INFO` where the search module indexes them, else from the store's options and the
layout's key scheme (vecflow/backends/redis_schema.py).

Nothing of vecflow's is written into Redis: the catalogue of the collections vecflow created, like
everything else it remembers, is in its state (vecflow/state.py). A scan pages through a sorted
snapshot of the collection's keys taken when a pass starts (`SCAN` gives no order and may repeat
a key), so a cursor is the last id of a page, valid in any process, and a page costs O(log n +
batch). Search (KNN through the search module, or exact) is in vecflow/backends/redis_search.py.
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

import numpy as np
import redis
from redis.connection import parse_url

from vecflow.backends import redis_search
from vecflow.backends.base import DETECTION_SAMPLE, Backend, CollectionInfo, Hit, NativePage
from vecflow.backends.helpers import one_line, redacted
from vecflow.backends.redis_layouts import HashLayout, detect, hash_layout, index_name_of, plain_collection
from vecflow.backends.redis_schema import (
    KeyScheme,
    Shape,
    count_keys,
    default_fields,
    first_keys,
    found_shape,
    hashes,
    overlapping,
    snapshot,
)
from vecflow.batch import Batch
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
)
from vecflow.layouts import AUTO, Detected, Logical

SEARCH_MODES = ("auto", "native", "exact")
_PAGE = 1000  # records per round trip (and per rename or drop transaction) when walking a collection
_CATALOGUE = "redis collections"  # the state entry (per store) of the collections vecflow created

_F = TypeVar("_F", bound=Callable[..., Any])


def _translated(method: _F) -> _F:
    """Report redis-py failures as BackendError, naming the server."""

    @functools.wraps(method)
    def wrapper(self: RedisBackend, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise BackendError(f"redis at {self._where}: {one_line(exc)}") from exc

    return wrapper  # type: ignore[return-value]


# The key of vecflow's store marker, followed by the store's key prefix (runtime/markers.py).
MARKER_KEY = "vecflow-marker:"


class RedisBackend(Backend):
    """A Redis server (standalone; not cluster). Options come from vecflow.ini as strings.

    `db` and `password` apply when the URL does not set them. `search` is auto (KNN through the
    search module when the server has one, exact otherwise), native (require the module) or
    exact (always exact, in vecflow). `separator`, `vector_field`, `text_field`, `vector_dtype`,
    `metric` and `collections` describe hashes vecflow did not create (docs/backends/redis.md)."""

    name = "redis"
    has_text_slot = True  # the text field
    layouts: ClassVar[tuple[str, ...]] = ("raw", "langchain", "llamaindex")
    # A page is one pipeline of HGETALLs, a write one MULTI/EXEC: pipelines of 1,000 are past the
    # round-trip cost and keep a transaction short (docs/performance.md#batch-sizes).
    preferred_read_batch = 1000
    preferred_write_batch = 1000

    def __init__(self, url: str = "redis://127.0.0.1:6379", db: int | str | None = None, key_prefix: str = "",
                 password: str | None = None, username: str | None = None, search: str = "auto",
                 socket_timeout: float | str = 30.0, separator: str | None = None, vector_field: str | None = None,
                 text_field: str | None = None, vector_dtype: str = "float32", metric: str = "cosine",
                 collections: str | None = None) -> None:
        self._where = redacted(url)
        if search not in SEARCH_MODES:
            raise ConfigError(f"redis store: search must be one of {', '.join(SEARCH_MODES)}, not {search!r}")
        self._search = search
        self._key_prefix = key_prefix or ""
        self._scheme = KeyScheme.from_options(self._key_prefix, separator, vector_field, text_field, vector_dtype,
                                              metric, collections)
        self._shapes: dict[str, Shape] = {}  # per connection; forgotten when vecflow changes one
        self._formats: dict[tuple[str, str], HashLayout] = {}
        self._snapshots: dict[str, list[bytes]] = {}  # key prefix -> sorted key suffixes of this pass
        self._creating_layout: str | None = None
        try:
            from_url = parse_url(url)
            options: dict[str, Any] = {"decode_responses": False, "socket_timeout": float(socket_timeout),
                                       "socket_connect_timeout": float(socket_timeout)}
            for option, value in (("db", db), ("password", password), ("username", username)):
                if value in (None, ""):
                    continue
                value = int(value) if option == "db" else value
                if option in from_url and from_url[option] != value:
                    raise ConfigError(f"redis store: the url and the {option!r} option disagree; keep one")
                options[option] = value
            self._client = redis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigError(f"redis store: bad url or option for {self._where}: {one_line(exc)}") from exc
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._client.close()
            raise BackendError(f"cannot reach redis at {self._where}: {one_line(exc)} (is the "
                               "server running, and are the url and password right?)") from exc
        if search == "native" and not self._has_search_module:
            self._client.close()
            raise BackendError(f"redis at {self._where} has no search module (RediSearch, Redis "
                               "Stack or Redis 8) but the store sets search = native; use auto or exact")

    @property
    def location(self) -> str:
        """Server, database and key prefix: two prefixes in one database are two stores."""
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        return f"{self._where} db {db} key prefix {self._key_prefix!r}"

    def search_is_exact(self, name: str) -> bool:
        shape = self._shape(name)
        return not (self._native_search and shape is not None and shape.index)

    def close(self) -> None:
        self._client.close()

    def create_collection(self, name: str, dim: int, metric: str = "cosine", layout: str | None = None,
                          **params: Any) -> None:
        # The layout decides the new collection's key scheme and fields; the base does not hand it on.
        self._creating_layout = self._layout_for_new(name, layout)
        try:
            super().create_collection(name, dim, metric, layout=layout, **params)
        finally:
            self._creating_layout = None

    # shapes: where a collection's hashes are ---------------------------------------------------

    @property
    def _store_scope(self) -> str:
        return f"{self.name}|{self._scope_location()}"

    def _catalogue(self) -> dict[str, dict]:
        return dict(self.state.get_collection(self._store_scope, _CATALOGUE) or {})

    def _record(self, name: str, shape: Shape | None) -> None:
        self._record_all({name: shape})

    def _record_all(self, changes: dict[str, Shape | None]) -> None:
        """Set (or with None, remove) catalogue entries, all in one state write."""
        entries = self._catalogue()
        for name, shape in changes.items():
            if shape is None:
                entries.pop(name, None)
            else:
                entries[name] = shape.to_entry()
            self._forget(name)
        self.state.put_collection(self._store_scope, _CATALOGUE, entries or None)

    def _forget(self, name: str) -> None:
        shape = self._shapes.pop(name, None)
        if shape is not None:
            self._snapshots.pop(shape.prefix, None)
        self._formats = {key: value for key, value in self._formats.items() if key[0] != name}
        self._forget_layout(name)

    def _shape(self, name: str) -> Shape | None:
        if name not in self._shapes:
            entry = self._catalogue().get(name)
            if entry:
                shape = Shape.from_entry(entry)
                self._ensure_index(name, shape)
            else:
                shape = self._legacy_shape(name) or self._indexed_shape(name) \
                    or found_shape(self._client, self._scheme, name, self._option_layout)
            if shape is None:
                return None
            self._shapes[name] = shape
        return self._shapes[name]

    def _existing(self, name: str) -> Shape:
        shape = self._shape(name)
        if shape is None:
            raise CollectionNotFoundError(f"redis store {self.location} has no collection {name!r}")
        return shape

    @property
    def _legacy_registry(self) -> bytes:
        """The registry hash earlier vecflow versions kept beside the records (read, never written)."""
        return f"{self._key_prefix}vecflow:collections".encode()

    def _legacy_shape(self, name: str) -> Shape | None:
        raw = self._client.hget(self._legacy_registry, name)
        return None if raw is None else Shape.from_legacy(json.loads(raw))

    def _forget_legacy(self, name: str) -> None:
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(self._legacy_registry, name)
            pipe.delete(f"{self._key_prefix}vecflow:ids:{name}")
            pipe.execute()

    def _indexed_shape(self, name: str) -> Shape | None:
        """The shape FT.INFO gives an application's index named `{key_prefix}{name}`."""
        if not self._has_search_module:
            return None
        index = f"{self._key_prefix}{name}"
        info = redis_search.index_info(self._client, index)
        if info is None or info["key_type"] != "HASH" or not info["prefixes"] or info["vector"] is None:
            return None
        keys = first_keys(self._client, info["prefixes"][0], DETECTION_SAMPLE)
        return self._scheme.indexed(index, info, keys, hashes(self._client, keys), self._option_layout)

    @property
    def _option_layout(self) -> str | None:
        return None if self._layout_option in (None, AUTO) else self._layout_option

    def _new_shape(self, name: str, layout: str, dim: int, metric: str, params: dict[str, Any]) -> Shape:
        """The shape of a collection vecflow creates: the declared prefix, else the layout's."""
        if not name or name == "vecflow" or name.startswith("vecflow:"):
            raise BackendError(f"redis collection name {name!r} is reserved for vecflow's own keys")
        declared = self._scheme.declared.get(name)
        prefix = self._scheme.derived(name, layout)[0] if declared is None else \
            self._scheme.completed(declared, None, layout)
        others = {other: Shape.from_entry(entry).prefix for other, entry in self._catalogue().items() if other != name}
        others.update((other.decode(), json.loads(raw)["prefix"])
                      for other, raw in self._client.hgetall(self._legacy_registry).items())
        clash = overlapping(prefix, others)
        if clash is not None:
            raise BackendError(f"redis collection {name!r} would share keys with collection {clash!r} (prefixes "
                               f"{prefix!r} and {others[clash]!r}); choose a name that is not the other plus ':'")
        vector, text = default_fields(layout)
        return Shape(prefix, self._scheme.vector_field or vector, self._scheme.text_field or text,
                     self._scheme.dtype, dim, metric, dict(params))

    def _indexed(self, name: str, shape: Shape) -> Shape:
        """The new collection's shape with its own search index, where the server has the module.

        The catalogue entry naming the index is written before the index is created
        (`_ensure_index`): a kill in between leaves a collection whose index is created on its next
        use, never an index vecflow forgot it owns."""
        if not self._native_search:
            return shape
        return replace(shape, index=f"{self._key_prefix}{name}", index_owned=True)

    def _ensure_index(self, name: str, shape: Shape, layout: str | None = None) -> None:
        """Create the search index vecflow owns for this shape unless it exists; `layout` (that of
        its records) defaults to the one recorded for the collection."""
        if not (shape.index_owned and shape.index and self._native_search):
            return
        if redis_search.index_info(self._client, shape.index) is not None:
            return
        layout = layout or self.state.get_collection(self.scope(name), "layout") or "raw"
        self._client.execute_command(*redis_search.index_create_args(
            shape.index, shape.prefix, shape.vector_field, shape.text_field, shape.dtype, int(shape.dim or 0),
            shape.metric, shape.params, layout))

    @functools.cached_property
    def _has_search_module(self) -> bool:
        return redis_search.has_search_module(self._client)

    @property
    def _native_search(self) -> bool:
        return self._search != "exact" and self._has_search_module

    # layouts -----------------------------------------------------------------------------------

    def _resolve_layout(self, name: str) -> Detected:
        """The base's choice (store option, recorded layout), else detection from sampled hashes;
        the reason also says where the keys are and how vecflow found them."""
        shape = self._existing(name)
        if self._option_layout or self.state.get_collection(self.scope(name), "layout"):
            detected = super()._resolve_layout(name)
        else:
            detected, _ = detect(self._sample(shape))
        return Detected(detected.layout, f"{detected.reason}; keys {shape.prefix}<id>, {shape.origin}")

    def text_location(self, name: str) -> str:
        return f"the hash field {self._existing(name).text_field!r}"

    def _format(self, name: str, shape: Shape) -> HashLayout:
        layout = self._layout(name).name
        if (name, layout) not in self._formats:
            sample = self._sample(shape) if layout != "llamaindex" else []
            self._formats[name, layout] = hash_layout(
                layout, shape.vector_field, shape.text_field, plain=plain_collection(sample, layout),
                index_name=index_name_of(sample, shape.index or f"{self._key_prefix}{name}"))
        return self._formats[name, layout]

    def _sample(self, shape: Shape) -> list[dict[bytes, bytes]]:
        keys = first_keys(self._client, shape.prefix, DETECTION_SAMPLE)
        return [fields for fields in hashes(self._client, keys) if fields]

    # the store marker: one hash outside the store's key prefix, with one field (a hash, so that an
    # application reading every key with HGETALL reads it too; no index prefix of a collection
    # covers it, so no framework lists it)

    @property
    def _marker_key(self) -> bytes:
        return f"{MARKER_KEY}{self._key_prefix}".encode()

    @_translated
    def _read_marker(self) -> str | None:
        value = self._client.hget(self._marker_key, "marker")
        return None if value is None else value.decode("utf-8")

    @_translated
    def _write_marker(self, text: str) -> None:
        self._client.hset(self._marker_key, "marker", text.encode("utf-8"))

    # collections -------------------------------------------------------------------------------

    @_translated
    def _list_collections(self) -> list[str]:
        names = set(self._catalogue()) | {key.decode() for key in self._client.hkeys(self._legacy_registry)}
        if self._has_search_module:
            names.update(index[len(self._key_prefix):] for index in redis_search.list_indexes(self._client)
                         if index.startswith(self._key_prefix) and self._shape(index[len(self._key_prefix):]))
        names.update(name for name in self._scheme.declared if self._shape(name) is not None)
        return list(names)

    @_translated
    def _has_collection(self, name: str) -> bool:
        return self._shape(name) is not None

    @_translated
    def _create_collection(self, name: str, dim: int, metric: str, params: dict[str, Any]) -> None:
        redis_search.check_index_params(name, params)
        layout = self._creating_layout or "raw"
        shape = self._indexed(name, self._new_shape(name, layout, dim, metric, params))
        self._record(name, shape)
        self._ensure_index(name, shape, layout)

    @_translated
    def _drop_collection(self, name: str) -> None:
        shape = self._existing(name)
        # Records go first, in chunks; the catalogue entry goes last, so a crash mid-way leaves a
        # smaller collection that a second drop finishes.
        for chunk in _chunks(snapshot(self._client, shape.prefix), _PAGE):
            self._client.delete(*(shape.prefix.encode() + suffix for suffix in chunk))
        if shape.index_owned:
            redis_search.drop_index(self._client, shape.index)
        self._forget_legacy(name)
        self._record(name, None)

    @_translated
    def _rename_collection(self, old: str, new: str) -> bool:
        """Native RENAME of every key, in transactions of _PAGE records, except in the langchain
        layout (its `_index_name` field names the collection: the base copies the records).

        The new catalogue entry is written first and remembers `renaming_from`, so calling rename
        again after a crash resumes where it stopped."""
        layout = self._layout(old).name
        if layout == "langchain":
            return False
        source = self._existing(old)
        entry = self._catalogue().get(new)
        if entry is not None and entry.get("renaming_from") == old:
            target = Shape.from_entry(entry)
        else:
            if self._shape(new) is not None:
                raise CollectionExistsError(f"redis store {self.location} already has collection {new!r}")
            fresh = replace(self._new_shape(new, layout, int(source.dim or 0), source.metric, source.params),
                            vector_field=source.vector_field, text_field=source.text_field, dtype=source.dtype)
            target = replace(self._indexed(new, fresh), renaming_from=old)
            self._record(new, target)
        self._ensure_index(new, target, layout)
        # The state before the keys: a kill after the last rename finds it under the new name.
        self.state.copy_scope(self.scope(old), self.scope(new))
        old_prefix, new_prefix = source.prefix.encode(), target.prefix.encode()
        for chunk in _chunks(snapshot(self._client, source.prefix), _PAGE):
            with self._client.pipeline(transaction=True) as pipe:
                for suffix in chunk:
                    pipe.rename(old_prefix + suffix, new_prefix + suffix)
                for result in pipe.execute(raise_on_error=False):
                    # A record deleted behind vecflow's back since the snapshot is simply gone.
                    if isinstance(result, Exception) and "no such key" not in str(result).lower():
                        raise result
        if source.index_owned:
            redis_search.drop_index(self._client, source.index)
        self._forget_legacy(old)
        self._record_all({old: None, new: replace(target, renaming_from=None)})
        return True

    @_translated
    def _count(self, name: str) -> int:
        return count_keys(self._client, self._existing(name).prefix)

    @_translated
    def _describe(self, name: str) -> CollectionInfo:
        shape = self._existing(name)
        return CollectionInfo(name, int(shape.dim or 0), shape.metric, dict(shape.params))

    # reading -----------------------------------------------------------------------------------

    @_translated
    def _scan(self, name: str, batch_size: int, cursor: str | None) -> tuple[Batch, str | None]:
        page, cursor = self._scan_native(name, batch_size, cursor)
        return page.batch, cursor

    @_translated
    def _scan_native(self, name: str, batch_size: int, cursor: str | None) -> tuple[NativePage, str | None]:
        """One page in byte order of the ids; the cursor is the page's last id. The sorted id list
        is taken when a pass starts (or this connection has none), then each page is one round trip."""
        shape = self._existing(name)
        suffixes = self._suffixes(shape, refresh=cursor is None)
        start = 0 if cursor is None else bisect.bisect_right(suffixes, cursor.encode("utf-8", "surrogateescape"))
        chunk = suffixes[start:start + batch_size]
        more = start + batch_size < len(suffixes)
        if not more:
            self._snapshots.pop(shape.prefix, None)  # the pass is over: its id list is not held on
        return self._read(name, shape, chunk), shape.record_id(chunk[-1]) if more else None

    @_translated
    def _get(self, name: str, ids: list[str]) -> Batch:
        return self._get_native(name, ids).batch

    @_translated
    def _get_native(self, name: str, ids: list[str]) -> NativePage:
        return self._read(name, self._existing(name), [rid.encode("utf-8", "surrogateescape") for rid in ids])

    def _suffixes(self, shape: Shape, refresh: bool) -> list[bytes]:
        if refresh or shape.prefix not in self._snapshots:
            self._snapshots[shape.prefix] = snapshot(self._client, shape.prefix)
        return self._snapshots[shape.prefix]

    def _read(self, name: str, shape: Shape, suffixes: list[bytes]) -> NativePage:
        """The records with these key suffixes that exist, in that order, read through the layout."""
        fmt = self._format(name, shape)
        keys = [shape.prefix.encode() + suffix for suffix in suffixes]
        ids, native_ids, natives, rows = [], [], [], []
        for suffix, key, stored in zip(suffixes, keys, hashes(self._client, keys)):
            if not stored:
                continue
            vector, native = fmt.native(stored)
            if vector is None:
                raise BackendError(f"redis key {key.decode(errors='replace')!r} has no vector field "
                                   f"{shape.vector_field!r}; name it with the store's vector_field option")
            ids.append(shape.record_id(suffix))
            native_ids.append(key.decode("utf-8", "surrogateescape"))
            natives.append(native)
            rows.append((key, vector))
        logicals = [fmt.read(native) for native in natives]
        batch = Batch(ids, shape.vectors(rows) if rows else np.zeros((0, shape.dim or 0), np.float32),
                      [lg.document for lg in logicals], [lg.metadata for lg in logicals],
                      [lg.extras for lg in logicals])
        return NativePage(batch, native_ids, natives)

    # writing -----------------------------------------------------------------------------------

    @_translated
    def _upsert(self, name: str, batch: Batch) -> None:
        """Each record replaces its hash in the collection's layout: only the fields that change
        are written, fields the layout does not own stay, and an unchanged vector keeps its bytes."""
        shape = self._existing(name)
        self._check_dim(name, shape, batch.dim, "the batch has vectors of dimension")
        fmt = self._format(name, shape)
        keys = [shape.key(rid) for rid in batch.ids]
        writes = []  # all planned before any is sent: bad metadata stops the batch before a write
        for i, (rid, key, stored) in enumerate(zip(batch.ids, keys, hashes(self._client, keys))):
            old_vector, old = fmt.native(stored) if stored else (None, None)
            native = fmt.write(rid, Logical(batch.documents[i], batch.metadatas[i], batch.extras[i]), old)
            writes.append((key, stored, fmt.hash(rid, native, shape.vector_bytes(batch.vectors[i], old_vector))))
        self._write(writes)

    @_translated
    def _update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """The fields that hold the metadata change; the vector and the text are not sent."""
        shape = self._existing(name)
        fmt = self._format(name, shape)
        keys = [shape.key(rid) for rid in ids]
        writes = []
        for rid, key, stored, metadata in zip(ids, keys, hashes(self._client, keys), metadatas):
            if stored:
                vector, old = fmt.native(stored)
                writes.append((key, stored, fmt.hash(rid, fmt.with_metadata(old, metadata), vector)))
        self._write(writes)

    def _write(self, writes: list[tuple[bytes, dict[bytes, bytes], dict[bytes, bytes]]]) -> None:
        """One MULTI/EXEC: per hash, HDEL of the fields it loses and HSET of those that change."""
        with self._client.pipeline(transaction=True) as pipe:
            for key, old, new in writes:
                gone = [field for field in old if field not in new]
                changed = {field: value for field, value in new.items() if old.get(field) != value}
                if gone:
                    pipe.hdel(key, *gone)
                if changed:
                    pipe.hset(key, mapping=changed)
            pipe.execute()

    @_translated
    def _delete(self, name: str, ids: list[str]) -> None:
        shape = self._existing(name)
        with self._client.pipeline(transaction=True) as pipe:
            for chunk in _chunks(ids, _PAGE):
                pipe.delete(*(shape.key(rid) for rid in chunk))
            pipe.execute()

    # search ------------------------------------------------------------------------------------

    @_translated
    def _query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        shape = self._existing(name)
        self._check_dim(name, shape, vectors.shape[1], "the queries have dimension")
        if shape.index and self._native_search:
            prefix = shape.prefix.encode()
            return [[(shape.record_id(key[len(prefix):]), score) for key, score in row if key.startswith(prefix)]
                    for row in redis_search.knn(self._client, shape.index, shape.vector_field, shape.metric,
                                                vectors, k)]
        return redis_search.exact_top_k(vectors, shape.metric, k, self._id_vector_pages(shape))

    def _id_vector_pages(self, shape: Shape) -> Iterator[tuple[list[str], np.ndarray]]:
        """(ids, vectors) of the whole collection, in id order, _PAGE records at a time."""
        for chunk in _chunks(snapshot(self._client, shape.prefix), _PAGE):
            keys = [shape.prefix.encode() + suffix for suffix in chunk]
            with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, shape.vector_field)
                blobs = pipe.execute()
            rows = [(key, blob) for key, blob in zip(keys, blobs) if blob is not None]
            if rows:
                yield [shape.record_id(key[len(shape.prefix.encode()):]) for key, _ in rows], shape.vectors(rows)

    def _check_dim(self, name: str, shape: Shape, dim: int, what: str) -> None:
        if shape.dim and dim != shape.dim:
            raise DimensionMismatchError(f"redis collection {name!r} has dimension {shape.dim}; {what} {dim}")


def _chunks(items: list, size: int) -> Iterator[list]:
    for lo in range(0, len(items), size):
        yield items[lo:lo + size]
