"""FAISS store: a directory per collection, a SQLite sidecar as the source of truth, and a FAISS
index file derived from it.

FAISS keeps only vectors and int64 ids, so every record lives in the sidecar (records.db): its
id, raw float32 vector bytes, document and JSON metadata, under an integer `fid` that is also its
FAISS id. upsert and delete are SQLite transactions; that commit is the durable write. Each write
bumps the collection's version. The index is brought up to that version only when a query needs
it (incrementally where FAISS allows it, otherwise rebuilt from the sidecar) and then saved as
index.faiss plus index.json, which names the version and the hash of the index bytes. Both are
written to a temporary file, fsynced and renamed into place; an index file that is missing,
stale, torn or paired with the wrong json is rebuilt, never trusted. See docs/backends/faiss.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np
import sqlite_utils

from vecflow.backends.base import METRICS, Backend, CollectionInfo, Hit
from vecflow.batch import Batch
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    InvalidDataError,
)

SIDECAR = "records.db"
INDEX_FILE = "index.faiss"
INDEX_META = "index.json"
INDEX_TYPES = ("flat", "hnsw")
SIDECAR_FORMAT = 1
_READ_CHUNK = 10_000
_MAX_NAME_BYTES = 200

_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE collection (
    format INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    metric TEXT NOT NULL,
    params TEXT NOT NULL,
    version INTEGER NOT NULL,
    tombstones_since INTEGER NOT NULL
);
-- AUTOINCREMENT: a fid is never reused, so one FAISS id names one record for its whole life.
CREATE TABLE records (
    fid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    vector BLOB NOT NULL,
    document TEXT,
    metadata TEXT NOT NULL,
    vector_version INTEGER NOT NULL
);
CREATE INDEX records_vector_version ON records (vector_version);
CREATE TABLE tombstones (fid INTEGER PRIMARY KEY, version INTEGER NOT NULL);
"""

# An upsert keeps the record's fid; vector_version moves only when the vector bytes change, so
# rewriting metadata in place never forces the index to change.
_UPSERT = """
INSERT INTO records (id, vector, document, metadata, vector_version) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    document = excluded.document,
    metadata = excluded.metadata,
    vector_version = CASE WHEN records.vector = excluded.vector
                          THEN records.vector_version ELSE excluded.vector_version END,
    vector = excluded.vector
"""

_IDS_IN = "id IN (SELECT value FROM json_each(?))"

F = TypeVar("F", bound=Callable[..., Any])


def _sqlite_errors(method: F) -> F:
    """Report SQLite failures (locked, disk full, not a sidecar) as BackendError."""

    @functools.wraps(method)
    def wrapper(self: FaissBackend, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, name, *args, **kwargs)
        except sqlite3.Error as exc:
            raise BackendError(
                f"faiss collection {name!r} in {self.root}: sidecar error: {exc}"
            ) from exc

    return wrapper  # type: ignore[return-value]


@dataclass
class _Collection:
    """An open collection: its sidecar connection and, once queried, its in-memory index."""

    directory: Path
    conn: sqlite3.Connection
    identity: tuple[int, int]  # (st_dev, st_ino) of the sidecar, to notice a drop + recreate
    dim: int
    metric: str
    params: dict[str, Any]
    index: Any = None  # faiss.IndexIDMap2 reflecting the sidecar at index_version
    index_version: int = -1
    index_max_fid: int = 0


