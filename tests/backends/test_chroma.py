"""Chroma passes the shared contract embedded and over HTTP; the rest is what only Chroma needs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from typing import Any
from urllib.parse import urlparse

import chromadb
import numpy as np
import pytest
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings
from langchain_chroma import Chroma
from langchain_core.embeddings import Embeddings
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.vector_stores.chroma import ChromaVectorStore

from tests.backends.contract import DIM, BackendContract, make_batch, private_traces, scan_all
from tests.conftest import closed_port
from vecflow.backends import open_backend
from vecflow.backends.chroma import ChromaBackend
from vecflow.batch import Batch
from vecflow.errors import BackendError, ConfigError, InvalidDataError, OperationError
from vecflow.runtime.digest import batch_digest, collection_digest

# Values Chroma cannot hold as they are (measured on chromadb 1.5.9; see chroma_values.py).
UNHOLDABLE = {
    "none": None, "dict": {"a": {"b": [1, {"c": None}]}, "z": "ü"}, "empty_dict": {}, "empty_list": [],
    "mixed": [1, "two", None, 3.5], "nested": [[1], [2]], "int_and_float": [1, 2.5], "bool_and_int": [True, 1],
    "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "nan_list": [1.0, math.nan], "neg_zero": -0.0,
    "neg_zero_list": [0.5, -0.0], "big_int": 2**70, "small_int": -(2**64), "big_int_list": [1, 2**64],
    "huge": 1e300, "huge_list": [3.4e38, -1.7976931348623157e308], "json_looking": '{"a": 1}',
}


def canonical(value: Any) -> str:
    """JSON that tells -0.0 from 0.0 and 1 from 1.0 and True, and NaN from None."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def unit(seed: str, dim: int = DIM) -> list[float]:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    vector = rng.standard_normal(dim)
    return [float(x) for x in (vector / np.linalg.norm(vector)).astype(np.float32)]


class TinyEmbeddings(Embeddings):
    """A deterministic LangChain embedding: a unit vector seeded by the text's hash."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [unit(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return unit(text)


def write_llamaindex(backend: ChromaBackend, name: str, n: int = 6) -> list[str]:
    """Nodes written by LlamaIndex's own ChromaVectorStore, into a collection the app created."""
    collection = backend.client.get_or_create_collection(name)
    nodes = [TextNode(id_=str(uuid.uuid5(uuid.NAMESPACE_URL, f"node/{i}")), text=f"Node {i}: glaciers ünd tea.",
                      metadata={"title": f"Title {i}", "year": 2000 + i, "rating": 0.5 + i, "draft": i % 2 == 0},
                      embedding=unit(f"node {i}"),
                      relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"source-{i // 2}")})
             for i in range(n)]
    return ChromaVectorStore(chroma_collection=collection).add(nodes)


def plain_rows(backend: ChromaBackend, name: str) -> list[tuple]:
    """Every record as the plain client returns it: id, vector bytes, document, metadata JSON."""
    got = backend.client.get_collection(name).get(include=["embeddings", "documents", "metadatas"])
    rows = zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"])
    return sorted((rid, np.asarray(v, np.float32).tobytes(), doc, canonical(meta)) for rid, v, doc, meta in rows)


