"""Qdrant adapter: a Qdrant server (url) or qdrant-client's local mode (path).

Layout of a point written by vecflow (see docs/backends/qdrant.md):
    id       point_id(record id): the id itself when it is already a canonical unsigned 64-bit
             integer or UUID string, else uuid5(VECFLOW_NAMESPACE, record id)
    vector   the record's vector (Qdrant keeps it unit-length in cosine collections)
    payload  {"document": str | None, "metadata": {...},
              "_vecflow_id": record id, "_vecflow_vector": base64 float32 (cosine only)}

Local mode is a test double for a server: one process at a time holds a folder's lock, every point
is committed on its own and the whole store is re-read on open.
"""

from __future__ import annotations

import base64
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from vecflow.backends.base import METRICS, Backend, CollectionInfo, Hit
from vecflow.batch import Batch
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    OperationError,
)

try:
    import grpc
    from qdrant_client import QdrantClient, models
    from qdrant_client.common.client_exceptions import QdrantException
    from qdrant_client.http.exceptions import (
        ApiException,
        ResponseHandlingException,
        UnexpectedResponse,
    )
except ImportError as exc:  # pragma: no cover - the registry turns this into an install hint
    raise ImportError(f"the qdrant backend needs qdrant-client: {exc}") from exc

__all__ = ["ID_KEY", "VECFLOW_NAMESPACE", "VECTOR_KEY", "QdrantBackend", "point_id"]

# Fixed forever: changing it would orphan every point vecflow has written.
VECFLOW_NAMESPACE = uuid.UUID("5b0f3f3e-6c1d-5e0a-9a57-7665636c6f77")

ID_KEY = "_vecflow_id"
VECTOR_KEY = "_vecflow_vector"
DOCUMENT_KEY = "document"
METADATA_KEY = "metadata"

_DISTANCES = {
    "cosine": models.Distance.COSINE,
    "l2": models.Distance.EUCLID,
    "ip": models.Distance.DOT,
}
_METRICS = {distance: metric for metric, distance in _DISTANCES.items()}
_PARAMS = ("hnsw_m", "hnsw_ef_construct")
INFO_KEY = "vecflow"  # collection metadata key holding vecflow's collection-level metadata

# A server refuses requests over 32 MB and REST spends ~20 bytes of JSON per float; aim at ~8 MB.
_REQUEST_BYTES = 8_000_000
_MAX_CHUNK = 1000
_UINT64_MAX = 2**64 - 1
# How close a point's stored (normalised) vector must be in direction to the raw copy in its
# payload for the copy to be trusted; anything further means the vector was rewritten elsewhere.
_SAME_DIRECTION = 0.999

_CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    ApiException,
    QdrantException,
    grpc.RpcError,
    ValueError,
    RuntimeError,
    OSError,
)

T = TypeVar("T")


def point_id(record_id: str) -> int | str:
    """The Qdrant point id of a vecflow record id.

    Ids that already are valid Qdrant ids in canonical spelling ("42", a lowercase hyphenated
    UUID) are kept, so points written by other tools are updated in place, not duplicated;
    every other id becomes uuid5(VECFLOW_NAMESPACE, id). The original id is kept in the payload.
    """
    if record_id.isascii() and record_id.isdigit():
        number = int(record_id)
        if str(number) == record_id and number <= _UINT64_MAX:
            return number
    elif len(record_id) == 36:
        try:
            if str(uuid.UUID(record_id)) == record_id:
                return record_id
        except ValueError:
            pass
    return str(uuid.uuid5(VECFLOW_NAMESPACE, record_id))


def _encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _parse_bool(option: str, value: bool | str | None) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"qdrant store option {option}={value!r} is not a boolean (true or false)")


def _parse_seconds(option: str, value: float | str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"qdrant store option {option}={value!r} is not a number") from None
    if seconds <= 0:
        raise ConfigError(f"qdrant store option {option}={value!r} must be positive")
    return seconds


