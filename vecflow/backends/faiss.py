"""FAISS store: a directory per collection, in one of two formats, which are its layouts.

- `raw`, vecflow's own: a SQLite sidecar (records.db) as the source of truth and a FAISS index file
  derived from it. FAISS keeps only vectors and int64 ids, so every record lives in the sidecar: its
  id, raw float32 vector bytes, document and JSON metadata, under an integer `fid` that is also its
  FAISS id. upsert and delete are SQLite transactions; that commit is the durable write. Each write
  bumps the collection's version; vecflow/backends/faiss_index.py brings the index up to it when a
  query needs it. The sidecar holds only what the store needs to work (dim, metric, index params,
  the records).
- `langchain`: a LangChain `save_local` folder (`<index_name>.faiss` + `<index_name>.pkl`), read and
  written whole by vecflow/backends/faiss_langchain.py; reading one means unpickling, so only with
  the store's `allow_pickle`.

The files decide a collection's layout: records.db makes it raw, the two LangChain files make it
langchain. What vecflow remembers about a collection is in its state (vecflow/state.py). See
docs/backends/faiss.md.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import sqlite_utils

from vecflow.backends import faiss_index
from vecflow.backends.base import Backend, CollectionInfo, Hit, NativePage
from vecflow.backends.faiss_index import OpenCollection, vectors_of, write_transaction
from vecflow.backends.faiss_langchain import (
    FLAT_PARAMS,
    INDEX_NAME,
    TRASH_PREFIX,
    LangChainFolder,
    create_folder,
    drop_folder,
    folder_files,
    holds_only_the_folder,
    is_folder,
    load_folder,
)
from vecflow.backends.helpers import (
    fsync_directory,
    json_default,
    option_bool,
    read_marker_file,
    rows_by_ids,
    write_marker_file,
)
from vecflow.batch import Batch
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    InvalidDataError,
    OperationError,
)
from vecflow.layouts import Detected, Native, get_layout
from vecflow.read_only import connect_read_only

SIDECAR = "records.db"
INDEX_FILE, INDEX_META = faiss_index.INDEX_FILE, faiss_index.INDEX_META
INDEX_TYPES = ("flat", "hnsw")
SIDECAR_FORMAT = 1
_MAX_NAME_BYTES = 200

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

F = TypeVar("F", bound=Callable[..., Any])


def _sqlite_errors(method: F) -> F:
    """Report SQLite failures (locked, disk full, not a sidecar) as BackendError."""

    @functools.wraps(method)
    def wrapper(self: FaissBackend, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, name, *args, **kwargs)
        except sqlite3.Error as exc:
            raise BackendError(f"faiss collection {name!r} in {self.root}: sidecar error: {exc}") from exc

    return wrapper  # type: ignore[return-value]


class FaissBackend(Backend):
    """A directory of FAISS collections. Options arrive from vecflow.ini as strings.

    index_type ("flat" or "hnsw") and the hnsw_* numbers are defaults for new raw collections;
    create_collection(..., index_type=..., hnsw_m=...) overrides them per collection. index_name
    names the files of LangChain folders; allow_pickle lets vecflow read them (unpickling runs
    code from the file). One instance must be used by one thread at a time.
    """

    name = "faiss"
    layouts: ClassVar[tuple[str, ...]] = ("raw", "langchain")
    # Large blocks: a page is one indexed SELECT of the sidecar and a write one SQLite transaction
    # (one fsync), flat in rate from 500 up; 5,000 spreads the fsync and the step's checkpoint
    # over more records (docs/performance.md#batch-sizes).
    preferred_read_batch = 5000
    preferred_write_batch = 5000

    def __init__(self, path: str, index_type: str = "flat", hnsw_m: str | int = 32,
                 hnsw_ef_construction: str | int = 40, hnsw_ef_search: str | int = 64,
                 allow_pickle: str | bool = False, index_name: str = INDEX_NAME) -> None:
        # Absolute, so the state scope of a collection does not depend on the working directory.
        self.root = Path(os.path.abspath(path))
        self._where = str(self.root)
        self._defaults: dict[str, Any] = {"index_type": index_type, "hnsw_m": hnsw_m,
                                          "hnsw_ef_construction": hnsw_ef_construction,
                                          "hnsw_ef_search": hnsw_ef_search}
        _index_params(self._defaults, ConfigError)
        self.allow_pickle = bool(option_bool("faiss", "allow_pickle", allow_pickle))
        self.index_name = _index_name(index_name)
        self._open: dict[str, OpenCollection] = {}
        self._folders: dict[str, LangChainFolder] = {}
        self._new_layout = "raw"
        if self._read_only:
            return  # a missing folder reads as a store without collections
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create the faiss store directory {self.root}: {exc}") from exc
        _remove_trash(self.root)

    def search_is_exact(self, name: str) -> bool:
        return self.describe(name).params.get("index_type") == "flat"

    def close(self) -> None:
        for name in list(self._open):
            self._forget(name)
        self._folders.clear()

    def create_collection(self, name: str, dim: int, metric: str = "cosine", layout: str | None = None,
                          **params: Any) -> None:
        # The layout chooses the format on disk, which the base does not pass to _create_collection.
        self._new_layout = self._layout_for_new(name, layout)
        try:
            super().create_collection(name, dim, metric, layout, **params)
        finally:
            self._new_layout = "raw"

    def _resolve_layout(self, name: str) -> Detected:
        """The files decide (the store's `layout` option only chooses the format of new collections)."""
        files = self._folder_files(name)
        if files is None:
            return Detected(get_layout("raw"), f"{SIDECAR}: vecflow's own FAISS format")
        index_file, pickle_file = files
        return Detected(get_layout("langchain"),
                        f"{index_file.name} + {pickle_file.name}: a LangChain FAISS.save_local folder")

    def text_location(self, name: str) -> str:
        files = self._folder_files(name)
        if files is None:
            return f"the {SIDECAR} sidecar's document column"
        return f"Document.page_content in {files[1].name} (LangChain's pickled docstore)"

    def _read_marker(self) -> str | None:
        return read_marker_file(self.root)

    def _write_marker(self, text: str) -> None:
        write_marker_file(self.root, text)

    # collections ---------------------------------------------------------------------------

    def _list_collections(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [entry.name for entry in os.scandir(self.root)
                if not entry.name.startswith(".") and entry.is_dir() and self._holds_collection(Path(entry.path))]

    def _has_collection(self, name: str) -> bool:
        return self._holds_collection(self._directory(name))

    def _holds_collection(self, directory: Path) -> bool:
        return (directory / SIDECAR).is_file() or is_folder(directory, self.index_name)

    def check_new_collection(self, name: str, params: dict[str, Any]) -> None:
        self._directory(name)
        self._check_params(name, params)
        _index_params({**self._defaults, **params}, OperationError)

    def _check_params(self, name: str, params: dict[str, Any]) -> None:
        unknown = sorted(set(params) - set(self._defaults))
        if unknown:
            raise OperationError(f"unknown faiss collection parameter(s) {unknown} for {name!r}; "
                                 f"known: {sorted(self._defaults)}")

    def _create_collection(self, name: str, dim: int, metric: str, params: dict[str, Any]) -> None:
        directory = self._directory(name)
        self._check_params(name, params)
        if self._new_layout == "langchain":
            if _index_params({**self._defaults, "index_type": "flat", **params}, OperationError) != FLAT_PARAMS:
                raise OperationError(f"faiss collection {name!r}: a LangChain folder has a flat index "
                                     f"(what FAISS.from_texts builds); {params} cannot apply")
            self._folders[name] = create_folder(directory, self.index_name, dim, metric, self.state,
                                                self.scope(name))
            return
        index_params = _index_params({**self._defaults, **params}, OperationError)
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
                    f"and is not an empty directory ({exc.strerror})") from exc
            fsync_directory(self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _drop_collection(self, name: str) -> None:
        self._forget(name)
        if self._folder_files(name) is not None:
            drop_folder(self._directory(name), self.index_name)
            return
        # Rename first so the collection disappears atomically even if the removal is cut short.
        trash = self.root / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        os.rename(self._directory(name), trash)
        fsync_directory(self.root)
        shutil.rmtree(trash)

    def _rename_collection(self, old: str, new: str) -> bool:
        target = self._directory(new)
        # os.rename would silently replace an empty directory.
        if target.exists():
            raise CollectionExistsError(f"cannot rename faiss collection {old!r}: {target} exists")
        if self._folder_files(old) is not None and not holds_only_the_folder(self._directory(old), self.index_name):
            return False  # other files share the directory: copy into a new one, then drop
        self._forget(old)
        self._forget(new)
        # Before the rename: a kill right after it finds the state under the new name already.
        self.state.copy_scope(self.scope(old), self.scope(new))
        os.rename(self._directory(old), target)
        fsync_directory(self.root)
        return True

    @_sqlite_errors
    def _count(self, name: str) -> int:
        if folder := self._folder(name):
            return folder.count()
        return self._collection(name).conn.execute("SELECT count(*) FROM records").fetchone()[0]

    @_sqlite_errors
    def _describe(self, name: str) -> CollectionInfo:
        if folder := self._folder(name):
            return folder.info(name)
        collection = self._collection(name)
        return CollectionInfo(name, collection.dim, collection.metric, dict(collection.params))

    # records -------------------------------------------------------------------------------

    @_sqlite_errors
    def _scan(self, name: str, batch_size: int, cursor: str | None) -> tuple[Batch, str | None]:
        if folder := self._folder(name):
            page, cursor = folder.scan(batch_size, cursor)
            return page.batch, cursor
        collection = self._collection(name)
        try:
            after = -1 if cursor is None else int(cursor)
        except ValueError:
            raise BackendError(f"invalid scan cursor {cursor!r} for faiss collection {name!r}; "
                               "pass None or a cursor returned by scan()") from None
        # fid order: fids never change on an in-place upsert, and fid > ? walks the primary key.
        rows = collection.conn.execute(
            "SELECT fid, id, vector, document, metadata FROM records WHERE fid > ? ORDER BY fid LIMIT ?",
            (after, batch_size + 1)).fetchall()
        next_cursor = str(rows[batch_size - 1][0]) if len(rows) > batch_size else None
        return _to_batch([row[1:] for row in rows[:batch_size]], collection.dim), next_cursor

    def _scan_native(self, name: str, batch_size: int, cursor: str | None) -> tuple[NativePage, str | None]:
        if folder := self._folder(name):
            return folder.scan(batch_size, cursor)
        return super()._scan_native(name, batch_size, cursor)

    @_sqlite_errors
    def _upsert(self, name: str, batch: Batch) -> None:
        if folder := self._folder(name):
            return folder.upsert(batch)
        collection = self._collection(name)
        if batch.dim != collection.dim:
            raise DimensionMismatchError(f"faiss collection {name!r} has dimension {collection.dim}; "
                                         f"the batch has {batch.dim}")
        vectors = batch.vectors.astype("<f4", copy=False)
        metadatas = [_dump_metadata(m, rid) for rid, m in zip(batch.ids, batch.metadatas)]
        with write_transaction(collection.conn):
            version = _bump_version(collection.conn)
            collection.conn.executemany(_UPSERT, (
                (rid, vectors[i].tobytes(), batch.documents[i], metadatas[i], version)
                for i, rid in enumerate(batch.ids)))

    @_sqlite_errors
    def _update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        if folder := self._folder(name):
            return folder.update_metadata(ids, metadatas)
        collection = self._collection(name)
        rows = [(_dump_metadata(m, rid), rid) for rid, m in zip(ids, metadatas)]
        # The index does not depend on metadata: no version bump, so no index work follows.
        with write_transaction(collection.conn):
            collection.conn.executemany("UPDATE records SET metadata = ? WHERE id = ?", rows)

    @_sqlite_errors
    def _delete(self, name: str, ids: list[str]) -> None:
        if folder := self._folder(name):
            return folder.delete(ids)
        collection = self._collection(name)
        conn = collection.conn
        with write_transaction(conn):
            fids = [(fid,) for (fid,) in rows_by_ids(conn, "SELECT fid FROM records WHERE id IN", ids)]
            if not fids:
                return
            version = _bump_version(conn)
            if (collection.directory / INDEX_META).exists():
                # Tombstones let a saved index drop these fids without a rebuild.
                conn.executemany("INSERT OR REPLACE INTO tombstones (fid, version) VALUES (?, ?)",
                                 ((fid, version) for (fid,) in fids))
            else:
                # No saved index to patch: skip the tombstones and make older indexes rebuild.
                conn.execute("UPDATE collection SET tombstones_since = max(tombstones_since, ?)", (version,))
            conn.executemany("DELETE FROM records WHERE fid = ?", fids)

    @_sqlite_errors
    def _get_native(self, name: str, ids: list[str]) -> NativePage:
        if folder := self._folder(name):
            return folder.get(ids)
        batch = self._get(name, ids)
        return NativePage(batch, list(batch.ids), [Native(doc, meta) for doc, meta in zip(batch.documents,
                                                                                         batch.metadatas)])

    @_sqlite_errors
    def _get(self, name: str, ids: list[str]) -> Batch:
        if folder := self._folder(name):
            return folder.get(ids).batch
        collection = self._collection(name)
        rows = list(rows_by_ids(collection.conn, "SELECT id, vector, document, metadata FROM records WHERE id IN", ids))
        found = {row[0]: row for row in rows}
        return _to_batch([found[rid] for rid in ids if rid in found], collection.dim)

    @_sqlite_errors
    def _query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        if folder := self._folder(name):
            return folder.query(vectors, k)
        collection = self._collection(name)
        if vectors.shape[1] != collection.dim:
            raise DimensionMismatchError(f"faiss collection {name!r} has dimension {collection.dim}; "
                                         f"query vectors have shape {vectors.shape}")
        scores, fids = faiss_index.search(collection, vectors, k, save=not self._read_only)
        wanted = sorted({int(f) for f in fids.ravel() if f >= 0})
        id_of = dict(collection.conn.execute(
            "SELECT fid, id FROM records WHERE fid IN (SELECT value FROM json_each(?))", (json.dumps(wanted),)))
        to_score = (lambda s: 1.0 - s) if collection.metric == "cosine" else (lambda s: s)
        return [[(id_of[int(f)], to_score(float(s))) for s, f in zip(row_scores, row_fids) if int(f) in id_of]
                for row_scores, row_fids in zip(scores, fids)]

    # internals -----------------------------------------------------------------------------

    def _directory(self, name: str) -> Path:
        """The collection's directory; BackendError for a name that is not a plain file name."""
        try:
            size = len(name.encode("utf-8"))
        except (AttributeError, UnicodeEncodeError):
            size = -1
        if not 0 < size <= _MAX_NAME_BYTES or name.startswith(".") or any(s in name for s in ("/", "\\", "\x00")):
            raise BackendError(f"invalid faiss collection name {name!r}: use 1 to {_MAX_NAME_BYTES} bytes, "
                               "no '/', '\\' or NUL, and no leading '.'")
        return self.root / name

    def _collection(self, name: str) -> OpenCollection:
        """The open collection, reopened when its sidecar was replaced behind our back."""
        directory = self._directory(name)
        try:
            stat = os.stat(directory / SIDECAR)
        except FileNotFoundError:
            raise CollectionNotFoundError(f"faiss store {self.root} has no collection {name!r}") from None
        identity = (stat.st_dev, stat.st_ino)
        collection = self._open.get(name)
        if collection is not None and collection.identity == identity:
            return collection
        self._forget(name)
        if self._read_only:  # not even the -wal and -shm files an ordinary open creates
            conn = connect_read_only(directory / SIDECAR)
        else:
            conn = sqlite3.connect(directory / SIDECAR, isolation_level=None, timeout=60, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            fmt, dim, metric, params = conn.execute("SELECT format, dim, metric, params FROM collection").fetchone()
            if fmt != SIDECAR_FORMAT:
                raise BackendError(f"{directory / SIDECAR} has sidecar format {fmt}; this vecflow reads "
                                   f"format {SIDECAR_FORMAT}: upgrade vecflow")
        except BaseException:
            conn.close()
            raise
        collection = OpenCollection(directory, conn, identity, dim, metric, json.loads(params))
        self._open[name] = collection
        return collection

    def _forget(self, name: str) -> None:
        self._folders.pop(name, None)
        collection = self._open.pop(name, None)
        if collection is not None:
            collection.conn.close()

    def _folder_files(self, name: str) -> tuple[Path, Path] | None:
        """The LangChain files of a collection, or None for a sidecar (or missing) one."""
        directory = self._directory(name)
        if (directory / SIDECAR).is_file() or not is_folder(directory, self.index_name):
            return None
        return folder_files(directory, self.index_name)

    def _folder(self, name: str) -> LangChainFolder | None:
        """The collection's LangChain folder, loaded (again when its files changed), or None when
        it is a sidecar collection."""
        if self._folder_files(name) is None:
            return None
        folder = self._folders.get(name)
        if folder is None or not folder.is_current():
            self._folders.pop(name, None)
            folder = load_folder(self._directory(name), self.index_name, self.state, self.scope(name),
                                 self.allow_pickle, finish_writes=not self._read_only)
            self._folders[name] = folder
        return folder


# sidecar ---------------------------------------------------------------------------------------


def _create_sidecar(path: Path, dim: int, metric: str, params: dict[str, Any]) -> None:
    db = sqlite_utils.Database(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        db["collection"].insert({"format": SIDECAR_FORMAT, "dim": dim, "metric": metric,
                                 "params": json.dumps(params), "version": 0, "tombstones_since": 0})
    finally:
        db.close()


def _remove_trash(root: Path) -> None:
    """Finish drops a kill cut short: a dropped collection is renamed to `.dropped-*` at once (the
    drop is then done) and removed afterwards, which a kill can leave half way."""
    for entry in os.scandir(root):
        if entry.name.startswith(TRASH_PREFIX) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def _bump_version(conn: sqlite3.Connection) -> int:
    conn.execute("UPDATE collection SET version = version + 1")
    return conn.execute("SELECT version FROM collection").fetchone()[0]


def _dump_metadata(metadata: dict[str, Any], record_id: str) -> str:
    try:
        return json.dumps(metadata, ensure_ascii=False, default=json_default)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"record {record_id!r}: metadata cannot be stored as JSON ({exc})") from exc




def _to_batch(rows: list[tuple[Any, ...]], dim: int) -> Batch:
    """(id, vector, document, metadata) rows -> Batch."""
    if not rows:
        return Batch.empty(dim)
    return Batch([row[0] for row in rows], vectors_of([row[1] for row in rows], dim),
                 [row[2] for row in rows], [json.loads(row[3]) for row in rows])


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




def _index_name(value: Any) -> str:
    name = str(value).strip()
    if not name or name.startswith(".") or any(s in name for s in ("/", "\\", "\x00")):
        raise ConfigError(f"faiss option index_name must be a plain file name (LangChain's default is "
                          f"{INDEX_NAME!r}), got {value!r}")
    return name


def _positive_int(key: str, value: Any, error: type[Exception]) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise error(f"faiss option {key} must be a positive integer, got {value!r}")
    return number
