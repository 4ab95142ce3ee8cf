"""The Qdrant adapter: the shared contract in local mode, plus what is specific to Qdrant."""

from __future__ import annotations

import base64
import socket
import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from tests.backends.contract import BackendContract, make_batch
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


class TestQdrantLocalContract(BackendContract):
    @pytest.fixture
    def open_store(self, tmp_path):
        return lambda: QdrantBackend(path=str(tmp_path / "qdrant"))


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "qdrant")


@pytest.fixture
def backend(store_path):
    backend = QdrantBackend(path=store_path)
    yield backend
    backend.close()


def raw_points(store_path: str, name: str) -> list[models.Record]:
    """The points as qdrant-client sees them, for checking the documented layout."""
    client = QdrantClient(path=store_path)
    try:
        points, _ = client.scroll(name, limit=1000, with_payload=True, with_vectors=True)
        return points
    finally:
        client.close()


# ids -------------------------------------------------------------------------------------------

def test_string_ids_that_look_like_qdrant_ids_round_trip_exactly(backend):
    real_uuid = str(uuid.uuid4())
    ids = ["42", "0", "042", "-1", str(2**64), real_uuid, real_uuid.upper(), "日本語", "🚀", ""]
    batch = Batch(ids, np.arange(len(ids) * 2, dtype=np.float32).reshape(-1, 2),
                  [f"doc {i}" for i in range(len(ids))], [{"i": i} for i in range(len(ids))])
    backend.create_collection("ids", 2, "l2")
    backend.upsert("ids", batch)
    assert backend.count("ids") == len(ids)
    got = backend.get("ids", list(reversed(ids)))
    assert got.ids == list(reversed(ids))
    assert got.vectors.tobytes() == batch.vectors[::-1].tobytes()
    assert collection_digest(backend, "ids", batch_size=3) == batch_digest(batch)


def test_point_ids_are_canonical_ids_or_uuid5_of_the_record_id():
    real_uuid = str(uuid.uuid4())
    assert point_id("42") == 42
    assert point_id(real_uuid) == real_uuid
    assert point_id(str(2**64 - 1)) == 2**64 - 1
    for other in ("042", "-1", "+1", str(2**64), real_uuid.upper(), "r00001", "٤٢", ""):
        assert point_id(other) == str(uuid.uuid5(VECFLOW_NAMESPACE, other))


# cosine vectors --------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # Qdrant normalising
def test_cosine_collection_returns_raw_vectors_bit_exactly(backend):
    backend.create_collection("cos", 4, "cosine")
    batch = make_batch(30, dim=4, seed=5)
    batch.vectors[0] = [1e-30, -0.0, 3.4e38, 1.0000001]  # its norm overflows float32
    batch.vectors[1] = 0.0
    batch.vectors[2] *= 1000
    backend.upsert("cos", batch)
    assert backend.get("cos", batch.ids).vectors.tobytes() == batch.vectors.tobytes()
    assert collection_digest(backend, "cos", batch_size=7) == batch_digest(batch)
    assert QdrantBackend.normalises_cosine is False


def test_cosine_vectors_survive_a_rename(backend):
    backend.create_collection("cos", 8, "cosine")
    batch = make_batch(40, seed=2)
    batch.vectors *= 3
    backend.upsert("cos", batch)
    backend.rename_collection("cos", "cos2")
    assert collection_digest(backend, "cos2") == batch_digest(batch)


def test_a_vector_rewritten_by_another_tool_wins_over_the_stale_raw_copy(backend, store_path):
    backend.create_collection("cos", 2, "cosine")
    vectors = np.array([[3, 4], [1, 1]], np.float32)
    backend.upsert("cos", Batch(["a", "b"], vectors, [None, None], [{}, {}]))
    backend.close()
    client = QdrantClient(path=store_path)
    client.update_vectors("cos", points=[models.PointVectors(id=point_id("a"), vector=[0.0, 2.0])])
    client.close()
    other = QdrantBackend(path=store_path)
    try:
        got = other.get("cos", ["a", "b"])
    finally:
        other.close()
    assert got.vectors.tolist() == [[0.0, 1.0], [1.0, 1.0]]


# payload layout --------------------------------------------------------------------------------

def test_payload_layout_is_the_documented_one(backend, store_path):
    backend.create_collection("l2", 2, "l2")
    backend.create_collection("cos", 2, "cosine")
    metadata = {"s": "x", "i": 1, "f": 1.0, "b": True, "n": None, "nested": {"l": [1, "a"]}}
    batch = Batch(["rec-1"], np.array([[3, 4]], np.float32), ["text"], [metadata])
    backend.upsert("l2", batch)
    backend.upsert("cos", batch)
    backend.close()

    (point,) = raw_points(store_path, "l2")
    assert point.id == str(uuid.uuid5(VECFLOW_NAMESPACE, "rec-1"))
    assert point.payload == {"_vecflow_id": "rec-1", "document": "text", "metadata": metadata}
    assert point.vector == [3.0, 4.0]

    (point,) = raw_points(store_path, "cos")
    raw = point.payload.pop("_vecflow_vector")
    assert point.payload == {"_vecflow_id": "rec-1", "document": "text", "metadata": metadata}
    assert base64.b64decode(raw) == np.array([3, 4], "<f4").tobytes()
    # Qdrant keeps the direction; local mode returns it unit-length or not depending on history.
    assert np.isclose(point.vector[0] / point.vector[1], 0.75)


