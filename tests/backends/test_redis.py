"""Redis adapter: the shared contract, plus the hash layouts, shapes, scans, errors and exact search
it documents. Framework-written hashes moved between stores are in tests/frameworks/test_redis_foreign.py."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import redis

from tests.backends.contract import BackendContract, make_batch
from tests.conftest import closed_port
from vecflow.backends import open_backend, redis_schema
from vecflow.backends import redis as redis_module
from vecflow.backends.redis import RedisBackend
from vecflow.backends.redis_layouts import detect
from vecflow.backends.redis_schema import KeyScheme
from vecflow.backends.redis_search import index_create_args, parse_index_info, parse_knn_reply
from vecflow.batch import Batch
from vecflow.errors import BackendError, ConfigError, DimensionMismatchError, InvalidDataError, OperationError
from vecflow.runtime.digest import batch_digest, collection_digest
from vecflow.state import VecflowState

_namespace = itertools.count()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of its own for each test, so every test starts from an empty store."""
    return f"test{next(_namespace)}:"


@pytest.fixture
def state(tmp_path):
    state = VecflowState(tmp_path / "state.db")
    yield state
    state.close()


@pytest.fixture
def open_store(redis_url, key_prefix, state):
    # Through the registry, with options as strings, as vecflow.ini delivers them.
    def open_store(**options):
        return open_backend("redis", {"url": redis_url, "db": "0", "key_prefix": key_prefix, **options}, state)
    return open_store


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
    @pytest.fixture
    def open_store(self, redis_url, key_prefix):
        return lambda: open_backend("redis", {"url": redis_url, "db": "0", "key_prefix": key_prefix})

    @pytest.fixture(autouse=True)
    def plain_client(self, raw, key_prefix):
        """The contract's hooks read with a plain redis-py client of their own."""
        self.raw, self.key_prefix = raw, key_prefix

    def plain_records(self, backend, name):
        # SCAN over the record prefix: every hash an application would see.
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


# vecflow's own hashes (the raw layout) --------------------------------------------------------


def test_record_is_a_hash_in_the_documented_layout_and_nothing_else_is_written(store, raw, key_prefix):
    store.create_collection("docs", 3, "cosine")
    vector = np.array([[0.1, -2.5, 3e-8]], np.float32)
    metadata = {"s": "x", "i": 7, "f": 0.5, "yes": True, "no": False, "none": None,
                "tags": ["a", "b"], "nested": {"a": 1}, "text": "shadowed"}
    store.upsert("docs", Batch(["a:b c/ü"], vector, ["hello"], [metadata]))

    key = f"{key_prefix}docs:a:b c/ü".encode()
    assert raw.keys(f"{key_prefix}*") == [key], "no registry, no id set: only the record"
    fields = raw.hgetall(key)
    assert fields[b"vector"] == vector[0].astype("<f4").tobytes()
    assert fields[b"text"] == b"hello"
    assert fields[b"id"] == "a:b c/ü".encode()
    assert json.loads(fields[b"metadata"]) == metadata
    flat = {k: v for k, v in fields.items() if k not in (b"vector", b"text", b"id", b"metadata")}
    assert flat == {b"s": b"x", b"i": b"7", b"f": b"0.5", b"yes": b"1", b"no": b"0"}


def test_the_collections_vecflow_created_are_in_its_state(open_store, redis_url, raw, key_prefix):
    store = open_store()
    store.create_collection("empty", 2, "l2")
    store.create_collection("full", 4, "ip")
    store.upsert("full", make_batch(3, dim=4))
    store.close()
    assert raw.keys(f"{key_prefix}*") and not raw.keys(f"{key_prefix}vecflow*")

    again = open_store()  # same state: every collection, with its metric
    assert again.list_collections() == ["empty", "full"]
    assert (again.describe("full").metric, again.describe("empty").dim) == ("ip", 2)
    again.close()

    stateless = open_backend("redis", {"url": redis_url, "key_prefix": key_prefix, "metric": "ip"})
    try:  # without the state, hashes are found under the collection's key prefix; an empty one is gone
        assert not stateless.has_collection("empty")
        assert stateless.count("full") == 3 and stateless.describe("full").dim == 4
        assert stateless.layout_of("full").reason == ("3 of 3 sampled hashes look written by vecflow; "
                                                      f"keys {key_prefix}full:<id>, found under its key prefix")
        assert collection_digest(stateless, "full") == batch_digest(make_batch(3, dim=4))
    finally:
        stateless.close()


