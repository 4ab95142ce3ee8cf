"""The Qdrant adapter: the shared contract in local mode, plus what is specific to Qdrant.

Local mode lets one QdrantClient hold a folder at a time, so every test closes the framework's or
the plain client before vecflow opens the same path, and the other way round.
"""

from __future__ import annotations

import hashlib
import json
import socket
import uuid

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore as LangChainQdrant
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery
from llama_index.vector_stores.qdrant import QdrantVectorStore as LlamaIndexQdrant
from qdrant_client import QdrantClient, models

from tests.backends.contract import BackendContract, make_batch, private_traces
from vecflow.backends import open_backend
from vecflow.backends.qdrant import VECFLOW_NAMESPACE, QdrantBackend, point_id
from vecflow.batch import Batch
from vecflow.errors import (
    BackendError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    OperationError,
)
from vecflow.runtime.digest import batch_digest, collection_digest
from vecflow.state import VecflowState

DIM = 8
# LlamaIndex asks for a payload index on doc_id, which local mode only warns about
LOCAL_PAYLOAD_INDEX = "ignore:Payload indexes have no effect:UserWarning"


class TestQdrantLocalContract(BackendContract):
    @pytest.fixture
    def open_store(self, tmp_path):
        # through the registry, with options as strings, as vecflow.ini delivers them
        return lambda: open_backend("qdrant", {"path": str(tmp_path / "qdrant")})

    def plain_records(self, backend, name):
        # local mode lets one client hold the folder: the adapter's, used here as the plain client
        points, _ = backend.client.scroll(name, limit=10_000, with_payload=True, with_vectors=True)
        return [{"id": str(p.id), "payload": p.payload, "vector": p.vector} for p in points]

    def plain_collection_metadata(self, backend, name):
        return backend.client.get_collection(name).config.model_dump(mode="json")


def _open(path: str, state: VecflowState, **options) -> QdrantBackend:
    backend = QdrantBackend(path=path, **options)
    backend.attach_state(state)
    return backend


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "qdrant")


@pytest.fixture
def state(tmp_path):
    state = VecflowState(tmp_path / "state.db")
    yield state
    state.close()


@pytest.fixture
def backend(store_path, state):
    backend = _open(store_path, state)
    yield backend
    backend.close()


def plain_points(where: str | QdrantBackend, name: str) -> list[models.Record]:
    """Every point as the plain client returns it (all vectors), sorted by id: a client of its own
    for a folder, the adapter's for an open backend (local mode allows one client per folder)."""
    own = not isinstance(where, QdrantBackend)
    client = QdrantClient(path=where) if own else where.client
    try:
        points, _ = client.scroll(name, limit=10_000, with_payload=True, with_vectors=True)
        return sorted(points, key=lambda p: str(p.id))
    finally:
        if own:
            client.close()


