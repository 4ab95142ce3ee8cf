"""Redis adapter: the shared contract, plus the layout, errors and exact search it documents."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import redis

from tests.backends.contract import BackendContract, make_batch
from tests.conftest import free_port
from vecflow.backends import open_backend
from vecflow.backends import redis as redis_module
from vecflow.backends.redis import RedisBackend
from vecflow.backends.redis_search import index_create_args, parse_knn_reply
from vecflow.batch import Batch
from vecflow.errors import BackendError, ConfigError, DimensionMismatchError, OperationError
from vecflow.runtime.digest import batch_digest, collection_digest

_namespace = itertools.count()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of its own for each test, so every test starts from an empty store."""
    return f"test{next(_namespace)}:"


@pytest.fixture
def open_store(redis_url, key_prefix):
    # Through the registry, with options as strings, as vecflow.ini delivers them.
    return lambda: open_backend("redis", {"url": redis_url, "db": "0", "key_prefix": key_prefix})


@pytest.fixture
def store(open_store):
    backend = open_store()
    yield backend
    backend.close()


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    client.close()


class TestRedisContract(BackendContract):
    @pytest.fixture(autouse=True)
    def plain_client(self, raw, key_prefix):
        """The contract's hooks read with a plain redis-py client of their own."""
        self.raw, self.key_prefix = raw, key_prefix

    def plain_records(self, backend, name):
        # SCAN over the record prefix, not vecflow's id zset: every hash an application would see.
        keys = sorted(set(self.raw.scan_iter(match=f"{self.key_prefix}{name}:*", count=1000)))
        assert all(self.raw.type(key) == b"hash" for key in keys)
        return [{"key": key, "fields": self.raw.hgetall(key)} for key in keys]

    def plain_collection_metadata(self, backend, name):
        # A Redis collection has no metadata of its own; with the search module it has an index.
        try:
            return self.raw.execute_command("FT.INFO", f"{self.key_prefix}{name}")
        except redis.ResponseError:
            return None


def test_redis_module_is_redis_py():
    assert redis_module.redis.__name__ == "redis" and hasattr(redis_module.redis, "Redis")


# layout ------------------------------------------------------------------------------------


def test_record_is_a_hash_in_the_documented_layout(store, raw, key_prefix):
    store.create_collection("docs", 3, "cosine")
    vector = np.array([[0.1, -2.5, 3e-8]], np.float32)
    metadata = {"s": "x", "i": 7, "f": 0.5, "yes": True, "no": False, "none": None,
                "tags": ["a", "b"], "nested": {"a": 1}, "text": "shadowed"}
    store.upsert("docs", Batch(["a:b c/ü"], vector, ["hello"], [metadata]))

    fields = raw.hgetall(f"{key_prefix}docs:a:b c/ü".encode())
    assert fields[b"vector"] == vector[0].astype("<f4").tobytes()
    assert fields[b"text"] == b"hello"
    assert fields[b"id"] == "a:b c/ü".encode()
    assert json.loads(fields[b"metadata"]) == metadata
    flat = {k: v for k, v in fields.items() if k not in (b"vector", b"text", b"id", b"metadata")}
    assert flat == {b"s": b"x", b"i": b"7", b"f": b"0.5", b"yes": b"1", b"no": b"0"}

    ids = raw.zrange(f"{key_prefix}vecflow:ids:docs", 0, -1, withscores=True)
    assert ids == [("a:b c/ü".encode(), 0.0)]
    entry = json.loads(raw.hget(f"{key_prefix}vecflow:collections", "docs"))
    assert entry == {"dim": 3, "metric": "cosine", "prefix": f"{key_prefix}docs:", "params": {}, "index": None}


def test_collection_metadata_is_kept_in_vecflow_state_not_in_redis(store, raw, key_prefix):
    store.create_collection("docs", 2, "l2")
    keys_before = sorted(raw.keys(f"{key_prefix}*"))
    entry_before = raw.hget(f"{key_prefix}vecflow:collections", "docs")
    store.update_collection_metadata("docs", {"embedding": {"model": "m1"}})
    assert store.collection_metadata("docs") == {"embedding": {"model": "m1"}}
    assert sorted(raw.keys(f"{key_prefix}*")) == keys_before
    assert raw.hget(f"{key_prefix}vecflow:collections", "docs") == entry_before


def test_record_hashes_hold_no_field_of_vecflows(store, raw, key_prefix):
    store.create_collection("docs", 2, "cosine")
    store.upsert("docs", Batch(["a", "b"], np.ones((2, 2)), ["t", None], [{"x": 1}, {"y": [None]}]))
    store.update_metadata("docs", ["a"], [{"z": {"deep": None}}])
    for key in (f"{key_prefix}docs:a", f"{key_prefix}docs:b"):
        assert set(raw.hkeys(key)) <= {b"id", b"vector", b"text", b"metadata", b"x", b"y", b"z"}


