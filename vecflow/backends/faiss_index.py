"""The FAISS index of a collection: a cache derived from its SQLite sidecar.

The sidecar (records.db, see vecflow/backends/faiss.py) is the source of truth; each write bumps
its `version`. The index is brought up to that version only when a query needs it: patched where
FAISS allows it (flat indexes remove ids; HNSW graphs cannot), otherwise rebuilt from the sidecar.
It is then saved as index.faiss plus index.json, which names the version and the BLAKE2b hash of
the index bytes. Both are written to a temporary file, fsynced and renamed into place; an index
file that is missing, stale, torn or paired with the wrong json is rebuilt, never trusted (FAISS
can abort the process on corrupt input). See docs/backends/faiss.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from vecflow.backends.helpers import fsync_directory

INDEX_FILE = "index.faiss"
INDEX_META = "index.json"
_READ_CHUNK = 1_000  # rows per add to the index: small, so converting them to unit vectors costs little memory
_IO_BLOCK = 1 << 20  # bytes per read or write of an index file

_log = logging.getLogger(__name__)


@dataclass
class OpenCollection:
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


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction, taken up front so two writers never deadlock on an upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: every SELECT inside sees the same snapshot (WAL: writers go on)."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def vectors_of(blobs: list[bytes], dim: int) -> np.ndarray:
    """Sidecar vector blobs (little-endian float32) as an (n, dim) float32 array."""
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def search(collection: OpenCollection, queries: np.ndarray, k: int,
           save: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(scores, fids) of the k nearest records of each query; fid -1 pads a short row. Scores are
    the index's own: squared L2, or inner product (of unit vectors for cosine). save=False: an
    index brought up to date is not saved (the folder is only read)."""
    index = synced_index(collection, save)
    if index.ntotal == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    if collection.params["index_type"] == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = max(collection.params["hnsw_ef_search"], k)
    return index.search(for_index(np.ascontiguousarray(queries), collection.metric), min(k, index.ntotal))


def synced_index(collection: OpenCollection, save: bool = True) -> Any:
    """The collection's index, brought up to the sidecar's current version and saved (unless
    save is False: then the folder is left as it was)."""
    conn = collection.conn
    with read_transaction(conn):
        version, tombstones_since = conn.execute("SELECT version, tombstones_since FROM collection").fetchone()
        if not _usable(collection, tombstones_since, version):
            _load_index_file(collection)
        usable = _usable(collection, tombstones_since, version)
        if usable and collection.index_version == version:
            return collection.index
        try:
            if not (usable and _apply_changes(collection, version)):
                rebuild(collection, version)
        except BaseException:
            collection.index = None  # possibly half patched: never reuse it
            raise
    if not save:
        return collection.index
    try:
        _save_index_file(collection)
    except OSError as exc:
        # The index is only a cache of the sidecar: the next process rebuilds it.
        _log.warning("could not save the FAISS index in %s: %s", collection.directory, exc)
        return collection.index
    with write_transaction(conn):
        # The saved index no longer needs tombstones up to its version; older indexes rebuild.
        if conn.execute("DELETE FROM tombstones WHERE version <= ?", (collection.index_version,)).rowcount:
            conn.execute("UPDATE collection SET tombstones_since = max(tombstones_since, ?)",
                         (collection.index_version,))
    return collection.index


def rebuild(collection: OpenCollection, version: int) -> None:
    """A new index from every vector in the sidecar."""
    collection.index, collection.index_max_fid = _new_index(collection), 0
    _add_rows(collection, collection.conn.execute("SELECT fid, vector FROM records ORDER BY fid"))
    collection.index_version = version