def as_bytes(points: list[models.Record], key_order: bool = True) -> list[tuple[str, str, str]]:
    """Points as text, for byte-identity: payload JSON (in stored key order unless told not to),
    vectors as float32 bytes."""
    def vectors(value):
        if isinstance(value, dict):
            return {k: vectors(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return np.asarray(value, "<f4").tobytes().hex()
        return value.model_dump_json()
    return [(str(p.id), json.dumps(p.payload, ensure_ascii=False, sort_keys=not key_order),
             json.dumps(vectors(p.vector))) for p in points]


def embed(text: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return [float(x) for x in np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)]


class HashEmbeddings(Embeddings):
    """Deterministic LangChain embeddings, no model."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [embed(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return embed(text)


# ids -------------------------------------------------------------------------------------------

def test_point_ids_are_canonical_ids_or_uuid5_of_the_record_id():
    real_uuid = str(uuid.uuid4())
    assert point_id("42") == 42
    assert point_id(real_uuid) == real_uuid
    assert point_id(str(2**64 - 1)) == 2**64 - 1
    for other in ("042", "-1", "+1", str(2**64), real_uuid.upper(), "r00001", "٤٢", ""):
        assert point_id(other) == str(uuid.uuid5(VECFLOW_NAMESPACE, other))


def test_other_ids_round_trip_through_state_and_payloads_hold_no_vecflow_key(backend, store_path, state):
    real_uuid = str(uuid.uuid4())
    ids = ["42", "0", "042", "-1", str(2**64), real_uuid, real_uuid.upper(), "日本語", "🚀", ""]
    batch = Batch(ids, np.arange(len(ids) * 2, dtype=np.float32).reshape(-1, 2),
                  [f"doc {i}" for i in range(len(ids))], [{"i": i} for i in range(len(ids))])
    backend.create_collection("ids", 2, "cosine")
    backend.upsert("ids", batch)
    got = backend.get("ids", list(reversed(ids)))
    assert got.ids == list(reversed(ids))
    assert got.vectors.tobytes() == batch.vectors[::-1].tobytes()
    assert collection_digest(backend, "ids", batch_size=3) == batch_digest(batch)
    backend.close()

    points = plain_points(store_path, "ids")
    assert sorted(str(p.id) for p in points) == sorted(str(point_id(rid)) for rid in ids)
    for point in points:
        assert set(point.payload) == {"document", "i"} and private_traces(point.payload) == []
    client = QdrantClient(path=store_path)
    assert client.get_collection("ids").config.metadata is None
    client.close()

    reopened = _open(store_path, state)
    try:
        assert sorted(reopened.scan("ids", 100)[0].ids) == sorted(ids)
    finally:
        reopened.close()
    # without vecflow's state a mapped record's id is its point id; get still finds it by id
    stateless = QdrantBackend(path=store_path)
    try:
        read = stateless.scan("ids", 100)[0].ids
        assert str(point_id("日本語")) in read and "42" in read and real_uuid in read
        assert stateless.get("ids", ["日本語"]).documents == ["doc 7"]
    finally:
        stateless.close()


def test_deleting_mapped_ids_forgets_their_state(backend, state):
    backend.create_collection("ids", 2, "cosine")
    backend.upsert("ids", Batch(["a", "b"], np.ones((2, 2), np.float32) * 3, [None, None], [{}, {}]))
    backend.delete("ids", ["a", "b"])
    assert not state.has_records(backend.scope("ids"), "id")
    assert not state.has_records(backend.scope("ids"), "vector")


# cosine vectors --------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # Qdrant normalising
def test_cosine_vectors_read_back_exactly_through_state(store_path, state):
    backend = _open(store_path, state)
    backend.create_collection("cos", 4, "cosine")
    batch = make_batch(30, dim=4, seed=5)
    batch.vectors[0] = [1e-30, -0.0, 3.4e38, 1.0000001]  # its norm overflows float32
    batch.vectors[1] = 0.0
    batch.vectors[2] *= 1000
    backend.upsert("cos", batch)
    stored = np.array([p.vector for p in plain_points(backend, "cos")], np.float32)
    assert np.allclose(np.linalg.norm(stored, axis=1)[np.abs(stored).max(axis=1) > 0], 1, atol=1e-6)  # unit
    assert state.has_records(backend.scope("cos"), "vector")
    assert backend.get("cos", batch.ids).vectors.tobytes() == batch.vectors.tobytes()
    changed = batch.take(list(range(3, 13)))
    changed.vectors = changed.vectors[::-1] * 2
    backend.upsert("cos", changed)  # update_vectors on existing points
    backend.close()
    expected = {**dict(zip(batch.ids, batch.vectors)), **dict(zip(changed.ids, changed.vectors))}
    reopened = _open(store_path, state)  # local mode re-reads the store: other bits, same answer
    try:
        got = reopened.get("cos", batch.ids)
        assert got.vectors.tobytes() == np.stack([expected[rid] for rid in batch.ids]).tobytes()
        assert QdrantBackend.normalises_cosine is False
    finally:
        reopened.close()


def test_cosine_vectors_survive_a_rename(backend):
    backend.create_collection("cos", DIM, "cosine")
    batch = make_batch(40, seed=2)
    batch.vectors *= 3
    backend.upsert("cos", batch)
    backend.rename_collection("cos", "cos2")
    assert collection_digest(backend, "cos2") == batch_digest(batch)


def test_a_vector_rewritten_by_another_tool_wins_over_the_recorded_bits(backend, store_path, state):
    backend.create_collection("cos", 2, "cosine")
    backend.upsert("cos", Batch(["a", "b"], np.array([[3, 4], [1, 1]], np.float32), [None, None], [{}, {}]))
    backend.close()
    client = QdrantClient(path=store_path)
    client.update_vectors("cos", points=[models.PointVectors(id=point_id("a"), vector=[0.0, 2.0])])
    client.close()
    other = _open(store_path, state)
    try:
        got = other.get("cos", ["a", "b"])
    finally:
        other.close()
    assert got.vectors.tolist() == [[0.0, 1.0], [1.0, 1.0]]


def _refusing(backend: QdrantBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every write request of the backend's client fail as a store that refuses it."""
    def refuse(*args, **kwargs):
        raise ValueError("the store refused the write")

    for method in ("upsert", "batch_update_points"):
        monkeypatch.setattr(backend.client, method, refuse)


def test_refused_writes_keep_the_previous_vectors_exact(store_path, state, monkeypatch):
    backend = _open(store_path, state)
    backend.create_collection("cos", DIM, "cosine")
    first = make_batch(6, seed=1)
    backend.upsert("cos", first)
    second, third = make_batch(6, seed=2), make_batch(6, seed=3)
    with monkeypatch.context() as patch:
        _refusing(backend, patch)
        for refused in (second, third):  # the second refusal's entry is built from the first's
            with pytest.raises(BackendError, match="refused the write"):
                backend.upsert("cos", refused)
            assert backend.get("cos", first.ids).vectors.tobytes() == first.vectors.tobytes()
    backend.close()
    reopened = _open(store_path, state)  # local mode re-reads the store: other bits, same answer
    try:
        assert reopened.get("cos", first.ids).vectors.tobytes() == first.vectors.tobytes()
        reopened.upsert("cos", second)
        assert reopened.get("cos", second.ids).vectors.tobytes() == second.vectors.tobytes()
    finally:
        reopened.close()


def test_a_refused_first_write_leaves_nothing_to_read(backend, monkeypatch):
    backend.create_collection("cos", DIM, "cosine")
    batch = make_batch(4, seed=1)
    with monkeypatch.context() as patch:
        _refusing(backend, patch)
        with pytest.raises(BackendError):
            backend.upsert("cos", batch)
    assert backend.count("cos") == 0 and backend.get("cos", batch.ids).ids == []
    backend.upsert("cos", batch)
    assert backend.get("cos", batch.ids).vectors.tobytes() == batch.vectors.tobytes()


def test_entries_an_older_vecflow_staged_still_read_and_a_write_replaces_them(backend, state):
    """Before one entry held both vectors, a write staged the written vector (kind vector_staged),
    wrote, then recorded it (kind vector): a kill before the record left both."""
    backend.create_collection("cos", DIM, "cosine")
    old, staged = make_batch(5, seed=1), make_batch(5, seed=2)
    backend.upsert("cos", staged)  # the store holds the staged vectors
    scope, texts = backend.scope("cos"), [str(point_id(rid)) for rid in staged.ids]
    state.put_kinds(scope, {"vector": {t: v.tobytes() for t, v in zip(texts, old.vectors)},
                            "vector_staged": {t: v.tobytes() for t, v in zip(texts, staged.vectors)}})
    assert backend.get("cos", staged.ids).vectors.tobytes() == staged.vectors.tobytes()
    newer = make_batch(5, seed=3)
    backend.upsert("cos", newer)
    assert not state.has_records(scope, "vector_staged")
    assert backend.get("cos", newer.ids).vectors.tobytes() == newer.vectors.tobytes()


# raw payloads ----------------------------------------------------------------------------------

def test_raw_payload_is_the_metadata_plus_document_with_types_kept(backend, store_path):
    backend.create_collection("l2", 2, "l2")
    metadata = {"s": "x", "i": 1, "f": 1.0, "b": True, "n": None, "big": 2**40, "nested": {"l": [1, 1.0, False]}}
    backend.upsert("l2", Batch(["rec-1"], np.array([[3, 4]], np.float32), ["text"], [metadata]))
    backend.close()
    (point,) = plain_points(store_path, "l2")
    assert point.id == str(uuid.uuid5(VECFLOW_NAMESPACE, "rec-1"))
    assert point.payload == {**metadata, "document": "text"} and point.vector == [3.0, 4.0]
    assert json.dumps(point.payload) == json.dumps({**metadata, "document": "text"})


def test_points_written_by_the_plain_client_are_read_and_rewritten_in_place(store_path, state):
    client = QdrantClient(path=store_path)
    client.create_collection("app", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    five = str(uuid.UUID(int=5))
    client.upsert("app", points=[
        models.PointStruct(id=7, vector=[1.0, 2.0], payload={"title": "t", "document": "d"}),
        models.PointStruct(id=five, vector=[3.0, 4.0], payload={"metadata": {"k": 1}}),
    ])
    client.close()
    before = as_bytes(plain_points(store_path, "app"))
    backend = _open(store_path, state)
    try:
        assert backend.layout_of("app").layout.name == "raw"
        batch, _ = backend.scan("app", 10)
        read = {r.id: (r.document, r.metadata) for r in batch.records()}
        assert read == {"7": ("d", {"title": "t"}), five: (None, {"metadata": {"k": 1}})}
        backend.upsert("app", batch)  # what was read, written back: nothing changes
        backend.update_metadata("app", ["7", "8"], [{"name": "t"}, {"never": "stored"}])
    finally:
        backend.close()
    after = {str(p.id): p for p in plain_points(store_path, "app")}
    assert as_bytes([after[five]]) == [row for row in before if row[0] == five] and len(after) == 2
    assert after["7"].payload == {"name": "t", "document": "d"} and after["7"].vector == [1.0, 2.0]


def test_an_upsert_over_a_langchain_point_keeps_the_keys_its_layout_does_not_own(store_path, state):
    client = QdrantClient(path=store_path)
    client.create_collection("lc", vectors_config=models.VectorParams(size=2, distance=models.Distance.COSINE))
    pid = str(uuid.uuid4())
    payload = {"page_content": "old", "metadata": {"a": 1}, "tenant": "acme"}
    client.upsert("lc", points=[models.PointStruct(id=pid, vector=[0.6, 0.8], payload=payload)])
    client.close()
    (before,) = plain_points(store_path, "lc")
    backend = _open(store_path, state)
    try:
        record = backend.get("lc", [pid])
        assert (record.documents, record.metadatas) == (["old"], [{"a": 1}])
        backend.upsert("lc", record)  # what was read, written back: nothing is written
        assert as_bytes(plain_points(backend, "lc")) == as_bytes([before])
        backend.upsert("lc", Batch([pid], record.vectors, ["new"], [{"a": 2}]))
    finally:
        backend.close()
    (after,) = plain_points(store_path, "lc")
    assert after.payload == {"tenant": "acme", "page_content": "new", "metadata": {"a": 2}}
    assert after.vector == before.vector


# frameworks ------------------------------------------------------------------------------------

def test_a_langchain_collection_is_read_changed_and_restored_byte_for_byte(store_path, state):
    texts = ["alpha text", "beta text", "gamma text"]
    metadatas = [{"source": "a.md", "page": 1}, {"source": "b.md", "page": 2.0, "tags": ["x"]}, {}]
    ids = [str(uuid.uuid4()) for _ in texts]
    framework = LangChainQdrant.from_texts(texts, HashEmbeddings(), metadatas=metadatas, ids=ids,
                                           collection_name="lc", path=store_path)
    framework.client.close()
    before = plain_points(store_path, "lc")

    backend = _open(store_path, state)
    try:
        detected = backend.layout_of("lc")
        assert detected.layout.name == "langchain", detected.reason
        batch = backend.get("lc", ids)
        assert batch.documents == texts and batch.metadatas == metadatas
        backend.update_metadata("lc", ids, [{**m, "reviewed": True} for m in metadatas])
    finally:
        backend.close()
    changed = plain_points(store_path, "lc")
    for old, new in zip(before, changed):
        assert new.payload == {**old.payload, "metadata": {**old.payload["metadata"], "reviewed": True}}
        assert new.vector == old.vector and list(new.payload) == list(old.payload)

    reader = LangChainQdrant(client=QdrantClient(path=store_path), collection_name="lc", embedding=HashEmbeddings())
    try:
        (hit,) = reader.similarity_search("beta text", k=1)
        assert hit.page_content == "beta text" and hit.metadata["reviewed"] is True
    finally:
        reader.client.close()

    backend = _open(store_path, state)
    try:
        backend.update_metadata("lc", ids, metadatas)
    finally:
        backend.close()
    assert as_bytes(plain_points(store_path, "lc")) == as_bytes(before)


@pytest.mark.filterwarnings(LOCAL_PAYLOAD_INDEX)
def test_a_llamaindex_collection_changes_both_metadata_copies_and_nothing_else(store_path, state):
    nodes = [TextNode(id_=str(uuid.uuid4()), text=f"node {i} text", metadata={"author": f"a{i}", "n": i},
                      embedding=embed(f"node {i}")) for i in range(3)]
    client = QdrantClient(path=store_path)
    LlamaIndexQdrant(collection_name="li", client=client).add(nodes)
    client.close()
    before = plain_points(store_path, "li")
    ids = [node.node_id for node in nodes]

    backend = _open(store_path, state)
    try:
        assert backend.layout_of("li").layout.name == "llamaindex"
        batch = backend.get("li", ids)
        assert batch.documents == [node.text for node in nodes]
        assert batch.metadatas == [node.metadata for node in nodes]
        renamed = [{"writer": m["author"], "n": m["n"]} for m in batch.metadatas]
        backend.update_metadata("li", ids, renamed)
    finally:
        backend.close()

    by_id = {str(p.id): p for p in plain_points(store_path, "li")}
    for old in before:
        new = by_id[str(old.id)]
        metadata = json.loads(new.payload["_node_content"])["metadata"]
        assert metadata == {"writer": old.payload["author"], "n": old.payload["n"]}
        assert "author" not in new.payload and new.payload["writer"] == old.payload["author"]
        old_meta = json.dumps(json.loads(old.payload["_node_content"])["metadata"], ensure_ascii=False)
        # every other byte of the node JSON is as LlamaIndex wrote it
        assert new.payload["_node_content"].replace(json.dumps(metadata, ensure_ascii=False), old_meta) == \
            old.payload["_node_content"]
        for key in ("_node_type", "document_id", "doc_id", "ref_doc_id"):
            assert new.payload[key] == old.payload[key]
        assert new.vector == old.vector

    client = QdrantClient(path=store_path)
    try:
        result = LlamaIndexQdrant(collection_name="li", client=client).query(
            VectorStoreQuery(query_embedding=embed("node 1"), similarity_top_k=3))
        read = {node.node_id: (node.get_content(), node.metadata) for node in result.nodes}
        assert read[ids[1]] == ("node 1 text", {"writer": "a1", "n": 1})
    finally:
        client.close()

    backend = _open(store_path, state)
    try:
        backend.update_metadata("li", ids, [node.metadata for node in nodes])
    finally:
        backend.close()
    # every value byte for byte, the node JSON included; the layout writes flat keys in an order
    # of its own, so top-level key order is not compared
    assert as_bytes(plain_points(store_path, "li"), key_order=False) == as_bytes(before, key_order=False)


@pytest.mark.filterwarnings(LOCAL_PAYLOAD_INDEX)
def test_the_frameworks_create_collections_with_an_unnamed_vector(store_path):
    framework = LangChainQdrant.from_texts(["x"], HashEmbeddings(), collection_name="lc", path=store_path)
    client = framework.client
    LlamaIndexQdrant(collection_name="li", client=client).add([TextNode(text="y", embedding=embed("y"))])
    langchain_vectors = client.get_collection("lc").config.params.vectors
    llamaindex_vectors = client.get_collection("li").config.params.vectors
    client.close()
    assert list(langchain_vectors) == [""]  # qdrant-client's spelling of the unnamed vector
    assert isinstance(llamaindex_vectors, models.VectorParams)
    backend = QdrantBackend(path=store_path)
    try:
        assert "vector_name" not in backend.describe("lc").params
        assert backend.describe("li").metric == backend.describe("lc").metric == "cosine"
    finally:
        backend.close()


# vector names ----------------------------------------------------------------------------------

def _multi_vector_collection(store_path: str) -> None:
    client = QdrantClient(path=store_path)
    client.create_collection(
        "multi",
        vectors_config={"text": models.VectorParams(size=3, distance=models.Distance.COSINE),
                        "image": models.VectorParams(size=2, distance=models.Distance.EUCLID)},
        sparse_vectors_config={"keywords": models.SparseVectorParams()})
    client.upsert("multi", points=[models.PointStruct(
        id=1, payload={"document": "d", "k": 1},
        vector={"text": [1.0, 0.0, 0.0], "image": [0.25, 0.5],
                "keywords": models.SparseVector(indices=[2, 7], values=[0.5, 1.5])})])
    client.close()


def test_several_dense_vectors_need_the_vector_name_option(store_path, state):
    _multi_vector_collection(store_path)
    backend = _open(store_path, state)
    try:
        with pytest.raises(ConfigError, match=r"several dense vectors \('image', 'text'\).*vector_name") as caught:
            backend.describe("multi")
        assert "\n" not in str(caught.value)
    finally:
        backend.close()
    wrong = _open(store_path, state, vector_name="nope")
    try:
        with pytest.raises(ConfigError, match="no dense vector named 'nope'"):
            wrong.describe("multi")
    finally:
        wrong.close()


def test_writes_touch_only_the_chosen_named_vector(store_path, state):
    _multi_vector_collection(store_path)
    (before,) = plain_points(store_path, "multi")
    backend = _open(store_path, state, vector_name="text")
    try:
        info = backend.describe("multi")
        assert (info.dim, info.metric, info.params["vector_name"]) == (3, "cosine", "text")
        record = backend.get("multi", ["1"])
        assert record.documents == ["d"] and record.metadatas == [{"k": 1}]
        backend.update_metadata("multi", ["1"], [{"k": 2}])
        backend.upsert("multi", Batch(["1"], np.array([[0, 3, 4]], np.float32), ["d"], [{"k": 3}]))
        assert backend.get("multi", ["1"]).vectors.tolist() == [[0.0, 3.0, 4.0]]
        assert backend.query("multi", np.array([[0, 3, 4]], np.float32), 1)[0][0][0] == "1"
        with pytest.raises(OperationError, match="besides the records' ones"):
            backend.rename_collection("multi", "other")
    finally:
        backend.close()
    (after,) = plain_points(store_path, "multi")
    assert after.payload == {"document": "d", "k": 3}
    assert after.vector["image"] == before.vector["image"]
    assert after.vector["keywords"] == before.vector["keywords"]
    assert after.vector["text"] != before.vector["text"]


def test_new_collections_get_an_unnamed_vector_unless_vector_name_is_set(store_path, state):
    backend = _open(store_path, state, vector_name="dense")
    try:
        backend.create_collection("named", 3, "l2")
        backend.create_collection("explicit", 3, "l2", vector_name="other")
        backend.upsert("named", Batch(["a"], np.ones((1, 3), np.float32), [None], [{}]))
        assert backend.describe("named").params["vector_name"] == "dense"
    finally:
        backend.close()
    client = QdrantClient(path=store_path)
    try:
        assert list(client.get_collection("named").config.params.vectors) == ["dense"]
        assert list(client.get_collection("explicit").config.params.vectors) == ["other"]
    finally:
        client.close()
    plain = _open(store_path, state)
    try:
        plain.create_collection("unnamed", 3, "l2")
        assert "vector_name" not in plain.describe("unnamed").params
        assert plain.describe("named").params["vector_name"] == "dense"  # its only dense vector
    finally:
        plain.close()


# scans -----------------------------------------------------------------------------------------

def test_a_local_scan_does_not_sort_every_id_for_each_page(backend, monkeypatch):
    backend.create_collection("alpha", 2, "l2")
    batch = make_batch(50, dim=2)
    backend.upsert("alpha", batch)
    scrolls = []
    real_scroll = backend.client.scroll
    monkeypatch.setattr(backend.client, "scroll", lambda *a, **kw: scrolls.append(kw) or real_scroll(*a, **kw))
    seen, cursor = [], None
    while True:
        page, cursor = backend.scan("alpha", 7, cursor)
        seen += page.ids
        if cursor is None:
            break
    assert sorted(seen) == sorted(batch.ids) and len(seen) == 50
    assert len(scrolls) == 1  # the order is built once per pass, then pages are O(batch)


# options and errors ----------------------------------------------------------------------------

def test_exactly_one_of_path_and_url_is_required(store_path):
    with pytest.raises(ConfigError):
        QdrantBackend()
    with pytest.raises(ConfigError):
        QdrantBackend(path=store_path, url="http://127.0.0.1:6333")
    with pytest.raises(ConfigError):
        QdrantBackend(path=store_path, api_key="secret")
    with pytest.raises(ConfigError):
        QdrantBackend(url="http://127.0.0.1:6333", prefer_grpc="maybe")


def test_a_closed_port_fails_fast_with_a_one_line_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(BackendError) as caught:
        open_backend("qdrant", {"url": url, "timeout": "2", "prefer_grpc": "false"})
    message = str(caught.value)
    assert url in message and "\n" not in message


def test_two_connections_share_one_local_client_and_release_the_lock(store_path):
    first = QdrantBackend(path=store_path)
    second = QdrantBackend(path=store_path)
    first.create_collection("alpha", 2, "l2")
    first.close()
    assert second.list_collections() == ["alpha"]
    with pytest.raises(BackendError, match="closed"):
        first.count("alpha")
    second.close()
    client = QdrantClient(path=store_path)  # the folder lock is free again
    client.close()


def test_a_store_locked_by_another_client_gives_a_one_line_error(store_path):
    holder = QdrantClient(path=store_path)  # stands in for another process, or a framework's client
    try:
        with pytest.raises(BackendError, match="in use by another client") as caught:
            QdrantBackend(path=store_path)
        assert "\n" not in str(caught.value)
    finally:
        holder.close()


def test_errors_name_the_collection(backend):
    backend.create_collection("alpha", 2, "l2")
    with pytest.raises(DimensionMismatchError, match="'alpha'"):
        backend.query("alpha", np.ones((1, 3), np.float32), 1)
    with pytest.raises(OperationError, match="'alpha'"):
        backend.scan("alpha", 5, "not-a-cursor")
    with pytest.raises(CollectionNotFoundError, match="'gamma'"):
        backend.scan("gamma", 5)
    with pytest.raises(OperationError, match="unknown parameter"):
        backend.create_collection("beta", 2, "l2", shards=3)


def test_describe_reports_hnsw_parameters_and_rename_keeps_the_metric(backend):
    backend.create_collection("alpha", 3, "ip", hnsw_m=32, hnsw_ef_construct=200)
    info = backend.describe("alpha")
    assert (info.dim, info.metric) == (3, "ip")
    assert set(info.params) == {"hnsw_m", "hnsw_ef_construct"}
    backend.rename_collection("alpha", "beta")
    assert backend.describe("beta").metric == "ip"


@pytest.mark.parametrize(("metric", "expected"), [("cosine", 0.0), ("l2", 0.0), ("ip", 25.0)])
def test_scores_follow_the_metric(backend, metric, expected):
    backend.create_collection("alpha", 2, metric)
    vectors = np.array([[3, 4], [-4, 3]], np.float32)
    backend.upsert("alpha", Batch(["near", "far"], vectors, [None, None], [{}, {}]))
    ((first, score), (second, other)) = backend.query("alpha", vectors[:1], 2)[0]
    assert (first, second) == ("near", "far")
    assert score == pytest.approx(expected, abs=1e-6)
    far = {"cosine": 1.0, "l2": 50.0, "ip": 0.0}[metric]  # l2: squared distance
    assert other == pytest.approx(far, abs=1e-5)


def test_wide_batches_are_written_in_several_requests(backend, monkeypatch):
    backend.create_collection("wide", 4096, "cosine")
    batch = make_batch(200, dim=4096, seed=4)
    requests = []
    real = backend.client.upsert  # new points only: plain upserts
    monkeypatch.setattr(backend.client, "upsert", lambda *a, **kw: requests.append(1) or real(*a, **kw))
    backend.upsert("wide", batch)
    assert backend.count("wide") == 200 and len(requests) > 1
    assert collection_digest(backend, "wide", batch_size=500) == batch_digest(batch)