def test_collection_metadata_is_kept_in_vecflow_state_not_in_redis(store, raw, key_prefix):
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", make_batch(2, dim=2))
    before = {key: raw.hgetall(key) for key in raw.keys(f"{key_prefix}*")}
    store.update_collection_metadata("docs", {"embedding": {"model": "m1"}})
    assert store.collection_metadata("docs") == {"embedding": {"model": "m1"}}
    assert {key: raw.hgetall(key) for key in raw.keys(f"{key_prefix}*")} == before


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


def test_fields_another_tool_added_survive_every_write(store, raw, key_prefix):
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", Batch(["a"], np.ones((1, 2)), ["text"], [{"old": "x"}]))
    raw.hset(f"{key_prefix}docs:a", "app_score", b"\x00\xff")
    store.update_metadata("docs", ["a"], [{"n": 2}])
    store.upsert("docs", Batch(["a"], np.ones((1, 2)), ["new text"], [{"n": 3}]))
    fields = raw.hgetall(f"{key_prefix}docs:a")
    assert fields[b"app_score"] == b"\x00\xff" and fields[b"n"] == b"3" and b"old" not in fields
    assert store.get("docs", ["a"]).metadatas == [{"n": 3}]


def test_a_metadata_change_sends_neither_the_vector_nor_the_text(store, raw, key_prefix, monkeypatch):
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", Batch(["a"], np.ones((1, 2)), ["text"], [{"n": 1}]))
    sent = []
    real_hset = redis.client.Pipeline.hset
    monkeypatch.setattr(redis.client.Pipeline, "hset", lambda self, key, mapping=None, **kw:
                        sent.append(mapping) or real_hset(self, key, mapping=mapping))
    store.update_metadata("docs", ["a"], [{"n": 2}])
    assert sent == [{b"metadata": b'{"n":2}', b"n": b"2"}]


def test_drop_deletes_every_key_in_chunks(store, raw, key_prefix, monkeypatch):
    monkeypatch.setattr(redis_module, "_PAGE", 7)
    store.create_collection("keep", 2, "l2")
    store.upsert("keep", make_batch(3, dim=2))
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", make_batch(30, dim=2))
    store.drop_collection("docs")
    assert sorted(raw.keys(f"{key_prefix}*")) == [f"{key_prefix}keep:r0000{i}".encode() for i in range(3)]
    assert store.list_collections() == ["keep"]


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
    real_chunks = redis_module._chunks

    def crash_after_the_first_chunk(items, size):
        chunks = real_chunks(items, size)
        yield next(chunks)
        raise redis.ConnectionError("connection lost")

    monkeypatch.setattr(redis_module, "_chunks", crash_after_the_first_chunk)
    with pytest.raises(BackendError, match="connection lost"):
        store.rename_collection("old", "new")
    assert store.list_collections() == ["new", "old"]
    assert store.count("old") + store.count("new") == 25
    monkeypatch.setattr(redis_module, "_chunks", real_chunks)

    store.rename_collection("old", "new")
    assert store.list_collections() == ["new"]
    assert store.describe("new").metric == "ip"
    assert collection_digest(store, "new") == batch_digest(batch)


def test_a_langchain_collection_is_renamed_by_copy_and_carries_its_new_index_name(open_store, raw, key_prefix):
    vector = np.ones(2, "<f4").tobytes()
    for i in range(3):  # as langchain-redis 0.2.6 add_texts writes them (index_name = key_prefix)
        raw.hset(f"{key_prefix}lc:{i}", mapping={"text": f"t{i}", "embedding": vector, "_index_name": f"{key_prefix}lc",
                                                 "_metadata_json": json.dumps({"n": i}), "n": i})
    store = open_store()
    try:
        store.rename_collection("lc", "lc2")
        assert store.list_collections() == ["lc2"] and store.layout_of("lc2").layout.name == "langchain"
    finally:
        store.close()
    assert raw.keys(f"{key_prefix}lc:*") == []
    assert raw.hgetall(f"{key_prefix}lc2:1") == {b"text": b"t1", b"embedding": vector, b"n": b"1",
                                                 b"_index_name": f"{key_prefix}lc2".encode(),
                                                 b"_metadata_json": b'{"n": 1}'}


