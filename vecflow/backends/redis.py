"""Redis adapter: one HASH per record, in the RedisVL / LangChain hash layout (vecflow's `raw`
layout on Redis).

Keys (documented in docs/backends/redis.md):
  {key_prefix}{collection}:{id}         HASH  id, vector (float32 LE bytes), text, metadata (JSON),
                                              plus every scalar metadata value as a flat field
  {key_prefix}vecflow:ids:{collection}  ZSET  every id with score 0, for ordered, resumable scans
  {key_prefix}vecflow:collections       HASH  collection -> JSON {dim, metric, prefix, params,
                                              index}

The record hashes hold only the record: no field of vecflow's. The id zset and the registry are
keys of their own beside them (they move into vecflow's state with the Redis layouts, next). What
vecflow remembers about a collection (its collection metadata) is in its state (vecflow/state.py).
Search (KNN through the search module, or exact) is in vecflow/backends/redis_search.py.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import redis
from redis.connection import parse_url

from vecflow.backends import redis_search
from vecflow.backends.base import Backend, CollectionInfo, Hit
from vecflow.backends.helpers import json_default, one_line, redacted
from vecflow.batch import Batch, Metadata
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    InvalidDataError,
)

ID, VECTOR, TEXT, METADATA = redis_search.ID_FIELD, redis_search.VECTOR_FIELD, "text", "metadata"
RESERVED_FIELDS = frozenset((ID, VECTOR, TEXT, METADATA))
SEARCH_MODES = ("auto", "native", "exact")
_RECORD_FIELDS = (ID, VECTOR, TEXT, METADATA)
_PAGE = 1000  # ids per round trip (and per rename or drop transaction) when walking a collection

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




def _flat_value(value: Any) -> str | None:
    """The flat hash field for a scalar metadata value (bools as "1"/"0"); None for the rest."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    return None


def record_fields(rid: str, vector: bytes, document: str | None, metadata: Metadata) -> dict:
    """The hash fields of one record. The JSON `metadata` field is what reads trust; the flat
    copies of scalar values exist so RediSearch / LangChain filters can see them."""
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), default=json_default)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"record {rid!r}: metadata is not JSON ({exc})") from exc
    fields: dict[str, str | bytes] = {}
    for key, value in metadata.items():
        flat = _flat_value(value)
        if flat is not None and str(key) not in RESERVED_FIELDS:
            fields[str(key)] = flat
    fields[ID] = rid
    fields[VECTOR] = vector
    fields[METADATA] = encoded
    if document is not None:
        fields[TEXT] = document
    return fields


