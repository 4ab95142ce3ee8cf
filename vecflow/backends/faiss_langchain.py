"""LangChain FAISS folders: what `FAISS.save_local(folder, index_name)` writes, as a collection.

The format (langchain-community 0.4.2, `langchain_community/vectorstores/faiss.py`):
- `<index_name>.faiss`: the index (`faiss.write_index`); `from_texts` builds an `IndexFlatL2`, or
  an `IndexFlatIP` for `MAX_INNER_PRODUCT`, and `add` appends, so positions are 0..n-1;
- `<index_name>.pkl`: `pickle.dump((docstore, index_to_docstore_id))`, an `InMemoryDocstore` whose
  `_dict` maps docstore id -> `Document(id, page_content, metadata)`, and a dict position -> id.

A record is one position: its id is the docstore id, its vector the index's vector there, its text
`page_content` and its metadata `Document.metadata`. The folder is loaded whole (as LangChain does),
changed in memory and written back on every durable call: the pickle always, the index when a
vector changed, each through an fsynced temp file renamed into place. When both change, vecflow's
state records the pair before the two renames, so a crash between them is rolled forward on the
next open, unless the application rewrote the folder since (its files then win). Unpickling runs
whatever code the file holds, so a folder is read from disk only when the store allows it
(`allow_pickle`). What LangChain cannot hold lives in vecflow's state: the metric of a cosine
folder (an L2 index over unit vectors, LangChain's `normalize_L2`), the exact bits of the vectors
it normalised, and which records had no document (LangChain needs text: "" is written); what a
write will need there is put in before its files, so no kill between the two loses it.
See docs/backends/faiss.md.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vecflow.backends import exact
from vecflow.backends.base import CollectionInfo, Hit, NativePage
from vecflow.backends.faiss_index import for_index, write_atomically, write_temp
from vecflow.backends.helpers import fsync_directory, one_line
from vecflow.batch import Batch
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    ConfigError,
    DimensionMismatchError,
    InvalidDataError,
)
from vecflow.layouts import Native
from vecflow.state import VecflowState

INDEX_NAME = "index"
# A dropped directory is renamed to this prefix first (the drop is then done), then removed; the
# FAISS store removes what a kill left of one when it opens.
TRASH_PREFIX = ".dropped-"
FLAT_PARAMS = {"index_type": "flat"}
# vecflow state entries of a folder: the two-file write in flight (collection), the metric when it
# is cosine (collection), the records written without a document (record kind).
PENDING = "pending_files"
METRIC = "metric"
NO_TEXT = "no_text"
_INSTALL = "pip install langchain-community"

Stat = tuple[int, int, int] | None


def folder_files(directory: Path, index_name: str) -> tuple[Path, Path]:
    """(`<index_name>.faiss`, `<index_name>.pkl`) in directory."""
    return directory / f"{index_name}.faiss", directory / f"{index_name}.pkl"


def is_folder(directory: Path, index_name: str) -> bool:
    """Whether directory holds a LangChain folder of that index name (both files)."""
    return all(path.is_file() for path in folder_files(directory, index_name))


def holds_only_the_folder(directory: Path, index_name: str) -> bool:
    """Whether directory holds nothing but the folder's two files and their temp files, so it can
    be renamed or removed whole (LangChain lets several index names share one directory)."""
    names = {path.name for path in folder_files(directory, index_name)}
    return all(entry in names or _is_temp_of(entry, names) for entry in os.listdir(directory))


class LangChainFolder:
    """One LangChain folder of a FAISS store, loaded whole. One thread at a time."""

    def __init__(self, directory: Path, index_name: str, state: VecflowState, scope: str, index: Any,
                 docstore: Any, ids: list[str], identity: tuple[Stat, Stat]) -> None:
        self.directory = directory
        self.files = folder_files(directory, index_name)
        self.state, self.scope = state, scope
        self.index, self.docstore, self.ids = index, docstore, ids
        self.positions = {rid: i for i, rid in enumerate(ids)}
        self.metric = _metric(index, state, scope)
        self.identity = identity  # of the files this copy was read from or last wrote
        self.usable = True

    def is_current(self) -> bool:
        """Whether this copy is still what the folder holds (nobody rewrote it, no write failed)."""
        return self.usable and self.identity == _identity(self.files)

    # reading -------------------------------------------------------------------------------

    def info(self, name: str) -> CollectionInfo:
        return CollectionInfo(name, self.index.d, self.metric, dict(FLAT_PARAMS))

    def count(self) -> int:
        return len(self.ids)

    def scan(self, batch_size: int, cursor: str | None) -> tuple[NativePage, str | None]:
        """Pages in position order. The cursor is `[next position, last id, next id]` as JSON: the
        position is used while the id before it is still the last one returned; after deletes
        renumbered the positions, the next id (or else the last one) is looked up instead."""
        start = self._resume_at(cursor)
        stop = min(start + batch_size, len(self.ids))
        page = self._page(list(range(start, stop)))
        if stop >= len(self.ids):
            return page, None
        return page, json.dumps([stop, self.ids[stop - 1], self.ids[stop]], ensure_ascii=False)

    def get(self, ids: list[str]) -> NativePage:
        return self._page([self.positions[rid] for rid in ids if rid in self.positions])

    def query(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Squared L2 for l2, inner product for ip; cosine folders hold unit vectors in an L2
        index, where 1 - cosine similarity is half the squared distance."""
        self._check_dim(queries.shape[1], "query vectors have")
        n = self.index.ntotal
        if n == 0:
            return [[] for _ in range(len(queries))]
        scores, positions = self.index.search(np.ascontiguousarray(for_index(queries, self.metric)), min(k, n))
        scale = 0.5 if self.metric == "cosine" else 1.0
        return [[(self.ids[int(p)], float(s) * scale) for s, p in zip(row_scores, row_positions) if p >= 0]
                for row_scores, row_positions in zip(scores, positions)]

    # writing -------------------------------------------------------------------------------

    def upsert(self, batch: Batch) -> None:
        """Replace records in place (same position) or append them, then write the folder."""
        self._check_dim(batch.dim, "the batch has")
        document_class, _ = langchain_classes()
        store = self.docstore._dict
        documents = []
        for rid, text, metadata in zip(batch.ids, batch.documents, batch.metadatas):
            fields = {"page_content": "" if text is None else text, "metadata": _plain(metadata)}
            old = store.get(rid) if rid in self.positions else None
            # An existing Document keeps what vecflow does not write (its own id, its type).
            documents.append(old.model_copy(update=fields) if old is not None else document_class(id=rid, **fields))
        _check_picklable(batch.ids, documents)
        stored = np.ascontiguousarray(for_index(batch.vectors, self.metric), dtype=np.float32)
        in_place = [(i, self.positions[rid]) for i, rid in enumerate(batch.ids) if rid in self.positions]
        fresh = [i for i, rid in enumerate(batch.ids) if rid not in self.positions]
        rows, at = [i for i, _ in in_place], [p for _, p in in_place]
        # What the state must say once the files are written goes in first, beside what it says
        # now (a kill after the write then reads the new records exactly, one before it the old):
        # staged exact bits, and the records that will have no document. The rest follows the write.
        textless = {rid: b"" if text is None else None for rid, text in zip(batch.ids, batch.documents)}
        if self.metric == "cosine":
            exact.stage_bits(self.state, self.scope, batch.ids, batch.vectors, stored)
        self.state.put_records(self.scope, NO_TEXT, {rid: mark for rid, mark in textless.items() if mark is not None})
        with self._changing():
            vectors = self._vectors()
            index_changed = bool(fresh) or vectors[at].tobytes() != stored[rows].tobytes()
            vectors[at] = stored[rows]
            if fresh:
                self.index.add(stored[fresh])
                for i in fresh:
                    self.positions[batch.ids[i]] = len(self.ids)
                    self.ids.append(batch.ids[i])
            store.update(zip(batch.ids, documents))
            self._save(index_changed)
        if self.metric == "cosine":
            exact.record_bits(self.state, self.scope, batch.ids, batch.vectors, stored)
        if self.state.has_records(self.scope, NO_TEXT):
            self.state.put_records(self.scope, NO_TEXT, {rid: None for rid, mark in textless.items() if mark is None})

    def update_metadata(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """New metadata for existing records; only the pickle is written."""
        store = self.docstore._dict
        changed = {rid: store[rid].model_copy(update={"metadata": _plain(metadata)})
                   for rid, metadata in zip(ids, metadatas) if rid in self.positions}
        if not changed:
            return
        _check_picklable(list(changed), list(changed.values()))
        with self._changing():
            store.update(changed)
            self._save(index_changed=False)

    def delete(self, ids: list[str]) -> None:
        """Remove records; the later ones move up a position, as LangChain's own delete does."""
        doomed = sorted({self.positions[rid] for rid in ids if rid in self.positions})
        if not doomed:
            return
        with self._changing():
            removed = self.index.remove_ids(np.asarray(doomed, dtype=np.int64))
            if removed != len(doomed):
                raise BackendError(f"LangChain folder {self.directory}: FAISS removed {removed} of "
                                   f"{len(doomed)} vectors")
            gone = {self.ids[p] for p in doomed}
            self.ids = [rid for rid in self.ids if rid not in gone]
            self.positions = {rid: i for i, rid in enumerate(self.ids)}
            for rid in gone:
                del self.docstore._dict[rid]
            self._save(index_changed=True)

    # internals -----------------------------------------------------------------------------

    def _vectors(self) -> np.ndarray:
        """The index's vectors as a writable (n, d) view: an IndexFlat keeps one float32 array."""
        n, d = self.index.ntotal, self.index.d
        if n == 0:
            return np.zeros((0, d), np.float32)
        return faiss.rev_swig_ptr(self.index.get_xb(), n * d).reshape(n, d)

    def _page(self, positions: list[int]) -> NativePage:
        ids = [self.ids[p] for p in positions]
        if not ids:
            return NativePage(Batch.empty(self.index.d), [], [])
        vectors = self._vectors()[positions]
        if self.metric == "cosine":
            vectors = exact.apply_bits(self.state, self.scope, ids, vectors)
        natives = [Native(doc.page_content, doc.metadata) for doc in map(self.docstore._dict.__getitem__, ids)]
        empty = [rid for rid, native in zip(ids, natives) if native.text == ""]
        textless = self.state.get_records(self.scope, NO_TEXT, empty) if empty else {}
        documents = [None if rid in textless else native.text for rid, native in zip(ids, natives)]
        # Copies: an op changing a record's metadata must not change this in-memory docstore.
        batch = Batch(ids, vectors, documents, [copy.deepcopy(native.fields) for native in natives])
        return NativePage(batch, ids, natives)

    def _resume_at(self, cursor: str | None) -> int:
        if cursor is None:
            return 0
        try:
            position, last, following = json.loads(cursor)
            position = int(position)
        except (ValueError, TypeError):
            raise BackendError(f"invalid scan cursor {cursor[:80]!r} for the LangChain folder {self.directory}; "
                               "pass None or a cursor returned by scan()") from None
        if 0 < position <= len(self.ids) and self.ids[position - 1] == last:
            return position
        if following in self.positions:
            return self.positions[following]
        if last in self.positions:
            return self.positions[last] + 1
        raise BackendError(f"scan cursor of the LangChain folder {self.directory}: the records around it were "
                           "deleted since; start the scan again")

    def _check_dim(self, dim: int, what: str) -> None:
        if dim != self.index.d:
            raise DimensionMismatchError(f"faiss collection {self.directory.name!r} has dimension {self.index.d}; "
                                         f"{what} {dim}")

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """A change in memory, then on disk. After a failure this copy is never used again: the
        files are what they were, or a rename left pending is rolled forward on the next open."""
        try:
            yield
        except BaseException:
            self.usable = False
            raise

    def _save(self, index_changed: bool) -> None:
        index_file, pickle_file = self.files
        writes = [(pickle_file, pickle.dumps((self.docstore, dict(enumerate(self.ids)))))]
        if index_changed:
            # The index first: a reader that sees the new pickle finds every position in the index.
            writes.insert(0, (index_file, faiss.serialize_index(self.index)))
        try:
            _commit(self.directory, writes, self.state, self.scope)
        except OSError as exc:
            raise BackendError(f"cannot write the LangChain folder {self.directory}: {one_line(exc)}") from exc
        self.identity = _identity(self.files)


# opening, creating, dropping -----------------------------------------------------------------

def load_folder(directory: Path, index_name: str, state: VecflowState, scope: str,
                allow_pickle: bool, finish_writes: bool = True) -> LangChainFolder:
    """Read a LangChain folder whole (after completing a write a crash left half done, unless
    finish_writes is False: a dry run reads the files as they are)."""
    index_file, pickle_file = folder_files(directory, index_name)
    if not allow_pickle:
        raise ConfigError(f"faiss collection {directory.name!r} is a LangChain folder: reading {pickle_file} "
                          "means unpickling it, which runs any code the file holds; if you trust it, set "
                          "allow_pickle = true in the store's section of vecflow.ini")
    if finish_writes:
        roll_forward(directory, state, scope)
    # Taken first: if the application saves the folder while it is read, the next call reads it again.
    identity = _identity((index_file, pickle_file))
    try:
        with open(pickle_file, "rb") as file, _quiet_langchain_imports():
            loaded = pickle.load(file)  # noqa: S301 (only with allow_pickle, see above)
        index = faiss.read_index(str(index_file))
    except ModuleNotFoundError as exc:
        raise BackendError(f"reading the LangChain folder {directory} needs {exc.name}: {_INSTALL}") from exc
    except Exception as exc:
        raise BackendError(f"cannot read the LangChain folder {directory}: {one_line(exc)}") from exc
    docstore, ids = _check_folder(directory, index_file, loaded, index)
    return LangChainFolder(directory, index_name, state, scope, index, docstore, ids, identity)


def create_folder(directory: Path, index_name: str, dim: int, metric: str, state: VecflowState,
                  scope: str) -> LangChainFolder:
    """An empty folder as `FAISS.from_texts` + `save_local` leave it: `IndexFlatIP` for ip, else
    `IndexFlatL2` (cosine: over unit vectors, LangChain's `normalize_L2`), an empty docstore."""
    _, docstore_class = langchain_classes()
    index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    docstore = docstore_class()
    if metric == "cosine":
        state.put_collection(scope, METRIC, "cosine")
    files = folder_files(directory, index_name)
    if any(path.exists() for path in files):
        raise CollectionExistsError(f"cannot create faiss collection {directory.name!r}: {directory} already "
                                    f"holds files of index name {index_name!r}")
    try:
        if directory.is_dir():
            # A directory LangChain may share between index names: add this one's files, the index
            # first, so the collection exists once the pickle is in place.
            _write_empty(directory, index_name, index, docstore)
        else:
            # A new directory is built hidden and renamed into place: a crash leaves nothing under the name.
            staging = Path(tempfile.mkdtemp(prefix=".creating-", dir=directory.parent))
            try:
                _write_empty(staging, index_name, index, docstore)
                os.rename(staging, directory)
                fsync_directory(directory.parent)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise BackendError(f"cannot create the LangChain folder {directory}: {one_line(exc)}") from exc
    return LangChainFolder(directory, index_name, state, scope, index, docstore, [], _identity(files))


def drop_folder(directory: Path, index_name: str) -> None:
    """Remove the folder: the whole directory when it holds nothing else (renamed away first, so
    it vanishes at once), else its two files, the pickle first."""
    if holds_only_the_folder(directory, index_name):
        trash = directory.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        os.rename(directory, trash)
        fsync_directory(directory.parent)
        shutil.rmtree(trash)
        return
    for path in reversed(folder_files(directory, index_name)):
        path.unlink()
    fsync_directory(directory)


def roll_forward(directory: Path, state: VecflowState, scope: str) -> None:
    """Finish a two-file write a crash interrupted between its renames. When a file it was to
    replace has changed since (the application saved the folder), the application's files win and
    the leftover temp files are removed."""
    pending = state.get_collection(scope, PENDING)
    if not pending:
        return
    waiting = [(directory / temp, directory / final, old) for temp, final, old in pending
               if _is_temp_of(temp, {final}) and (directory / temp).exists()]
    untouched = all(_stat(final) == (tuple(old) if old else None) for _, final, old in waiting)
    for temp, final, _ in waiting:
        if untouched:
            os.replace(temp, final)
        else:
            temp.unlink()
    fsync_directory(directory)
    state.put_collection(scope, PENDING, None)


def langchain_classes() -> tuple[Any, Any]:
    """(Document, InMemoryDocstore): the classes a LangChain folder's pickle is made of."""
    try:
        with _quiet_langchain_imports():
            from langchain_community.docstore.in_memory import InMemoryDocstore
            from langchain_core.documents import Document
    except ImportError as exc:
        raise BackendError(f"LangChain FAISS folders need langchain-community ({exc}): {_INSTALL}") from exc
    return Document, InMemoryDocstore


# helpers ---------------------------------------------------------------------------------------

def _commit(directory: Path, writes: list[tuple[Path, bytes]], state: VecflowState, scope: str) -> None:
    """Write each file through a temp file. Several files: the pairs go into vecflow's state before
    the first rename and leave it after the last, so roll_forward can finish an interrupted commit."""
    temps: list[tuple[Path, Path]] = []
    journaled = False
    try:
        for path, data in writes:
            temps.append((write_temp(path, data), path))
        if len(temps) > 1:
            state.put_collection(scope, PENDING, [[temp.name, path.name, _stat(path)] for temp, path in temps])
            journaled = True
        for temp, path in temps:
            os.replace(temp, path)
        fsync_directory(directory)
    except BaseException:
        if not journaled:  # once journaled, the temp files are what the next open rolls forward
            for temp, _ in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
        raise
    if journaled:
        state.put_collection(scope, PENDING, None)


def _write_empty(directory: Path, index_name: str, index: Any, docstore: Any) -> None:
    index_file, pickle_file = folder_files(directory, index_name)
    write_atomically(index_file, faiss.serialize_index(index))
    write_atomically(pickle_file, pickle.dumps((docstore, {})))


def _check_folder(directory: Path, index_file: Path, loaded: Any, index: Any) -> tuple[Any, list[str]]:
    """The docstore and the ids by position, once the pickle and the index agree."""
    def broken(why: str) -> BackendError:
        return BackendError(f"the LangChain folder {directory} is not one vecflow can read: {why}")

    if not isinstance(loaded, tuple) or len(loaded) != 2:
        raise broken("the pickle is not a (docstore, index_to_docstore_id) pair")
    docstore, mapping = loaded
    documents = getattr(docstore, "_dict", None)
    if not isinstance(documents, dict) or not isinstance(mapping, dict):
        raise broken("the pickle is not an InMemoryDocstore and a dict of positions")
    if not isinstance(index, faiss.IndexFlat) or index.metric_type not in (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT):
        raise broken(f"{index_file.name} is a {type(index).__name__}; vecflow reads and writes flat L2 or "
                     "inner-product indexes (IndexFlatL2, IndexFlatIP: what FAISS.from_texts builds)")
    ids = [mapping.get(position) for position in range(index.ntotal)]
    if len(mapping) != index.ntotal or not all(isinstance(rid, str) for rid in ids) or len(set(ids)) != len(ids):
        raise broken(f"index_to_docstore_id does not map each of the index's {index.ntotal} positions to its own id")
    for rid in ids:
        document = documents.get(rid)
        if not isinstance(getattr(document, "page_content", None), str) or not isinstance(
                getattr(document, "metadata", None), dict):
            raise broken(f"the docstore has no Document with text and metadata for id {rid!r}")
    return docstore, ids


def _metric(index: Any, state: VecflowState, scope: str) -> str:
    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "ip"
    return "cosine" if state.get_collection(scope, METRIC) == "cosine" else "l2"


def _plain(value: Any) -> Any:
    """numpy values as Python ones (the application's pickle must not need numpy to make sense)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _check_picklable(ids: list[str], documents: list[Any]) -> None:
    """Refuse, before anything changes, metadata that cannot be pickled."""
    try:
        pickle.dumps(documents)
    except Exception as exc:
        culprit = next((rid for rid, document in zip(ids, documents) if not _picklable(document)), ids[0])
        raise InvalidDataError(f"record {culprit!r}: metadata cannot be pickled into a LangChain folder "
                               f"({one_line(exc)})") from exc


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _identity(files: tuple[Path, Path]) -> tuple[Stat, Stat]:
    return _stat(files[0]), _stat(files[1])


def _stat(path: Path) -> Stat:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _is_temp_of(entry: str, names: set[str]) -> bool:
    """Whether entry is a temp file write_temp makes for one of names (`.<name>.*.tmp`)."""
    return "/" not in entry and entry.endswith(".tmp") and any(entry.startswith(f".{name}.") for name in names)


@contextlib.contextmanager
def _quiet_langchain_imports() -> Iterator[None]:
    # langchain-community warns on import that it is being sunset; the folders are still its format.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="langchain_community")
        warnings.filterwarnings("ignore", message=".*langchain-community.*", category=DeprecationWarning)
        yield