class FaissBackend(Backend):
    """A directory of FAISS collections. Options arrive from vecflow.ini as strings.

    index_type ("flat" or "hnsw") and the hnsw_* numbers are defaults for new collections;
    create_collection(..., index_type=..., hnsw_m=...) overrides them per collection. One
    instance must be used by one thread at a time.
    """

    name = "faiss"

    def __init__(
        self,
        path: str,
        index_type: str = "flat",
        hnsw_m: str | int = 32,
        hnsw_ef_construction: str | int = 40,
        hnsw_ef_search: str | int = 64,
    ) -> None:
        self.root = Path(path)
        self._defaults: dict[str, Any] = {
            "index_type": index_type,
            "hnsw_m": hnsw_m,
            "hnsw_ef_construction": hnsw_ef_construction,
            "hnsw_ef_search": hnsw_ef_search,
        }
        _index_params(self._defaults, ConfigError)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create the faiss store directory {self.root}: {exc}"
            ) from exc
        self._open: dict[str, _Collection] = {}

    # collections ---------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        return sorted(
            entry.name
            for entry in os.scandir(self.root)
            if not entry.name.startswith(".") and os.path.isfile(os.path.join(entry.path, SIDECAR))
        )

    def has_collection(self, name: str) -> bool:
        return (self._directory(name) / SIDECAR).is_file()

    def create_collection(self, name: str, dim: int, metric: str = "cosine", **params: Any) -> None:
        directory = self._directory(name)
        if self.has_collection(name):
            raise CollectionExistsError(
                f"faiss store {self.root} already has a collection {name!r}"
            )
        if metric not in METRICS:
            raise BackendError(
                f"unknown metric {metric!r} for collection {name!r}; use one of {METRICS}"
            )
        unknown = sorted(set(params) - set(self._defaults))
        if unknown:
            raise BackendError(
                f"unknown faiss collection parameter(s) {unknown} for {name!r}; "
                f"known: {sorted(self._defaults)}"
            )
        dim = _positive_int("dim", dim, BackendError)
        index_params = _index_params({**self._defaults, **params}, BackendError)
        # Build in a hidden directory and rename it into place: a crash never leaves half a
        # collection under a real name.
        staging = Path(tempfile.mkdtemp(prefix=".creating-", dir=self.root))
        try:
            _create_sidecar(staging / SIDECAR, dim, metric, index_params)
            try:
                os.rename(staging, directory)
            except OSError as exc:
                raise CollectionExistsError(
                    f"cannot create faiss collection {name!r}: {directory} already exists "
                    f"and is not an empty directory ({exc.strerror})"
                ) from exc
            _fsync_directory(self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def drop_collection(self, name: str) -> None:
        directory = self._require_directory(name)
        self._forget(name)
        # Rename first so the collection disappears atomically even if the removal is cut short.
        trash = self.root / f".dropped-{uuid.uuid4().hex}"
        os.rename(directory, trash)
        _fsync_directory(self.root)
        shutil.rmtree(trash)

    def rename_collection(self, old: str, new: str, batch_size: int = 1000) -> None:
        source = self._require_directory(old)
        target = self._directory(new)
        if target.exists():
            raise CollectionExistsError(f"cannot rename faiss collection {old!r}: {target} exists")
        self._forget(old)
        self._forget(new)
        os.rename(source, target)
        _fsync_directory(self.root)

    @_sqlite_errors
    def count(self, name: str) -> int:
        return self._collection(name).conn.execute("SELECT count(*) FROM records").fetchone()[0]

    @_sqlite_errors
    def search_is_exact(self, name: str) -> bool:
        return self.describe(name).params.get("index_type") == "flat"

    def describe(self, name: str) -> CollectionInfo:
        state = self._collection(name)
        return CollectionInfo(name, state.dim, state.metric, dict(state.params))

    @_sqlite_errors
    def collection_metadata(self, name: str) -> dict[str, Any]:
        conn = self._collection(name).conn
        conn.execute("CREATE TABLE IF NOT EXISTS collection_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        return {key: json.loads(value) for key, value in conn.execute("SELECT key, value FROM collection_info")}

    @_sqlite_errors
    def update_collection_metadata(self, name: str, values: dict[str, Any]) -> None:
        conn = self._collection(name).conn
        conn.execute("CREATE TABLE IF NOT EXISTS collection_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        with conn:
            conn.execute("BEGIN")
            for key, value in values.items():
                if value is None:
                    conn.execute("DELETE FROM collection_info WHERE key = ?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO collection_info VALUES (?, ?)", (key, json.dumps(value)))

    # records -------------------------------------------------------------------------------

    @_sqlite_errors
    def scan(
        self, name: str, batch_size: int, cursor: str | None = None
    ) -> tuple[Batch, str | None]:
        state = self._collection(name)
        if batch_size < 1:
            raise BackendError(f"scan of faiss collection {name!r}: batch_size must be at least 1")
        try:
            after = -1 if cursor is None else int(cursor)
        except ValueError:
            raise BackendError(
                f"invalid scan cursor {cursor!r} for faiss collection {name!r}; "
                "pass None or a cursor returned by scan()"
            ) from None
        # fid order: fids never change on an in-place upsert, and fid > ? walks the primary key.
        rows = state.conn.execute(
            "SELECT fid, id, vector, document, metadata FROM records"
            " WHERE fid > ? ORDER BY fid LIMIT ?",
            (after, batch_size + 1),
        ).fetchall()
        next_cursor = str(rows[batch_size - 1][0]) if len(rows) > batch_size else None
        return _to_batch([row[1:] for row in rows[:batch_size]], state.dim), next_cursor

    @_sqlite_errors
    def upsert(self, name: str, batch: Batch) -> None:
        state = self._collection(name)
        if not len(batch):
            return
        if batch.dim != state.dim:
            raise DimensionMismatchError(
                f"faiss collection {name!r} has dimension {state.dim}; the batch has {batch.dim}"
            )
        vectors = batch.vectors.astype("<f4", copy=False)
        metadatas = [
            _dump_metadata(m, rid) for rid, m in zip(batch.ids, batch.metadatas, strict=True)
        ]
        with _write(state.conn):
            version = _bump_version(state.conn)
            state.conn.executemany(
                _UPSERT,
                (
                    (rid, vectors[i].tobytes(), batch.documents[i], metadatas[i], version)
                    for i, rid in enumerate(batch.ids)
                ),
            )

    @_sqlite_errors
    def update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        state = self._collection(name)
        if len(ids) != len(metadatas):
            raise InvalidDataError(
                f"update_metadata on faiss collection {name!r}: "
                f"{len(ids)} ids but {len(metadatas)} metadatas"
            )
        rows = [(_dump_metadata(m, rid), rid) for rid, m in zip(ids, metadatas, strict=True)]
        # The index does not depend on metadata: no version bump, so no index work follows.
        with _write(state.conn):
            state.conn.executemany("UPDATE records SET metadata = ? WHERE id = ?", rows)

    @_sqlite_errors
    def delete(self, name: str, ids: list[str]) -> None:
        state = self._collection(name)
        if not ids:
            return
        conn = state.conn
        with _write(conn):
            fids = [
                (fid,)
                for (fid,) in conn.execute(
                    f"SELECT fid FROM records WHERE {_IDS_IN}", (json.dumps(ids),)
                )
            ]
            if not fids:
                return
            version = _bump_version(conn)
            if (state.directory / INDEX_META).exists():
                # Tombstones let a saved index drop these fids without a rebuild.
                conn.executemany(
                    "INSERT OR REPLACE INTO tombstones (fid, version) VALUES (?, ?)",
                    ((fid, version) for (fid,) in fids),
                )
            else:
                # No saved index to patch: skip the tombstones and make older indexes rebuild.
                conn.execute(
                    "UPDATE collection SET tombstones_since = max(tombstones_since, ?)", (version,)
                )
            conn.executemany("DELETE FROM records WHERE fid = ?", fids)

    @_sqlite_errors
    def get(self, name: str, ids: list[str]) -> Batch:
        state = self._collection(name)
        if not ids:
            return Batch.empty(state.dim)
        rows = state.conn.execute(
            f"SELECT id, vector, document, metadata FROM records WHERE {_IDS_IN}",
            (json.dumps(ids),),
        ).fetchall()
        found = {row[0]: row for row in rows}
        return _to_batch([found[rid] for rid in ids if rid in found], state.dim)

    @_sqlite_errors
    def query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        state = self._collection(name)
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != state.dim:
            raise DimensionMismatchError(
                f"faiss collection {name!r} has dimension {state.dim}; "
                f"query vectors have shape {queries.shape}"
            )
        index = self._synced_index(state)
        if index.ntotal == 0 or k < 1:
            return [[] for _ in range(len(queries))]
        if state.params["index_type"] == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = max(state.params["hnsw_ef_search"], k)
        scores, fids = index.search(_for_index(queries, state.metric), min(k, index.ntotal))
        wanted = sorted({int(f) for f in fids.ravel() if f >= 0})
        id_of = dict(
            state.conn.execute(
                "SELECT fid, id FROM records WHERE fid IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            )
        )
        to_score = (lambda s: 1.0 - s) if state.metric == "cosine" else (lambda s: s)
        return [
            [
                (id_of[int(f)], to_score(float(s)))
                for s, f in zip(row_scores, row_fids, strict=True)
                if int(f) in id_of
            ]
            for row_scores, row_fids in zip(scores, fids, strict=True)
        ]

    def close(self) -> None:
        for name in list(self._open):
            self._forget(name)

    # internals -----------------------------------------------------------------------------

    def _directory(self, name: str) -> Path:
        """The collection's directory; BackendError for a name that is not a plain file name."""
        try:
            size = len(name.encode("utf-8"))
        except (AttributeError, UnicodeEncodeError):
            size = -1
        if (
            not 0 < size <= _MAX_NAME_BYTES
            or name.startswith(".")
            or any(sep in name for sep in ("/", "\\", "\x00"))
        ):
            raise BackendError(
                f"invalid faiss collection name {name!r}: use 1 to {_MAX_NAME_BYTES} bytes, "
                "no '/', '\\' or NUL, and no leading '.'"
            )
        return self.root / name

    def _require_directory(self, name: str) -> Path:
        directory = self._directory(name)
        if not (directory / SIDECAR).is_file():
            raise CollectionNotFoundError(f"faiss store {self.root} has no collection {name!r}")
        return directory

    def _collection(self, name: str) -> _Collection:
        """The open collection, reopened when its sidecar was replaced behind our back."""
        directory = self._require_directory(name)
        stat = os.stat(directory / SIDECAR)
        identity = (stat.st_dev, stat.st_ino)
        state = self._open.get(name)
        if state is not None and state.identity == identity:
            return state
        self._forget(name)
        conn = sqlite3.connect(
            directory / SIDECAR, isolation_level=None, timeout=60, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA synchronous=FULL")
            fmt, dim, metric, params = conn.execute(
                "SELECT format, dim, metric, params FROM collection"
            ).fetchone()
            if fmt != SIDECAR_FORMAT:
                raise BackendError(
                    f"{directory / SIDECAR} has sidecar format {fmt}; this vecflow reads "
                    f"format {SIDECAR_FORMAT}: upgrade vecflow"
                )
        except BaseException:
            conn.close()
            raise
        state = _Collection(directory, conn, identity, dim, metric, json.loads(params))
        self._open[name] = state
        return state

    def _forget(self, name: str) -> None:
        state = self._open.pop(name, None)
        if state is not None:
            state.conn.close()

    def _synced_index(self, state: _Collection) -> Any:
        """The collection's index, brought up to the sidecar's current version."""
        conn = state.conn
        with _read(conn):
            version, tombstones_since = conn.execute(
                "SELECT version, tombstones_since FROM collection"
            ).fetchone()
            if not _usable(state, tombstones_since, version):
                _load_index_file(state)
            usable = _usable(state, tombstones_since, version)
            if usable and state.index_version == version:
                return state.index
            try:
                if not (usable and _apply_changes(state, version)):
                    _rebuild(state, version)
            except BaseException:
                state.index = None  # possibly half patched: never reuse it
                raise
        try:
            _save_index_file(state)
        except OSError as exc:
            # The index is only a cache of the sidecar: the next process rebuilds it.
            _log.warning("could not save the FAISS index in %s: %s", state.directory, exc)
            return state.index
        with _write(conn):
            # The saved index no longer needs tombstones up to its version; older indexes rebuild.
            if conn.execute(
                "DELETE FROM tombstones WHERE version <= ?", (state.index_version,)
            ).rowcount:
                conn.execute(
                    "UPDATE collection SET tombstones_since = max(tombstones_since, ?)",
                    (state.index_version,),
                )
        return state.index


# sidecar ---------------------------------------------------------------------------------------


def _create_sidecar(path: Path, dim: int, metric: str, params: dict[str, Any]) -> None:
    db = sqlite_utils.Database(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        db["collection"].insert(
            {
                "format": SIDECAR_FORMAT,
                "dim": dim,
                "metric": metric,
                "params": json.dumps(params),
                "version": 0,
                "tombstones_since": 0,
            }
        )
    finally:
        db.close()


@contextlib.contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction, taken up front so two writers never deadlock on an upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def _read(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: every SELECT inside sees the same snapshot (WAL: writers go on)."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _bump_version(conn: sqlite3.Connection) -> int:
    conn.execute("UPDATE collection SET version = version + 1")
    return conn.execute("SELECT version FROM collection").fetchone()[0]


def _dump_metadata(metadata: dict[str, Any], record_id: str) -> str:
    try:
        return json.dumps(metadata, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(
            f"record {record_id!r}: metadata cannot be stored as JSON ({exc})"
        ) from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _vectors(blobs: list[bytes], dim: int) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def _to_batch(rows: list[tuple[Any, ...]], dim: int) -> Batch:
    """(id, vector, document, metadata) rows -> Batch."""
    if not rows:
        return Batch.empty(dim)
    return Batch(
        [row[0] for row in rows],
        _vectors([row[1] for row in rows], dim),
        [row[2] for row in rows],
        [json.loads(row[3]) for row in rows],
    )


# index -----------------------------------------------------------------------------------------


def _index_params(options: dict[str, Any], error: type[Exception]) -> dict[str, Any]:
    """Validated index parameters, as describe() reports them, from ini strings or numbers."""
    index_type = str(options["index_type"]).strip().lower()
    if index_type not in INDEX_TYPES:
        raise error(f"unknown faiss index_type {options['index_type']!r}; use one of {INDEX_TYPES}")
    params: dict[str, Any] = {"index_type": index_type}
    if index_type == "hnsw":
        for key in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"):
            params[key] = _positive_int(key, options[key], error)
    return params


def _positive_int(key: str, value: Any, error: type[Exception]) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise error(f"faiss option {key} must be a positive integer, got {value!r}")
    return number


def _new_index(state: _Collection) -> Any:
    metric = faiss.METRIC_L2 if state.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if state.params["index_type"] == "hnsw":
        inner = faiss.IndexHNSWFlat(state.dim, state.params["hnsw_m"], metric)
        inner.hnsw.efConstruction = state.params["hnsw_ef_construction"]
    else:
        inner = faiss.IndexFlat(state.dim, metric)
    return faiss.IndexIDMap2(inner)


def _for_index(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as the index holds them: cosine is inner product on unit vectors."""
    if metric != "cosine":
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)


def _add_rows(state: _Collection, cursor: sqlite3.Cursor) -> None:
    """Add (fid, vector) rows to the index, a chunk at a time."""
    while rows := cursor.fetchmany(_READ_CHUNK):
        fids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        vectors = _vectors([row[1] for row in rows], state.dim)
        state.index.add_with_ids(_for_index(vectors, state.metric), fids)
        state.index_max_fid = max(state.index_max_fid, int(fids.max()))


def _rebuild(state: _Collection, version: int) -> None:
    state.index, state.index_max_fid = _new_index(state), 0
    _add_rows(state, state.conn.execute("SELECT fid, vector FROM records ORDER BY fid"))
    state.index_version = version


def _usable(state: _Collection, tombstones_since: int, version: int) -> bool:
    """Whether the in-memory index can be brought to version by patching (or is there already)."""
    return state.index is not None and tombstones_since <= state.index_version <= version


def _apply_changes(state: _Collection, version: int) -> bool:
    """Patch the index from index_version to version; False when only a rebuild can (HNSW)."""
    conn, base = state.conn, state.index_version
    stale = [
        fid
        for (fid,) in conn.execute(
            "SELECT fid FROM tombstones WHERE version > ? AND fid <= ? UNION "
            "SELECT fid FROM records WHERE vector_version > ? AND fid <= ?",
            (base, state.index_max_fid, base, state.index_max_fid),
        )
    ]
    if stale:
        if state.params["index_type"] == "hnsw":
            return False  # HNSW cannot remove ids
        state.index.remove_ids(np.array(stale, dtype=np.int64))
    _add_rows(
        state,
        conn.execute(
            "SELECT fid, vector FROM records WHERE vector_version > ? ORDER BY fid", (base,)
        ),
    )
    state.index_version = version
    return True


def _load_index_file(state: _Collection) -> None:
    """Adopt the saved index if it is whole and matches its json; otherwise leave it alone."""
    try:
        meta = json.loads((state.directory / INDEX_META).read_bytes())
        data = np.fromfile(state.directory / INDEX_FILE, dtype=np.uint8)
        if _hash(data) != meta["blake2b"]:
            return
        index = faiss.deserialize_index(data)
        version, max_fid = int(meta["version"]), int(meta["max_fid"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return
    if index.d == state.dim:
        state.index, state.index_version, state.index_max_fid = index, version, max_fid


def _save_index_file(state: _Collection) -> None:
    """Write the index, then the json naming its version and hash, each atomically."""
    data = faiss.serialize_index(state.index)
    meta = {
        "version": state.index_version,
        "max_fid": state.index_max_fid,
        "blake2b": _hash(data),
        "faiss": faiss.__version__,
    }
    _write_atomically(state.directory / INDEX_FILE, memoryview(data))
    _write_atomically(state.directory / INDEX_META, json.dumps(meta).encode())


def _hash(data: np.ndarray) -> str:
    return hashlib.blake2b(memoryview(data), digest_size=16).hexdigest()


def _write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Temp file in the same directory, fsync, rename over path, fsync the directory."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