# scans --------------------------------------------------------------------------------------


def test_scan_cursor_is_the_last_id_of_the_page(store):
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", make_batch(5, dim=2))
    page, cursor = store.scan("docs", 2)
    assert page.ids == ["r00000", "r00001"] and cursor == "r00001"
    page, cursor = store.scan("docs", 3, cursor)
    assert page.ids == ["r00002", "r00003", "r00004"] and cursor is None


def test_keys_scan_returns_twice_are_counted_and_digested_once(store, monkeypatch):
    store.create_collection("docs", 4, "l2")
    batch = make_batch(40, dim=4)
    store.upsert("docs", batch)
    real_scan = redis.Redis.scan

    def scan_repeating_every_key(self, cursor=0, **kwargs):  # what SCAN may do while the table rehashes
        following, keys = real_scan(self, cursor, **kwargs)
        return following, keys + keys[::-1]

    monkeypatch.setattr(redis.Redis, "scan", scan_repeating_every_key)
    assert store.count("docs") == 40
    assert collection_digest(store, "docs", batch_size=7) == batch_digest(batch)


def test_a_pass_pages_through_one_snapshot_of_the_keys(store, monkeypatch):
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", make_batch(50, dim=2))
    walks = []
    real_snapshot = redis_schema.snapshot
    monkeypatch.setattr(redis_module, "snapshot", lambda client, prefix: walks.append(prefix) or
                        real_snapshot(client, prefix))
    seen = [page.ids for page, _ in store.pages("docs", 10)]
    assert len(seen) == 5 and len(walks) == 1, "one walk of the key space per pass, not per page"


def test_only_hashes_under_the_prefix_are_records(store, raw, key_prefix):
    store.create_collection("docs", 2, "l2")
    store.upsert("docs", make_batch(3, dim=2))
    raw.set(f"{key_prefix}docs:a-string", b"not a record")
    raw.rpush(f"{key_prefix}docs:a-list", b"x")
    assert store.count("docs") == 3 and len(store.scan("docs", 10)[0]) == 3


# hashes vecflow did not write -------------------------------------------------------------------


def redisvl_hash(raw, key: str, vector: np.ndarray, **fields) -> None:
    """A hash as RedisVL 0.28 HashStorage.write stores one of a custom schema: the object's fields."""
    raw.hset(key, mapping={"embedding": vector.astype("<f8").tobytes(), **fields})


def test_plain_hashes_of_a_custom_schema_are_read_by_the_options(open_store, raw, key_prefix):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3, 5))
    for i in range(3):
        redisvl_hash(raw, f"{key_prefix}shop/items:sku-{i}", vectors[i], body=f"item {i}", category="tools",
                     price=i * 2.5)
    store = open_store(collections="products = shop/items", vector_field="embedding", text_field="body",
                       vector_dtype="float64", metric="l2")
    try:
        assert store.list_collections() == ["products"]
        got = store.get("products", ["sku-1", "sku-9"])
        assert got.ids == ["sku-1"] and got.documents == ["item 1"]
        assert got.metadatas == [{"category": "tools", "price": "2.5"}], "plain hashes hold strings"
        assert np.allclose(got.vectors, vectors[1].astype(np.float32))
        assert store.describe("products").dim == 5 and store.describe("products").metric == "l2"
        before = raw.hgetall(f"{key_prefix}shop/items:sku-1")
        store.update_metadata("products", ["sku-1"], [{"category": "garden", "price": "2.5"}])
        store.upsert("products", got.with_metadatas([{"category": "garden", "price": "2.5"}]))
        after = raw.hgetall(f"{key_prefix}shop/items:sku-1")
        assert after == {**before, b"category": b"garden"}, "float64 vector bytes and the other fields stay"
        assert store.layout_of("products").reason == ("3 of 3 sampled hashes look written by a plain Redis client; "
                                                      f"keys {key_prefix}shop/items:<id>, declared in the store's "
                                                      "collections")
    finally:
        store.close()


def test_a_collection_vecflow_cannot_place_is_not_there(store, raw, key_prefix):
    raw.hset(f"{key_prefix}elsewhere/x:1", mapping={"vector": b"\0" * 8})
    assert not store.has_collection("docs") and store.list_collections() == []


