"""What the Qdrant adapter needs around its primitives: point ids, which vector is the record's,
payload comparison, client errors, and local mode's shared clients and scan order.

- Point ids are unsigned 64-bit integers or UUIDs. A record id that already is one, in canonical
  spelling ("42", a lowercase hyphenated UUID: what LangChain and LlamaIndex write), is the point
  id itself; any other id becomes uuid5(VECFLOW_NAMESPACE, id), and the original is kept in
  vecflow's state (kind `id`, keyed by the point id as text), never in the payload.
- A collection holds an unnamed dense vector, named ones, sparse ones: the record's vector is the
  only dense one, or the one the store option `vector_name` names.
- Local mode locks its folder for one client, so the connections of one process share it
  (`LocalStores`); its scroll sorts every point id on each call, so a scan there pages through an
  order built once per collection (`LocalOrder`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import QdrantException
from qdrant_client.http.exceptions import ApiException, ResponseHandlingException, UnexpectedResponse

from vecflow.errors import BackendError, ConfigError, OperationError
from vecflow.state import VecflowState

# Fixed forever: changing it would orphan every point vecflow has written.
VECFLOW_NAMESPACE = uuid.UUID("5b0f3f3e-6c1d-5e0a-9a57-7665636c6f77")
_NAMESPACE_BYTES = VECFLOW_NAMESPACE.bytes
ID_KIND = "id"
_UINT64_MAX = 2**64 - 1

PointId = int | str


# ids -------------------------------------------------------------------------------------------

def canonical_point_id(text: str) -> PointId | None:
    """The point id `text` spells canonically (as Qdrant gives it back), else None."""
    if text.isascii() and text.isdigit():
        number = int(text)
        return number if str(number) == text and number <= _UINT64_MAX else None
    if len(text) == 36:
        try:
            return text if str(uuid.UUID(text)) == text else None
        except ValueError:
            return None
    return None


def point_id(record_id: str) -> PointId:
    """The Qdrant point id of a record id: itself when canonical, else its uuid5."""
    canonical = canonical_point_id(record_id)
    return _uuid5_text(record_id) if canonical is None else canonical


def _uuid5_text(name: str) -> str:
    """str(uuid.uuid5(VECFLOW_NAMESPACE, name)), in half the time (it runs once per record read
    or written)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def parse_cursor(collection: str, cursor: str) -> PointId:
    """A scan cursor (the next page's first point id, as text) back to a point id."""
    pid = canonical_point_id(cursor)
    if pid is None:
        raise OperationError(f"scan of qdrant collection {collection!r}: {cursor!r} is not a cursor this adapter made")
    return pid


def ids_to_remember(state: VecflowState, scope: str, record_ids: list[str],
                    pids: list[PointId]) -> dict[str, bytes | None]:
    """The id entries (kind ID_KIND) to put before writing these points: the record id behind
    each mapped point id; None (forget) for stale entries of canonical ones."""
    entries: dict[str, bytes | None] = {}
    for record_id, pid in zip(record_ids, pids):
        if str(pid) != record_id:
            entries[str(pid)] = record_id.encode("utf-8")
    if len(entries) < len(record_ids) and state.has_records(scope, ID_KIND):
        entries.update((rid, None) for rid, pid in zip(record_ids, pids) if str(pid) == rid)
    return entries


def id_entries(state: VecflowState, scope: str, point_texts: list[str]) -> dict[str, str]:
    """point id text -> record id, for the points whose id vecflow mapped.

    An entry counts only while it still maps to its point, so a damaged state never renames a
    record. Integer point ids are never mapped and are not looked up."""
    wanted = [text for text in point_texts if not text.isdigit()]
    found = state.get_records(scope, ID_KIND, wanted) if wanted else {}
    entries = {}
    for text, raw in found.items():
        record_id = raw.decode("utf-8", errors="replace")
        if str(point_id(record_id)) == text:
            entries[text] = record_id
    return entries


def record_ids(state: VecflowState, scope: str, point_texts: list[str]) -> list[str]:
    """The record id of each point: the mapped one vecflow remembers, else the point id as text."""
    entries = id_entries(state, scope, point_texts)
    return [entries.get(text, text) for text in point_texts]


# the record's vector ---------------------------------------------------------------------------

@dataclass(frozen=True)
class VectorSlot:
    """Where a collection keeps the record's vector. key "" is the unnamed vector."""

    key: str
    params: models.VectorParams
    alone: bool  # the collection has no other dense or sparse vector

    @property
    def label(self) -> str:
        return "the unnamed vector" if not self.key else f"vector {self.key!r}"

    @property
    def selector(self) -> bool | list[str]:
        """`with_vectors` for reads: only this vector, when there are others."""
        return True if self.alone else [self.key]

    @property
    def using(self) -> str | None:
        return self.key or None

    def struct(self, vector: list[float]) -> list[float] | dict[str, list[float]]:
        """What a write sends for this vector alone."""
        return {self.key: vector} if self.key else vector

    def pick(self, stored: Any) -> list[float] | np.ndarray | None:
        """This vector out of a point's vectors as returned (a list, or a dict by name; float32
        rows where read from local mode's arrays, qdrant_local.py)."""
        if isinstance(stored, dict):
            stored = stored.get(self.key)
        return stored if isinstance(stored, (list, np.ndarray)) else None


