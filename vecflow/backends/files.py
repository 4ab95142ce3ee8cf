"""Files store: a folder per collection of part files plus a manifest, for export and import.

The folder, its manifest and the commit protocol are in vecflow/backends/files_folder.py; the part
file formats (parquet, vdf, jsonl) in vecflow/backends/files_formats.py. This module implements the
Backend primitives on top:

- writes are copy-on-write and idempotent by id: an upsert rewrites the parts that hold ids it
  replaces, keeping every record in its place, and appends the new ids as new parts of at most
  `part_rows` records; a delete rewrites the parts that lose records. The commit (the manifest's
  rename) makes a write durable before the call returns. One process writes a collection at a
  time (vecflow's lease makes it so); readers never see an uncommitted file;
- parts are sorted by id, and scan cursors are `part:row:id` (the id of the record before the
  cursor): a page reads only the row groups that hold it (O(batch)), and a cursor survives restarts,
  in-place upserts and deletes behind it;
- which part holds an id is looked up in a private, temporary SQLite table built from the parts'
  id columns the first time a process needs it, so memory stays bounded;
- `query` is exact: it streams every row group.

Folders with VDF_META.json and no manifest (written by vector-io) are read, never written.
See docs/backends/files.md.
"""

from __future__ import annotations

import bisect
import functools
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa

from vecflow.backends import files_folder as folder_io
from vecflow.backends.base import Backend, CollectionInfo, Hit
from vecflow.backends.files_folder import MANIFEST, NOT_PROVIDED, VDF_META, Part, View, vdf_entries
from vecflow.backends.files_formats import CODECS
from vecflow.backends.helpers import fsync_directory, one_line, read_marker_file, rows_by_ids, write_marker_file
from vecflow.batch import Batch
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    OperationError,
    VerificationError,
)
from vecflow.layouts import AUTO, Detected, get_layout
from vecflow.runtime.digest import Digest, batch_digest, version_of

FORMATS = tuple(CODECS)
_MAX_NAME_BYTES = 200

F = TypeVar("F", bound=Callable[..., Any])


def _read_errors(method: F) -> F:
    """Report unreadable files (torn, foreign, not Parquet) as BackendError naming the collection."""

    @functools.wraps(method)
    def wrapper(self: FilesBackend, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, name, *args, **kwargs)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise BackendError(f"files collection {name!r} in {self.root}: {one_line(exc)}") from exc

    return wrapper  # type: ignore[return-value]


