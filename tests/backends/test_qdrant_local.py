"""Local mode's points read from the client's arrays (vecflow/backends/qdrant_local.py) are what
`QdrantClient.retrieve` returns: the same points, payloads and vector values, on every kind of
collection the adapter reads; and the adapter reads the same pages through either."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

import vecflow.backends.qdrant as qdrant_adapter
from tests.backends.contract import make_batch
from vecflow.backends.qdrant import QdrantBackend, point_id
from vecflow.backends.qdrant_local import local_points
from vecflow.runtime.digest import page_digests
from vecflow.state import VecflowState

DIM = 8


def as_retrieved(points) -> list[tuple]:
    """(id, payload, vector as float32 bytes, or a dict of them) of Records or LocalPoints."""

    def vector(value):
        if value is None:
            return None
        if isinstance(value, dict):
            return {name: np.asarray(v, dtype=np.float32).tobytes() for name, v in value.items()}
        return np.asarray(value, dtype=np.float32).tobytes()

    return [(point.id, point.payload, vector(point.vector)) for point in points]


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32) * 3


@pytest.fixture
def client(tmp_path):
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    yield client
    client.close()


def fill(client: QdrantClient, name: str, config, named: tuple[str, ...]) -> list:
    client.create_collection(name, vectors_config=config)
    rows = vectors(40, 1)
    ids = [i if i % 3 else f"00000000-0000-5000-8000-{i:012d}" for i in range(40)]
    points = [models.PointStruct(id=pid, vector={key: rows[i].tolist() for key in named} if named else
                                 rows[i].tolist(), payload={"page_content": f"text {i}", "metadata": {"n": i,
                                                                                                    "tags": ["a"]}})
              for i, pid in enumerate(ids)]
    client.upsert(name, points)
    client.delete(name, models.PointIdsList(points=ids[5:8]))
    if named:
        client.delete_vectors(name, [named[0]], models.PointIdsList(points=ids[10:12]))
    return ids


@pytest.mark.parametrize("metric", [models.Distance.COSINE, models.Distance.EUCLID])
@pytest.mark.parametrize("named", [(), ("text",), ("text", "image")])
def test_local_points_are_what_retrieve_returns(client, metric, named):
    config = {key: models.VectorParams(size=DIM, distance=metric) for key in named} if named else \
        models.VectorParams(size=DIM, distance=metric)
    ids = fill(client, "docs", config, named)
    wanted = [*ids, 999, "00000000-0000-5000-8000-999999999999"]  # two that do not exist
    selectors = [True, False, *([[named[0]], [named[-1]]] if named else [])]
    for _ in range(2):  # before and after a search, which normalises local mode's arrays in place
        for selector in selectors:
            fast = local_points(client, "docs", wanted, selector)
            assert fast is not None
            slow = client.retrieve("docs", wanted, with_payload=True, with_vectors=selector)
            assert as_retrieved(fast) == as_retrieved(slow), selector
        client.query_points("docs", query=vectors(1, 2)[0].tolist(), using=named[0] if named else None, limit=3)


def test_local_points_are_copies(client):
    ids = fill(client, "docs", models.VectorParams(size=DIM, distance=models.Distance.COSINE), ())
    point = local_points(client, "docs", ids[:1], True)[0]
    point.payload["metadata"]["tags"].append("changed")
    point.vector[:] = 0
    again = client.retrieve("docs", ids[:1], with_payload=True, with_vectors=True)[0]
    assert again.payload["metadata"]["tags"] == ["a"] and any(again.vector)


def test_collections_local_points_cannot_read_are_left_to_retrieve(client):
    client.create_collection("sparse", vectors_config={"text": models.VectorParams(size=DIM, distance="Cosine")},
                             sparse_vectors_config={"words": models.SparseVectorParams()})
    assert local_points(client, "sparse", [1], True) is None
    assert local_points(client, "missing", [1], True) is None
    client.create_collection("docs", vectors_config=models.VectorParams(size=DIM, distance="Cosine"))
    collection = client._client.collections["docs"]
    del collection.deleted_per_vector  # another qdrant-client's local collection
    assert local_points(client, "docs", [1], True) is None


def test_the_adapter_reads_the_same_pages_through_retrieve(tmp_path, monkeypatch):
    backend = QdrantBackend(path=str(tmp_path / "qdrant"))
    backend.attach_state(VecflowState.in_memory())
    try:
        backend.create_collection("docs", DIM, "cosine")
        batch = make_batch(30, DIM)
        backend.upsert("docs", batch)
        backend.update_metadata("docs", batch.ids[:5], [{"changed": True}] * 5)

        def read() -> tuple:
            page, _ = backend.scan_native("docs", 100)
            got = backend.get_native("docs", batch.ids[::2] + ["missing"])
            return page.batch.ids, page_digests(page), got.batch.ids, page_digests(got)

        fast = read()
        calls = []
        monkeypatch.setattr(qdrant_adapter, "local_points", lambda *args: calls.append(args) and None)
        assert read() == fast and calls
        assert fast[0] and sorted(fast[2]) == sorted(batch.ids[::2])
        assert str(point_id(batch.ids[0])) in {str(p.id) for p in backend._retrieve("docs", [point_id(batch.ids[0])],
                                                                                      True)}
    finally:
        backend.close()
