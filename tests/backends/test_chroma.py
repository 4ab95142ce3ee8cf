"""Chroma passes the shared contract embedded and over HTTP; the rest is what only Chroma needs."""

from __future__ import annotations

import json
import math
import shutil
import uuid
from urllib.parse import urlparse

import chromadb
import numpy as np
import pytest
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings

from tests.backends.contract import DIM, BackendContract, make_batch, scan_all
from tests.conftest import free_port
from vecflow.backends import open_backend
from vecflow.backends.chroma import BITS_KEY, MARKER, ChromaBackend
from vecflow.batch import Batch
from vecflow.errors import BackendError, ConfigError, InvalidDataError, OperationError
from vecflow.runtime.digest import batch_digest, collection_digest


class ChromaSpecifics:
    """Chroma-only behaviour, run against both the embedded store and the server."""

    def test_values_chroma_refuses_round_trip_exactly(self, backend):
        backend.create_collection("alpha", 2, "l2")
        metadatas = [
            {"marker": MARKER + "[1]", "plain": "json:[1]", "nested": {"s": MARKER, "l": [MARKER]}},
            {"none": None, "deep": {"a": {"b": [1, {"c": None}]}}, "empty": {}, "list": []},
            {"neg_zero": -0.0, "inf": math.inf, "ninf": -math.inf, "huge": 1e300, "big": 2**70,
             "small": -(2**64)},
            {"": 1, "#hash": 2, "$and": 3, "chroma:document": 4, "chroma:x": 5, "vecflow:dim": 6},
            {"np_f": np.float32(0.5), "np_i": np.int64(7), "np_b": np.bool_(True)},
        ]
        batch = Batch([f"m{i}" for i in range(5)], np.ones((5, 2), np.float32), [None] * 5,
                      metadatas)
        backend.upsert("alpha", batch)
        got = backend.get("alpha", batch.ids).metadatas
        assert got[:2] == metadatas[:2]
        # json.dumps tells -0.0 from 0.0, where == does not
        assert json.dumps(got[2], sort_keys=True) == json.dumps(metadatas[2], sort_keys=True)
        assert got[3] == metadatas[3]
        assert got[4] == {"np_f": 0.5, "np_i": 7, "np_b": True}
        assert {k: type(v) for k, v in got[4].items()} == {"np_f": float, "np_i": int, "np_b": bool}
        assert collection_digest(backend, "alpha") == batch_digest(batch)

    def test_not_a_number_in_metadata_round_trips(self, backend):
        backend.create_collection("alpha", 2, "l2")
        batch = Batch(["a"], np.ones((1, 2), np.float32), [None], [{"x": math.nan}])
        backend.upsert("alpha", batch)
        assert math.isnan(backend.get("alpha", ["a"]).metadatas[0]["x"])

    def test_scalars_stay_native_so_chroma_filters_work(self, backend):
        backend.create_collection("alpha", DIM, "l2")
        backend.upsert("alpha", make_batch(10))
        raw = backend.client.get_collection("alpha")
        evens = [f"r{i:05d}" for i in range(0, 10, 2)]
        assert sorted(raw.get(where={"tag": "even"})["ids"]) == evens
        assert raw.get(where={"n": {"$gte": 8}})["ids"] == ["r00008", "r00009"]
        assert raw.get(where={"ok": True}, include=["metadatas"])["metadatas"][0]["score"] == 0.0

    def test_unstorable_metadata_is_refused_before_writing(self, backend):
        backend.create_collection("alpha", 2, "l2")
        batch = Batch(["a", "b"], np.ones((2, 2), np.float32), [None, None],
                      [{}, {"when": object()}])
        with pytest.raises(InvalidDataError, match="'b'"):
            backend.upsert("alpha", batch)
        assert backend.count("alpha") == 0

    def test_upsert_replaces_metadata_and_document_whole(self, backend):
        # Chroma's own upsert merges metadata keys and keeps the old document when given None.
        backend.create_collection("alpha", 2, "l2")
        vectors = np.ones((3, 2), np.float32)
        backend.upsert("alpha", Batch(["a", "b", "c"], vectors, ["one", "two", None],
                                      [{"x": 1, "y": [2]}, {"x": 1}, {"x": 1}]))
        backend.upsert("alpha", Batch(["a", "b", "c"], vectors * 2, [None, "", "three"],
                                      [{"z": 3}, {}, {"x": 1}]))
        got = backend.get("alpha", ["a", "b", "c"])
        assert got.documents == [None, "", "three"]
        assert got.metadatas == [{"z": 3}, {}, {"x": 1}]
        assert got.vectors.tobytes() == (vectors * 2).tobytes()

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
        with pytest.raises(OperationError, match="unknown parameter"):
            backend.create_collection("beta", 4, "cosine", shards=3)

    def test_rejected_collection_names_name_the_rule(self, backend):
        with pytest.raises(BackendError, match="3-512 characters") as info:
            backend.create_collection("ab", 2, "l2")
        assert "\n" not in str(info.value)
        backend.create_collection("alpha", 2, "l2")
        with pytest.raises(BackendError, match="consecutive periods"):
            backend.rename_collection("alpha", "a..b")
        assert backend.list_collections() == ["alpha"]

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

    def test_large_batches_are_split_to_chromas_limit(self, backend, monkeypatch):
        monkeypatch.setattr(backend, "_max_batch", 7)
        backend.create_collection("alpha", DIM, "l2")
        batch = make_batch(30)
        backend.upsert("alpha", batch)
        assert backend.count("alpha") == 30
        assert backend.get("alpha", batch.ids[::-1]).ids == batch.ids[::-1]
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
                "cosine": 1 - vectors @ query[0]
                / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)),
                "ip": vectors @ query[0],
            }[metric]
            assert np.allclose([hits[i] for i in batch.ids], expected, atol=1e-4), metric

    def test_cosine_correction_is_small_and_ignored_once_the_vector_changes(self, backend):
        # Measured on chromadb 1.5.9: cosine collections give most vectors back 1-2 ulps off; the
        # adapter keeps a correction in metadata, trusted only while Chroma's vector is unchanged.
        backend.create_collection("alpha", 384, "cosine")
        batch = make_batch(20, dim=384)
        backend.upsert("alpha", batch)
        raw = backend.client.get_collection("alpha")
        corrections = [m.get(BITS_KEY) for m in raw.get(include=["metadatas"])["metadatas"]]
        assert any(corrections) and max(len(c or "") for c in corrections) < 400
        assert backend.get("alpha", batch.ids).vectors.tobytes() == batch.vectors.tobytes()
        rewritten = batch.vectors[:1] * 2
        raw.update(ids=batch.ids[:1], embeddings=rewritten)
        got = backend.get("alpha", batch.ids[:1])
        assert np.allclose(got.vectors, rewritten, rtol=1e-6)
        assert BITS_KEY not in got.metadatas[0]