class FilesBackend(Backend):
    """A folder of collection folders. `format` (parquet, vdf, jsonl) is the default of new
    collections (`create_collection(..., format=...)` overrides it); `part_rows` caps a part file."""

    name = "files"
    # Records are kept as logical records; the layout is the one they were read in at the source,
    # recorded so an import writes its target in it (framework parts travel in `extras`).
    layouts: ClassVar[tuple[str, ...]] = ("raw", "langchain", "llamaindex")
    # Every write request is a commit (new part files, a manifest replaced): the fewer the
    # better, so a page is written whole (docs/performance.md#batch-sizes).
    preferred_read_batch = 5000
    preferred_write_batch = 100_000
    export_location = staticmethod(folder_io.export_location)
    import_location = staticmethod(folder_io.import_location)

    def __init__(self, path: str, format: str = "parquet", part_rows: str | int = 10_000) -> None:
        self.root = Path(os.path.abspath(path))
        self._where = str(self.root)
        self._format = _check_format(format, ConfigError)
        self._part_rows = int(part_rows) if str(part_rows).strip().isdigit() else 0
        if self._part_rows < 1:
            raise ConfigError(f"files option part_rows must be a positive integer, got {part_rows!r}")
        if not self._read_only:  # read only, a missing folder reads as a store without collections
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot create the files store directory {self.root}: {exc}") from exc
        self._views: dict[str, View] = {}
        self._indexes: dict[str, tuple[tuple[int, ...], sqlite3.Connection]] = {}
        self._swept: set[str] = set()
        self._last_group: tuple[tuple, Any] | None = None

    def search_is_exact(self, name: str) -> bool:
        return True

    def close(self) -> None:
        for name in list(self._views):
            self._forget(name)
        self._last_group = None

    def _read_marker(self) -> str | None:
        return read_marker_file(self.root)

    def _write_marker(self, text: str) -> None:
        write_marker_file(self.root, text)

    # collections ---------------------------------------------------------------------------------

    def _list_collections(self) -> list[str]:
        names = []
        if not self.root.is_dir():
            return names
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if (Path(entry.path) / MANIFEST).is_file():
                names.append(entry.name)
            elif (Path(entry.path) / VDF_META).is_file():
                try:
                    keys = [vdf.key for vdf in vdf_entries(Path(entry.path))]
                except BackendError:
                    keys = [""]  # listed, so that using it reports what is wrong with it
                names += [entry.name] if len(keys) == 1 else [f"{entry.name}/{key}" for key in keys]
        return names

    def _has_collection(self, name: str) -> bool:
        folder, key = self._split(name)
        if (folder / MANIFEST).is_file():
            return key is None
        if not (folder / VDF_META).is_file():
            return False
        keys = [entry.key for entry in vdf_entries(folder)]
        return key in keys if key is not None else len(keys) == 1

    def create_collection(self, name: str, dim: int, metric: str = "cosine", layout: str | None = None,
                          **params: Any) -> None:
        super().create_collection(name, dim, metric, layout, **params)
        # The layout goes into the manifest too, so it travels with the folder.
        self._commit(self._writable(name), layout=self.layout_of(name).layout.name)

    def _create_collection(self, name: str, dim: int, metric: str, params: dict[str, Any]) -> None:
        folder, key = self._split(name)
        unknown = sorted(set(params) - {"format"})
        if key is not None or unknown:
            raise OperationError(f"files collection {name!r}: " + (
                f"unknown parameter(s) {unknown}; known: ['format']" if unknown else
                "a new collection's name is a plain folder name (no '/')"))
        fmt = _check_format(params.get("format", self._format), OperationError)
        folder_io.create_folder(folder, folder_io.new_manifest(fmt, dim, metric), f"files collection {name!r}")

    def _drop_collection(self, name: str) -> None:
        view = self._writable(name)
        self._forget(name)
        folder_io.remove_folder(view.folder)

    def _rename_collection(self, old: str, new: str) -> bool:
        view = self._writable(old)
        target, key = self._split(new)
        if key is not None or target.exists():
            raise CollectionExistsError(f"cannot rename files collection {old!r}: {target} exists or is not a "
                                        "plain folder name")
        self._forget(old)
        os.rename(view.folder, target)
        fsync_directory(self.root)
        if view.format == "vdf":
            self._commit(self._writable(new))  # VDF_META.json names the index after the collection
        return True

    @_read_errors
    def _count(self, name: str) -> int:
        return self._view(name).count

    @_read_errors
    def _describe(self, name: str) -> CollectionInfo:
        view = self._view(name)
        return CollectionInfo(name, view.dim, view.metric, {"format": view.format})

    def _resolve_layout(self, name: str) -> Detected:
        if self._layout_option in (None, AUTO):
            view = self._view(name)
            if view.manifest is None:
                return Detected(get_layout("raw"), f"a {VDF_META} folder: plain records")
            if view.manifest.get("layout"):
                return Detected(get_layout(view.manifest["layout"]), f"recorded in its {MANIFEST}")
        return super()._resolve_layout(name)

    # records -------------------------------------------------------------------------------------

    @_read_errors
    def _scan(self, name: str, batch_size: int, cursor: str | None) -> tuple[Batch, str | None]:
        view = self._view(name)
        number, row, last = _parse_cursor(name, cursor)
        at = bisect.bisect_left(view.numbers, number)
        if at < len(view.parts) and view.parts[at].part != number:
            row = 0  # that part is gone (deleted empty): go on with the next one
        elif at < len(view.parts) and row:
            row = self._resume_row(view, view.parts[at], row, last)
        pieces, wanted = [], batch_size
        while at < len(view.parts) and wanted:
            part = view.parts[at]
            if row < part.rows:
                piece = self._rows(view, part, row, min(part.rows, row + wanted))
                if not len(piece):
                    raise BackendError(f"{view.folder / part.file} holds fewer records than the {part.rows} listed")
                pieces.append(piece)
                wanted, row = wanted - len(piece), row + len(piece)
            if row >= part.rows:
                at, row = at + 1, 0
        if at == len(view.parts):
            return _concat(pieces, view.dim), None
        return _concat(pieces, view.dim), f"{view.parts[at].part}:{row}:{pieces[-1].ids[-1] if row else ''}"

    def _resume_row(self, view: View, part: Part, row: int, last: str) -> int:
        """Where the page after `last` (the id before row `row` when the cursor was made) starts now.
        A part vecflow wrote is sorted by id, so records deleted behind the cursor, `last` among
        them, shift nothing: the page starts at the first id after it. Other folders are immutable."""
        if view.manifest is None or (row <= part.rows and self._rows(view, part, row - 1, row).ids == [last]):
            return row
        return bisect.bisect_right(view.codec.read_ids(view.folder / part.file), last)

    def _get_native(self, name: str, ids: list[str]) -> None:
        """None: a read by id reads the whole part files holding the ids, so a rewrite reading back
        its pages this way would read them once per page; the runner's one pass after is cheaper."""
        return None

    @_read_errors
    def _get(self, name: str, ids: list[str]) -> Batch:
        view = self._view(name)
        where = self._locate(view, ids)
        found: dict[str, Batch] = {}
        for number in sorted(set(where.values())):
            batch = self._read_part(view, view.parts[view.numbers.index(number)])
            found.update((rid, batch.take([i])) for i, rid in enumerate(batch.ids) if where.get(rid) == number)
        return _concat([found[rid] for rid in ids if rid in found], view.dim)

    @_read_errors
    def _upsert(self, name: str, batch: Batch) -> None:
        view = self._writable(name)
        _check_dim(view, batch.dim, "the batch has")
        where = self._locate(view, batch.ids)
        parts = {part.part: part for part in view.parts}
        replaced = []
        for number in sorted(set(where.values())):
            current = self._read_part(view, parts[number])
            replaced.append(parts[number].file)
            parts[number] = folder_io.write_part(view, number, _replace_rows(current, batch, where, number))
        # New parts are sorted by id: a scan cursor then survives deletes behind it (_resume_row).
        fresh = sorted((i for i, rid in enumerate(batch.ids) if rid not in where), key=lambda i: batch.ids[i])
        next_part, added = view.manifest["next_part"], []
        for lo in range(0, len(fresh), self._part_rows):
            chunk = batch.take(fresh[lo:lo + self._part_rows])
            parts[next_part] = folder_io.write_part(view, next_part, chunk)
            added += [(rid, next_part) for rid in chunk.ids]
            next_part += 1
        index = self._index(view)
        view = self._commit(view, list(parts.values()), replaced, next_part=next_part)
        index.executemany("INSERT OR REPLACE INTO ids VALUES (?, ?)", added)
        self._indexes[name] = (view.identity, index)

    @_read_errors
    def _delete(self, name: str, ids: list[str]) -> None:
        view = self._writable(name)
        where = self._locate(view, ids)
        if not where:
            return
        parts = {part.part: part for part in view.parts}
        replaced = []
        for number in sorted(set(where.values())):
            current = self._read_part(view, parts[number])
            keep = [i for i, rid in enumerate(current.ids) if where.get(rid) != number]
            replaced.append(parts.pop(number).file)
            if keep:
                parts[number] = folder_io.write_part(view, number, current.take(keep))
        index = self._index(view)
        view = self._commit(view, list(parts.values()), replaced)
        index.executemany("DELETE FROM ids WHERE id = ?", ((rid,) for rid in where))
        self._indexes[name] = (view.identity, index)

    @_read_errors
    def _query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        view = self._view(name)
        _check_dim(view, vectors.shape[1], f"query vectors have shape {vectors.shape};")
        queries = vectors
        if view.metric == "cosine":
            queries = _unit_rows(queries)
        scores = np.zeros((len(queries), 0), np.float32)
        ids = np.zeros((len(queries), 0), dtype=object)
        for part in view.parts:
            for group in range(len(self._groups(view, part))):
                page = self._read_group(view, part, group, vectors_only=True)
                candidates = _scores(view.metric, queries, page.vectors)
                scores = np.concatenate([scores, candidates], axis=1)
                ids = np.concatenate([ids, np.broadcast_to(np.array(page.ids, dtype=object), candidates.shape)], 1)
                if scores.shape[1] > k:  # keep the best k of each query: memory is one row group
                    keep = np.argpartition(scores, k - 1, axis=1)[:, :k]
                    scores, ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
        order = np.argsort(scores, axis=1, kind="stable")
        sign = -1.0 if view.metric == "ip" else 1.0
        return [[(str(ids[q, i]), sign * float(scores[q, i])) for i in order[q]] for q in range(len(queries))]

    # export and import ---------------------------------------------------------------------------

    def seal(self, name: str, collection_metadata: dict[str, Any], exported_from: str) -> None:
        """Record what an export carries beside the records: the source's collection metadata (and
        the embedding model in it) and the backend it came from."""
        embedding = collection_metadata.get("embedding")
        model = embedding.get("model") if isinstance(embedding, dict) else None
        self._commit(self._writable(name), collection_metadata=dict(collection_metadata), embedding_model=model,
                     exported_from=exported_from)

    def manifest(self, name: str) -> dict[str, Any] | None:
        """The collection's manifest; None for a VDF folder another tool wrote."""
        self._require(name)
        manifest = self._view(name).manifest
        return None if manifest is None else json.loads(json.dumps(manifest))

    def exported_collection_metadata(self, name: str) -> dict[str, Any]:
        """The collection metadata an export recorded (a VDF folder: its model name, if given)."""
        self._require(name)
        view = self._view(name)
        if view.manifest is not None:
            return dict(view.manifest.get("collection_metadata") or {})
        model = view.entry.namespace.get("model_name")
        return {"embedding": {"model": model}} if model and model != NOT_PROVIDED else {}

    def check_integrity(self, name: str) -> str:
        """Check that every part file holds exactly what the manifest says (row count and digest);
        VerificationError naming the first file that does not. For a VDF folder another tool
        wrote, the row count VDF_META.json declares. Returns a one-line summary."""
        self._require(name)
        view = self._view(name)
        if view.manifest is None:
            declared = view.entry.namespace.get("exported_vector_count")
            if isinstance(declared, int) and declared >= 0 and declared != view.count:
                raise VerificationError(f"{view.folder / VDF_META} declares {declared} vectors for {view.entry.key!r}, "
                                        f"its Parquet files hold {view.count}")
            return f"{view.count} records in {len(view.parts)} Parquet file(s) of a {VDF_META} folder (no digest)"
        total = Digest.empty()
        for part in view.parts:
            path = view.folder / part.file
            try:
                # In the digest version the part was written in (an older vecflow's export).
                digest = sum((batch_digest(self._read_group(view, part, group), version=version_of(part.digest))
                              for group in range(len(self._groups(view, part)))), Digest.empty())
            except (pa.ArrowException, OSError, ValueError, BackendError) as exc:
                raise VerificationError(f"{path} cannot be read ({one_line(exc)}); {MANIFEST} lists it") from exc
            if digest.to_text() != part.digest:
                raise VerificationError(f"{path} holds records with digest {digest}, {MANIFEST} says {part.digest}: "
                                        "the folder was changed after it was written")
            total = total + digest
        if total.to_text() != view.manifest["digest"]:
            raise VerificationError(f"{view.folder / MANIFEST} says digest {view.manifest['digest']}, its part "
                                    f"files hold {total}")
        return f"{view.count} records, every part file matching the digest in its {MANIFEST} ({total})"

    # internals -----------------------------------------------------------------------------------

    def _split(self, name: str) -> tuple[Path, str | None]:
        """The folder of a collection name, and the VDF entry after a '/' (FOLDER/INDEX)."""
        head, sep, key = name.partition("/") if isinstance(name, str) else ("", "", "")
        size = len(head.encode("utf-8", errors="replace"))
        if not 0 < size <= _MAX_NAME_BYTES or head.startswith(".") or "\\" in head or "\x00" in head \
                or (sep and not key):
            raise BackendError(f"invalid files collection name {name!r}: use 1 to {_MAX_NAME_BYTES} bytes, no "
                               "'\\' or NUL, no leading '.' ('/' only in VDF_FOLDER/INDEX)")
        return self.root / head, (key if sep else None)

    def _view(self, name: str) -> View:
        """The collection's current description, reloaded when its manifest was replaced."""
        folder, key = self._split(name)
        try:
            current = folder_io.identity(folder_io.described_by(folder, key))
        except FileNotFoundError:
            current = None
        view = self._views.get(name)
        if view is None or view.identity != current:
            view = folder_io.load_view(name, folder, key) if current is not None else None
            if view is None:
                raise CollectionNotFoundError(f"files store {self.root} has no collection {name!r}")
            self._views[name] = view
        return view

    def _writable(self, name: str) -> View:
        view = self._view(name)
        if view.manifest is None:
            raise BackendError(f"files collection {name!r} in {self.root} is a {VDF_META} folder another tool "
                               "wrote: vecflow reads it, and writes only folders it created; import it instead")
        if name not in self._swept and not self._read_only:
            folder_io.sweep(view)
            self._swept.add(name)
        return view

    def _commit(self, view: View, parts: list[Part] | None = None, replaced: list[str] = (), **changes: Any) -> View:
        view = folder_io.commit(view, list(view.parts) if parts is None else parts, list(replaced), changes,
                                self.name)
        self._views[view.name] = view
        return view

    def _forget(self, name: str) -> None:
        self._views.pop(name, None)
        self._swept.discard(name)
        index = self._indexes.pop(name, None)
        if index is not None:
            index[1].close()

    def _groups(self, view: View, part: Part) -> list[int]:
        path = view.folder / part.file
        return _group_sizes(view.codec, str(path), part.rows, folder_io.identity(path))

    def _load(self, view: View, part: Part, group: int) -> Any:
        """A group as loaded from its file, kept for the next page (scans read groups in turn).
        Only the raw group is kept: every caller gets freshly decoded records."""
        path = view.folder / part.file
        key = (str(path), folder_io.identity(path), group, view.codec)
        if self._last_group is None or self._last_group[0] != key:
            self._last_group = (key, view.codec.load(path, group))
        return self._last_group[1]

    def _read_group(self, view: View, part: Part, group: int, vectors_only: bool = False) -> Batch:
        size = self._groups(view, part)[group]
        return view.codec.decode(self._load(view, part, group), 0, size, view.dim, view.folder / part.file,
                                 vectors_only)

    def _rows(self, view: View, part: Part, start: int, stop: int) -> Batch:
        """Rows [start, stop) of a part, reading only the groups that hold them."""
        pieces, offset = [], 0
        for group, size in enumerate(self._groups(view, part)):
            if offset < stop and offset + size > start:
                pieces.append(view.codec.decode(self._load(view, part, group), max(start, offset) - offset,
                                                min(stop, offset + size) - offset, view.dim, view.folder / part.file))
            offset += size
        return _concat(pieces, view.dim)

    def _read_part(self, view: View, part: Part) -> Batch:
        batch = _concat([self._read_group(view, part, group) for group in range(len(self._groups(view, part)))],
                        view.dim)
        if len(batch) != part.rows:
            raise BackendError(f"{view.folder / part.file} holds {len(batch)} records, its manifest says {part.rows}")
        return batch

    def _index(self, view: View) -> sqlite3.Connection:
        """id -> part number of every record, in a temporary SQLite database (bounded memory)."""
        held = self._indexes.get(view.name)
        if held is not None and held[0] == view.identity:
            return held[1]
        if held is not None:
            held[1].close()
        conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        conn.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, part INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute("BEGIN")
        for part in view.parts:
            conn.executemany("INSERT OR REPLACE INTO ids VALUES (?, ?)",
                             ((rid, part.part) for rid in view.codec.read_ids(view.folder / part.file)))
        conn.execute("COMMIT")
        self._indexes[view.name] = (view.identity, conn)
        return conn

    def _locate(self, view: View, ids: list[str]) -> dict[str, int]:
        if not ids or not view.parts:
            return {}
        return dict(rows_by_ids(self._index(view), "SELECT id, part FROM ids WHERE id IN", ids))