def _parse_port(option: str, value: int | str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConfigError(f"qdrant store option {option}={value!r} is not a port number")
    return port


def _reason(exc: BaseException) -> str:
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


class _LocalClients:
    """One QdrantClient per local folder and process, shared by reference count.

    Local mode locks its folder for a single client, so a second connection to the same store
    within a process (a scan resumed elsewhere, a move between two collections of one store)
    shares the first client; the lock is released when the last connection closes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[QdrantClient, int]] = {}

    def acquire(self, key: str, path: str) -> QdrantClient:
        """The client of folder `key` (a real path); `path` is how the user wrote it."""
        with self._lock:
            client, users = self._clients.get(key, (None, 0))
            if client is None:
                try:
                    client = QdrantClient(path=key)
                except _CLIENT_ERRORS as exc:
                    if "already accessed" in str(exc):
                        raise BackendError(
                            f"qdrant store at {path} is in use by another process; local mode "
                            "allows one process at a time, use a Qdrant server to share a store"
                        ) from exc
                    reason = _reason(exc)
                    raise BackendError(f"cannot open qdrant store at {path}: {reason}") from exc
            self._clients[key] = (client, users + 1)
            return client

    def release(self, key: str) -> None:
        with self._lock:
            client, users = self._clients[key]
            if users > 1:
                self._clients[key] = (client, users - 1)
                return
            del self._clients[key]
        client.close()


_local_clients = _LocalClients()


class QdrantBackend(Backend):
    """A Qdrant store: `url` (and `api_key`) for a server, or `path` for local mode."""

    name = "qdrant"
    # Qdrant normalises cosine vectors, but vecflow keeps each raw vector in the payload and reads
    # it back: what this adapter returns is exactly what was written, digests need no normalising.
    normalises_cosine = False

    def __init__(
        self,
        path: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        prefer_grpc: bool | str | None = None,
        grpc_port: int | str | None = None,
        timeout: float | str | None = None,
    ) -> None:
        path, url, api_key = (value or None for value in (path, url, api_key))
        if (path is None) == (url is None):
            raise ConfigError(
                "qdrant store needs exactly one of 'path' (a local-mode folder) or 'url' (a server)"
            )
        grpc_preferred = _parse_bool("prefer_grpc", prefer_grpc)
        seconds = _parse_seconds("timeout", timeout)
        port = _parse_port("grpc_port", grpc_port)
        self._local_key = None if path is None else os.path.realpath(path)
        self._where = f"qdrant store at {path or url}"
        if path is not None:
            if any(v is not None for v in (api_key, grpc_preferred, port, seconds)):
                raise ConfigError(
                    f"{self._where}: api_key, prefer_grpc, grpc_port and timeout apply to a "
                    "server 'url', not to a local 'path'"
                )
            self._client: QdrantClient | None = _local_clients.acquire(self._local_key, path)
            return
        try:
            self._client = QdrantClient(
                url=url,
                api_key=api_key,
                prefer_grpc=bool(grpc_preferred),
                grpc_port=6334 if port is None else port,
                timeout=seconds,
                check_compatibility=False,
            )
        except _CLIENT_ERRORS as exc:
            raise ConfigError(f"qdrant store url {url!r} is not usable: {_reason(exc)}") from exc
        try:
            self._client.get_collections()
        except _CLIENT_ERRORS as exc:
            self._client.close()
            self._client = None
            raise BackendError(f"qdrant server at {url} is unreachable: {_reason(exc)}") from exc

    # plumbing ------------------------------------------------------------------------------

    @property
    def client(self) -> QdrantClient:
        if self._client is None:
            raise BackendError(f"{self._where} is closed; open a new connection")
        return self._client

    def _call(
        self, action: str, name: str | None, fn: Callable[..., T], *args: Any, **kw: Any
    ) -> T:
        """Run a client call, turning client errors into one-line vecflow errors."""
        try:
            return fn(*args, **kw)
        except _CLIENT_ERRORS as exc:
            if name is not None and not self._exists_quietly(name):
                raise CollectionNotFoundError(f"{self._where} has no collection {name!r}") from exc
            where = f"collection {name!r} in {self._where}" if name else self._where
            raise BackendError(f"cannot {action} {where}: {_reason(exc)}") from exc

    def _exists_quietly(self, name: str) -> bool:
        """Existence for error reporting: True when unknown, so the original error is kept."""
        try:
            return bool(self.client.collection_exists(name))
        except _CLIENT_ERRORS:
            return True

    def _vector_params(self, name: str) -> models.VectorParams:
        info = self._call("describe", name, self.client.get_collection, name)
        return self._single_vector(name, info)

    def _single_vector(self, name: str, info: Any) -> models.VectorParams:
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            names = ", ".join(sorted(vectors or {})) or "none"
            raise BackendError(
                f"collection {name!r} in {self._where} has named vectors ({names}); vecflow reads "
                "only collections with a single unnamed vector"
            )
        return vectors

    def _metric(self, name: str, vectors: models.VectorParams) -> str:
        if vectors.distance not in _METRICS:
            raise BackendError(
                f"collection {name!r} in {self._where} uses distance {vectors.distance.value}, "
                "which vecflow does not map (cosine, l2 and ip are supported)"
            )
        return _METRICS[vectors.distance]

    def _chunk_size(self, dim: int) -> int:
        return max(1, min(_MAX_CHUNK, _REQUEST_BYTES // (dim * 26 + 512)))

    # collections ---------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        response = self._call("list the collections of", None, self.client.get_collections)
        return sorted(c.name for c in response.collections)

    def has_collection(self, name: str) -> bool:
        return bool(self._call("look up", name, self.client.collection_exists, name))

    def create_collection(self, name: str, dim: int, metric: str = "cosine", **params: Any) -> None:
        if metric not in METRICS:
            raise OperationError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise OperationError(
                f"qdrant collection {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(_PARAMS)}"
            )
        if self.has_collection(name):
            raise CollectionExistsError(f"{self._where} already has a collection {name!r}")
        hnsw = None
        if params:
            m, ef_construct = (params.get(key) for key in _PARAMS)
            hnsw = models.HnswConfigDiff(
                m=None if m is None else int(m),
                ef_construct=None if ef_construct is None else int(ef_construct),
            )
        self._call(
            f"create collection {name!r} in",
            None,
            self.client.create_collection,
            name,
            vectors_config=models.VectorParams(size=int(dim), distance=_DISTANCES[metric]),
            hnsw_config=hnsw,
        )

    def drop_collection(self, name: str) -> None:
        if not self.has_collection(name):
            raise CollectionNotFoundError(f"{self._where} has no collection {name!r}")
        self._call("drop", name, self.client.delete_collection, name)

    def count(self, name: str) -> int:
        return self._call("count", name, self.client.count, name, exact=True).count

    def search_is_exact(self, name: str) -> bool:
        # Local mode searches by brute force; a server uses its HNSW index.
        return self._local_key is not None

    def describe(self, name: str) -> CollectionInfo:
        info = self._call("describe", name, self.client.get_collection, name)
        vectors = self._single_vector(name, info)
        metric = self._metric(name, vectors)
        # a per-vector HNSW setting overrides the collection's
        layers = [vectors.hnsw_config, info.config.hnsw_config]
        params: dict[str, Any] = {}
        for key, field in zip(_PARAMS, ("m", "ef_construct"), strict=True):
            values = [getattr(c, field) for c in layers if c is not None]
            value = next((v for v in values if v is not None), None)
            if value is not None:
                params[key] = value
        return CollectionInfo(name, vectors.size, metric, params)

    def collection_metadata(self, name: str) -> dict[str, Any]:
        info = self._call("describe", name, self.client.get_collection, name)
        return dict((info.config.metadata or {}).get(INFO_KEY) or {})

    def update_collection_metadata(self, name: str, values: dict[str, Any]) -> None:
        info = {**self.collection_metadata(name), **values}
        info = {k: v for k, v in info.items() if v is not None}
        # Qdrant merges top-level keys, so the whole map lives under one key that is replaced.
        self._call("update the metadata of", name, self.client.update_collection, name,
                   metadata={INFO_KEY: info})

    # records -------------------------------------------------------------------------------

    def upsert(self, name: str, batch: Batch) -> None:
        vectors = self._vector_params(name)
        if len(batch) == 0:
            return
        if batch.dim != vectors.size:
            raise DimensionMismatchError(
                f"collection {name!r} in {self._where} holds {vectors.size}-d vectors; "
                f"the batch has {batch.dim}-d vectors"
            )
        batch.check_finite(f"upsert into qdrant collection {name!r}")
        keep_raw = vectors.distance == models.Distance.COSINE
        step = self._chunk_size(batch.dim)
        for start in range(0, len(batch), step):
            stop = min(start + step, len(batch))
            payloads = []
            for i in range(start, stop):
                payload = {
                    DOCUMENT_KEY: batch.documents[i],
                    METADATA_KEY: batch.metadatas[i],
                    ID_KEY: batch.ids[i],
                }
                if keep_raw:
                    payload[VECTOR_KEY] = _encode_vector(batch.vectors[i])
                payloads.append(payload)
            points = models.Batch(
                ids=[point_id(rid) for rid in batch.ids[start:stop]],
                vectors=batch.vectors[start:stop].tolist(),
                payloads=payloads,
            )
            self._call("upsert into", name, self.client.upsert, name, points=points, wait=True)

    def update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Overwrite the payloads of existing points, leaving their vectors alone.

        Each payload is rebuilt in the layout (document, raw vector copy and id kept), so keys
        another tool wrote at the top level are replaced too: the new metadata is the whole
        metadata, as it is for upsert."""
        wanted = dict(zip(ids, metadatas, strict=True))
        if not wanted:
            if not self.has_collection(name):
                raise CollectionNotFoundError(f"{self._where} has no collection {name!r}")
            return
        points = self._retrieve(name, list(wanted), with_vectors=False)
        operations = []
        for point in points:
            payload = point.payload or {}
            record_id = self._record_id(point)
            if record_id not in wanted:
                continue
            document = payload.get(DOCUMENT_KEY)
            new = {
                DOCUMENT_KEY: document if isinstance(document, str) else None,
                METADATA_KEY: wanted[record_id],
                ID_KEY: record_id,
            }
            if isinstance(payload.get(VECTOR_KEY), str):
                new[VECTOR_KEY] = payload[VECTOR_KEY]
            operations.append(
                models.OverwritePayloadOperation(
                    overwrite_payload=models.SetPayload(payload=new, points=[point.id])
                )
            )
        for start in range(0, len(operations), _MAX_CHUNK):
            chunk = operations[start:start + _MAX_CHUNK]
            self._call(
                "update metadata in", name, self.client.batch_update_points, name, chunk, wait=True
            )

    def delete(self, name: str, ids: list[str]) -> None:
        if not ids:
            if not self.has_collection(name):
                raise CollectionNotFoundError(f"{self._where} has no collection {name!r}")
            return
        for start in range(0, len(ids), _MAX_CHUNK):
            chunk = [point_id(rid) for rid in ids[start:start + _MAX_CHUNK]]
            selector = models.PointIdsList(points=chunk)
            self._call("delete from", name, self.client.delete, name, selector, wait=True)

    def get(self, name: str, ids: list[str]) -> Batch:
        found = self._retrieve(name, ids, with_vectors=True) if ids else []
        if not found:
            return Batch.empty(self._vector_params(name).size)
        records = self._to_batch(name, found)
        position = {rid: i for i, rid in enumerate(records.ids)}
        return records.take([position[rid] for rid in ids if rid in position])

    def _retrieve(self, name: str, ids: list[str], with_vectors: bool) -> list[Any]:
        """The points of these record ids that exist, in no particular order."""
        wanted = list(dict.fromkeys(point_id(rid) for rid in ids))
        found: list[Any] = []
        for start in range(0, len(wanted), _MAX_CHUNK):
            chunk = wanted[start:start + _MAX_CHUNK]
            found += self._call(
                "read", name, self.client.retrieve, name, chunk, with_payload=True,
                with_vectors=with_vectors,
            )
        return found

    @staticmethod
    def _record_id(point: Any) -> str:
        """The vecflow id of a point: the one kept in its payload, else its point id."""
        record_id = (point.payload or {}).get(ID_KEY)
        return record_id if isinstance(record_id, str) else str(point.id)

    def scan(
        self, name: str, batch_size: int, cursor: str | None = None
    ) -> tuple[Batch, str | None]:
        if batch_size < 1:
            raise OperationError(f"scan of qdrant collection {name!r}: batch_size must be >= 1")
        offset = None if cursor is None else self._parse_cursor(name, cursor)
        points, next_offset = self._call(
            "scan",
            name,
            self.client.scroll,
            name,
            limit=batch_size,
            offset=offset,
            with_payload=True,
            with_vectors=True,
        )
        if not points:
            return Batch.empty(self._vector_params(name).size), None
        batch = self._to_batch(name, points)
        return batch, None if next_offset is None else str(next_offset)

    def _parse_cursor(self, name: str, cursor: str) -> int | str:
        if cursor.isascii() and cursor.isdigit():
            return int(cursor)
        try:
            return str(uuid.UUID(cursor))
        except ValueError:
            raise OperationError(
                f"scan of qdrant collection {name!r}: {cursor!r} is not a cursor this adapter made"
            ) from None

    def _to_batch(self, name: str, points: Sequence[Any]) -> Batch:
        """Points -> Batch, restoring record ids and, where trustworthy, raw cosine vectors."""
        ids, documents, metadatas, raw = [], [], [], {}
        for row, point in enumerate(points):
            payload = point.payload or {}
            ids.append(self._record_id(point))
            document = payload.get(DOCUMENT_KEY)
            documents.append(document if isinstance(document, str) else None)
            metadatas.append(self._metadata(name, point.id, payload))
            if isinstance(payload.get(VECTOR_KEY), str):
                raw[row] = payload[VECTOR_KEY]
        if any(not isinstance(point.vector, list) for point in points):
            self._vector_params(name)  # a named-vector collection: raises a clear error
        vectors = np.array([point.vector for point in points], dtype=np.float32)
        if raw:
            self._restore_raw_vectors(vectors, raw)
        return Batch(ids, vectors, documents, metadatas)

    def _metadata(self, name: str, pid: Any, payload: dict[str, Any]) -> dict[str, Any]:
        """The record's metadata. Payload keys outside the layout (written by other tools, or a
        'document' that is not text, a 'metadata' that is not an object) join it, never dropped."""
        metadata = payload.get(METADATA_KEY)
        metadata = dict(metadata) if isinstance(metadata, dict) else {}
        for key, value in payload.items():
            if key in (ID_KEY, VECTOR_KEY) or (key == METADATA_KEY and isinstance(value, dict)):
                continue
            if key == DOCUMENT_KEY and (value is None or isinstance(value, str)):
                continue
            if key in metadata:
                raise BackendError(
                    f"point {pid} of collection {name!r} in {self._where} has {key!r} both at "
                    "the top level of its payload and under 'metadata'; vecflow cannot read it "
                    "without loss"
                )
            metadata[key] = value
        return metadata

    @staticmethod
    def _restore_raw_vectors(vectors: np.ndarray, raw: dict[int, str]) -> None:
        """Put back each raw vector whose direction still matches the stored one.

        A mismatch means something other than vecflow rewrote the vector (and not the payload);
        the stored vector is then the truth. A stored vector of length zero (a zero vector, or one
        whose norm overflowed float32 while Qdrant normalised it) cannot contradict its copy.
        """
        rows = list(raw)
        originals = np.stack([np.frombuffer(base64.b64decode(raw[r]), dtype="<f4") for r in rows])
        if originals.shape[1] != vectors.shape[1]:
            return
        stored = vectors[rows].astype(np.float64)
        scaled = originals.astype(np.float64)
        scaled /= np.maximum(np.abs(scaled).max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        stored_norms = np.linalg.norm(stored, axis=1)
        norms = np.linalg.norm(scaled, axis=1) * stored_norms
        cosines = np.einsum("ij,ij->i", scaled, stored) / np.where(norms > 0, norms, 1)
        trusted = (stored_norms == 0) | ((norms > 0) & (cosines >= _SAME_DIRECTION))
        for row, original, ok in zip(rows, originals, trusted, strict=True):
            if ok:
                vectors[row] = original

    # search --------------------------------------------------------------------------------

    def query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        params = self._vector_params(name)
        if queries.shape[1] != params.size:
            raise DimensionMismatchError(
                f"collection {name!r} in {self._where} holds {params.size}-d vectors; "
                f"the queries are {queries.shape[1]}-d"
            )
        if k < 1 or len(queries) == 0:
            return [[] for _ in queries]
        requests = [
            models.QueryRequest(query=q.tolist(), limit=k, with_payload=[ID_KEY], with_vector=False)
            for q in queries
        ]
        responses = self._call("query", name, self.client.query_batch_points, name, requests)
        # Qdrant scores Cosine and Dot as similarities and Euclid as the Euclidean distance;
        # vecflow's scores are 1 - similarity for cosine and the squared distance for l2.
        to_score = {
            "cosine": lambda score: 1.0 - score,
            "l2": lambda score: score * score,
            "ip": lambda score: score,
        }[self._metric(name, params)]
        results = []
        for response in responses:
            hits = []
            for point in response.points:
                hits.append((self._record_id(point), to_score(point.score)))
            results.append(hits)
        return results

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._local_key is not None:
            _local_clients.release(self._local_key)
        else:
            client.close()