class TestChromaEmbedded(BackendContract, ChromaSpecifics):
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

    def test_dry_run_report_names_every_encoded_field(self, backend):
        fields = backend.encoded_fields([{"tags": ["a"], "n": 1, "s": "x", "": 1},
                                         {"tags": None, "f": math.inf, "s": MARKER + "1"}])
        assert sorted(fields) == ["", "f", "s", "tags"]
        assert "lists" in fields["tags"] and "None" in fields["tags"]
        assert "vecflow:keys" in fields[""]
        assert backend.encoded_fields([{"n": 1, "f": 0.5, "s": "x", "b": True}]) == {}

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


class TestChromaServer(BackendContract, ChromaSpecifics):
    @pytest.fixture
    def open_store(self, chroma_url, chroma_admin):
        admin = chroma_admin
        # The server is shared by the session: each test gets a database of its own.
        database = f"test-{uuid.uuid4().hex}"
        admin.create_database(database)
        yield lambda: open_backend("chroma", {"url": chroma_url, "database": database})
        admin.delete_database(database)

    def test_a_missing_database_is_reported(self, chroma_url):
        with pytest.raises(BackendError, match="nope") as info:
            ChromaBackend(url=chroma_url, database="nope")
        assert "\n" not in str(info.value)

    def test_headers_may_come_as_ini_text(self, chroma_url):
        backend = open_backend("chroma", {"url": chroma_url, "headers": "X-Trace: 1\nX-Team: data"})
        backend.close()


def test_an_unreachable_server_is_a_one_line_backend_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendError) as info:
        ChromaBackend(url=url)
    message = str(info.value)
    assert message.startswith(f"cannot reach Chroma at {url}: ") and "\n" not in message


@pytest.mark.parametrize("options", [{}, {"path": "x", "url": "http://localhost:8000"},
                                     {"url": "localhost:8000"}, {"path": "x", "headers": "A: b"},
                                     {"url": "http://localhost:1", "headers": "no colon"}])
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        open_backend("chroma", options)