def test_metadata_types_are_kept_in_the_raw_payload(backend, store_path):
    backend.create_collection("l2", 1, "l2")
    metadata = {"i": 7, "f": 7.0, "t": True, "big": 2**40, "none": None, "list": [1, 1.0, False]}
    backend.upsert("l2", Batch(["x"], np.ones((1, 1), np.float32), [None], [metadata]))
    backend.close()
    (point,) = raw_points(store_path, "l2")
    stored = point.payload["metadata"]
    assert stored == metadata
    assert [type(v) for v in stored["list"]] == [int, float, bool]
    assert {k: type(v) for k, v in stored.items()} == {k: type(v) for k, v in metadata.items()}


def test_points_written_by_other_tools_are_read_without_loss(store_path):
    client = QdrantClient(path=store_path)
    params = models.VectorParams(size=2, distance=models.Distance.DOT)
    client.create_collection("app", vectors_config=params)
    five = str(uuid.UUID(int=5))
    client.upsert("app", points=[
        models.PointStruct(id=7, vector=[1.0, 2.0], payload={"title": "t", "document": "d"}),
        models.PointStruct(id=five, vector=[3.0, 4.0], payload={"metadata": {"k": 1}}),
    ])
    client.close()
    backend = QdrantBackend(path=store_path)
    try:
        batch, _ = backend.scan("app", 10)
        read = {r.id: (r.document, r.metadata) for r in batch.records()}
        assert read == {"7": ("d", {"title": "t"}), five: (None, {"k": 1})}
        backend.upsert("app", batch)  # in place: the same points, not duplicates
        assert backend.count("app") == 2
    finally:
        backend.close()


def test_update_metadata_of_a_foreign_point_replaces_its_top_level_keys(store_path):
    client = QdrantClient(path=store_path)
    params = models.VectorParams(size=2, distance=models.Distance.COSINE)
    client.create_collection("app", vectors_config=params)
    client.upsert("app", points=[
        models.PointStruct(id=7, vector=[3.0, 4.0], payload={"title": "t", "document": "d"}),
    ])
    client.close()
    backend = QdrantBackend(path=store_path)
    try:
        before = backend.get("app", ["7"])
        backend.update_metadata("app", ["7", "8"], [{"name": "t"}, {"never": "stored"}])
        after = backend.get("app", ["7", "8"])
    finally:
        backend.close()
    assert after.ids == ["7"] and after.documents == ["d"] and after.metadatas == [{"name": "t"}]
    assert after.vectors.tobytes() == before.vectors.tobytes()


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


def test_errors_name_the_collection(backend):
    backend.create_collection("alpha", 2, "l2")
    with pytest.raises(DimensionMismatchError, match="'alpha'"):
        backend.query("alpha", np.ones((1, 3), np.float32), 1)
    with pytest.raises(OperationError, match="'alpha'"):
        backend.scan("alpha", 5, "not-a-cursor")
    with pytest.raises(CollectionNotFoundError, match="'gamma'"):
        backend.scan("gamma", 5)


def test_describe_reports_hnsw_parameters_and_rename_keeps_the_metric(backend):
    backend.create_collection("alpha", 3, "ip", hnsw_m=32, hnsw_ef_construct=200)
    info = backend.describe("alpha")
    assert (info.dim, info.metric) == (3, "ip")
    assert set(info.params) == {"hnsw_m", "hnsw_ef_construct"}
    backend.rename_collection("alpha", "beta")
    assert backend.describe("beta").metric == "ip"


def test_a_store_locked_by_another_client_gives_a_one_line_error(store_path):
    holder = QdrantClient(path=store_path)  # stands in for another process
    try:
        with pytest.raises(BackendError, match="in use by another process") as caught:
            QdrantBackend(path=store_path)
        assert "\n" not in str(caught.value)
    finally:
        holder.close()


def test_named_vector_collections_are_refused_by_name(store_path):
    client = QdrantClient(path=store_path)
    params = {"text": models.VectorParams(size=2, distance=models.Distance.COSINE)}
    client.create_collection("named", vectors_config=params)
    client.close()
    backend = QdrantBackend(path=store_path)
    try:
        with pytest.raises(BackendError, match=r"'named' .*named vectors"):
            backend.describe("named")
    finally:
        backend.close()


# scores and sizes ------------------------------------------------------------------------------

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


def test_wide_batches_are_written_in_several_requests(backend):
    backend.create_collection("wide", 4096, "cosine")
    batch = make_batch(200, dim=4096, seed=4)
    backend.upsert("wide", batch)
    assert backend.count("wide") == 200
    assert collection_digest(backend, "wide", batch_size=500) == batch_digest(batch)