def vector_slot(config: models.CollectionParams, option: str | None, collection: str, where: str) -> VectorSlot:
    """The record's vector of a collection: `option` (the store's vector_name) when set, else the
    collection's only dense vector. ConfigError, naming the choices, when neither decides."""
    vectors = config.vectors
    named = {"": vectors} if isinstance(vectors, models.VectorParams) else dict(vectors or {})
    dense = {key: params for key, params in named.items() if params.multivector_config is None}
    alone = len(named) == 1 and not config.sparse_vectors
    if option is not None:
        if option not in dense:
            raise ConfigError(f"qdrant collection {collection!r} in {where} has no dense vector named {option!r} "
                              f"(it has {_names(dense)}); fix the store option vector_name")
        return VectorSlot(option, dense[option], alone)
    if len(dense) == 1:
        key, params = next(iter(dense.items()))
        return VectorSlot(key, params, alone)
    if not dense:
        raise ConfigError(f"qdrant collection {collection!r} in {where} has no dense vector; vecflow needs one")
    raise ConfigError(f"qdrant collection {collection!r} in {where} has several dense vectors ({_names(dense)}); "
                      "set the store option vector_name to the one that holds the records' vectors")


def _names(vectors: dict[str, Any]) -> str:
    return ", ".join("(unnamed)" if not key else repr(key) for key in sorted(vectors)) or "none"


# payloads --------------------------------------------------------------------------------------

def same_payload(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two payloads hold the same JSON: types count (1, 1.0 and true differ to an
    application, though equal in Python); the order of object keys does not."""
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (TypeError, ValueError):
        return False


# local mode's scan order -----------------------------------------------------------------------

def _order_key(pid: PointId) -> tuple[str, int]:
    """Local mode's point order: integers first, by value, then UUIDs as text."""
    return ("", pid) if isinstance(pid, int) else (str(pid), 0)


class LocalOrder:
    """The point ids of each collection of one local store, in scroll order, built once.

    Local mode's scroll sorts every id of the collection for each page (O(n log n) a page); this
    order makes a page O(batch). The cursor stays the next point id, as on a server, so it
    survives restarts. vecflow's writes that add or remove points drop a collection's order, and a
    count that no longer matches rebuilds it (another writer in this process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orders: dict[str, tuple[list[tuple[str, int]], list[PointId]]] = {}

    def page(self, name: str, offset: PointId | None, limit: int, count: int,
             build: Callable[[], list[PointId]]) -> tuple[list[PointId], PointId | None]:
        """The point ids of the page that starts at `offset`, and the next page's first id."""
        with self._lock:
            cached = self._orders.get(name)
            if cached is None or len(cached[1]) != count:
                pids = build()
                cached = self._orders[name] = ([_order_key(pid) for pid in pids], pids)
            keys, pids = cached
        start = 0 if offset is None else bisect.bisect_left(keys, _order_key(offset))
        stop = start + limit
        return pids[start:stop], pids[stop] if stop < len(pids) else None

    def forget(self, name: str) -> None:
        with self._lock:
            self._orders.pop(name, None)


# client errors ---------------------------------------------------------------------------------

# What qdrant-client raises: HTTP and gRPC errors, and local mode's ValueError / KeyError (a
# missing point or vector name), RuntimeError and OSError (its files).
CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    ApiException, QdrantException, grpc.RpcError, ValueError, RuntimeError, OSError, KeyError)


def reason(exc: BaseException) -> str:
    """One line saying why a client call failed, without response dumps or tracebacks."""
    if isinstance(exc, UnexpectedResponse):
        try:
            text = f"HTTP {exc.status_code}: {exc.structured()['status']['error']}"
        except (ValueError, KeyError, TypeError):  # not a Qdrant error body: use the status
            text = f"HTTP {exc.status_code} {exc.reason_phrase}".strip()
    elif isinstance(exc, ResponseHandlingException):
        text = str(exc.source) or type(exc.source).__name__
    elif isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        text = f"gRPC {exc.code().name}: {exc.details()}"
    else:
        text = str(exc) or type(exc).__name__
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


# local mode's shared clients -------------------------------------------------------------------

@dataclass
class LocalStore:
    """The one client of a local folder in this process, shared by every connection to it."""

    client: QdrantClient
    users: int = 0
    order: LocalOrder = field(default_factory=LocalOrder)


class LocalStores:
    """Local mode locks its folder for a single client, so a second connection to the same store
    within a process (a scan resumed elsewhere, a move between two collections of one store)
    shares the first client; the lock is released when the last connection closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, LocalStore] = {}

    def acquire(self, folder: str) -> LocalStore:
        with self._lock:
            store = self._stores.get(folder)
            if store is None:
                try:
                    store = LocalStore(QdrantClient(path=folder))
                except CLIENT_ERRORS as exc:
                    if "already accessed" in str(exc):
                        raise BackendError(
                            f"qdrant store at {folder} is in use by another client (another process, or a "
                            "QdrantClient in this one); local mode allows one at a time: close it, or use a "
                            "Qdrant server to share a store") from exc
                    raise BackendError(f"cannot open qdrant store at {folder}: {reason(exc)}") from exc
                self._stores[folder] = store
            store.users += 1
            return store

    def release(self, folder: str) -> None:
        with self._lock:
            store = self._stores[folder]
            store.users -= 1
            if store.users:
                return
            del self._stores[folder]
        store.client.close()


local_stores = LocalStores()
