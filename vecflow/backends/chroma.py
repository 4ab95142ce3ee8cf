"""ChromaBackend: a Chroma store, embedded (a folder) or over HTTP (a `chroma run` server).

Records are read and written in the collection's layout: raw (the plain client's, which is also
LangChain's shape on Chroma) or LlamaIndex's. Chroma's traps (measured on chromadb 1.5.9), each
handled here and described in docs/backends/chroma.md: metadata holds only flat scalars and lists
of one type (vecflow/backends/chroma_values.py writes other values as an application would and
keeps the originals in vecflow's state); upsert merges metadata and keeps old documents (writes
send a None for each key to remove); cosine collections return vectors a few ulps off (the written
bits are kept in vecflow's state); metadata keys come back in a random order (the written order
is kept in vecflow's state, vecflow/backends/chroma_order.py); offset paging is O(offset) (scans
page through a sorted id list fetched once per pass); a dropped collection's list values leak into
later records (its records are deleted first). Nothing of vecflow's goes into records or collection metadata.

Crash safety: a write is a delete and an insert where a document goes back to None, and is followed
by bookkeeping in vecflow's state; each chunk's records are kept as write intents until all of it
is done (vecflow/backends/journal.py), and the first use of a collection by a connection finishes
what a kill interrupted. That first use also checks that chromadb can still read the collection
(vecflow/backends/chroma_connect.py: a kill inside chromadb's own index save can damage it).
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from chromadb.errors import ChromaError, InvalidArgumentError, NotFoundError

from vecflow.backends import chroma_order as order
from vecflow.backends import chroma_values as values
from vecflow.backends import exact, journal
from vecflow.backends.base import Backend, CollectionInfo, Hit, NativePage
from vecflow.backends.chroma_connect import FAILURES, connect, damage, location, read_marker, release, write_marker
from vecflow.backends.chroma_lists import ListHolders, holds_list
from vecflow.backends.helpers import one_line
from vecflow.batch import Batch
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    CollectionNotFoundError,
    DamagedStoreError,
    DimensionMismatchError,
    OperationError,
    VecflowError,
)
from vecflow.layouts import Layout, Logical, Native
from vecflow.state import VecflowState

# Chroma's HNSW defaults (1.5.9); describe() reports only settings that differ from these.
HNSW_DEFAULTS = {"ef_construction": 100, "ef_search": 100, "max_neighbors": 16,
                 "resize_factor": 1.2, "sync_threshold": 1000}


@dataclass
class _Write:
    """One chunk of an upsert, planned (read and encoded) before anything is written."""

    batch: Batch
    texts: list[str | None]
    encoded: list[values.Encoded]
    cleared: list[str]  # records whose document goes back to None: deleted, then written anew
    new_ids: list[str]
    orders: dict[str, bytes | None]  # the records' `order` entries (none for unordered layouts)


class ChromaBackend(Backend):
    """A Chroma store: `path` opens an embedded store, `url` (http[s]://host:port) a server."""

    name = "chroma"
    # Chroma keeps cosine vectors unit-length; vecflow's state restores the written bits on read.
    normalises_cosine = False
    has_text_slot = True
    layouts = ("raw", "langchain", "llamaindex")
    # chromadb's get(ids=...) reads short id lists faster per record (pages of 256 about 1.5x
    # pages of 1,000, checkpoints included); `upsert` of 1,000 is as fast as larger requests (the
    # HNSW ingest is the wall); never more than get_max_batch_size() per request
    # (docs/performance.md#batch-sizes).
    preferred_read_batch = 256
    preferred_write_batch = 1000
    # A field step's pass reads a page, then `update`s it and reads its metadata back: there pages
    # of 1,000 took about 25% less CPU than pages of 256 (docs/performance.md#batch-sizes).
    preferred_rewrite_batch = 1000
    # The temporary copy of an embedded store opened read only (see open_read_only).
    _copy: str | None = None

    def __init__(self, path: str | None = None, url: str | None = None, tenant: str | None = None,
                 database: str | None = None, headers: dict[str, str] | str | None = None) -> None:
        self._client: Any = None
        self._ids: dict[Any, list[str]] = {}  # sorted ids per collection uuid, for scans
        self._lists = ListHolders()  # records holding list values, for drops
        self._opened: dict[str, Any] = {}  # the collection each existence check opened
        self._ready: set[str] = set()  # scopes this connection checked and repaired
        # Collections chromadb showed damaged (see chroma_connect.py): nothing but a drop reaches
        # them through this connection again, as a second try would seem to work.
        self._damaged: dict[str, DamagedStoreError] = {}
        self._in_use = ""  # the collection the current call works on
        self._client, self._where = connect(path, url, tenant, database, headers)
        # How many times Chroma parses a float metadata value on its way in (chroma_values.sendable).
        self._float_passes = 2 if url else 1
        try:
            self._max_batch = int(self._client.get_max_batch_size())
        except FAILURES as exc:
            self.close()
            raise BackendError(f"cannot open Chroma at {self._where}: {one_line(exc)}") from exc

    @classmethod
    def open_read_only(cls, **options: Any) -> Backend:
        """chromadb writes to an embedded store's folder whenever it opens it (a row of its write
        lock table, its log applied to the index files): read only, an embedded store is opened
        from a temporary copy of its folder, removed on close. Messages and vecflow's state still
        name the store's own folder."""
        path = options.get("path")
        if not path:
            return super().open_read_only(**options)
        original = os.path.abspath(os.path.expanduser(path))
        copy = tempfile.mkdtemp(prefix="vecflow-read-only-chroma-")
        try:
            if os.path.isdir(original):
                shutil.copytree(original, copy, dirs_exist_ok=True)
            backend = super().open_read_only(**{**options, "path": copy})
        except BaseException:
            shutil.rmtree(copy, ignore_errors=True)
            raise
        assert isinstance(backend, ChromaBackend)
        backend._copy = copy
        backend._where = location(original, options.get("tenant"), options.get("database"))
        return backend

    @property
    def client(self) -> Any:
        """The underlying chromadb client, for Chroma-specific needs (tests, inspection)."""
        return self._api

    def encoded_fields(self, metadatas: list[dict[str, Any]]) -> dict[str, str]:
        return values.coercions(metadatas)

    def attach_state(self, state: VecflowState, project_root: Path | None = None) -> None:
        super().attach_state(state, project_root)
        self._ready.clear()  # the project's state may hold writes to finish

    def close(self) -> None:
        """Release the client. An embedded store's files close with its last client, so a later
        connection to the same path reads fresh state."""
        client, self._client = self._client, None
        self._ids.clear()
        self._opened.clear()
        self._ready.clear()
        if client is not None:
            release(client)
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

    # collections -----------------------------------------------------------------------------

    def _list_collections(self) -> list[str]:
        with self._errors("listing collections"):
            return [c.name for c in self._api.list_collections()]

    def _has_collection(self, name: str) -> bool:
        try:
            self._opened[name] = self._open(name)
        except CollectionNotFoundError:
            self._opened.pop(name, None)
            return False
        return True

    def check_new_collection(self, name: str, params: dict[str, Any]) -> None:
        _check_params(name, params)
        for broken, rule in _NAME_RULES:
            if broken(name):
                raise BackendError(f"Chroma rejected collection name {name!r}: {rule}")

    def _create_collection(self, name: str, dim: int, metric: str, params: dict[str, Any]) -> None:
        """params: `hnsw` (HNSW settings other than space) and `metadata` (the collection's own
        metadata), as describe() reports them."""
        _check_params(name, params)
        hnsw = dict(params.pop("hnsw", None) or {})
        metadata = dict(params.pop("metadata", None) or {})
        with self._errors(f"creating collection {name!r}"):
            try:
                self._api.create_collection(name, embedding_function=None, metadata=metadata or None,
                                            configuration={"hnsw": {**hnsw, "space": metric}})
            except ChromaError as exc:
                if "already exists" in str(exc):
                    raise self._exists(name) from exc
                _raise_if_name_rejected(name, exc)
                raise

    def _drop_collection(self, name: str) -> None:
        collection = self._collection(name, ready=False)
        try:
            with self._errors(f"dropping collection {name!r}"):
                # chromadb 1.5.9 keeps the list values of a dropped collection's records and hands
                # them to records written later, in any collection (chroma-core/chroma#7594);
                # deleting those records first does not. Only records holding a list need it, and
                # deleting every record made a move's drop take longer than its copy.
                # A whole pass over the collection (a move's copy) may have found them already.
                listed = self._lists.found(collection.id)
                if listed is None:
                    listed = {rid for chunk in _chunks(collection.get(include=[])["ids"], self._max_batch)
                              for rid in _holding_lists(collection, chunk)}
                for chunk in _chunks(sorted(listed), self._max_batch):
                    collection.delete(ids=chunk)
        except DamagedStoreError:
            pass  # a damaged collection can still be dropped whole: its way out
        with self._errors(f"dropping collection {name!r}"):
            self._api.delete_collection(name)
        self._damaged.pop(name, None)
        self._ids.pop(collection.id, None)
        self._lists.written(collection.id)
        self._opened.pop(name, None)

    def _rename_collection(self, old: str, new: str) -> bool:
        """Native rename: records, index, configuration and metadata stay in place."""
        collection = self._collection(old)
        if self._has_collection(new):
            raise self._exists(new)
        # Before the rename: a kill right after it finds the state under the new name already.
        self.state.copy_scope(self.scope(old), self.scope(new))
        with self._errors(f"renaming collection {old!r} to {new!r}"):
            try:
                collection.modify(name=new)
            except ChromaError as exc:
                _raise_if_name_rejected(new, exc)
                raise
        self._ids.pop(collection.id, None)
        self._opened.pop(old, None)
        return True

    def _count(self, name: str) -> int:
        with self._errors(f"counting collection {name!r}"):
            return int(self._collection(name).count())

    def _describe(self, name: str) -> CollectionInfo:
        collection = self._collection(name)
        params: dict[str, Any] = {}
        hnsw = {k: v for k, v in (collection.configuration_json.get("hnsw") or {}).items()
                if k != "space" and v is not None and HNSW_DEFAULTS.get(k) != v}
        if hnsw:
            params["hnsw"] = hnsw
        metadata = {k: v for k, v in (collection.metadata or {}).items() if not k.startswith("hnsw:")}
        if metadata:
            params["metadata"] = metadata
        return CollectionInfo(name, self._dim(collection, name), _metric(collection), params)

    def _write_batch_limit(self, name: str) -> int | None:
        return self._max_batch

    # reading ---------------------------------------------------------------------------------

    def _scan(self, name: str, batch_size: int, cursor: str | None) -> tuple[Batch, str | None]:
        page, cursor = self._scan_native(name, batch_size, cursor)
        return page.batch, cursor

    def _scan_native(self, name: str, batch_size: int, cursor: str | None) -> tuple[NativePage, str | None]:
        """One page in id order; the cursor is the last id returned, as JSON. The sorted id list
        is fetched when a pass starts (or this connection has none), then each page is one get."""
        collection = self._collection(name)
        ids = self._sorted_ids(collection, refresh=cursor is None)
        start = 0 if cursor is None else bisect.bisect_right(ids, _decode_cursor(name, cursor))
        wanted = ids[start:start + batch_size]
        after = json.dumps([wanted[-1]], ensure_ascii=False) if start + batch_size < len(ids) else None
        page = self._read(collection, name, wanted)
        self._lists.page_read(collection.id, cursor, zip(page.native_ids, (n.fields for n in page.natives)), after)
        return page, after

    def _sample_natives(self, name: str, limit: int) -> list[tuple[str, Native]]:
        with self._errors(f"reading collection {name!r}"):
            result = self._collection(name).get(limit=limit, include=["documents", "metadatas"])
        return [(rid, Native(text, fields or {}))
                for rid, text, fields in zip(result["ids"], result["documents"], result["metadatas"])]

    def _get(self, name: str, ids: list[str]) -> Batch:
        return self._read(self._collection(name), name, ids).batch

    def _get_native(self, name: str, ids: list[str]) -> NativePage:
        return self._read(self._collection(name), name, ids)

    def _read(self, collection: Any, name: str, ids: list[str]) -> NativePage:
        """The records with these ids that exist, in the order asked: natives as Chroma returns
        them, and the logical batch the layout reads from them."""
        rows: dict[str, tuple[np.ndarray, Native]] = {}
        with self._errors(f"reading collection {name!r}"):
            for chunk in _chunks(list(dict.fromkeys(ids)), self._max_batch):
                result = collection.get(ids=chunk, include=["embeddings", "documents", "metadatas"])
                read = np.asarray(result["embeddings"], dtype=np.float32)
                for i, rid in enumerate(result["ids"]):
                    rows[rid] = (read[i], Native(result["documents"][i], result["metadatas"][i] or {}))
        present = [rid for rid in ids if rid in rows]
        if not present:
            return NativePage(Batch.empty(self._dim(collection, name)), [], [])
        vectors = np.stack([rows[rid][0] for rid in present])
        if _metric(collection) == "cosine":
            vectors = exact.apply_bits(self.state, self.scope(name), present, vectors)
        return self._page(name, present, vectors, [rows[rid][1] for rid in present])

    def _page(self, name: str, ids: list[str], vectors: np.ndarray, natives: list[Native]) -> NativePage:
        """Records as Chroma holds them (vectors as vecflow reads them) with the logical batch the
        layout reads from them: vecflow's entries applied (original values, key order)."""
        scope = self.scope(name)
        entries = self._entries(scope, ids)
        layout = self._layout(name)
        orders = self.state.get_records(scope, order.KIND, ids) if layout.name in order.ORDERED_LAYOUTS else None
        logicals = []
        for rid, native in zip(ids, natives):
            fields = values.decode(native.fields, entries.get(rid, {}))
            if orders is not None:
                fields = order.restore(fields, orders.get(rid))
            logicals.append(layout.read(Native(native.text, fields), True))
        batch = Batch(ids, vectors, [r.document for r in logicals], [r.metadata for r in logicals],
                      [r.extras for r in logicals])
        return NativePage(batch, list(ids), natives)

    # writing ---------------------------------------------------------------------------------

    def _upsert(self, name: str, batch: Batch) -> None:
        """Replace records whole, by id, in the collection's layout: keys absent from the new
        fields are removed and a None document clears the old one (Chroma alone would merge
        both); fields the layout does not own are kept."""
        self._upsert_chunks(name, batch, read_back=False)

    def _upsert_read_back(self, name: str, batch: Batch) -> NativePage:
        """_upsert, whose read-back (made anyway for cosine vectors and float values) fetches the
        records whole: the page as a full read would give it right after the write."""
        return NativePage.concat(self._upsert_chunks(name, batch, read_back=True))

    def _upsert_chunks(self, name: str, batch: Batch, read_back: bool) -> list[NativePage]:
        collection = self._collection(name)
        self._check_dim(collection, name, batch.dim, "the batch has")
        layout, step = self._layout(name), self._max_batch
        chunks = [batch] if len(batch) <= step else [
            batch.take(list(range(lo, min(lo + step, len(batch))))) for lo in range(0, len(batch), step)]
        # Plan every chunk first: a key Chroma refuses stops the upsert before anything is written
        # (Backend.upsert checks a batch it splits into several calls with _check_upsert).
        plans = [self._plan(collection, name, layout, chunk) for chunk in chunks]
        cosine = _metric(collection) == "cosine"
        return [page for plan in plans if (page := self._write(collection, name, plan, cosine, read_back)) is not None]

    def _check_upsert(self, name: str, batch: Batch) -> None:
        """The keys and values Chroma refuses (as _plan finds them), before any request is written."""
        layout = self._layout(name)
        for i, rid in enumerate(batch.ids):
            native = layout.write(rid, Logical(batch.documents[i], batch.metadatas[i], batch.extras[i]), True)
            for key, raw in native.fields.items():
                values.check_key(key, rid, name)
                values.normalised(raw, rid, name, key)

    def _plan(self, collection: Any, name: str, layout: Layout, chunk: Batch) -> _Write:
        held = self._held(collection, name, chunk.ids)
        texts, encoded, cleared, orders = [], [], [], {}
        for i, rid in enumerate(chunk.ids):
            logical = Logical(chunk.documents[i], chunk.metadatas[i], chunk.extras[i])
            old = held.get(rid)
            native = layout.merge(old.decoded(), rid, logical, True) if old else layout.write(rid, logical, True)
            if old and native.text is None and old.native.text is not None:
                # Chroma cannot set a document back to None: the record is deleted and written
                # anew, its old entries still the ones to replace.
                cleared.append(rid)
                old = values.Held(Native(None, {}), old.entries)
            encoded.append(values.encode(native.fields, rid, name, old, self._float_passes))
            texts.append(native.text)
            if layout.name in order.ORDERED_LAYOUTS:
                orders[rid] = order.entry(native.fields)
        return _Write(chunk, texts, encoded, cleared, [rid for rid in chunk.ids if rid not in held], orders)

    def _write(self, collection: Any, name: str, plan: _Write, cosine: bool, read_back: bool) -> NativePage | None:
        """One chunk, between its write intents and their end (see the module docstring); with
        read_back, the chunk's records as Chroma then holds them."""
        ids, scope = plan.batch.ids, self.scope(name)
        self._lists.written(collection.id)
        journal.begin_upsert(self.state, scope, plan.batch)
        with self._interrupted(scope):
            with self._ends_if_refused(scope, ids), self._errors(f"upsert into collection {name!r}"):
                if plan.cleared:
                    collection.delete(ids=plan.cleared)
                collection.upsert(ids=ids, embeddings=plan.batch.vectors, documents=plan.texts,
                                  metadatas=[e.sent or None for e in plan.encoded])
            pending = [rid for rid, e in zip(ids, plan.encoded) if e.pending]
            include = (["embeddings"] if cosine or read_back else []) + (
                ["metadatas"] if pending or read_back else []) + (["documents"] if read_back else [])
            with self._errors(f"reading back collection {name!r}"):
                back = collection.get(ids=ids if cosine or read_back else pending, include=include) if include else None
            position = {rid: i for i, rid in enumerate(back["ids"])} if back is not None else {}
            if cosine:
                returned = np.asarray(back["embeddings"], dtype=np.float32)[[position[rid] for rid in ids]]
                exact.record_bits(self.state, scope, ids, plan.batch.vectors, returned)
            held = self._settle(collection, name, dict(zip(ids, plan.encoded)), _fields_of(back) if pending else {},
                                fresh=set(plan.new_ids))
            self.state.put_records(scope, order.KIND, plan.orders)
            journal.end(self.state, scope, ids)
        self._remember_ids(collection, plan.new_ids)
        if not read_back:
            return None
        present = [rid for rid in ids if rid in position]
        rows = [position[rid] for rid in present]
        natives = [Native(back["documents"][i], held.get(rid, back["metadatas"][i] or {}))
                   for rid, i in zip(present, rows)]
        if not present:
            return NativePage(Batch.empty(plan.batch.dim), [], [])
        vectors = np.asarray(back["embeddings"], dtype=np.float32)[rows]
        if cosine:
            vectors = exact.apply_bits(self.state, scope, present, vectors)
        return self._page(name, present, vectors, natives)

    def _update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Metadata-only writes (Chroma's `update`) of the keys that change: vectors, documents
        and every other part of the native record are not touched."""
        collection = self._collection(name)
        wanted = dict(zip(ids, metadatas))
        held: dict[str, values.Held] = {}
        for chunk in _chunks(list(wanted), self._max_batch):
            held.update(self._held(collection, name, chunk))
        planned, orders = self._plan_metadata(name, wanted, held)
        for lo in range(0, len(planned), self._max_batch):
            self._write_metadata(collection, name, wanted, planned[lo:lo + self._max_batch], orders)

    def _rewrite_metadata(self, name: str, held: NativePage, metadatas: list[dict[str, Any]]) -> NativePage:
        """As _update_metadata, planned from the records as the caller read them (no read before
        the write), then one metadata read-back of them all: it settles the floats Chroma decides
        and checks each record holds what the plan meant it to (a record another writer changed
        since the caller read it is written again the ordinary way, from what Chroma holds then).
        The page returned has the vectors and texts the caller read: `update` leaves them."""
        collection, ids = self._collection(name), list(held.batch.ids)
        wanted = dict(zip(ids, metadatas))
        entries = self._entries(self.scope(name), ids)
        olds = {rid: values.Held(native, entries.get(rid, {})) for rid, native in zip(ids, held.natives)}
        planned, orders = self._plan_metadata(name, wanted, olds)
        holding: dict[str, dict[str, Any]] = {}
        changed: list[str] = []
        for lo in range(0, len(planned), self._max_batch):
            fields, others = self._write_metadata(collection, name, wanted, planned[lo:lo + self._max_batch],
                                                  orders, olds)
            holding.update(fields)
            changed += others
        if changed:
            self._update_metadata(name, changed, [wanted[rid] for rid in changed])
            with self._errors(f"reading back collection {name!r}"):
                holding.update(_fields_of(collection.get(ids=changed, include=["metadatas"])))
            # Deleted before the second write could see them: nothing is left to finish.
            journal.end(self.state, self.scope(name), [rid for rid in changed if rid not in holding])
        kept = [i for i, rid in enumerate(ids) if rid in holding]
        return self._page(name, [ids[i] for i in kept], held.batch.vectors[kept],
                          [Native(held.natives[i].text, holding[ids[i]]) for i in kept])

    def _plan_metadata(self, name: str, wanted: dict[str, dict[str, Any]], held: dict[str, values.Held]
                       ) -> tuple[list[tuple[str, values.Encoded]], dict[str, bytes | None]]:
        """What to send to each held record, all planned before anything is written (a value
        Chroma refuses stops the write first), and the records' `order` entries."""
        layout = self._layout(name)
        planned: list[tuple[str, values.Encoded]] = []
        orders: dict[str, bytes | None] = {}
        for rid, old in held.items():
            new = layout.with_metadata(old.decoded(), wanted[rid], True)
            planned.append((rid, values.encode(new.fields, rid, name, old, self._float_passes)))
            if layout.name in order.ORDERED_LAYOUTS:
                orders[rid] = order.entry(new.fields)
        return planned, orders

    def _write_metadata(self, collection: Any, name: str, wanted: dict[str, dict[str, Any]],
                        chunk: list[tuple[str, values.Encoded]], orders: dict[str, bytes | None],
                        held: dict[str, values.Held] | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """One chunk of a metadata-only write, between its write intents and their end.

        With held (what the plan took Chroma to hold), every record is read back: returns what
        Chroma holds of those that hold what the plan meant, and the ids of those that do not
        (another writer changed them: their intents are left for the caller to write them
        again). Records gone meanwhile are left out of both. Without held, only records with
        floats Chroma decides are read back, and nothing is returned."""
        scope = self.scope(name)
        ids = [rid for rid, _ in chunk]
        self._lists.written(collection.id)
        changed = [(rid, encoded) for rid, encoded in chunk if encoded.sent]
        read = ids if held is not None else [rid for rid, encoded in changed if encoded.pending]
        journal.begin_metadata(self.state, scope, {rid: wanted[rid] for rid in ids})
        with self._interrupted(scope):
            if changed:
                with self._ends_if_refused(scope, ids), self._errors(f"updating metadata in collection {name!r}"):
                    collection.update(ids=[rid for rid, _ in changed], metadatas=[e.sent for _, e in changed])
            with self._errors(f"reading back collection {name!r}"):
                returned = _fields_of(collection.get(ids=read, include=["metadatas"]) if read else None)
            others = set() if held is None else {
                rid for rid, encoded in chunk if rid in returned and not _as_planned(held[rid], encoded, returned[rid])}
            written = {rid: encoded for rid, encoded in chunk
                       if rid not in others and (held is None or rid in returned)}
            holding = self._settle(collection, name, written, returned)
            # A new order of the same keys changes nothing in Chroma, only this entry.
            self.state.put_records(scope, order.KIND, {rid: orders[rid] for rid in written if rid in orders})
            journal.end(self.state, scope, [rid for rid in ids if rid not in others])
        kept = {rid: holding[rid] for rid in written} if held is not None else {}
        return kept, [rid for rid in ids if rid in others]

    def _held(self, collection: Any, name: str, ids: list[str]) -> dict[str, values.Held]:
        """The records with these ids that exist, as Chroma holds them (no vectors)."""
        with self._errors(f"reading collection {name!r}"):
            old = collection.get(ids=ids, include=["metadatas", "documents"])
        entries = self._entries(self.scope(name), old["ids"])
        return {rid: values.Held(Native(text, fields or {}), entries.get(rid, {}))
                for rid, text, fields in zip(old["ids"], old["documents"], old["metadatas"])}

    def _settle(self, collection: Any, name: str, encoded: dict[str, values.Encoded],
                returned: dict[str, dict[str, Any]], fresh: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """Record the `values` entries of written records that changed, once every float sent as a
        neighbour Chroma did not read as the original was sent again (chroma_values.converge);
        always those of `fresh` records (written anew: entries a record deleted behind vecflow's
        back left must not apply to them). returned: the written records' metadata read back
        (at least those with floats Chroma decides). Returns what Chroma then holds of them."""
        returned = values.converge(encoded, returned, lambda sends: self._resend(collection, name, sends))
        changes = {}
        for rid, record in encoded.items():
            entries = values.settle(record, returned.get(rid, {}))
            if entries != record.previous or (fresh and rid in fresh):
                changes[rid] = values.pack(entries)
        self.state.put_records(self.scope(name), values.KIND, changes)
        return returned

    def _resend(self, collection: Any, name: str, sends: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """A metadata-only write of these keys, then what Chroma holds for those records."""
        ids = list(sends)
        with self._errors(f"updating metadata in collection {name!r}"):
            collection.update(ids=ids, metadatas=[sends[rid] for rid in ids])
            back = collection.get(ids=ids, include=["metadatas"])
        return {rid: fields or {} for rid, fields in zip(back["ids"], back["metadatas"])}

    def _delete(self, name: str, ids: list[str]) -> None:
        collection = self._collection(name)
        self._lists.written(collection.id)
        with self._errors(f"deleting from collection {name!r}"):
            for chunk in _chunks(ids, self._max_batch):
                collection.delete(ids=chunk)
        cached = self._ids.get(collection.id)
        if cached is not None:
            gone = set(ids)
            self._ids[collection.id] = [rid for rid in cached if rid not in gone]

    def _query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Squared Euclidean distance for l2, 1 - cosine similarity for cosine, dot product for
        ip (Chroma itself reports 1 - dot)."""
        collection = self._collection(name)
        self._check_dim(collection, name, vectors.shape[1], "the query vectors have")
        metric = _metric(collection)
        hits: list[list[Hit]] = []
        with self._errors(f"querying collection {name!r}"):
            for lo in range(0, len(vectors), self._max_batch):
                result = collection.query(query_embeddings=vectors[lo:lo + self._max_batch], n_results=k,
                                          include=["distances"])
                for row_ids, distances in zip(result["ids"], result["distances"] or []):
                    hits.append([(rid, float(1.0 - d if metric == "ip" else d)) for rid, d in zip(row_ids, distances)])
        return hits

    def _read_marker(self) -> str | None:
        with self._errors("reading the vecflow marker"):
            return read_marker(self._api)

    def _write_marker(self, text: str) -> None:
        with self._errors("writing the vecflow marker"):
            write_marker(self._api, text)

    # internals -------------------------------------------------------------------------------

    @property
    def _api(self) -> Any:
        if self._client is None:
            raise BackendError(f"the connection to Chroma at {self._where} is closed")
        return self._client

    def _exists(self, name: str) -> CollectionExistsError:
        return CollectionExistsError(f"Chroma store {self._where} already has a collection {name!r}")

    def _open(self, name: str) -> Any:
        try:
            with self._errors(f"opening collection {name!r}"):
                return self._api.get_collection(name, embedding_function=None)
        except CollectionNotFoundError:
            raise CollectionNotFoundError(f"Chroma store {self._where} has no collection {name!r}") from None

    def _collection(self, name: str, ready: bool = True) -> Any:
        """The collection the public method's existence check just opened (one round trip per call);
        with `ready`, checked and repaired first when this connection had not used it yet."""
        collection = self._opened[name] if name in self._opened else self._open(name)
        self._in_use = name
        if ready and name in self._damaged:
            raise self._damaged[name]
        scope = self.scope(name)
        if ready and scope not in self._ready:
            self._ready.add(scope)  # first: the repair writes through this very method
            with self._interrupted(scope):
                self._make_ready(collection, name)
        return collection

    def _make_ready(self, collection: Any, name: str) -> None:
        """Make chromadb apply its log (a damaged store says so here, before vecflow writes), then
        finish the writes a kill interrupted: their records are written again, whole."""
        with self._errors(f"opening collection {name!r}"):
            collection.count()
        if self._read_only:
            return  # read as stored: finishing an interrupted write is a write
        pending = journal.pending(self.state, self.scope(name), self._dim(collection, name))
        if pending.records is not None:
            self._upsert(name, pending.records)
        if pending.metadata:
            self._update_metadata(name, list(pending.metadata), list(pending.metadata.values()))

    @contextmanager
    def _ends_if_refused(self, scope: str, ids: list[str]) -> Iterator[None]:
        """Chroma refusing a write (bad input it checks before writing) leaves nothing to finish:
        the intents go, or every later use of the collection would fail on them again."""
        try:
            yield
        except BackendError as exc:
            if _refused(exc.__cause__):
                journal.end(self.state, scope, ids)
            raise

    @contextmanager
    def _interrupted(self, scope: str) -> Iterator[None]:
        """A failure inside leaves write intents behind: the next use of the collection repairs."""
        try:
            yield
        except BaseException:
            self._ready.discard(scope)
            raise

    def _dim(self, collection: Any, name: str) -> int:
        """Chroma's own dimension, else the one recorded at creation, else one record's, else 0."""
        dim = collection.get_model().dimension or self.state.get_collection(self.scope(name), "dim")
        if dim:
            return int(dim)
        with self._errors(f"reading collection {name!r}"):
            sample = collection.get(limit=1, include=["embeddings"])["embeddings"]
        return len(sample[0]) if sample is not None and len(sample) else 0

    def _check_dim(self, collection: Any, name: str, dim: int, what: str) -> None:
        expected = self._dim(collection, name)
        if expected and dim != expected:
            raise DimensionMismatchError(f"Chroma collection {name!r} has dimension {expected}; {what} {dim}")

    def _entries(self, scope: str, ids: list[str]) -> dict[str, dict]:
        found = self.state.get_records(scope, values.KIND, ids) if ids else {}
        return {rid: values.unpack(payload) for rid, payload in found.items()}

    def _sorted_ids(self, collection: Any, refresh: bool) -> list[str]:
        if refresh or collection.id not in self._ids:
            with self._errors(f"listing ids of collection {collection.name!r}"):
                self._ids[collection.id] = sorted(collection.get(include=[])["ids"])
        return self._ids[collection.id]

    def _remember_ids(self, collection: Any, new: list[str]) -> None:
        cached = self._ids.get(collection.id)
        if cached is not None and new:
            known = set(cached)
            self._ids[collection.id] = sorted(cached + [rid for rid in new if rid not in known])

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn chromadb and transport exceptions into one-line vecflow errors."""
        try:
            yield
        except VecflowError:
            raise
        except NotFoundError as exc:
            raise CollectionNotFoundError(f"Chroma {action}: {one_line(exc)}") from exc
        except (httpx.TransportError, OSError) as exc:
            raise BackendError(f"cannot reach Chroma at {self._where} ({action}): {one_line(exc)}") from exc
        except FAILURES as exc:
            damaged = damage(exc, self._where, action, self.scope(self._in_use))
            if damaged is not None:
                self._damaged[self._in_use] = damaged
                raise damaged from exc
            raise BackendError(f"Chroma {action} failed: {one_line(exc)}") from exc


# small helpers -----------------------------------------------------------------------------------

def _metric(collection: Any) -> str:
    config = collection.configuration_json or {}
    index = config.get("hnsw") or config.get("spann") or {}
    return index.get("space") or (collection.metadata or {}).get("hnsw:space") or "l2"


def _refused(exc: BaseException | None) -> bool:
    """Whether chromadb refused a request as such (its own validation, a 4xx), not failed on it."""
    if isinstance(exc, ChromaError):
        code = exc.code()
        return isinstance(code, int) and 400 <= code < 500
    return isinstance(exc, (ValueError, TypeError))


def _decode_cursor(collection: str, cursor: str) -> str:
    try:
        (last,) = json.loads(cursor)
        if isinstance(last, str):
            return last
    except (ValueError, TypeError):
        pass
    raise BackendError(f"scan of Chroma collection {collection!r}: invalid cursor {cursor[:80]!r}")


def _holding_lists(collection: Any, ids: list[str]) -> list[str]:
    """The ids among these whose metadata holds a list value."""
    result = collection.get(ids=ids, include=["metadatas"])
    return [rid for rid, fields in zip(result["ids"], result["metadatas"]) if holds_list(fields)]


def _fields_of(result: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The metadata of each record a `get(include=["metadatas", ...])` returned."""
    if not result:
        return {}
    return {rid: fields or {} for rid, fields in zip(result["ids"], result["metadatas"])}


def _as_planned(held: values.Held, encoded: values.Encoded, fields: dict[str, Any]) -> bool:
    """Whether a record read back after `update` holds what the keys sent make of the record as
    held before: another writer's change in between shows here (floats Chroma decides, the
    pending keys, need only be there)."""
    expected = dict(held.native.fields)
    for key, value in encoded.sent.items():
        if value is None:
            expected.pop(key, None)
        else:
            expected[key] = value
    return expected.keys() == fields.keys() and all(
        key in encoded.pending or values.same(fields[key], value) for key, value in expected.items())


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for lo in range(0, len(items), size):
        yield items[lo:lo + size]


def _check_params(name: str, params: dict[str, Any]) -> None:
    unknown = sorted(set(params) - {"hnsw", "metadata"})
    if unknown:
        raise OperationError(f"Chroma collection {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                             f"Chroma takes 'hnsw' and 'metadata'")


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# The collection names chromadb 1.5.9 refuses, and its words for why (for dry runs, which create
# nothing in the store).
_NAME_RULES = (
    (lambda name: not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]", name),
     "Expected a name containing 3-512 characters from [a-zA-Z0-9._-], starting and ending with a character "
     "in [a-zA-Z0-9]."),
    (lambda name: ".." in name, "Expected a name that does not contains two consecutive periods (..)."),
    (_is_ip_address, "Expected a name that is not a valid ip address."),
)


def _raise_if_name_rejected(name: str, exc: ChromaError) -> None:
    text = one_line(exc)
    if isinstance(exc, InvalidArgumentError) and "Expected a name" in text:
        rule = text[text.index("Expected a name"):].split(" Got")[0]
        raise BackendError(f"Chroma rejected collection name {name!r}: {rule}") from exc