def test_replacing_a_record_drops_its_stale_fields(store, raw, key_prefix):
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", Batch(["a"], np.ones((1, 2)), ["text"], [{"old": "x"}]))
    store.upsert("docs", Batch(["a"], np.ones((1, 2)), [None], [{"new": 1}]))
    assert set(raw.hkeys(f"{key_prefix}docs:a")) == {b"id", b"vector", b"metadata", b"new"}


def test_drop_deletes_every_key_in_chunks(store, raw, key_prefix, monkeypatch):
    monkeypatch.setattr(redis_module, "_PAGE", 7)
    store.create_collection("keep", 2, "l2")
    store.upsert("keep", make_batch(3, dim=2))
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", make_batch(30, dim=2))
    store.drop_collection("docs")
    keys = sorted(raw.keys(f"{key_prefix}*"))
    assert keys == sorted([f"{key_prefix}{k}".encode() for k in
                           ("vecflow:collections", "vecflow:ids:keep", "keep:r00000", "keep:r00001",
                            "keep:r00002")])


def test_scan_cursor_is_the_last_id_of_the_page(store):
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", make_batch(5, dim=2))
    page, cursor = store.scan("docs", 2)
    assert page.ids == ["r00000", "r00001"] and cursor == "r00001"
    page, cursor = store.scan("docs", 3, cursor)
    assert page.ids == ["r00002", "r00003", "r00004"] and cursor is None


def test_names_whose_keys_would_mix_are_refused(store):
    store.create_collection("a", 2, "l2")
    with pytest.raises(BackendError, match="share keys"):
        store.create_collection("a:b", 2, "l2")
    with pytest.raises(BackendError, match="reserved"):
        store.create_collection("vecflow", 2, "l2")
    assert store.list_collections() == ["a"]


