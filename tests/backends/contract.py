"""The contract every backend adapter passes unchanged.

A backend's test module subclasses BackendContract and provides one fixture, `open_store`: a
callable returning a new connection (Backend instance) to the same, initially empty store.
"""

from __future__ import annotations

import numpy as np
import pytest

from vecflow.backends import Backend
from vecflow.batch import Batch
from vecflow.errors import CollectionExistsError, CollectionNotFoundError, DimensionMismatchError
from vecflow.runtime.digest import batch_digest, collection_digest

DIM = 8


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


def by_id(batch: Batch) -> dict:
    return {r.id: (r.vector.tobytes(), r.document, r.metadata) for r in batch.records()}


class BackendContract:
    """Inherit and provide the `open_store` fixture."""

    @pytest.fixture
    def backend(self, open_store):
        backend = open_store()
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

    def test_collections_persist_across_connections(self, backend, open_store):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(10))
        backend.close()
        other = open_store()
        try:
            assert other.count("alpha") == 10
            assert by_id(scan_all(other, "alpha")) == by_id(make_batch(10))
        finally:
            other.close()

    def test_collection_metadata_merges_persists_and_follows_a_rename(self, backend, open_store):
        backend.create_collection("alpha", DIM, "cosine")
        assert backend.collection_metadata("alpha") == {}
        backend.update_collection_metadata("alpha", {"embedding": {"model": "m1", "dim": DIM}, "owner": "search"})
        backend.update_collection_metadata("alpha", {"owner": None, "note": "ünïcode"})
        expected = {"embedding": {"model": "m1", "dim": DIM}, "note": "ünïcode"}
        assert backend.collection_metadata("alpha") == expected
        assert backend.describe("alpha").metric == "cosine" and backend.describe("alpha").dim == DIM
        backend.upsert("alpha", make_batch(5))
        backend.rename_collection("alpha", "beta")
        backend.close()
        other = open_store()
        try:
            assert other.collection_metadata("beta") == expected and other.count("beta") == 5
        finally:
            other.close()

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

    def test_scan_cursor_resumes_in_a_new_connection(self, backend, open_store):
        backend.create_collection("alpha", DIM, "l2")
        batch = make_batch(40)
        backend.upsert("alpha", batch)
        first, cursor = backend.scan("alpha", 15)
        assert len(first) == 15 and cursor is not None
        assert isinstance(cursor, str) and len(cursor) < 512, "a cursor must not carry the whole id list"
        other = open_store()
        try:
            seen = list(first.ids)
            while cursor is not None:
                page, cursor = other.scan("alpha", 15, cursor)
                seen += page.ids
        finally:
            other.close()
        assert sorted(seen) == sorted(batch.ids) and len(seen) == len(set(seen))

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