class ChromaSpecifics:
    """Chroma-only behaviour, run against both the embedded store and the server."""

    def plain_records(self, backend: ChromaBackend, name: str) -> list[dict[str, Any]]:
        got = backend.client.get_collection(name).get(include=["documents", "metadatas"])
        return [{"id": rid, "document": text, "metadata": fields}
                for rid, text, fields in zip(got["ids"], got["documents"], got["metadatas"])]

    def plain_collection_metadata(self, backend: ChromaBackend, name: str) -> dict[str, Any]:
        collection = backend.client.get_collection(name)
        return {"metadata": collection.metadata, "configuration": collection.configuration_json}

    def assert_no_vecflow_trace(self, backend: ChromaBackend, name: str) -> None:
        """Nothing of vecflow's in any record or the collection, as the plain client sees them."""
        assert private_traces(self.plain_records(backend, name), "records") == []
        assert private_traces(self.plain_collection_metadata(backend, name), "collection") == []

    def test_a_closed_connection_keeps_no_file_or_socket_open(self, connect, tmp_path):
        def open_files() -> list[str]:
            """The store's files the process holds open, once chromadb let go of them: it closes its
            SQLite pool from a thread of its own, a moment (milliseconds; longer under load) after close()."""
            deadline = time.monotonic() + 10
            while True:
                found = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
                held = [path for path in found if path.startswith(str(tmp_path.resolve() / "chroma"))]
                if not held or time.monotonic() > deadline:
                    return held
                time.sleep(0.01)

        def use_and_close() -> int:
            backend = connect()
            backend.create_collection("alpha", DIM, "l2")
            backend.write_marker("ledger 1")
            assert backend.read_marker() == "ledger 1"
            backend.drop_collection("alpha")
            backend.close()
            assert open_files() == []  # an embedded store's files close with its last connection
            return len(os.listdir("/proc/self/fd"))

        opened = use_and_close()  # the first connection may load what the process keeps anyway
        counts = [use_and_close() for _ in range(4)]
        # A leak grows with every connection; chromadb's own threads may hold a descriptor a moment longer.
        assert counts[-1] - opened < len(counts), (opened, counts)

    # values ----------------------------------------------------------------------------------

    def test_values_chroma_cannot_hold_round_trip_exactly_through_vecflow(self, backend):
        backend.create_collection("alpha", 2, "l2")
        metadatas = [{key: value} for key, value in UNHOLDABLE.items()] + [dict(UNHOLDABLE)]
        batch = Batch([f"m{i:02d}" for i in range(len(metadatas))], np.ones((len(metadatas), 2), np.float32),
                      [None] * len(metadatas), metadatas)
        backend.upsert("alpha", batch)
        got = backend.get("alpha", batch.ids)
        assert [canonical(m) for m in got.metadatas] == [canonical(m) for m in metadatas]
        assert collection_digest(backend, "alpha") == batch_digest(batch)
        self.assert_no_vecflow_trace(backend, "alpha")

    def test_unholdable_values_are_written_as_an_application_would(self, backend):
        backend.create_collection("alpha", 2, "l2")
        backend.upsert("alpha", Batch(["a"], np.ones((1, 2), np.float32), ["text"], [dict(UNHOLDABLE)]))
        stored = backend.client.get_collection("alpha").get(ids=["a"], include=["metadatas"])["metadatas"][0]
        for key in ("dict", "empty_dict", "empty_list", "mixed", "nested", "int_and_float", "bool_and_int", "nan",
                    "inf", "nan_list", "big_int", "big_int_list"):
            assert stored[key] == json.dumps(UNHOLDABLE[key], ensure_ascii=False), key
        assert "none" not in stored
        assert canonical(stored["neg_zero"]) == "0.0" and stored["neg_zero_list"] == [0.5, 0.0]
        assert isinstance(stored["huge"], float) and abs(stored["huge"] / 1e300 - 1) < 1e-15
        assert stored["json_looking"] == '{"a": 1}'
        assert backend.get("alpha", ["a"]).metadatas[0]["json_looking"] == '{"a": 1}'

    def test_lists_chroma_can_hold_are_stored_natively(self, backend):
        backend.create_collection("alpha", 2, "l2")
        lists = {"tags": ["a", "ü"], "years": [1990, 2**63 - 1], "scores": [0.5, 1e-300], "flags": [True, False],
                 "blank": [""]}
        backend.upsert("alpha", Batch(["a"], np.ones((1, 2), np.float32), [None], [lists]))
        raw = backend.client.get_collection("alpha")
        assert raw.get(ids=["a"], include=["metadatas"])["metadatas"][0] == lists
        assert raw.get(where={"tags": {"$contains": "ü"}})["ids"] == ["a"]
        assert not backend.state.has_records(backend.scope("alpha"), "values")
        assert backend.get("alpha", ["a"]).metadatas == [lists]

    def test_a_field_the_application_rewrote_wins_over_the_kept_original(self, backend):
        backend.create_collection("alpha", 2, "l2")
        backend.upsert("alpha", Batch(["a"], np.ones((1, 2), np.float32), [None],
                                      [{"d": {"x": 1}, "n": None, "z": -0.0, "keep": [1, "a"]}]))
        backend.client.get_collection("alpha").update(ids=["a"], metadatas=[{"d": "plain", "n": 3, "z": 0.0}])
        assert canonical(backend.get("alpha", ["a"]).metadatas[0]) == canonical(
            {"d": "plain", "keep": [1, "a"], "n": 3, "z": -0.0})
        backend.client.get_collection("alpha").update(ids=["a"], metadatas=[{"z": 2.5}])
        assert backend.get("alpha", ["a"]).metadatas[0]["z"] == 2.5

    def test_a_list_with_nan_never_reaches_chroma(self, backend):
        # chromadb 1.5.9 accepts [nan] and then fails every later write to the collection.
        backend.create_collection("alpha", 2, "l2")
        backend.upsert("alpha", Batch(["a"], np.ones((1, 2), np.float32), [None], [{"v": [math.nan, math.inf]}]))
        backend.upsert("alpha", Batch(["b"], np.ones((1, 2), np.float32), [None], [{"v": [1.0]}]))
        assert backend.count("alpha") == 2

    def test_update_metadata_keeps_originals_and_writes_only_what_changes(self, backend, monkeypatch):
        backend.create_collection("alpha", DIM, "cosine")
        batch = make_batch(3)
        batch.metadatas = [{**m, "extra": {"k": [1, None]}, "gone": None} for m in batch.metadatas]
        backend.upsert("alpha", batch)
        sent = []
        original = Collection.update
        monkeypatch.setattr(Collection, "upsert", lambda *a, **k: pytest.fail("update_metadata must not upsert"))
        monkeypatch.setattr(Collection, "update", lambda self, *a, **k: sent.append(k) or original(self, *a, **k))
        new = {**batch.metadatas[0], "n": 100, "huge": 1e300}
        del new["gone"]
        backend.update_metadata("alpha", ["r00000", "r00001"], [new, batch.metadatas[1]])
        assert [call["ids"] for call in sent] == [["r00000"]]
        assert sent[0]["metadatas"] == [{"n": 100, "huge": 1e300}]
        got = backend.get("alpha", batch.ids)
        assert got.metadatas == [new, batch.metadatas[1], batch.metadatas[2]]
        assert got.vectors.tobytes() == batch.vectors.tobytes()
        self.assert_no_vecflow_trace(backend, "alpha")

    def test_fields_a_write_does_not_change_are_not_rewritten(self, backend):
        # chromadb 1.5.9 moves about 5% of floats by another ulp each time they are rewritten, so
        # a write sends only the keys it changes: the others keep their stored bits.
        rng = np.random.default_rng(3)
        ids = [f"a{i:03d}" for i in range(300)]
        raw = backend.client.create_collection("app-written", embedding_function=None)
        raw.add(ids=ids, embeddings=rng.standard_normal((300, 2)).tolist(),
                metadatas=[{"v": float(v), "w": [float(v)], "big": float(v) * 1e300}
                           for v in rng.standard_normal(300)])
        before = plain_rows(backend, "app-written")
        tagged = [{**m, "tag": "x"} for m in backend.get("app-written", ids).metadatas]
        backend.update_metadata("app-written", ids, tagged)
        backend.upsert("app-written", backend.get("app-written", ids))
        after = plain_rows(backend, "app-written")
        assert [json.loads(row[3]) for row in after] == [{**json.loads(row[3]), "tag": "x"} for row in before]

    def test_keys_chroma_refuses_are_refused_before_anything_is_written(self, backend, monkeypatch):
        backend.create_collection("alpha", 2, "l2")
        monkeypatch.setattr(backend, "_max_batch", 1)  # the bad record is in the last chunk
        for key in ("", "#hash", "$and", "chroma:document", "chroma:x"):
            batch = Batch(["a", "b"], np.ones((2, 2), np.float32), [None, None], [{"ok": 1}, {key: 1}])
            with pytest.raises(InvalidDataError, match=f"record 'b'.*key {re.escape(repr(key))}") as info:
                backend.upsert("alpha", batch)
            assert "\n" not in str(info.value)
            assert backend.count("alpha") == 0

    def test_unstorable_metadata_is_refused_before_writing(self, backend):
        backend.create_collection("alpha", 2, "l2")
        batch = Batch(["a", "b"], np.ones((2, 2), np.float32), [None, None], [{}, {"when": {"t": object()}}])
        with pytest.raises(InvalidDataError, match="record 'b'.*'when'"):
            backend.upsert("alpha", batch)
        assert backend.count("alpha") == 0

    def test_numpy_values_are_stored_as_python_values(self, backend):
        backend.create_collection("alpha", 2, "l2")
        batch = Batch(["a"], np.ones((1, 2), np.float32), [None],
                      [{"f": np.float32(0.5), "i": np.int64(7), "b": np.bool_(True), "v": np.arange(3)}])
        backend.upsert("alpha", batch)
        got = backend.get("alpha", ["a"]).metadatas[0]
        assert canonical(got) == canonical({"b": True, "f": 0.5, "i": 7, "v": [0, 1, 2]})

    def test_scalars_stay_native_so_chroma_filters_work(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(10))
        raw = backend.client.get_collection("alpha")
        evens = [f"r{i:05d}" for i in range(0, 10, 2)]
        assert sorted(raw.get(where={"tag": "even"})["ids"]) == evens
        assert raw.get(where={"n": {"$gte": 8}})["ids"] == ["r00008", "r00009"]
        assert raw.get(where={"ok": True}, include=["metadatas"])["metadatas"][0]["score"] == 0.0

    def test_upsert_replaces_metadata_and_document_whole(self, backend):
        # Chroma's own upsert merges metadata keys and keeps the old document when given None.
        backend.create_collection("alpha", 2, "l2")
        vectors = np.ones((3, 2), np.float32)
        backend.upsert("alpha", Batch(["a", "b", "c"], vectors, ["one", "two", None],
                                      [{"x": 1, "y": [2], "d": {}, "n": None}, {"x": 1, "n": None}, {"x": 1}]))
        backend.upsert("alpha", Batch(["a", "b", "c"], vectors * 2, [None, "", "three"],
                                      [{"z": 3}, {}, {"x": 1}]))
        got = backend.get("alpha", ["a", "b", "c"])
        assert got.documents == [None, "", "three"]
        assert got.metadatas == [{"z": 3}, {}, {"x": 1}]
        assert got.vectors.tobytes() == (vectors * 2).tobytes()
        assert [m for m in backend.client.get_collection("alpha").get(ids=["a"])["metadatas"]] == [{"z": 3}]

    def test_random_float_metadata_gives_equal_digests(self, backend):
        # About 10% of these come back 1 ulp off; the digest compares floats at float32 precision.
        rng = np.random.default_rng(42)
        values = rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 8, 2000)
        ids = [f"f{i:04d}" for i in range(2000)]
        batch = Batch(ids, rng.standard_normal((2000, 4)).astype(np.float32), [None] * 2000,
                      [{"v": float(v)} for v in values])
        backend.create_collection("floats", 4, "l2")
        backend.upsert("floats", batch)
        assert collection_digest(backend, "floats", batch_size=500) == batch_digest(batch)

    def test_floats_beyond_float32_range_are_exact_through_vecflow(self, backend):
        # Measured: about 30% of these come back 1 ulp off, where the digest compares exactly.
        rng = np.random.default_rng(7)
        values = rng.uniform(1, 10, 300) * 10.0 ** rng.integers(39, 300, 300)
        batch = Batch([f"f{i:03d}" for i in range(300)], np.ones((300, 2), np.float32), [None] * 300,
                      [{"v": float(v), "l": [float(v)]} for v in values])
        backend.create_collection("floats", 2, "l2")
        backend.upsert("floats", batch)
        assert collection_digest(backend, "floats", batch_size=100) == batch_digest(batch)

    # metadata key order ----------------------------------------------------------------------

    @pytest.mark.parametrize("layout", ["raw", "langchain"])
    def test_metadata_keys_come_back_in_the_order_written(self, backend, connect, layout):
        # chromadb 1.5.9 returns a record's keys in a new random order on every read.
        backend.create_collection("alpha", 2, "l2", layout=layout)
        written = [{"b": 1, "a": 2, "c": 3}, {"z": None, "y": {"k": 1}, "x": "s"}, {"a": 1, "b": 2}]
        ids = ["o1", "o2", "o3"]
        backend.upsert("alpha", Batch(ids, np.ones((3, 2), np.float32), ["t"] * 3, written))
        other = connect()
        try:
            for reader in (backend, other, other):
                assert [list(m) for m in reader.get("alpha", ids).metadatas] == [list(m) for m in written]
                assert [list(m) for m in scan_all(reader, "alpha").metadatas] == [list(m) for m in written]
        finally:
            other.close()
        # Kept only where sorted order (how a record without an entry reads) would not give it.
        assert sorted(backend.state.get_records(backend.scope("alpha"), "order", ids)) == ["o1", "o2"]
        self.assert_no_vecflow_trace(backend, "alpha")

    def test_update_metadata_keeps_a_new_order_of_the_same_keys(self, backend):
        backend.create_collection("alpha", 2, "l2")
        backend.upsert("alpha", Batch(["a"], np.ones((1, 2), np.float32), [None], [{"b": 1, "a": 2, "c": 3}]))
        backend.update_metadata("alpha", ["a"], [{"c": 3, "b": 1, "a": 2}])
        assert list(backend.get("alpha", ["a"]).metadatas[0]) == ["c", "b", "a"]
        backend.update_metadata("alpha", ["a"], [{"a": 2, "b": 1, "c": 3}])
        assert list(backend.get("alpha", ["a"]).metadatas[0]) == ["a", "b", "c"]
        assert not backend.state.has_records(backend.scope("alpha"), "order")

    def test_keys_the_application_changed_read_in_sorted_order(self, backend):
        backend.create_collection("alpha", 2, "l2")
        backend.upsert("alpha", Batch(["a", "b"], np.ones((2, 2), np.float32), [None, None],
                                      [{"b": 1, "a": 2, "c": 3}, {"b": 1, "a": 2}]))
        raw = backend.client.get_collection("alpha")
        raw.update(ids=["a"], metadatas=[{"d": 4}])
        raw.update(ids=["b"], metadatas=[{"b": 5}])  # same keys: the written order still applies
        got = backend.get("alpha", ["a", "b"]).metadatas
        assert got == [{"a": 2, "b": 1, "c": 3, "d": 4}, {"b": 5, "a": 2}]
        assert [list(m) for m in got] == [["a", "b", "c", "d"], ["b", "a"]]
        backend.delete("alpha", ["a", "b"])
        assert not backend.state.has_records(backend.scope("alpha"), "order")

    # collections -----------------------------------------------------------------------------

    def test_dropping_a_collection_leaves_no_list_values_behind(self, backend):
        # chromadb 1.5.9 hands the list values of a dropped collection's records to records
        # written later, in any collection, unless the records holding lists are deleted first
        # (chroma-core/chroma#7594); records without lists come first and in between here.
        backend.create_collection("alpha", 2, "l2")
        backend.upsert("alpha", Batch(["a", "b", "c", "d"], np.ones((4, 2), np.float32), [None] * 4,
                                      [{"n": 0}, {"tags": ["x"]}, {}, {"years": [1, 2], "n": 3}]))
        backend.drop_collection("alpha")
        backend.create_collection("beta", 2, "l2")
        backend.upsert("beta", Batch(["e", "f", "g", "h"], np.ones((4, 2), np.float32), [None] * 4,
                                     [{"n": 1}, {}, {"n": 2}, {}]))
        raw = backend.client.get_collection("beta").get(include=["metadatas"])["metadatas"]
        assert raw == [{"n": 1}, None, {"n": 2}, None]

    @pytest.mark.parametrize("after_the_pass", ["nothing", "a write", "a pass from the middle"])
    def test_a_drop_after_a_whole_pass_deletes_the_list_holders_it_found(self, backend, connect, monkeypatch,
                                                                          after_the_pass):
        # A move reads its source whole just before dropping it: the pass notes which records hold
        # lists, so the drop need not read every record's metadata again (chroma_lists.py).
        backend.create_collection("alpha", 2, "l2")
        backend.upsert("alpha", Batch([f"r{i}" for i in range(7)], np.ones((7, 2), np.float32), [None] * 7,
                                      [{"n": 0}, {"tags": ["x"]}, {}, {"n": 3}, {}, {"years": [1, 2]}, {"n": 6}]))
        pages = list(backend.native_pages("alpha", 2))
        if after_the_pass == "a write":
            backend.upsert("alpha", Batch(["r2"], np.ones((1, 2), np.float32), [None], [{"late": ["y"]}]))
        dropping = backend
        if after_the_pass == "a pass from the middle":
            dropping = connect()  # a new connection knows only the pass it made
            list(dropping.native_pages("alpha", 2, pages[0][1]))
        metadata_reads = []
        get = Collection.get
        monkeypatch.setattr(Collection, "get", lambda self, *args, **kwargs: metadata_reads.append(
            kwargs.get("include")) or get(self, *args, **kwargs))
        dropping.drop_collection("alpha")
        monkeypatch.undo()
        assert bool([include for include in metadata_reads if include]) == (after_the_pass != "nothing")
        backend.create_collection("beta", 2, "l2")
        backend.upsert("beta", Batch(["e", "f", "g"], np.ones((3, 2), np.float32), [None] * 3, [{"n": 1}, {}, {}]))
        raw = backend.client.get_collection("beta").get(include=["metadatas"])["metadatas"]
        assert raw == [{"n": 1}, None, None]
        if dropping is not backend:
            dropping.close()

    def test_describe_infers_shape_of_collections_created_elsewhere(self, backend):
        raw = backend.client.create_collection("foreign", embedding_function=None,
                                               metadata={"hnsw:space": "ip", "owner": "app"})
        backend.client.create_collection("foreign-empty", embedding_function=None)
        raw.add(ids=["x"], embeddings=[[1.0, 2.0, 3.0]])
        info = backend.describe("foreign")
        assert (info.dim, info.metric, info.params) == (3, "ip", {"metadata": {"owner": "app"}})
        empty = backend.describe("foreign-empty")
        assert (empty.dim, empty.metric) == (0, "l2")
        assert backend.get("foreign", ["x"]).metadatas == [{}]

    def test_hnsw_settings_and_collection_metadata_are_described(self, backend):
        params = {"hnsw": {"ef_search": 50}, "metadata": {"app": "x"}}
        backend.create_collection("alpha", 4, "cosine", **params)
        assert backend.describe("alpha").params == params
        assert backend.client.get_collection("alpha").metadata == {"app": "x"}
        with pytest.raises(OperationError, match="unknown parameter"):
            backend.create_collection("beta", 4, "cosine", shards=3)

    def test_collection_metadata_is_vecflows_own_not_chromas(self, backend):
        backend.create_collection("alpha", 4, "cosine")
        backend.update_collection_metadata("alpha", {"embedding": {"model": "m1"}})
        assert backend.client.get_collection("alpha").metadata is None
        assert backend.describe("alpha").dim == 4  # empty: the dimension comes from vecflow's state

    def test_rejected_collection_names_name_the_rule(self, backend):
        with pytest.raises(BackendError, match="3-512 characters") as info:
            backend.create_collection("ab", 2, "l2")
        assert "\n" not in str(info.value)
        backend.create_collection("alpha", 2, "l2")
        with pytest.raises(BackendError, match="consecutive periods"):
            backend.rename_collection("alpha", "a..b")
        assert backend.list_collections() == ["alpha"]

    # scans, batches, search ------------------------------------------------------------------

    def test_scan_lists_ids_once_per_pass(self, backend, monkeypatch):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(50))
        listings = []
        original = Collection.get

        def counting_get(self, ids=None, *args, **kwargs):
            if ids is None:
                listings.append(kwargs.get("include"))
            return original(self, ids, *args, **kwargs)

        monkeypatch.setattr(Collection, "get", counting_get)
        assert len(scan_all(backend, "alpha", batch_size=5).ids) == 50
        assert listings == [[]]

    def test_scan_native_gives_records_as_chroma_holds_them(self, backend):
        backend.create_collection("alpha", 2, "l2")
        backend.upsert("alpha", Batch(["a"], np.ones((1, 2), np.float32), ["doc"], [{"d": {"x": 1}, "n": None}]))
        page, cursor = backend.scan_native("alpha", 10)
        assert cursor is None and page.native_ids == ["a"]
        assert (page.natives[0].text, page.natives[0].fields) == ("doc", {"d": '{"x": 1}'})
        assert page.batch.metadatas == [{"d": {"x": 1}, "n": None}]

    def test_large_batches_are_split_to_chromas_limit(self, backend, monkeypatch):
        monkeypatch.setattr(backend, "_max_batch", 7)
        backend.create_collection("alpha", DIM, "cosine")
        batch = make_batch(30)
        batch.metadatas = [{**m, "d": {"i": i}} for i, m in enumerate(batch.metadatas)]
        backend.upsert("alpha", batch)
        assert backend.count("alpha") == 30
        got = backend.get("alpha", batch.ids[::-1])
        assert got.ids == batch.ids[::-1] and got.metadatas == batch.metadatas[::-1]
        assert got.vectors.tobytes() == batch.vectors[::-1].tobytes()
        backend.update_metadata("alpha", batch.ids, [{"i": i} for i in range(30)])
        assert scan_all(backend, "alpha").metadatas == [{"i": i} for i in range(30)]
        backend.delete("alpha", batch.ids[:20])
        assert backend.count("alpha") == 10

    def test_query_scores_follow_the_backend_contract(self, backend):
        batch = make_batch(20, seed=5)
        query = batch.vectors[:1] * 0.5
        for metric in ("l2", "cosine", "ip"):
            backend.create_collection(f"q-{metric}", DIM, metric)
            backend.upsert(f"q-{metric}", batch)
            hits = dict(backend.query(f"q-{metric}", query, 20)[0])
            vectors = batch.vectors.astype(np.float64)
            expected = {
                "l2": np.linalg.norm(vectors - query, axis=1) ** 2,
                "cosine": 1 - vectors @ query[0] / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)),
                "ip": vectors @ query[0],
            }[metric]
            assert np.allclose([hits[i] for i in batch.ids], expected, atol=1e-4), metric

    # cosine vectors --------------------------------------------------------------------------

    def test_cosine_vectors_are_exact_through_state_while_chroma_keeps_its_own(self, backend):
        backend.create_collection("alpha", 384, "cosine")
        batch = make_batch(20, dim=384)
        backend.upsert("alpha", batch)
        raw = backend.client.get_collection("alpha").get(ids=batch.ids, include=["embeddings", "metadatas"])
        stored = np.asarray(raw["embeddings"], np.float32)
        assert stored.tobytes() != batch.vectors.tobytes()  # Chroma's own bits, a few ulps off
        assert np.allclose(stored, batch.vectors, rtol=1e-6)
        assert raw["metadatas"] == batch.metadatas
        assert backend.state.has_records(backend.scope("alpha"), "bits")
        assert backend.get("alpha", batch.ids).vectors.tobytes() == batch.vectors.tobytes()
        self.assert_no_vecflow_trace(backend, "alpha")

    def test_a_stale_vector_correction_is_ignored_after_the_app_rewrites_the_vector(self, backend):
        backend.create_collection("alpha", 384, "cosine")
        batch = make_batch(20, dim=384)
        backend.upsert("alpha", batch)
        raw = backend.client.get_collection("alpha")
        rewritten = batch.vectors[:1] * 2
        raw.update(ids=batch.ids[:1], embeddings=rewritten)
        as_chroma_has_it = np.asarray(raw.get(ids=batch.ids[:1], include=["embeddings"])["embeddings"], np.float32)
        got = backend.get("alpha", batch.ids[:2])
        assert got.vectors[0].tobytes() == as_chroma_has_it[0].tobytes()
        assert got.vectors[1].tobytes() == batch.vectors[1].tobytes()

    # framework layouts -----------------------------------------------------------------------

    def test_llamaindex_records_are_detected_and_read_as_nodes(self, backend):
        ids = write_llamaindex(backend, "llama")
        detected = backend.layout_of("llama")
        assert detected.layout.name == "llamaindex" and "LlamaIndex" in detected.reason
        got = backend.get("llama", ids[:1])
        assert got.documents == ["Node 0: glaciers ünd tea."]
        assert got.metadatas == [{"title": "Title 0", "year": 2000, "rating": 0.5, "draft": True}]
        assert got.extras[0]["ref_doc_id"] == "source-0"

    def test_llamaindex_metadata_update_changes_both_copies_and_nothing_else(self, backend):
        ids = write_llamaindex(backend, "llama")
        before = backend.client.get_collection("llama").get(ids=ids, include=["metadatas"])
        originals = dict(zip(before["ids"], before["metadatas"]))
        current = backend.get("llama", ids)
        renamed = [{("headline" if k == "title" else k): v for k, v in m.items()} for m in current.metadatas]
        backend.update_metadata("llama", ids, renamed)
        after = backend.client.get_collection("llama").get(ids=ids, include=["metadatas"])
        for rid, fields in zip(after["ids"], after["metadatas"]):
            old = originals[rid]
            assert fields["headline"] == old["title"] and "title" not in fields
            old_node, new_node = json.loads(old["_node_content"]), json.loads(fields["_node_content"])
            assert new_node["metadata"] == {("headline" if k == "title" else k): v
                                            for k, v in old_node["metadata"].items()}
            assert {k: v for k, v in new_node.items() if k != "metadata"} == \
                {k: v for k, v in old_node.items() if k != "metadata"}
            # every byte outside the metadata member is LlamaIndex's own
            start = old["_node_content"].index('"metadata": ')
            end = old["_node_content"].index(', "excluded_embed_metadata_keys"')
            new_end = fields["_node_content"].index(', "excluded_embed_metadata_keys"')
            assert fields["_node_content"][:start] == old["_node_content"][:start]
            assert fields["_node_content"][new_end:] == old["_node_content"][end:]
            assert {k: v for k, v in fields.items() if k not in ("headline", "_node_content")} == \
                {k: v for k, v in old.items() if k not in ("title", "_node_content")}
        nodes = ChromaVectorStore(chroma_collection=backend.client.get_collection("llama")).get_nodes(ids[:1])
        assert nodes[0].metadata["headline"] == "Title 0"

    def test_reverse_llamaindex_update_restores_native_records_byte_identically(self, backend):
        ids = write_llamaindex(backend, "llama")
        before = plain_rows(backend, "llama")
        current = backend.get("llama", ids)
        backend.update_metadata("llama", ids, [{**m, "year": m["year"] + 1, "new": "x"} for m in current.metadatas])
        assert plain_rows(backend, "llama") != before
        backend.update_metadata("llama", ids, current.metadatas)
        assert plain_rows(backend, "llama") == before
        self.assert_no_vecflow_trace(backend, "llama")

    def test_llamaindex_records_upserted_back_stay_byte_identical(self, backend):
        ids = write_llamaindex(backend, "llama")
        before = plain_rows(backend, "llama")
        backend.upsert("llama", backend.get("llama", ids))
        after = plain_rows(backend, "llama")
        assert [(r[0], r[2], r[3]) for r in after] == [(r[0], r[2], r[3]) for r in before]

    def test_records_vecflow_adds_to_a_llamaindex_collection_are_nodes(self, backend):
        write_llamaindex(backend, "llama")
        backend.upsert("llama", Batch(["fresh"], np.ones((1, DIM), np.float32), ["new text"], [{"k": "v"}]))
        (node,) = ChromaVectorStore(chroma_collection=backend.client.get_collection("llama")).get_nodes(["fresh"])
        assert (node.node_id, node.text, node.metadata) == ("fresh", "new text", {"k": "v"})

    def test_langchain_records_are_read_as_page_content_and_metadata(self, backend):
        store = Chroma(client=backend.client, collection_name="langchain", embedding_function=TinyEmbeddings())
        texts = ["tea grows on hills", "glaciers move slowly"]
        metadatas = [{"source": "a.txt", "page": 1, "tags": ["x", "y"]}, {"source": "b.txt", "page": 2}]
        ids = store.add_texts(texts, metadatas=metadatas)  # LangChain gives them uuid4 ids
        assert backend.layout_of("langchain").layout.name == "langchain"
        got = backend.get("langchain", ids)
        assert got.documents == texts and got.metadatas == metadatas
        backend.update_metadata("langchain", ids, [{**m, "page": m["page"] * 10} for m in metadatas])
        docs = store.get_by_ids(ids)
        assert [d.page_content for d in docs] == texts and [d.metadata["page"] for d in docs] == [10, 20]
        assert docs[0].metadata["tags"] == ["x", "y"]

    def test_a_store_in_the_langchain_layout_writes_what_langchain_reads(self, backend):
        backend.create_collection("langchain", DIM, "l2", layout="langchain")
        backend.upsert("langchain", Batch(["d1"], np.ones((1, DIM), np.float32), ["page"], [{"source": "s"}]))
        store = Chroma(client=backend.client, collection_name="langchain", embedding_function=TinyEmbeddings())
        (doc,) = store.get_by_ids(["d1"])
        assert (doc.page_content, doc.metadata) == ("page", {"source": "s"})