# helpers ---------------------------------------------------------------------------------------------


def _check_format(value: Any, error: type[Exception]) -> str:
    fmt = str(value).strip().lower()
    if fmt not in FORMATS:
        raise error(f"unknown files format {value!r}; use one of {', '.join(FORMATS)}")
    return fmt


def _check_dim(view: View, dim: int, what: str) -> None:
    if dim != view.dim:
        raise DimensionMismatchError(f"files collection {view.name!r} has dimension {view.dim}; {what} {dim}")


def _parse_cursor(name: str, cursor: str | None) -> tuple[int, int, str]:
    """`part:row:id`: the position of the next record, and the id of the one before it (if any)."""
    if cursor is None:
        return 0, 0, ""
    number, _, rest = str(cursor).partition(":")
    row, sep, last = rest.partition(":")
    if sep and number.isdigit() and row.isdigit():  # the id before may be "" (an empty id)
        return int(number), int(row), last
    raise BackendError(f"invalid scan cursor {cursor!r} for files collection {name!r}; "
                       "pass None or a cursor returned by scan()")


def _concat(batches: list[Batch], dim: int) -> Batch:
    batches = [batch for batch in batches if len(batch)]
    if len(batches) <= 1:
        return batches[0] if batches else Batch.empty(dim)
    return Batch([rid for b in batches for rid in b.ids], np.concatenate([b.vectors for b in batches]),
                 [d for b in batches for d in b.documents], [m for b in batches for m in b.metadatas],
                 [e for b in batches for e in b.extras])


