"""QdrantBackend: a Qdrant server (url) or qdrant-client's local mode (path).

A point is read and written in the collection's layout (raw, langchain, llamaindex; see
vecflow/layouts and docs/backends/qdrant.md): the payload is the native record, exactly as stored.
Nothing of vecflow's goes into payloads or collection metadata: the record id behind a mapped
point id and the exact bits of cosine vectors (Qdrant normalises them) live in vecflow's state.
Writes to an existing point touch only its payload and the record's vector, and only when they
change, so other named and sparse vectors, and every byte vecflow does not mean to change, stay.

Local mode is a test double for a server: one client at a time holds a folder's lock, every point
is committed on its own and the whole store is re-read on open.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient, models

from vecflow.backends import exact
from vecflow.backends.base import Backend, CollectionInfo, Hit, NativePage
from vecflow.backends.helpers import option_bool, redacted
from vecflow.backends.qdrant_local import local_points
from vecflow.backends.qdrant_points import (
    CLIENT_ERRORS,
    ID_KIND,
    VECFLOW_NAMESPACE,
    LocalStore,
    PointId,
    VectorSlot,
    id_entries,
    ids_to_remember,
    local_stores,
    parse_cursor,
    point_id,
    reason,
    record_ids,
    same_payload,
    vector_slot,
)
from vecflow.batch import Batch
from vecflow.errors import BackendError, CollectionNotFoundError, ConfigError, DimensionMismatchError, OperationError
from vecflow.layouts import Layout, Logical, Native

__all__ = ["VECFLOW_NAMESPACE", "QdrantBackend", "point_id"]

_DISTANCES = {"cosine": models.Distance.COSINE, "l2": models.Distance.EUCLID, "ip": models.Distance.DOT}
_METRICS = {distance: metric for metric, distance in _DISTANCES.items()}
_PARAMS = ("hnsw_m", "hnsw_ef_construct", "vector_name")

# A server refuses requests over 32 MB and REST spends ~20 bytes of JSON per float; aim at ~8 MB.
_REQUEST_BYTES = 8_000_000
_MAX_CHUNK = 1000

T = TypeVar("T")




def _parse_number(option: str, value: Any, kind: type, low: float, high: float) -> Any:
    if value is None or value == "":
        return None
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"qdrant store option {option}={value!r} is not a number") from None
    if not low < number < high:
        raise ConfigError(f"qdrant store option {option}={value!r} is out of range")
    return number




MARKER_COLLECTION = "vecflow-marker"


class QdrantBackend(Backend):
    """A Qdrant store: `url` (and `api_key`) for a server, or `path` for local mode.
    `vector_name` names the dense vector that holds the records' vectors where a collection has
    several, and the vector new collections get (else an unnamed one)."""

    name = "qdrant"
    # Qdrant normalises cosine vectors, but the written bits are kept in vecflow's state and
    # given back on read: what this adapter returns is exactly what was written.
    normalises_cosine = False
    has_text_slot = False
    layouts = ("raw", "langchain", "llamaindex")
    # Local mode reads fastest in pages of 500 (larger pages retrieve more slowly) and writes as
    # fast in requests of 256 as in larger ones; a request is also kept under _REQUEST_BYTES
    # (docs/performance.md#batch-sizes).
    preferred_read_batch = 500
    preferred_write_batch = 256
    # The empty folder a missing local store is read from when opened read only.
    _empty_folder: str | None = None

    @classmethod
    def open_read_only(cls, **options: Any) -> Backend:
        """Local mode creates a missing folder: read only, a missing one is read as an empty store
        from a temporary folder (removed on close), under the store's own location."""
        path = options.get("path")
        if not path or os.path.isdir(path):
            return super().open_read_only(**options)
        empty = tempfile.mkdtemp(prefix="vecflow-read-only-qdrant-")
        try:
            backend = super().open_read_only(**{**options, "path": empty})
        except BaseException:
            shutil.rmtree(empty, ignore_errors=True)
            raise
        assert isinstance(backend, QdrantBackend)
        backend._empty_folder, backend._where = empty, os.path.realpath(path)
        return backend

    def __init__(self, path: str | None = None, url: str | None = None, api_key: str | None = None,
                 prefer_grpc: bool | str | None = None, grpc_port: int | str | None = None,
                 timeout: float | str | None = None, vector_name: str | None = None) -> None:
        path, url, api_key = (value or None for value in (path, url, api_key))
        if (path is None) == (url is None):
            raise ConfigError("qdrant store needs exactly one of 'path' (a local-mode folder) or 'url' (a server)")
        grpc_preferred = option_bool("qdrant", "prefer_grpc", prefer_grpc)
        seconds = _parse_number("timeout", timeout, float, 0, float("inf"))
        port = _parse_number("grpc_port", grpc_port, int, 0, 65536)
        self._vector_option = vector_name or None
        self._local: LocalStore | None = None
        self._folder = None if path is None else os.path.realpath(path)
        self._where = self._folder or redacted(url or "")
        if self._folder is not None:
            if any(v is not None for v in (api_key, grpc_preferred, port, seconds)):
                raise ConfigError(f"qdrant store at {path}: api_key, prefer_grpc, grpc_port and timeout apply "
                                  "to a server 'url', not to a local 'path'")
            self._local = local_stores.acquire(self._folder)
            self._client: QdrantClient | None = self._local.client
            return
        try:
            self._client = QdrantClient(url=url, api_key=api_key, prefer_grpc=bool(grpc_preferred),
                                        grpc_port=6334 if port is None else port, timeout=seconds,
                                        check_compatibility=False)
        except CLIENT_ERRORS as exc:
            raise ConfigError(f"qdrant store url {self._where!r} is not usable: {reason(exc)}") from exc
        try:
            self._client.get_collections()
        except CLIENT_ERRORS as exc:
            self._client.close()
            self._client = None
            raise BackendError(f"qdrant server at {self._where} is unreachable: {reason(exc)}") from exc

    # plumbing ----------------------------------------------------------------------------------

    @property
    def client(self) -> QdrantClient:
        if self._client is None:
            raise BackendError(f"qdrant store at {self._where} is closed; open a new connection")
        return self._client

    def _call(self, action: str, name: str | None, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a client call, turning client errors into one-line vecflow errors."""
        try:
            return fn(*args, **kw)
        except CLIENT_ERRORS as exc:
            if name is not None and not self._exists_quietly(name):
                raise CollectionNotFoundError(f"qdrant store at {self._where} has no collection {name!r}") from exc
            where = f"qdrant store at {self._where}"
            where = f"collection {name!r} in {where}" if name else where
            raise BackendError(f"cannot {action} {where}: {reason(exc)}") from exc

    def _exists_quietly(self, name: str) -> bool:
        """Existence for error reporting: True when unknown, so the original error is kept."""
        try:
            return bool(self.client.collection_exists(name))
        except CLIENT_ERRORS:
            return True

    def _info(self, name: str) -> models.CollectionInfo:
        return self._call("describe", name, self.client.get_collection, name)

    def _slot(self, name: str) -> VectorSlot:
        return vector_slot(self._info(name).config.params, self._vector_option, name, self._where)

    def _metric(self, name: str, slot: VectorSlot) -> str:
        if slot.params.distance not in _METRICS:
            raise BackendError(f"collection {name!r} in qdrant store at {self._where} uses distance "
                               f"{slot.params.distance.value}, which vecflow does not map (cosine, l2, ip)")
        return _METRICS[slot.params.distance]

    def _check_dim(self, name: str, slot: VectorSlot, dim: int, what: str) -> None:
        if dim != slot.params.size:
            raise DimensionMismatchError(f"collection {name!r} in qdrant store at {self._where} holds "
                                         f"{slot.params.size}-d vectors; {what} {dim}-d")

    def _forget_order(self, name: str) -> None:
        if self._local is not None:
            self._local.order.forget(name)

    # the store marker: Qdrant has nothing beside its collections, so it is a collection of its own
    # (one point, the text in its payload), which vecflow does not list among the store's.

    def _read_marker(self) -> str | None:
        if not self._call("look up", MARKER_COLLECTION, self.client.collection_exists, MARKER_COLLECTION):
            return None
        points = self._call("read", MARKER_COLLECTION, self.client.retrieve, MARKER_COLLECTION, [0],
                            with_payload=True)
        return str(points[0].payload.get("marker")) if points and points[0].payload else None

    def _write_marker(self, text: str) -> None:
        if not self._call("look up", MARKER_COLLECTION, self.client.collection_exists, MARKER_COLLECTION):
            self._call(f"create collection {MARKER_COLLECTION!r} in", None, self.client.create_collection,
                       MARKER_COLLECTION, vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT))
        self._call("write to", MARKER_COLLECTION, self.client.upsert, MARKER_COLLECTION,
                   [models.PointStruct(id=0, vector=[1.0], payload={"marker": text})], wait=True)

    # collections -------------------------------------------------------------------------------

    def _list_collections(self) -> list[str]:
        return [c.name for c in self._call("list the collections of", None, self.client.get_collections).collections
                if c.name != MARKER_COLLECTION]

    def _has_collection(self, name: str) -> bool:
        return bool(self._call("look up", name, self.client.collection_exists, name))

    def _create_collection(self, name: str, dim: int, metric: str, params: dict[str, Any]) -> None:
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise OperationError(f"qdrant collection {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(_PARAMS)}")
        key = params.get("vector_name") or self._vector_option
        vector = models.VectorParams(size=dim, distance=_DISTANCES[metric])
        hnsw = None
        if params.get("hnsw_m") is not None or params.get("hnsw_ef_construct") is not None:
            m, ef = params.get("hnsw_m"), params.get("hnsw_ef_construct")
            hnsw = models.HnswConfigDiff(m=None if m is None else int(m), ef_construct=None if ef is None else int(ef))
        self._call(f"create collection {name!r} in", None, self.client.create_collection, name,
                   vectors_config={key: vector} if key else vector, hnsw_config=hnsw)
        self._forget_order(name)

    def _drop_collection(self, name: str) -> None:
        self._call("drop", name, self.client.delete_collection, name)
        self._forget_order(name)

    def _rename_collection(self, old: str, new: str) -> bool:
        """Qdrant has no rename (an alias leaves the old collection behind under its name), so the
        base copies the records; a copy carries only the record's vector, so it is refused where
        the collection holds others."""
        if not self._slot(old).alone:
            raise OperationError(f"qdrant collection {old!r} in qdrant store at {self._where} holds vectors besides "
                                 f"the records' ones, which renaming by copy would lose; create an alias {new!r} "
                                 "instead")
        return False

    def _count(self, name: str) -> int:
        return self._call("count", name, self.client.count, name, exact=True).count

    def _describe(self, name: str) -> CollectionInfo:
        info = self._info(name)
        slot = vector_slot(info.config.params, self._vector_option, name, self._where)
        params: dict[str, Any] = {}
        # a per-vector HNSW setting overrides the collection's
        for key, attr in (("hnsw_m", "m"), ("hnsw_ef_construct", "ef_construct")):
            values = [getattr(c, attr) for c in (slot.params.hnsw_config, info.config.hnsw_config) if c is not None]
            value = next((v for v in values if v is not None), None)
            if value is not None:
                params[key] = value
        if slot.key:
            params["vector_name"] = slot.key
        return CollectionInfo(name, slot.params.size, self._metric(name, slot), params)

    def search_is_exact(self, name: str) -> bool:
        return self._local is not None  # local mode searches by brute force; a server uses HNSW

    # reading -----------------------------------------------------------------------------------

    def _scan(self, name: str, batch_size: int, cursor: str | None) -> tuple[Batch, str | None]:
        page, cursor = self._scan_native(name, batch_size, cursor)
        return page.batch, cursor

    def _scan_native(self, name: str, batch_size: int, cursor: str | None) -> tuple[NativePage, str | None]:
        slot = self._slot(name)
        offset = None if cursor is None else parse_cursor(name, cursor)
        if self._local is None:
            points, following = self._call("scan", name, self.client.scroll, name, limit=batch_size, offset=offset,
                                           with_payload=True, with_vectors=slot.selector)
        else:
            pids, following = self._local.order.page(name, offset, batch_size, self._count(name),
                                                     lambda: self._all_point_ids(name))
            points = self._retrieve(name, pids, slot.selector)
        texts = [str(point.id) for point in points]
        page = self._page(name, slot, points, record_ids(self.state, self.scope(name), texts))
        return page, None if following is None else str(following)

    def _all_point_ids(self, name: str) -> list[PointId]:
        points, _ = self._call("scan", name, self.client.scroll, name, limit=self._count(name) + 1,
                               with_payload=False, with_vectors=False)
        return [point.id for point in points]

    def _sample_natives(self, name: str, limit: int) -> list[tuple[str, Native]]:
        points, _ = self._call("read", name, self.client.scroll, name, limit=limit, with_payload=True,
                               with_vectors=False)
        return [(str(point.id), Native(None, point.payload or {})) for point in points]

    def _get(self, name: str, ids: list[str]) -> Batch:
        return self._get_native(name, ids).batch

    def _get_native(self, name: str, ids: list[str]) -> NativePage:
        slot = self._slot(name)
        pids = [point_id(rid) for rid in ids]
        found = {str(point.id): point for point in self._retrieve(name, pids, slot.selector)}
        owners = id_entries(self.state, self.scope(name), list(found))
        # a point whose remembered record id is another one is not this record's
        chosen = [(rid, str(pid)) for rid, pid in zip(ids, pids)
                  if str(pid) in found and owners.get(str(pid), rid) == rid]
        return self._page(name, slot, [found[text] for _, text in chosen], [rid for rid, _ in chosen])

    def _retrieve(self, name: str, pids: list[PointId], vectors: bool | list[str]) -> list[Any]:
        """The points with these ids that exist (order not kept on a server)."""
        wanted = list(dict.fromkeys(pids))
        if self._local is not None:
            points = local_points(self.client, name, wanted, vectors)
            if points is not None:
                return points
        found: list[Any] = []
        for start in range(0, len(wanted), _MAX_CHUNK):
            found += self._call("read", name, self.client.retrieve, name, wanted[start:start + _MAX_CHUNK],
                                with_payload=True, with_vectors=vectors)
        return found

    def _page(self, name: str, slot: VectorSlot, points: list[Any], ids: list[str]) -> NativePage:
        """Points (read with payload and the record's vector) as a native page, its batch read
        through the collection's layout."""
        texts = [str(point.id) for point in points]
        natives = [Native(None, point.payload or {}) for point in points]
        layout = self._layout(name)
        logicals = [layout.read(native, False) for native in natives]
        batch = Batch(ids, self._vectors(name, slot, points, texts), [lg.document for lg in logicals],
                      [lg.metadata for lg in logicals], [lg.extras for lg in logicals])
        return NativePage(batch, texts, natives)

    def _vectors(self, name: str, slot: VectorSlot, points: list[Any], texts: list[str]) -> np.ndarray:
        """The record vectors of points, as written where vecflow knows the bits Qdrant changed."""
        vectors = self._stored_vectors(name, slot, points, texts)
        if slot.params.distance == models.Distance.COSINE and len(texts):
            vectors = exact.apply_written(self.state, self.scope(name), texts, vectors)
        return vectors

    def _stored_vectors(self, name: str, slot: VectorSlot, points: list[Any], texts: list[str]) -> np.ndarray:
        """The record vectors of points, as Qdrant returned them."""
        rows = [slot.pick(point.vector) for point in points]
        for text, row in zip(texts, rows):
            if row is None:
                raise BackendError(f"point {text} of collection {name!r} in qdrant store at {self._where} "
                                   f"has no {slot.label}")
        return np.array(rows, dtype=np.float32).reshape(len(rows), slot.params.size)

    # writing -----------------------------------------------------------------------------------

    def _upsert(self, name: str, batch: Batch) -> None:
        slot = self._slot(name)
        self._check_dim(name, slot, batch.dim, "the batch has")
        layout = self._layout(name)
        step = max(1, min(_MAX_CHUNK, _REQUEST_BYTES // (batch.dim * 26 + 512)))
        for start in range(0, len(batch), step):
            self._write(name, slot, layout, batch.take(list(range(start, min(start + step, len(batch))))))

    def _write(self, name: str, slot: VectorSlot, layout: Layout, part: Batch) -> None:
        """One request's worth of records: new points whole; for existing ones only the payload
        (merged by the layout) and the record's vector, each only where it changes."""
        scope = self.scope(name)
        pids = [point_id(rid) for rid in part.ids]
        texts = [str(pid) for pid in pids]
        old = {str(point.id): point for point in self._retrieve(name, pids, slot.selector)}
        # a point may lack the record's vector (named vectors are optional): it gets one
        have = [text for text in old if slot.pick(old[text].vector) is not None]
        stored = self._stored_vectors(name, slot, [old[text] for text in have], have)
        cosine = slot.params.distance == models.Distance.COSINE
        known = exact.known_written(self.state, scope, have, stored) if cosine and have else {}
        old_vectors = {text: known.get(text, stored[i]) for i, text in enumerate(have)}
        new_points, payloads, vectors, written = [], [], [], []
        whole = exact.has_written(self.state, scope, list(old)) if self._rewrites_whole_points(slot) else set()
        for i, rid in enumerate(part.ids):
            logical = Logical(part.documents[i], part.metadatas[i], part.extras[i])
            vector = part.vectors[i]
            point = old.get(texts[i])
            if point is None:
                native = layout.write(rid, logical, False)
                new_points.append(models.PointStruct(id=pids[i], vector=slot.struct(vector.tolist()),
                                                     payload=native.fields))
                written.append(i)
                continue
            payload = point.payload or {}
            merged = layout.merge(Native(None, payload), rid, logical, False).fields
            if texts[i] in whole:
                if not same_payload(merged, payload) or old_vectors[texts[i]].tobytes() != vector.tobytes():
                    new_points.append(models.PointStruct(id=pids[i], vector=slot.struct(vector.tolist()),
                                                         payload=merged))
                    written.append(i)
                continue
            if not same_payload(merged, payload):
                payloads.append(models.OverwritePayloadOperation(
                    overwrite_payload=models.SetPayload(payload=merged, points=[pids[i]])))
            if texts[i] not in old_vectors or old_vectors[texts[i]].tobytes() != vector.tobytes():
                vectors.append(models.PointVectors(id=pids[i], vector=slot.struct(vector.tolist())))
                written.append(i)
        # One state transaction before the write: a point never outlives its id entry, and, as
        # Qdrant keeps cosine vectors normalised (local mode re-normalises them again when
        # queried), the written vectors with the ones vecflow gives back now, so whether a kill
        # or a refusal stops the write or not, reads give back what the store holds exactly
        # (see vecflow/backends/exact.py). Nothing is written to the state after the write.
        entries = {ID_KIND: ids_to_remember(self.state, scope, part.ids, pids)}
        if written and cosine:
            changed = [texts[i] for i in written]
            previous = {text: known[text] for text in changed if text in known}
            entries.update(exact.written_entries(self.state, scope, changed, part.vectors[written], previous))
        self.state.put_kinds(scope, entries)
        if payloads or vectors:
            operations: list[Any] = list(payloads)
            if new_points:
                operations.append(models.UpsertOperation(upsert=models.PointsList(points=new_points)))
            if vectors:
                operations.append(models.UpdateVectorsOperation(update_vectors=models.UpdateVectors(points=vectors)))
            self._send(name, operations)
        elif new_points:
            self._send(name, new_points)
        if new_points:
            self._forget_order(name)

    def _send(self, name: str, request: list[Any]) -> None:
        """One write request: whole points as a plain upsert (local mode checks every point of a
        batch of operations twice), other operations as one batch."""
        if isinstance(request[0], models.PointStruct):
            self._call("write to", name, self.client.upsert, name, request, wait=True)
        else:
            self._call("write to", name, self.client.batch_update_points, name, request, wait=True)

    def _rewrites_whole_points(self, slot: VectorSlot) -> bool:
        """Whether a changed point vecflow wrote must be written whole. qdrant-client's local mode
        normalises a cosine vector in memory when it is upserted and stores the vector it was
        given; a payload-only or vector-only update then stores the in-memory (normalised) one,
        changing the vector the application reads from the folder (qdrant-client#1381). Points
        loaded from the folder keep their vector in memory as stored, so only those vecflow wrote
        (it keeps their written vector) are upserted whole, with the vector as written. Only where
        the record's vector is the point's only one: an upsert replaces every vector of a point."""
        return self._local is not None and slot.alone and slot.params.distance == models.Distance.COSINE

    def _update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """A payload-only write per changed point (vectors are never sent), or in local mode a
        whole point with its vector as written (see _rewrites_whole_points)."""
        slot = self._slot(name)
        layout = self._layout(name)
        pids = [point_id(rid) for rid in ids]
        if self._rewrites_whole_points(slot):
            whole = exact.has_written(self.state, self.scope(name), [str(pid) for pid in pids])
            if whole:
                wanted = dict(zip(ids, metadatas))
                rewritten = [rid for rid, pid in zip(ids, pids) if str(pid) in whole]
                page = self._get(name, rewritten)
                self._upsert(name, page.with_metadatas([wanted[rid] for rid in page.ids]))
                keep = [i for i, pid in enumerate(pids) if str(pid) not in whole]
                ids, pids, metadatas = [ids[i] for i in keep], [pids[i] for i in keep], [metadatas[i] for i in keep]
        found = {str(point.id): point for point in self._retrieve(name, pids, False)}
        owners = id_entries(self.state, self.scope(name), list(found))
        operations = []
        for rid, pid, metadata in zip(ids, pids, metadatas):
            point = found.get(str(pid))
            if point is None or owners.get(str(pid), rid) != rid:
                continue
            payload = point.payload or {}
            changed = layout.with_metadata(Native(None, payload), metadata, False).fields
            if not same_payload(changed, payload):
                operations.append(models.OverwritePayloadOperation(
                    overwrite_payload=models.SetPayload(payload=changed, points=[pid])))
        for start in range(0, len(operations), _MAX_CHUNK):
            self._call("update metadata in", name, self.client.batch_update_points, name,
                       operations[start:start + _MAX_CHUNK], wait=True)

    def _delete(self, name: str, ids: list[str]) -> None:
        pids = [point_id(rid) for rid in ids]
        for start in range(0, len(pids), _MAX_CHUNK):
            selector = models.PointIdsList(points=pids[start:start + _MAX_CHUNK])
            self._call("delete from", name, self.client.delete, name, selector, wait=True)
        self.state.forget_records(self.scope(name), [str(pid) for pid in pids])
        self._forget_order(name)

    # search ------------------------------------------------------------------------------------

    def _query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        slot = self._slot(name)
        self._check_dim(name, slot, vectors.shape[1], "the queries are")
        to_score = {  # Qdrant scores cosine and dot as similarities, Euclid as the distance
            "cosine": lambda score: 1.0 - score,
            "l2": lambda score: score * score,
            "ip": lambda score: score,
        }[self._metric(name, slot)]
        requests = [models.QueryRequest(query=q.tolist(), using=slot.using, limit=k, with_payload=False,
                                        with_vector=False) for q in vectors]
        responses = self._call("query", name, self.client.query_batch_points, name, requests)
        texts = [str(point.id) for response in responses for point in response.points]
        names = dict(zip(texts, record_ids(self.state, self.scope(name), texts)))
        return [[(names[str(point.id)], to_score(point.score)) for point in response.points]
                for response in responses]

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._local is not None:
            self._local = None
            local_stores.release(self._folder)
        else:
            client.close()
        if self._empty_folder is not None:
            shutil.rmtree(self._empty_folder, ignore_errors=True)