class TestChromaEmbedded(ChromaSpecifics, BackendContract):
    @pytest.fixture
    def open_store(self, tmp_path):
        # Through the registry, with options as strings, as vecflow.ini delivers them.
        return lambda: open_backend("chroma", {"path": str(tmp_path / "chroma")})

    def test_closing_releases_the_store_so_a_reopen_sees_fresh_state(self, tmp_path):
        # chromadb caches one system per path in a process; close() must release it.
        path = tmp_path / "chroma"
        first = ChromaBackend(path=str(path))
        first.create_collection("alpha", 2, "l2")
        first.close()
        shutil.rmtree(path)
        second = ChromaBackend(path=str(path))
        try:
            assert second.list_collections() == []
        finally:
            second.close()

    def test_dry_run_report_names_every_coerced_field(self, backend):
        fields = backend.encoded_fields([{"tags": ["a"], "n": 1, "s": "x", "z": -0.0},
                                         {"tags": None, "f": math.inf, "s": "\u241ejson:1", "d": {}}])
        assert sorted(fields) == ["d", "f", "tags", "z"]
        assert "left out" in fields["tags"] and "JSON" in fields["d"] and "NaN" in fields["f"]
        assert "-0.0" in fields["z"] and all("vecflow's state" in how for how in fields.values())
        assert backend.encoded_fields([{"n": 1, "f": 0.5, "s": "x", "b": True, "l": [1, 2]}]) == {}

    def test_a_closed_backend_says_so(self, backend):
        backend.close()
        with pytest.raises(BackendError, match="closed"):
            backend.list_collections()