def _replace_rows(current: Batch, batch: Batch, where: dict[str, int], number: int) -> Batch:
    """Part `number` (`current`) with the records of `batch` that live in it put in their places."""
    row_of = {rid: i for i, rid in enumerate(current.ids)}
    vectors, documents = current.vectors.copy(), list(current.documents)
    metadatas, extras = list(current.metadatas), list(current.extras)
    for position, rid in enumerate(batch.ids):
        if where.get(rid) == number:
            row = row_of[rid]
            vectors[row], documents[row] = batch.vectors[position], batch.documents[position]
            metadatas[row], extras[row] = batch.metadatas[position], batch.extras[position]
    return Batch(list(current.ids), vectors, documents, metadatas, extras)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]
    return vectors / np.where(norms > 0, norms, 1).astype(vectors.dtype)


def _scores(metric: str, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Smaller is closer: squared L2 distance, 1 - cosine similarity, or minus the dot product
    (in float32, as FAISS computes them)."""
    if metric == "cosine":
        return 1.0 - queries @ _unit_rows(vectors).T
    if metric == "ip":
        return -(queries @ vectors.T)
    squared = (np.einsum("ij,ij->i", queries, queries)[:, None] + np.einsum("ij,ij->i", vectors, vectors)[None, :]
               - 2.0 * queries @ vectors.T)
    return np.maximum(squared, 0.0)


@functools.lru_cache(maxsize=4096)
def _group_sizes(codec: Any, path: str, rows: int, identity: tuple[int, ...]) -> list[int]:
    return codec.groups(Path(path), rows)
