"""The contract every backend adapter passes unchanged.

A backend's test module subclasses BackendContract and provides:
- the fixture `open_store`: a callable returning a new connection (Backend instance) to the same,
  initially empty store. The contract's `connect` calls it and attaches the test's VecflowState,
  as the runner attaches the project's, so what vecflow keeps in its state survives a reopen;
- the hooks `plain_records(backend, name)` and `plain_collection_metadata(backend, name)`: the
  collection as the store's own client reads it, with no vecflow code in between (the contract
  checks that no vecflow-named key or marker string ever lands there).

Every case uses the public Backend API only.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest

from vecflow.backends import Backend
from vecflow.backends.base import READ_AHEAD_PAGES, NativePage
from vecflow.batch import Batch
from vecflow.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    DimensionMismatchError,
    InvalidDataError,
    OperationError,
)
from vecflow.runtime.digest import batch_digest, collection_digest
from vecflow.state import VecflowState

DIM = 8
# What must never appear in the application's data: vecflow's name, in any case, and the marker
# character of its old encodings.
PRIVATE_TRACES = ("vecflow", "\u241e")


def make_batch(n: int, dim: int = DIM, start: int = 0, seed: int = 0, prefix: str = "r") -> Batch:
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{i:05d}" for i in range(start, start + n)]
    return Batch(
        ids,
        rng.standard_normal((n, dim)).astype(np.float32),
        [f"document number {i}" for i in range(start, start + n)],
        [{"n": i, "score": i / 7, "tag": "even" if i % 2 == 0 else "odd", "ok": i % 3 == 0}
         for i in range(start, start + n)],
    )


def scan_all(backend: Backend, name: str, batch_size: int = 7) -> Batch:
    ids, vectors, docs, metas = [], [], [], []
    cursor = None
    while True:
        batch, cursor = backend.scan(name, batch_size, cursor)
        assert len(batch) <= batch_size
        ids += batch.ids
        vectors.append(batch.vectors.reshape(len(batch), -1))
        docs += batch.documents
        metas += batch.metadatas
        if cursor is None:
            break
    dim = backend.describe(name).dim
    stacked = np.concatenate([v for v in vectors if v.size] or [np.zeros((0, dim), np.float32)])
    return Batch(ids, stacked.reshape(len(ids), dim), docs, metas)


def assert_as_scanned(backend: Backend, name: str, page: NativePage) -> None:
    """Each record of page is exactly as a scan of the collection reads it."""
    scanned = {}
    for read, _ in backend.native_pages(name, 5):
        for i, rid in enumerate(read.batch.ids):
            scanned[rid] = (read.native_ids[i], read.natives[i], read.batch.take([i]))
    for i, rid in enumerate(page.batch.ids):
        native_id, native, logical = scanned[rid]
        assert (page.native_ids[i], page.natives[i]) == (native_id, native)
        assert batch_digest(page.batch.take([i])) == batch_digest(logical)


def by_id(batch: Batch) -> dict:
    return {r.id: (r.vector.tobytes(), r.document, r.metadata) for r in batch.records()}


def private_traces(value: Any, where: str = "") -> list[str]:
    """Where a vecflow-named key or marker string occurs in a plain structure (dicts, lists,
    tuples, str and bytes; anything else is a number, None or a bool and cannot hold one)."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            found += [f"{where} key {key!r}" for _ in _traces(key)]
            found += private_traces(item, f"{where}[{key!r}]")
        return found
    if isinstance(value, (list, tuple)):
        return [trace for i, item in enumerate(value) for trace in private_traces(item, f"{where}[{i}]")]
    return [f"{where} value {value!r}" for _ in _traces(value)]


def _traces(value: Any) -> list[str]:
    if isinstance(value, bytes):
        return [t for t in PRIVATE_TRACES if t.encode() in value.lower()]
    if isinstance(value, str):
        return [t for t in PRIVATE_TRACES if t in value.lower()]
    return []