def test_rename_resumes_after_a_crash(store, monkeypatch):
    monkeypatch.setattr(redis_module, "_PAGE", 10)
    store.create_collection("old", 4, "ip")
    batch = make_batch(25, dim=4)
    store.upsert("old", batch)
    real_zrange, calls = store._client.zrange, []

    def crash_on_second_chunk(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise redis.ConnectionError("connection lost")
        return real_zrange(*args, **kwargs)

    monkeypatch.setattr(store._client, "zrange", crash_on_second_chunk)
    with pytest.raises(BackendError, match="connection lost"):
        store.rename_collection("old", "new")
    assert store.list_collections() == ["new", "old"]
    assert store.count("old") + store.count("new") == 25
    monkeypatch.setattr(store._client, "zrange", real_zrange)

    store.rename_collection("old", "new")
    assert store.list_collections() == ["new"]
    assert store.describe("new").metric == "ip"
    assert collection_digest(store, "new") == batch_digest(batch)


def test_query_with_the_wrong_dimension_is_refused(store):
    store.create_collection("docs", 3, "l2")
    with pytest.raises(DimensionMismatchError):
        store.query("docs", np.ones((1, 4), np.float32), 1)


@pytest.mark.parametrize("params, problem", [
    ({"nlist": 4}, "unknown"), ({"algorithm": "IVF"}, "algorithm"), ({"algorithm": "HNSW", "m": 0}, "m must"),
    ({"ef_runtime": "many"}, "ef_runtime"),
])
def test_index_params_are_checked_even_without_a_search_module(store, params, problem):
    with pytest.raises(OperationError, match=problem):
        store.create_collection("docs", 3, "l2", **params)
    assert store.list_collections() == []


def test_index_params_are_described_as_given(store):
    store.create_collection("docs", 3, "l2", algorithm="hnsw", m="16", ef_runtime=20)
    assert store.describe("docs").params == {"algorithm": "hnsw", "m": "16", "ef_runtime": 20}


def test_the_state_scope_tells_key_prefixes_and_databases_apart(redis_url):
    first, second = RedisBackend(redis_url, key_prefix="a:"), RedisBackend(redis_url, db="1", key_prefix="b:")
    try:
        assert first.scope("docs") == f"redis|{redis_url} db 0 key prefix 'a:'|docs"
        assert second.scope("docs") == f"redis|{redis_url} db 1 key prefix 'b:'|docs"
    finally:
        first.close()
        second.close()


# connection and options --------------------------------------------------------------------


def test_a_closed_port_gives_a_one_line_backend_error():
    url = f"redis://127.0.0.1:{free_port()}"
    with pytest.raises(BackendError) as caught:
        RedisBackend(url)
    message = str(caught.value)
    assert url in message and "\n" not in message


def test_errors_do_not_show_the_password():
    with pytest.raises(BackendError) as caught:
        RedisBackend(f"redis://user:s3cret@127.0.0.1:{free_port()}")
    assert "s3cret" not in str(caught.value) and "user:***@" in str(caught.value)


def test_options_arrive_as_strings(redis_url, raw, key_prefix):
    store = open_backend("redis", {"url": redis_url, "db": "1", "key_prefix": key_prefix,
                                   "socket_timeout": "5", "search": "exact"})
    try:
        store.create_collection("docs", 2, "l2")
    finally:
        store.close()
    other_db = redis.Redis.from_url(redis_url, db=1)
    try:
        assert other_db.hexists(f"{key_prefix}vecflow:collections", "docs")
        assert not raw.exists(f"{key_prefix}vecflow:collections")
    finally:
        other_db.close()


def test_bad_options_are_config_errors(redis_url):
    with pytest.raises(ConfigError, match="disagree"):
        RedisBackend(f"{redis_url}/2", db="3")
    with pytest.raises(ConfigError, match="search"):
        RedisBackend(redis_url, search="fast")
    with pytest.raises(ConfigError):
        open_backend("redis", {"url": redis_url, "colour": "blue"})


def test_native_search_without_a_module_is_refused(redis_url):
    probe = RedisBackend(redis_url)
    has_module = probe._has_search_module
    probe.close()
    if has_module:
        pytest.skip("this redis-server has a search module")
    with pytest.raises(BackendError, match="no search module"):
        RedisBackend(redis_url, search="native")


# search ------------------------------------------------------------------------------------


def brute_force(vectors: np.ndarray, queries: np.ndarray, metric: str, k: int):
    x, q = vectors.astype(np.float64), queries.astype(np.float64)
    if metric == "l2":
        scores = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    elif metric == "cosine":
        scores = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
            x / np.linalg.norm(x, axis=1, keepdims=True)).T
    else:
        scores = q @ x.T
    order = np.argsort(-scores if metric == "ip" else scores, axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_exact_search_matches_numpy_brute_force(redis_url, key_prefix, monkeypatch, metric):
    monkeypatch.setattr(redis_module, "_PAGE", 64)  # many pages: exercises the running top k
    store = RedisBackend(redis_url, key_prefix=key_prefix, search="exact")
    try:
        store.create_collection("docs", 16, metric)
        batch = make_batch(500, dim=16, seed=11)
        for start in range(0, 500, 128):
            store.upsert("docs", batch.take(list(range(start, min(start + 128, 500)))))
        queries = np.random.default_rng(5).standard_normal((6, 16)).astype(np.float32)
        hits = store.query("docs", queries, 10)
    finally:
        store.close()
    order, scores = brute_force(batch.vectors, queries, metric, 10)
    for row, want_ids, want_scores in zip(hits, order, scores):
        assert [rid for rid, _ in row] == [batch.ids[i] for i in want_ids]
        np.testing.assert_allclose([s for _, s in row], want_scores, rtol=1e-9, atol=1e-9)


def test_k_larger_than_the_collection_returns_every_record(store):
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", make_batch(3, dim=2))
    assert [len(row) for row in store.query("docs", np.ones((2, 2), np.float32), 10)] == [3, 3]


def test_knn_replies_parse_in_both_protocols():
    resp2 = [2, b"p:a", [b"id", b"a", b"__vector_score", b"0.25"],
             b"p:b", [b"__vector_score", b"0.5", b"id", b"b"]]
    resp3 = {b"total_results": 1, b"results": [
        {b"id": b"p:a", b"extra_attributes": {b"id": b"a", b"__vector_score": b"0.25"},
         b"values": []}]}
    assert parse_knn_reply(resp2, "l2") == [("a", 0.25), ("b", 0.5)]
    assert parse_knn_reply(resp2, "ip") == [("a", 0.75), ("b", 0.5)]
    assert parse_knn_reply(resp3, "cosine") == [("a", 0.25)]


def test_index_definition_follows_the_collection():
    params = {"algorithm": "hnsw", "m": "16", "other": 1}
    assert index_create_args("idx", "p:docs:", 8, "ip", params) == [
        "FT.CREATE", "idx", "ON", "HASH", "PREFIX", 1, "p:docs:", "SCHEMA", "vector", "VECTOR",
        "HNSW", 8, "TYPE", "FLOAT32", "DIM", 8, "DISTANCE_METRIC", "IP", "M", 16]