@pytest.fixture(scope="session")
def chroma_admin(chroma_url):
    port = urlparse(chroma_url).port
    return chromadb.AdminClient(Settings(
        chroma_api_impl="chromadb.api.fastapi.FastAPI",
        chroma_server_host=chroma_url, chroma_server_http_port=port))


class TestChromaServer(ChromaSpecifics, BackendContract):
    @pytest.fixture
    def open_store(self, chroma_url, chroma_admin):
        admin = chroma_admin
        # The server is shared by the session: each test gets a database of its own.
        database = f"test-{uuid.uuid4().hex}"
        admin.create_database(database)
        options = {"url": chroma_url, "database": database}
        yield lambda: open_backend("chroma", options)
        # Dropped through vecflow first: chromadb 1.5.9 hands the list values of records in a
        # deleted database (or collection) to records written later (see drop_collection).
        cleanup = open_backend("chroma", options)
        for name in cleanup.list_collections():
            cleanup.drop_collection(name)
        cleanup.close()
        admin.delete_database(database)

    def test_a_missing_database_is_reported(self, chroma_url):
        with pytest.raises(BackendError, match="nope") as info:
            ChromaBackend(url=chroma_url, database="nope")
        assert "\n" not in str(info.value)

    def test_databases_of_one_server_keep_separate_state(self, backend, chroma_url):
        assert "database 'test-" in backend.location
        assert ChromaBackend(url=chroma_url).scope("alpha") != backend.scope("alpha")

    def test_headers_may_come_as_ini_text(self, chroma_url):
        backend = open_backend("chroma", {"url": chroma_url, "headers": "X-Trace: 1\nX-Team: data"})
        backend.close()


def test_an_unreachable_server_is_a_one_line_backend_error():
    with closed_port() as port, pytest.raises(BackendError) as info:
        url = f"http://127.0.0.1:{port}"
        ChromaBackend(url=url)
    message = str(info.value)
    assert message.startswith(f"cannot reach Chroma at {url}: ") and "\n" not in message


@pytest.mark.parametrize("options", [{}, {"path": "x", "url": "http://localhost:8000"},
                                     {"url": "localhost:8000"}, {"path": "x", "headers": "A: b"},
                                     {"url": "http://localhost:1", "headers": "no colon"}])
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        open_backend("chroma", options)