# Awkward metadata: values some stores cannot hold natively (None, dicts, mixed lists, big ints).
AWKWARD_METADATAS = [
    {"none": None, "nested": {"a": {"b": [1, {"c": None}]}}, "empty": {}},
    {"tags": ["a", "b"], "mixed": [1, "two", None, 3.5], "empty_list": []},
    {"f": 0.1, "big": 2**53 + 1, "huge": 2**63 - 1, "negative": -(2**63)},
    {"s": "plain", "t": True, "zero": 0},
]
# Ids that are neither unsigned ints nor UUIDs, and one that is.
AWKWARD_IDS = ["doc-a", "doc b:1", "17", "doc-d"]


class BackendContract:
    """Inherit, provide the `open_store` fixture and implement the two plain-client hooks."""

    # hooks each backend's test module implements with the store's own client ------------------

    def plain_records(self, backend: Backend, name: str) -> list[Any]:
        """Every record of collection `name` exactly as the store's own client returns it, one
        plain structure (dicts, lists, str, bytes, numbers) per record: ids, text slot, field
        map or payload, hash fields. Read it without going through vecflow's adapter code."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement plain_records(backend, name): every record of the "
            "collection as the store's own client reads it (e.g. chromadb collection.get(include="
            "['documents', 'metadatas']), qdrant scroll(with_payload=True))")

    def plain_collection_metadata(self, backend: Backend, name: str) -> Any:
        """What the store's own client shows about collection `name` itself (collection metadata,
        config), as a plain structure."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement plain_collection_metadata(backend, name): the "
            "collection-level metadata as the store's own client reads it (e.g. chromadb "
            "collection.metadata, qdrant get_collection(name).config.metadata)")

    # fixtures ----------------------------------------------------------------------------------

    @pytest.fixture
    def vecflow_state(self, tmp_path):
        """The test's vecflow state: a file beside the store, shared by every connection."""
        state = VecflowState(tmp_path / "vecflow-state" / "state.db")
        yield state
        state.close()

    @pytest.fixture
    def connect(self, open_store, vecflow_state):
        """A callable returning a new connection to the store with the test's state attached."""

        def connect() -> Backend:
            backend = open_store()
            backend.attach_state(vecflow_state)
            return backend

        return connect

    @pytest.fixture
    def backend(self, connect):
        backend = connect()
        yield backend
        backend.close()

    # collections ---------------------------------------------------------------------------

    def test_create_list_describe_drop(self, backend):
        assert backend.list_collections() == []
        backend.create_collection("alpha", DIM, "l2")
        backend.create_collection("beta", 3, "cosine")
        assert backend.list_collections() == ["alpha", "beta"]
        assert backend.has_collection("alpha") and not backend.has_collection("gamma")
        info = backend.describe("alpha")
        assert (info.name, info.dim, info.metric) == ("alpha", DIM, "l2")
        assert backend.describe("beta").metric == "cosine"
        backend.drop_collection("alpha")
        assert backend.list_collections() == ["beta"]

    def test_each_metric_is_kept(self, backend):
        for metric in ("cosine", "l2", "ip"):
            backend.create_collection(f"m-{metric}", 4, metric)
            assert backend.describe(f"m-{metric}").metric == metric

    def test_create_existing_collection_is_refused(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        with pytest.raises(CollectionExistsError):
            backend.create_collection("alpha", DIM, "l2")

    def test_missing_collection_is_reported(self, backend):
        with pytest.raises(CollectionNotFoundError):
            backend.drop_collection("nothing")
        with pytest.raises(CollectionNotFoundError):
            backend.count("nothing")
        with pytest.raises(CollectionNotFoundError):
            backend.describe("nothing")

    def test_rename_keeps_records_and_shape(self, backend):
        backend.create_collection("old-name", DIM, "ip")
        batch = make_batch(25)
        backend.upsert("old-name", batch)
        backend.rename_collection("old-name", "new-name")
        assert backend.list_collections() == ["new-name"]
        assert backend.describe("new-name").metric == "ip"
        assert by_id(scan_all(backend, "new-name")) == by_id(batch)

    def test_collections_persist_across_connections(self, backend, connect):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(10))
        backend.close()
        other = connect()
        try:
            assert other.count("alpha") == 10
            assert by_id(scan_all(other, "alpha")) == by_id(make_batch(10))
        finally:
            other.close()

    def test_missing_collection_is_reported_by_every_public_method(self, backend):
        backend.create_collection("present", DIM, "l2")
        batch = make_batch(2)
        calls = {
            "drop_collection": lambda: backend.drop_collection("nothing"),
            "rename_collection": lambda: backend.rename_collection("nothing", "elsewhere"),
            "count": lambda: backend.count("nothing"),
            "describe": lambda: backend.describe("nothing"),
            "collection_metadata": lambda: backend.collection_metadata("nothing"),
            "update_collection_metadata": lambda: backend.update_collection_metadata("nothing", {"a": 1}),
            "scan": lambda: backend.scan("nothing", 10),
            "scan_native": lambda: backend.scan_native("nothing", 10),
            "pages": lambda: next(backend.pages("nothing", 10)),
            "native_pages": lambda: next(backend.native_pages("nothing", 10)),
            "upsert": lambda: backend.upsert("nothing", batch),
            "upsert (empty batch)": lambda: backend.upsert("nothing", Batch.empty(DIM)),
            "update_metadata": lambda: backend.update_metadata("nothing", ["r00000"], [{}]),
            "delete": lambda: backend.delete("nothing", ["r00000"]),
            "delete (no ids)": lambda: backend.delete("nothing", []),
            "get": lambda: backend.get("nothing", ["r00000"]),
            "query": lambda: backend.query("nothing", batch.vectors, 1),
        }
        wrong = []
        for method, call in calls.items():
            try:
                call()
            except CollectionNotFoundError:
                continue
            except Exception as exc:  # every method that gets it wrong is reported at once
                wrong.append(f"{method}: {type(exc).__name__}: {exc}")
            else:
                wrong.append(f"{method}: no error")
        assert wrong == [], "on a missing collection, expected CollectionNotFoundError from every method"
        assert not backend.has_collection("nothing")
        assert backend.list_collections() == ["present"]

    @pytest.mark.parametrize("metric", ["hamming", "L2", "", None])
    def test_unknown_metric_is_an_operation_error_and_creates_nothing(self, backend, metric):
        with pytest.raises(OperationError, match="metric"):
            backend.create_collection("alpha", DIM, metric)
        assert backend.list_collections() == [] and not backend.has_collection("alpha")

    @pytest.mark.parametrize("dim", [0, -3, True, 2.5, "8"])
    def test_bad_dimension_is_an_operation_error_and_creates_nothing(self, backend, dim):
        with pytest.raises(OperationError, match="dimension"):
            backend.create_collection("alpha", dim, "l2")
        assert backend.list_collections() == [] and not backend.has_collection("alpha")

    # collection metadata (kept in vecflow's state, not in the store) ---------------------------

    def test_collection_metadata_merges_persists_and_follows_a_rename(self, backend, connect):
        backend.create_collection("alpha", DIM, "cosine")
        assert backend.collection_metadata("alpha") == {}
        backend.update_collection_metadata("alpha", {"embedding": {"model": "m1", "dim": DIM}, "owner": "search"})
        backend.update_collection_metadata("alpha", {"owner": None, "note": "ünïcode", "absent": None})
        expected = {"embedding": {"model": "m1", "dim": DIM}, "note": "ünïcode"}
        assert backend.collection_metadata("alpha") == expected
        assert backend.describe("alpha").metric == "cosine" and backend.describe("alpha").dim == DIM
        backend.upsert("alpha", make_batch(5))
        backend.rename_collection("alpha", "beta")
        assert backend.collection_metadata("beta") == expected
        backend.close()
        other = connect()
        try:
            assert other.collection_metadata("beta") == expected and other.count("beta") == 5
            other.update_collection_metadata("beta", {"embedding": None})
        finally:
            other.close()
        third = connect()
        try:
            assert third.collection_metadata("beta") == {"note": "ünïcode"}
        finally:
            third.close()

    def test_collection_metadata_goes_with_a_dropped_collection(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        backend.update_collection_metadata("alpha", {"model": "m1"})
        backend.drop_collection("alpha")
        backend.create_collection("alpha", DIM, "l2")
        assert backend.collection_metadata("alpha") == {}

    # no private keys ----------------------------------------------------------------------------

    def test_no_vecflow_key_or_marker_reaches_the_store(self, backend):
        backend.create_collection("alpha", 4, "cosine")
        vectors = np.array([[3, 4, 0, 0], [0.1, 0.2, 0.3, 0.4], [-1, 0, 0, 0], [1e-3, 2, -7, 0.5]], np.float32)
        batch = Batch(AWKWARD_IDS, vectors, ["text a", None, "", "text d"], AWKWARD_METADATAS)
        backend.upsert("alpha", batch)
        updated = [{"list": [1.5, None], "gone": None}, {"deep": {"x": [0.1, {"y": None}]}}]
        backend.update_metadata("alpha", ["doc-a", "17"], updated)
        backend.delete("alpha", ["doc-d"])
        # vecflow's own facts about the collection: they belong in its state, never in the store
        backend.update_collection_metadata("alpha", {"embedding": {"model": "vecflow-probe", "marker": "\u241e"}})
        backend.rename_collection("alpha", "beta")

        got = backend.get("beta", AWKWARD_IDS[:3])
        assert got.ids == AWKWARD_IDS[:3]
        assert got.metadatas == [updated[0], AWKWARD_METADATAS[1], updated[1]]
        assert got.vectors.tobytes() == vectors[:3].tobytes()
        records = self.plain_records(backend, "beta")
        assert len(records) == backend.count("beta") == 3
        assert private_traces(records, "records") == []
        assert private_traces(self.plain_collection_metadata(backend, "beta"), "collection") == []

    # records -------------------------------------------------------------------------------

    def test_upsert_then_scan_returns_every_record_exactly(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        batch = make_batch(50)
        backend.upsert("alpha", batch)
        assert backend.count("alpha") == 50
        scanned = scan_all(backend, "alpha")
        assert sorted(scanned.ids) == sorted(batch.ids)
        assert by_id(scanned) == by_id(batch)
        assert scanned.vectors.dtype == np.float32

    def test_upsert_is_idempotent_and_replaces_by_id(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        batch = make_batch(20)
        backend.upsert("alpha", batch)
        backend.upsert("alpha", batch)
        assert backend.count("alpha") == 20
        assert collection_digest(backend, "alpha") == batch_digest(batch)
        changed = make_batch(5, seed=9)
        changed.metadatas = [{"n": -1}] * 5
        changed.documents = ["replaced"] * 5
        backend.upsert("alpha", changed)
        assert backend.count("alpha") == 20
        got = backend.get("alpha", changed.ids)
        assert got.documents == ["replaced"] * 5 and got.metadatas == [{"n": -1}] * 5
        assert got.vectors.tobytes() == changed.vectors.tobytes()

    def test_update_metadata_replaces_metadata_only(self, backend):
        backend.create_collection("alpha", DIM, "cosine")
        batch = make_batch(10)
        backend.upsert("alpha", batch)
        vectors_before = backend.get("alpha", batch.ids).vectors.tobytes()
        backend.update_metadata("alpha", ["r00001", "r00002", "missing"],
                                [{"only": "this"}, {}, {"never": "stored"}])
        got = backend.get("alpha", ["r00001", "r00002", "r00003"])
        assert got.metadatas == [{"only": "this"}, {}, batch.metadatas[3]]
        assert got.documents == batch.documents[1:4]
        assert backend.get("alpha", batch.ids).vectors.tobytes() == vectors_before
        assert backend.count("alpha") == 10

    def test_cosine_collections_return_written_vectors_exactly(self, backend):
        backend.create_collection("alpha", DIM, "cosine")
        batch = make_batch(40, seed=11)
        for _ in range(3):  # rewriting what was read back must not drift either
            backend.upsert("alpha", batch)
            batch = backend.get("alpha", batch.ids)
        assert batch.vectors.tobytes() == make_batch(40, seed=11).vectors.tobytes()

    def test_scan_cursor_resumes_in_a_new_connection(self, backend, connect):
        backend.create_collection("alpha", DIM, "l2")
        batch = make_batch(40)
        backend.upsert("alpha", batch)
        first, cursor = backend.scan("alpha", 15)
        assert len(first) == 15 and cursor is not None
        assert isinstance(cursor, str) and len(cursor) < 512, "a cursor must not carry the whole id list"
        other = connect()
        try:
            seen = list(first.ids)
            while cursor is not None:
                page, cursor = other.scan("alpha", 15, cursor)
                seen += page.ids
        finally:
            other.close()
        assert sorted(seen) == sorted(batch.ids) and len(seen) == len(set(seen))

    def test_pages_yield_every_record_once_and_their_cursors_resume(self, backend, connect):
        backend.create_collection("alpha", DIM, "l2")
        batch = make_batch(40)
        backend.upsert("alpha", batch)
        pages = list(backend.pages("alpha", 15))
        assert [len(page) for page, _ in pages] == [15, 15, 10]
        assert [cursor is None for _, cursor in pages] == [False, False, True]
        seen = [rid for page, _ in pages for rid in page.ids]
        assert sorted(seen) == sorted(batch.ids) and len(seen) == len(set(seen))
        natives = list(backend.native_pages("alpha", 15))
        assert [page.batch.ids for page, _ in natives] == [page.ids for page, _ in pages]
        assert [cursor for _, cursor in natives] == [cursor for _, cursor in pages]
        other = connect()  # a checkpointed loop resumes from the cursor saved after a page
        try:
            for i, (_, cursor) in enumerate(pages[:-1]):
                rest = [rid for page, _ in other.pages("alpha", 15, cursor) for rid in page.ids]
                assert rest == [rid for page, _ in pages[i + 1:] for rid in page.ids]
        finally:
            other.close()
        backend.create_collection("empty", DIM, "l2")
        assert [(len(page), cursor) for page, cursor in backend.pages("empty", 15)] == [(0, None)]

    def test_pages_read_ahead_are_the_pages_in_order_and_keep_the_lease_on_the_callers_thread(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(40))
        plain = [(page.ids, cursor) for page, cursor in backend.pages("alpha", 15)]
        natives = [(page.batch.ids, page.native_ids, cursor) for page, cursor in backend.native_pages("alpha", 15)]
        renewed: list[str] = []
        backend.write_guard = lambda: renewed.append(threading.current_thread().name)
        try:
            ahead = [(page.ids, cursor) for page, cursor in backend.pages_ahead("alpha", 15)]
            renewed_per_pass = len(renewed)
            native_ahead = [(page.batch.ids, page.native_ids, cursor)
                            for page, cursor in backend.native_pages_ahead("alpha", 15, plain[0][1])]
        finally:
            backend.write_guard = None
        assert ahead == plain and native_ahead == natives[1:]
        assert renewed_per_pass == len(plain)
        assert set(renewed) == {threading.current_thread().name}

    def test_a_loop_that_stops_early_stops_its_read_ahead(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(100))
        read: list[int] = []
        backend.read_observer = read.append
        before = threading.active_count()
        try:
            pages = backend.pages_ahead("alpha", 5)
            first, _ = next(pages)
            pages.close()
        finally:
            backend.read_observer = None
        assert len(first) == 5
        assert threading.active_count() == before
        assert len(read) <= 1 + READ_AHEAD_PAGES + 1  # the page handled, the pages held, one being offered

    def test_scan_survives_in_place_upserts_of_scanned_records(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(30))
        seen, cursor = [], None
        while True:
            page, cursor = backend.scan("alpha", 8, cursor)
            seen += page.ids
            page.metadatas = [{**m, "touched": True} for m in page.metadatas]
            backend.upsert("alpha", page)
            if cursor is None:
                break
        assert sorted(seen) == sorted(make_batch(30).ids)
        assert all(m["touched"] for m in scan_all(backend, "alpha").metadatas)

    def test_get_returns_existing_records_in_the_order_asked(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        batch = make_batch(10)
        backend.upsert("alpha", batch)
        got = backend.get("alpha", ["r00007", "missing", "r00002"])
        assert got.ids == ["r00007", "r00002"]
        assert got.vectors.tobytes() == batch.vectors[[7, 2]].tobytes()
        assert got.documents == ["document number 7", "document number 2"]
        assert backend.get("alpha", []).ids == []

    def test_get_native_reads_records_as_scan_native_does(self, backend):
        """A rewrite digests what it upserted from get_native (runtime/rewrite_digest.py): it must
        give each record exactly as a scan would, after a metadata-only write too; or None."""
        backend.create_collection("alpha", DIM, "cosine")
        batch = make_batch(12)
        backend.upsert("alpha", batch)
        backend.update_metadata("alpha", ["r00003", "r00005"], [{"score": 0.1 * 3, "x": 1 / 3}, {}])
        got = backend.get_native("alpha", ["r00005", "missing", "r00003", "r00008"])
        if got is None:
            return  # the runner reads the collection after such a rewrite
        assert got.batch.ids == ["r00005", "r00003", "r00008"]
        assert_as_scanned(backend, "alpha", got)

    def test_rewrite_metadata_writes_as_update_metadata_and_reads_back_as_scan_native_does(self, backend):
        """A field step's metadata-only write hands over the page it read and digests what this
        returns: the records as a scan then reads them (floats a store changes included), and
        the metadata asked for even where another writer changed or removed a record after the
        page was read; or None, with the write done."""
        backend.create_collection("alpha", DIM, "cosine")
        batch = make_batch(12)
        backend.upsert("alpha", batch)
        page, _ = next(backend.native_pages("alpha", 12))
        # Another writer, after the page was read: a key added, a value changed, a record deleted.
        backend.update_metadata("alpha", ["r00004"], [{**batch.metadatas[4], "n": -4, "added": "later"}])
        backend.delete("alpha", ["r00006"])
        ids = ["r00005", "r00003", "r00004", "r00006", "r00002"]
        wanted = [{"score": 0.1 * 3, "x": 1 / 3, "tag": "new"}, {}, batch.metadatas[4],
                  {"gone": True}, {**batch.metadatas[2], "y": 2 / 3}]
        got = backend.rewrite_metadata("alpha", page, ids, wanted)
        current = by_id(scan_all(backend, "alpha"))
        expected = {rid: (batch.vectors[i].tobytes(), batch.documents[i], batch.metadatas[i])
                    for i, rid in enumerate(batch.ids) if rid != "r00006"}
        expected.update((rid, expected[rid][:2] + (metadata,)) for rid, metadata in zip(ids, wanted) if rid != "r00006")
        assert current == expected
        if got is not None:
            assert got.batch.ids == ["r00005", "r00003", "r00004", "r00002"]
            assert_as_scanned(backend, "alpha", got)
        with pytest.raises(InvalidDataError, match="not in the page"):
            backend.rewrite_metadata("alpha", page.take([0]), ["r00001"], [{}])

    def test_delete_removes_only_the_named_records(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(10))
        backend.delete("alpha", ["r00001", "r00003", "unknown"])
        assert backend.count("alpha") == 8
        assert "r00001" not in scan_all(backend, "alpha").ids
        backend.delete("alpha", [])
        assert backend.count("alpha") == 8

    def test_wrong_dimension_is_refused(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        with pytest.raises(DimensionMismatchError):
            backend.upsert("alpha", make_batch(3, dim=DIM + 1))
        assert backend.count("alpha") == 0

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    def test_vectors_that_are_not_finite_are_refused_and_nothing_is_written(self, backend, bad):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(3))
        before = collection_digest(backend, "alpha")
        batch = make_batch(3, start=3)
        batch.vectors[1, 2] = bad
        with pytest.raises(InvalidDataError):
            backend.upsert("alpha", batch)
        assert backend.count("alpha") == 3 and backend.get("alpha", batch.ids).ids == []
        assert collection_digest(backend, "alpha") == before

    def test_repeated_ids_in_a_batch_are_written_in_turn_and_the_last_wins(self, backend):
        backend.create_collection("alpha", 2, "l2")
        vectors = np.array([[1, 0], [0, 1], [2, 2], [3, 3]], np.float32)
        batch = Batch(["a", "b", "a", "a"], vectors, ["first", "b", "second", "last"],
                      [{"v": 1}, {}, {"v": 2}, {"v": 3}])
        backend.upsert("alpha", batch)
        assert backend.count("alpha") == 2
        got = backend.get("alpha", ["a", "b"])
        assert got.documents == ["last", "b"] and got.metadatas == [{"v": 3}, {}]
        assert got.vectors.tobytes() == vectors[[3, 1]].tobytes()
        assert sorted(scan_all(backend, "alpha").ids) == ["a", "b"]
        backend.upsert("alpha", Batch(["b", "b"], vectors[:2], ["x", "y"], [{"n": 1}, {"n": 2}]))
        assert backend.count("alpha") == 2 and backend.get("alpha", ["b"]).documents == ["y"]

    @pytest.mark.parametrize("batch_size", [0, -1, True])
    def test_bad_batch_size_is_an_operation_error(self, backend, batch_size):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(3))
        with pytest.raises(OperationError, match="batch_size"):
            backend.scan("alpha", batch_size)
        with pytest.raises(OperationError, match="batch_size"):
            backend.scan_native("alpha", batch_size)
        with pytest.raises(OperationError, match="batch_size"):
            backend.set_batch_size(batch_size)

    def test_adapter_batch_sizes_are_sane_and_a_set_batch_size_wins(self, backend):
        backend.create_collection("alpha", 768, "cosine")
        backend.create_collection("small", DIM, "l2")
        for name in ("alpha", "small", "not-created-yet"):  # a size is known before a target exists
            read, write = backend.read_batch_size(name), backend.write_batch_size(name)
            rewrite = backend.rewrite_batch_size(name)
            assert isinstance(read, int) and isinstance(write, int) and isinstance(rewrite, int)
            assert 100 <= read <= 20_000 and 100 <= write <= 100_000, (name, read, write)
            assert 100 <= rewrite <= 20_000, (name, rewrite)
            assert backend.read_batch_size(name, 7) == 7 and backend.write_batch_size(name, 7) == 7
            assert backend.rewrite_batch_size(name, 7) == 7
        chosen = backend.read_batch_size("alpha")
        backend.set_batch_size(7)
        assert (backend.batch_size, backend.read_batch_size("alpha"), backend.write_batch_size("alpha"),
                backend.rewrite_batch_size("alpha")) == (7, 7, 7, 7)
        assert backend.read_batch_size("alpha", 9) == 9  # a caller's own size comes first
        backend.set_batch_size(None)
        assert backend.batch_size is None and backend.read_batch_size("alpha") == chosen

    @pytest.mark.parametrize("configured", [True, False], ids=["set-batch-size", "adapter-size"])
    def test_upsert_larger_than_the_write_size_is_complete_and_durable(self, backend, connect, monkeypatch,
                                                                       configured):
        backend.create_collection("alpha", DIM, "cosine")
        if configured:
            backend.set_batch_size(4)
        else:  # the adapter's own write size, made small so that 23 records take several requests
            monkeypatch.setattr(backend, "_write_batch_size", lambda name: 4)
            monkeypatch.setattr(backend, "_write_batch_limit", lambda name: None)
        assert backend.write_batch_size("alpha") == 4
        requests = []
        real = backend._upsert
        monkeypatch.setattr(backend, "_upsert", lambda name, part: (requests.append(len(part)), real(name, part)))
        batch = make_batch(23)
        repeated = make_batch(1, seed=5)  # written again at the end of the batch: the last one wins
        batch = Batch(batch.ids + repeated.ids, np.concatenate([batch.vectors, repeated.vectors]),
                      batch.documents + ["rewritten"], batch.metadatas + [{"n": -1}])
        backend.upsert("alpha", batch)
        assert requests == [4, 4, 4, 4, 4, 3]
        backend.close()
        other = connect()
        try:
            expected = by_id(make_batch(23))
            expected["r00000"] = (repeated.vectors[0].tobytes(), "rewritten", {"n": -1})
            assert other.count("alpha") == 23
            assert by_id(scan_all(other, "alpha")) == expected
        finally:
            other.close()

    def test_empty_collection(self, backend):
        backend.create_collection("alpha", DIM, "cosine")
        batch, cursor = backend.scan("alpha", 10)
        assert len(batch) == 0 and cursor is None
        assert backend.count("alpha") == 0
        assert collection_digest(backend, "alpha").count == 0
        assert backend.query("alpha", np.ones((1, DIM), np.float32), 3) == [[]]

    # values --------------------------------------------------------------------------------

    def test_metadata_types_round_trip(self, backend):
        backend.create_collection("alpha", 3, "l2")
        metadatas = [
            {"s": "text", "i": 42, "big": 2**40, "f": 0.1, "t": True, "fl": False},
            {"none": None, "s": ""},
            {"list_s": ["a", "b"], "list_i": [1, 2, 3], "empty_list": []},
            {"nested": {"a": {"b": [1, {"c": None}]}, "x": 1.5}},
            {},
            {"mixed": [1, "two", None, 3.5]},
        ]
        batch = Batch([f"m{i}" for i in range(6)], np.arange(18, dtype=np.float32).reshape(6, 3),
                      ["d"] * 6, metadatas)
        backend.upsert("alpha", batch)
        got = backend.get("alpha", batch.ids)
        for want, have in zip(metadatas, got.metadatas):
            assert have == want
            assert {k: type(v) for k, v in have.items()} == {k: type(v) for k, v in want.items()}
        assert collection_digest(backend, "alpha") == batch_digest(batch)

    def test_documents_none_and_empty_are_distinct(self, backend):
        backend.create_collection("alpha", 2, "l2")
        batch = Batch(["a", "b", "c"], np.eye(3, 2, dtype=np.float32), [None, "", "text"], [{}, {}, {}])
        backend.upsert("alpha", batch)
        assert backend.get("alpha", ["a", "b", "c"]).documents == [None, "", "text"]

    def test_unicode_ids_and_texts(self, backend):
        backend.create_collection("alpha", 2, "l2")
        ids = ["naïve-1", "日本語", "emoji-🚀", "with space/slash:colon"]
        docs = ["Größe", "東京は大きい", "🚀 launch", "tab\tnewline\n"]
        batch = Batch(ids, np.arange(8, dtype=np.float32).reshape(4, 2), docs, [{"k": d} for d in docs])
        backend.upsert("alpha", batch)
        assert by_id(scan_all(backend, "alpha")) == by_id(batch)
        assert backend.get("alpha", ["日本語"]).documents == ["東京は大きい"]

    def test_vectors_keep_their_float32_bits(self, backend):
        backend.create_collection("alpha", 4, "l2")
        vectors = np.array([[1e-30, -0.0, 3.4e38, 1.0000001], [0.1, 0.2, 0.3, 0.4]], np.float32)
        backend.upsert("alpha", Batch(["a", "b"], vectors, [None, None], [{}, {}]))
        assert backend.get("alpha", ["a", "b"]).vectors.tobytes() == vectors.tobytes()

    # search --------------------------------------------------------------------------------

    @pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
    def test_query_finds_nearest_neighbours(self, backend, metric):
        backend.create_collection("alpha", DIM, metric)
        batch = make_batch(60, seed=3)
        backend.upsert("alpha", batch)
        queries = batch.vectors[[5, 17]] * 1.0001
        hits = backend.query("alpha", queries, 4)
        assert len(hits) == 2 and all(len(h) == 4 for h in hits)
        if metric == "ip":
            expected = [batch.ids[int(np.argmax(batch.vectors @ q))] for q in queries]
        else:
            expected = ["r00005", "r00017"]
        assert [h[0][0] for h in hits] == expected
        for row in hits:
            scores = [s for _, s in row]
            assert scores == sorted(scores, reverse=(metric == "ip"))

    @pytest.mark.parametrize("k", [0, -1, True])
    def test_bad_k_is_an_operation_error(self, backend, k):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(5))
        with pytest.raises(OperationError, match="k must be"):
            backend.query("alpha", make_batch(1).vectors, k)

    def test_query_vectors_of_the_wrong_dimension_are_refused(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(5))
        with pytest.raises(DimensionMismatchError):
            backend.query("alpha", np.ones((2, DIM + 1), np.float32), 3)
        with pytest.raises(DimensionMismatchError):
            backend.query("alpha", np.ones((1, DIM - 1), np.float32), 3)

    @pytest.mark.parametrize("bad", [math.nan, math.inf])
    def test_query_vectors_that_are_not_finite_are_refused(self, backend, bad):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(5))
        queries = np.ones((2, DIM), np.float32)
        queries[1, 0] = bad
        with pytest.raises(InvalidDataError):
            backend.query("alpha", queries, 3)