def test_hashes_without_the_vector_field_are_named_in_the_error(open_store, raw, key_prefix):
    raw.hset(f"{key_prefix}docs:1", mapping={"text": "hello", "emb": b"\0" * 8})
    store = open_store()
    try:
        with pytest.raises(BackendError, match="no field 'vector'; name the vector field"):
            store.count("docs")
    finally:
        store.close()


@pytest.mark.parametrize("fields, layout, reason", [
    ({b"_node_content": b'{"id_": "n"}', b"text": b"t"}, "llamaindex", "LlamaIndex"),
    ({b"_metadata_json": b"{}", b"embedding": b"v"}, "langchain", "LangChain (langchain-redis)"),
    ({b"content": b"t", b"content_vector": b"v"}, "langchain", "LangChain (langchain_community)"),
    ({b"id": b"1", b"metadata": b"{}", b"vector": b"v"}, "raw", "vecflow"),
    ({b"category": b"x", b"vector": b"v"}, "raw", "a plain Redis client"),
])
def test_layouts_are_detected_from_the_fields_of_sampled_hashes(fields, layout, reason):
    other = {b"_index_name": b"x"} if layout != "langchain" else {b"x": b"1"}
    detected, _ = detect([fields, other, fields])
    assert detected.layout.name == layout and detected.reason == f"2 of 3 sampled hashes look written by {reason}"


def test_key_prefixes_are_completed_as_redisvl_joins_them():
    scheme = KeyScheme()
    assert scheme.derived("llama_index", "llamaindex") == ["llama_index/vector_"]
    assert scheme.derived("docs", None) == ["docs:", "docs/vector_"]
    assert scheme.completed("llama_index/vector", b"llama_index/vector_0c1", None) == "llama_index/vector_"
    assert scheme.completed("lc:", b"lc:abc", None) == "lc:"
    assert scheme.completed("doc:idx", None, "langchain") == "doc:idx:"
    assert KeyScheme(separator="|").completed("p||", None, None) == "p|"


@pytest.mark.parametrize("options, problem", [
    ({"vector_dtype": "bfloat16"}, "vector_dtype"), ({"metric": "dot"}, "metric"),
    ({"collections": "just a name"}, "NAME = KEY_PREFIX"), ({"vector_field": "v", "text_field": "v"}, "both"),
])
def test_bad_shape_options_are_config_errors(redis_url, options, problem):
    with pytest.raises(ConfigError, match=problem):
        open_backend("redis", {"url": redis_url, **options})


def test_a_plain_record_whose_metadata_names_the_text_field_is_refused(open_store, raw, key_prefix):
    raw.hset(f"{key_prefix}docs:1", mapping={"vector": np.ones(2, "<f4").tobytes(), "colour": "red"})
    store = open_store()
    try:
        with pytest.raises(InvalidDataError, match="'text' is also one of the hash's own fields"):
            store.update_metadata("docs", ["1"], [{"text": "clash"}])
    finally:
        store.close()


def test_collections_an_earlier_vecflow_registered_are_read_and_dropped_with_their_keys(store, raw, key_prefix):
    registry, ids = f"{key_prefix}vecflow:collections", f"{key_prefix}vecflow:ids:old"
    raw.hset(registry, "old", json.dumps({"dim": 2, "metric": "ip", "prefix": f"{key_prefix}old:", "params": {},
                                          "index": None}))
    raw.zadd(ids, {b"a": 0})
    raw.hset(f"{key_prefix}old:a", mapping={"id": "a", "vector": np.ones(2, "<f4").tobytes(), "metadata": "{}"})
    assert store.list_collections() == ["old"] and store.describe("old").metric == "ip"
    assert store.get("old", ["a"]).ids == ["a"]
    store.drop_collection("old")
    assert raw.keys(f"{key_prefix}*") == [] and store.list_collections() == []


# the search module's side, without a module -------------------------------------------------------


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


def test_knn_replies_parse_in_both_protocols():
    resp2 = [2, b"p:a", [b"__vector_score", b"0.25"], b"p:b", [b"__vector_score", b"0.5"]]
    resp3 = {b"total_results": 1, b"results": [
        {b"id": b"p:a", b"extra_attributes": {b"__vector_score": b"0.25"}, b"values": []}]}
    assert parse_knn_reply(resp2, "l2") == [(b"p:a", 0.25), (b"p:b", 0.5)]
    assert parse_knn_reply(resp2, "ip") == [(b"p:a", 0.75), (b"p:b", 0.5)]
    assert parse_knn_reply(resp3, "cosine") == [(b"p:a", 0.25)]