def for_index(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as the index holds them: cosine is inner product on unit vectors."""
    if metric != "cosine":
        return vectors
    wide = vectors.astype(np.float64)  # a finite float32 vector's squared norm can overflow float32
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    return (wide / np.where(norms > 0, norms, 1)).astype(np.float32)


def write_atomically(path: Path, data: bytes | memoryview | Callable[[BinaryIO], None]) -> None:
    """Temp file in the same directory, fsync, rename over path, fsync the directory. data: the
    bytes, or a function that writes them to the open file."""
    temp = write_temp(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_directory(path.parent)


def write_temp(path: Path, data: bytes | memoryview | Callable[[BinaryIO], None]) -> Path:
    """data (bytes, or a function writing them to the open file) in a new fsynced temp file beside
    path (`.<name>.*.tmp`), ready to be renamed over it."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            if callable(data):
                data(file)
            else:
                file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return Path(temp)




def _new_index(collection: OpenCollection) -> Any:
    metric = faiss.METRIC_L2 if collection.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if collection.params["index_type"] == "hnsw":
        inner = faiss.IndexHNSWFlat(collection.dim, collection.params["hnsw_m"], metric)
        inner.hnsw.efConstruction = collection.params["hnsw_ef_construction"]
    else:
        inner = faiss.IndexFlat(collection.dim, metric)
    return faiss.IndexIDMap2(inner)


def _add_rows(collection: OpenCollection, cursor: sqlite3.Cursor) -> None:
    """Add (fid, vector) rows to the index, a chunk at a time."""
    while rows := cursor.fetchmany(_READ_CHUNK):
        fids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        vectors = vectors_of([row[1] for row in rows], collection.dim)
        collection.index.add_with_ids(for_index(vectors, collection.metric), fids)
        collection.index_max_fid = max(collection.index_max_fid, int(fids.max()))


def _usable(collection: OpenCollection, tombstones_since: int, version: int) -> bool:
    """Whether the in-memory index can be brought to version by patching (or is there already)."""
    return collection.index is not None and tombstones_since <= collection.index_version <= version


def _apply_changes(collection: OpenCollection, version: int) -> bool:
    """Patch the index from index_version to version; False when only a rebuild can (HNSW)."""
    conn, base, max_fid = collection.conn, collection.index_version, collection.index_max_fid
    stale = [fid for (fid,) in conn.execute(
        "SELECT fid FROM tombstones WHERE version > ? AND fid <= ? UNION "
        "SELECT fid FROM records WHERE vector_version > ? AND fid <= ?", (base, max_fid, base, max_fid))]
    if stale:
        if collection.params["index_type"] == "hnsw":
            return False  # HNSW cannot remove ids
        collection.index.remove_ids(np.array(stale, dtype=np.int64))
    _add_rows(collection, conn.execute(
        "SELECT fid, vector FROM records WHERE vector_version > ? ORDER BY fid", (base,)))
    collection.index_version = version
    return True


def _load_index_file(collection: OpenCollection) -> None:
    """Adopt the saved index if it is whole and matches its json; otherwise leave it alone."""
    try:
        meta = json.loads((collection.directory / INDEX_META).read_bytes())
        # Streamed from one open file, hashed then read: the index is never held twice in memory
        # (a 1M x 384 flat index is 1.5 GB), and a file replaced meanwhile is not mixed in.
        with open(collection.directory / INDEX_FILE, "rb") as file:
            digest = hashlib.blake2b(digest_size=16)
            while block := file.read(_IO_BLOCK):
                digest.update(block)
            if digest.hexdigest() != meta["blake2b"]:
                return
            file.seek(0)
            index = faiss.read_index(faiss.PyCallbackIOReader(file.read, _IO_BLOCK))
        version, max_fid = int(meta["version"]), int(meta["max_fid"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return
    if index.d == collection.dim:
        collection.index, collection.index_version, collection.index_max_fid = index, version, max_fid


def _save_index_file(collection: OpenCollection) -> None:
    """Write the index, then the json naming its version and hash, each atomically. The index is
    streamed to its file and hashed on the way (serialising it first would hold it twice)."""
    digest = hashlib.blake2b(digest_size=16)

    def fill(file: BinaryIO) -> None:
        def chunk(data: bytes) -> None:
            digest.update(data)
            file.write(data)

        faiss.write_index(collection.index, faiss.PyCallbackIOWriter(chunk, _IO_BLOCK))

    write_atomically(collection.directory / INDEX_FILE, fill)
    meta = {"version": collection.index_version, "max_fid": collection.index_max_fid,
            "blake2b": digest.hexdigest(), "faiss": faiss.__version__}
    write_atomically(collection.directory / INDEX_META, json.dumps(meta).encode())