class RedisBackend(Backend):
    """A Redis server (standalone; not cluster). Options come from vecflow.ini as strings.

    `db` and `password` apply when the URL does not set them. `search` is auto (KNN through the
    search module when the server has one, exact otherwise), native (require the module) or
    exact (always exact, in vecflow)."""

    name = "redis"
    # The hash layout above is the raw layout; framework layouts for Redis hashes come next.
    layouts: ClassVar[tuple[str, ...]] = ("raw",)

    def __init__(self, url: str = "redis://127.0.0.1:6379", db: int | str | None = None, key_prefix: str = "",
                 password: str | None = None, username: str | None = None, search: str = "auto",
                 socket_timeout: float | str = 30.0) -> None:
        self._where = redacted(url)
        if search not in SEARCH_MODES:
            raise ConfigError(f"redis store: search must be one of {', '.join(SEARCH_MODES)}, not {search!r}")
        self._search = search
        self._key_prefix = key_prefix or ""
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
        return not self._native_search

    def close(self) -> None:
        self._client.close()

    # keys and the registry -----------------------------------------------------------------

    @property
    def _registry(self) -> bytes:
        return f"{self._key_prefix}vecflow:collections".encode()

    def _ids_key(self, name: str) -> bytes:
        return f"{self._key_prefix}vecflow:ids:{name}".encode()

    def _entry(self, name: str) -> dict | None:
        raw = self._client.hget(self._registry, name)
        return None if raw is None else json.loads(raw)

    def _existing(self, name: str) -> dict:
        entry = self._entry(name)
        if entry is None:
            raise CollectionNotFoundError(f"redis store {self.location} has no collection {name!r}")
        return entry

    def _exists_error(self, name: str) -> CollectionExistsError:
        return CollectionExistsError(f"redis store {self.location} already has collection {name!r}")

    def _check_free(self, name: str) -> str:
        """The record prefix of a new collection; refuses names whose keys would mix with others."""
        if not name or name == "vecflow" or name.startswith("vecflow:"):
            raise BackendError(f"redis collection name {name!r} is reserved for vecflow's own keys")
        prefix = f"{self._key_prefix}{name}:"
        for other, raw in self._client.hgetall(self._registry).items():
            other_name, other_prefix = other.decode(), json.loads(raw)["prefix"]
            if other_name == name:
                raise self._exists_error(name)
            if prefix.startswith(other_prefix) or other_prefix.startswith(prefix):
                raise BackendError(f"redis collection {name!r} would share keys with collection "
                                   f"{other_name!r} (prefixes {prefix!r} and {other_prefix!r}); "
                                   "choose a name that is not the other plus ':'")
        return prefix

    @functools.cached_property
    def _has_search_module(self) -> bool:
        return redis_search.has_search_module(self._client)

    @property
    def _native_search(self) -> bool:
        return self._search != "exact" and self._has_search_module

    def _create_index(self, name: str, entry: dict) -> str | None:
        if not self._native_search:
            return None
        index = f"{self._key_prefix}{name}"
        self._client.execute_command(*redis_search.index_create_args(
            index, entry["prefix"], entry["dim"], entry["metric"], entry["params"]))
        return index

    # collections ---------------------------------------------------------------------------

    @_translated
    def _list_collections(self) -> list[str]:
        return [key.decode() for key in self._client.hkeys(self._registry)]

    @_translated
    def _has_collection(self, name: str) -> bool:
        return bool(self._client.hexists(self._registry, name))

    @_translated
    def _create_collection(self, name: str, dim: int, metric: str, params: dict[str, Any]) -> None:
        redis_search.check_index_params(name, params)
        entry = {"dim": dim, "metric": metric, "prefix": self._check_free(name), "params": params}
        entry["index"] = self._create_index(name, entry)
        if not self._client.hsetnx(self._registry, name, json.dumps(entry)):
            raise self._exists_error(name)

    @_translated
    def _drop_collection(self, name: str) -> None:
        entry = self._existing(name)
        ids_key, prefix = self._ids_key(name), entry["prefix"].encode()
        # Records go first, in chunks; the registry entry goes last, so a crash mid-way leaves a
        # smaller collection that a second drop finishes.
        while members := self._client.zrange(ids_key, 0, _PAGE - 1):
            with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(*(prefix + member for member in members))
                pipe.zrem(ids_key, *members)
                pipe.execute()
        redis_search.drop_index(self._client, entry.get("index"))
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(ids_key)
            pipe.hdel(self._registry, name)
            pipe.execute()

    @_translated
    def _rename_collection(self, old: str, new: str) -> bool:
        """Native RENAME of every key, in transactions of _PAGE records.

        The new registry entry is written first and remembers `renaming_from`; each transaction
        moves keys and their zset members together, so both collections stay consistent, and
        calling rename again after a crash resumes where it stopped."""
        entry = self._entry(new)
        if entry is None or entry.get("renaming_from") != old:
            source = self._existing(old)
            entry = {**source, "prefix": self._check_free(new), "renaming_from": old}
            entry["index"] = self._create_index(new, entry)
            if not self._client.hsetnx(self._registry, new, json.dumps(entry)):
                raise self._exists_error(new)
        source = self._existing(old)
        old_ids, new_ids = self._ids_key(old), self._ids_key(new)
        old_prefix, new_prefix = source["prefix"].encode(), entry["prefix"].encode()
        while members := self._client.zrange(old_ids, 0, _PAGE - 1):
            with self._client.pipeline(transaction=True) as pipe:
                for member in members:
                    pipe.rename(old_prefix + member, new_prefix + member)
                pipe.zrem(old_ids, *members)
                pipe.zadd(new_ids, dict.fromkeys(members, 0))
                for result in pipe.execute(raise_on_error=False):
                    # A missing record hash (deleted behind vecflow's back) only drops its id.
                    if isinstance(result, Exception) and "no such key" not in str(result).lower():
                        raise result
        redis_search.drop_index(self._client, source.get("index"))
        del entry["renaming_from"]
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(old_ids)
            pipe.hdel(self._registry, old)
            pipe.hset(self._registry, new, json.dumps(entry))
            pipe.execute()
        return True

    @_translated
    def _count(self, name: str) -> int:
        return int(self._client.zcard(self._ids_key(name)))

    @_translated
    def _describe(self, name: str) -> CollectionInfo:
        entry = self._existing(name)
        return CollectionInfo(name, int(entry["dim"]), entry["metric"], dict(entry["params"]))

    # records -------------------------------------------------------------------------------

    @_translated
    def _scan(self, name: str, batch_size: int, cursor: str | None) -> tuple[Batch, str | None]:
        entry = self._existing(name)
        # One id more than asked tells whether another page exists, so the last page ends with None.
        members = next(self._pages(name, batch_size + 1, cursor), [])
        page = members[:batch_size]
        return self._batch(entry, page), page[-1].decode() if len(members) > batch_size else None

    @_translated
    def _upsert(self, name: str, batch: Batch) -> None:
        entry = self._existing(name)
        if batch.dim != entry["dim"]:
            raise DimensionMismatchError(f"redis collection {name!r} has dimension {entry['dim']}; "
                                         f"the batch has vectors of dimension {batch.dim}")
        vectors = batch.vectors.astype("<f4", copy=False)
        prefix = entry["prefix"].encode()
        mappings = [record_fields(rid, vectors[i].tobytes(), batch.documents[i], batch.metadatas[i])
                    for i, rid in enumerate(batch.ids)]
        with self._client.pipeline(transaction=True) as pipe:
            for rid, mapping in zip(batch.ids, mappings):
                key = prefix + rid.encode()
                pipe.delete(key)  # drops flat fields and text the new version no longer has
                pipe.hset(key, mapping=mapping)
            pipe.zadd(self._ids_key(name), {rid.encode(): 0 for rid in batch.ids})
            pipe.execute()

    @_translated
    def _delete(self, name: str, ids: list[str]) -> None:
        entry = self._existing(name)
        members = [rid.encode() for rid in ids]
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(*(entry["prefix"].encode() + member for member in members))
            pipe.zrem(self._ids_key(name), *members)
            pipe.execute()

    @_translated
    def _get(self, name: str, ids: list[str]) -> Batch:
        return self._batch(self._existing(name), [rid.encode() for rid in ids])

    @_translated
    def _query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        entry = self._existing(name)
        if vectors.shape[1] != entry["dim"]:
            raise DimensionMismatchError(f"redis collection {name!r} has dimension {entry['dim']}; "
                                         f"the queries have dimension {vectors.shape[1]}")
        if entry.get("index") and self._native_search:
            return redis_search.knn(self._client, entry["index"], entry["metric"], vectors, k)
        return redis_search.exact_top_k(vectors, entry["metric"], k, self._id_vector_pages(name, entry))

    # reading -------------------------------------------------------------------------------

    def _pages(self, name: str, page_size: int, cursor: str | None = None) -> Iterator[list[bytes]]:
        """Ids in byte order, page_size at a time, after cursor: O(log n + page) per page."""
        low = b"-" if cursor is None else b"(" + cursor.encode()
        while members := self._client.zrangebylex(self._ids_key(name), low, b"+", 0, page_size):
            yield members
            low = b"(" + members[-1]

    def _id_vector_pages(self, name: str, entry: dict) -> Iterator[tuple[list[str], np.ndarray]]:
        """(ids, vectors) of the whole collection, in id order, _PAGE records at a time."""
        for members in self._pages(name, _PAGE):
            rows = self._fetch(entry, members, (ID, VECTOR))
            if rows:
                yield [_record_id(row) for row in rows], self._vectors(entry, rows, 2)

    def _fetch(self, entry: dict, members: list[bytes], fields: tuple[str, ...]) -> list[list]:
        """HMGET of the given fields for each id, in one round trip; missing records are dropped."""
        if not members:
            return []
        prefix = entry["prefix"].encode()
        with self._client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hmget(prefix + member, fields)
            rows = pipe.execute()
        present = fields.index(VECTOR)
        return [[member, *row] for member, row in zip(members, rows) if row[present] is not None]

    def _vectors(self, entry: dict, rows: list[list], column: int) -> np.ndarray:
        dim = int(entry["dim"])
        for row in rows:
            if len(row[column]) != 4 * dim:
                key = entry["prefix"] + row[0].decode()
                raise BackendError(f"redis key {key!r} holds a vector of {len(row[column])} bytes, "
                                   f"not {dim} float32 values")
        joined = b"".join(row[column] for row in rows)
        return np.frombuffer(joined, "<f4").reshape(len(rows), dim).copy()

    def _batch(self, entry: dict, members: list[bytes]) -> Batch:
        rows = self._fetch(entry, members, _RECORD_FIELDS)
        return Batch(
            [_record_id(row) for row in rows],
            self._vectors(entry, rows, 2),
            [None if row[3] is None else row[3].decode() for row in rows],
            [{} if row[4] is None else json.loads(row[4]) for row in rows],
        )


def _record_id(row: list) -> str:
    """The id field of a fetched row (row[1]), or the id the key was looked up by (row[0])."""
    return (row[0] if row[1] is None else row[1]).decode()