def test_index_definition_follows_the_collection_and_its_layout():
    params = {"algorithm": "hnsw", "m": "16", "other": 1}
    vector = ["VECTOR", "HNSW", 8, "TYPE", "FLOAT32", "DIM", 8, "DISTANCE_METRIC", "IP", "M", 16]
    head = ["FT.CREATE", "idx", "ON", "HASH", "PREFIX", 1, "p:docs:", "SCHEMA"]
    assert index_create_args("idx", "p:docs:", "vector", "text", "float32", 8, "ip", params, "raw") == [
        *head, "vector", *vector]
    assert index_create_args("idx", "p:docs:", "embedding", "text", "float32", 8, "ip", params, "langchain") == [
        *head, "text", "TEXT", "embedding", *vector, "_index_name", "TEXT", "_metadata_json", "TEXT"]
    assert index_create_args("idx", "p:docs:", "vector", "text", "float32", 8, "ip", params, "llamaindex") == [
        *head, "id", "TAG", "doc_id", "TAG", "text", "TEXT", "WEIGHT", 1.0, "vector", *vector]


@pytest.mark.parametrize("attribute", [
    [b"identifier", b"embedding", b"attribute", b"embedding", b"type", b"VECTOR", b"algorithm", b"HNSW",
     b"data_type", b"FLOAT64", b"dim", 768, b"distance_metric", b"L2", b"M", 16],
    [b"identifier", b"embedding", b"attribute", b"embedding", b"type", b"VECTOR", b"HNSW", b"6", b"TYPE",
     b"FLOAT64", b"DIM", b"768", b"DISTANCE_METRIC", b"L2"],
    {b"identifier": b"embedding", b"attribute": b"embedding", b"type": b"VECTOR", b"algorithm": b"HNSW",
     b"data_type": b"FLOAT64", b"dim": 768, b"distance_metric": b"L2"},
])
def test_index_info_gives_prefix_and_vector_field_in_every_reply_shape(attribute):
    text = [b"identifier", b"text", b"attribute", b"text", b"type", b"TEXT", b"WEIGHT", b"1"]
    reply = [b"index_name", b"lc", b"index_definition", [b"key_type", b"HASH", b"prefixes", [b"lc:"]],
             b"attributes", [text, attribute], b"num_docs", b"3"]
    info = parse_index_info(reply)
    assert info["prefixes"] == ["lc:"] and info["key_type"] == "HASH"
    assert (info["vector"]["field"], info["vector"]["dim"], info["vector"]["metric"]) == ("embedding", 768, "l2")
    assert info["vector"]["params"] == {"algorithm": "HNSW"}
    assert info["vector"]["dtype"] == ("float64" if isinstance(attribute, dict) or b"data_type" in attribute
                                       else "float32")


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
    with closed_port() as port, pytest.raises(BackendError) as caught:
        url = f"redis://127.0.0.1:{port}"
        RedisBackend(url)
    message = str(caught.value)
    assert url in message and "\n" not in message


def test_errors_do_not_show_the_password():
    with closed_port() as port, pytest.raises(BackendError) as caught:
        RedisBackend(f"redis://user:s3cret@127.0.0.1:{port}")
    assert "s3cret" not in str(caught.value) and "user:***@" in str(caught.value)


def test_options_arrive_as_strings(redis_url, raw, key_prefix):
    store = open_backend("redis", {"url": redis_url, "db": "1", "key_prefix": key_prefix,
                                   "socket_timeout": "5", "search": "exact"})
    try:
        store.create_collection("docs", 2, "l2")
        store.upsert("docs", make_batch(1, dim=2))
    finally:
        store.close()
    other_db = redis.Redis.from_url(redis_url, db=1)
    try:
        assert other_db.keys(f"{key_prefix}*") == [f"{key_prefix}docs:r00000".encode()]
        assert not raw.keys(f"{key_prefix}*")
        other_db.delete(f"{key_prefix}docs:r00000")
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


# exact search ------------------------------------------------------------------------------


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
