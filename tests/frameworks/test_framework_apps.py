"""The application stand-ins in tests/frameworks/apps.py really write and read what the frameworks do.

Also pins the framework facts docs/layouts.md states, so a framework upgrade that changes a layout
fails here first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.frameworks import apps


@dataclass(frozen=True)
class Pair:
    name: str
    backend: str
    write: Callable[..., list[str]]
    read: Callable[..., apps.Read]
    topk: Callable[..., list[list[str]]]
    lists: bool  # whether the framework accepts list metadata on this backend


PAIRS = [
    Pair("langchain-chroma", "chroma", apps.write_langchain_chroma, apps.read_langchain_chroma,
         apps.topk_langchain_chroma, lists=True),
    Pair("langchain-qdrant", "qdrant", apps.write_langchain_qdrant, apps.read_langchain_qdrant,
         apps.topk_langchain_qdrant, lists=True),
    Pair("llamaindex-chroma", "chroma", apps.write_llamaindex_chroma, apps.read_llamaindex_chroma,
         apps.topk_llamaindex_chroma, lists=False),
    Pair("llamaindex-qdrant", "qdrant", apps.write_llamaindex_qdrant, apps.read_llamaindex_qdrant,
         apps.topk_llamaindex_qdrant, lists=True),
]


@pytest.fixture(scope="module", params=PAIRS, ids=lambda p: p.name)
def written(request, tmp_path_factory) -> tuple[Pair, str, list[dict[str, Any]]]:
    """One store per pair, written once by the framework: (pair, path, docs)."""
    pair = request.param
    path = str(tmp_path_factory.mktemp(pair.name))
    docs = apps.sample_docs(24, lists=pair.lists)
    assert pair.write(path, "docs", docs) == [d["id"] for d in docs]
    return pair, path, docs


def native(backend: str, path: str, collection: str = "docs") -> list[Any]:
    reader = apps.native_records_chroma if backend == "chroma" else apps.native_records_qdrant
    return reader(path, collection)


def payloads(backend: str, path: str, collection: str = "docs") -> dict[str, dict[str, Any]]:
    """id -> Chroma metadata or Qdrant payload, parsed."""
    return {r.id: json.loads(r.metadata if backend == "chroma" else r.payload)
            for r in native(backend, path, collection)}


# the helpers ---------------------------------------------------------------------------------

def test_embed_is_a_reproducible_float32_unit_vector():
    vector = apps.embed("some text")
    assert vector == apps.embed("some text") != apps.embed("other text")
    assert len(vector) == apps.DIM
    assert np.asarray(vector, dtype=np.float32).astype(float).tolist() == vector
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    assert len(apps.embed("x", dim=5)) == 5


def test_sample_docs_are_deterministic_with_uuid_ids():
    docs = apps.sample_docs(5)
    assert docs == apps.sample_docs(5) != apps.sample_docs(5, seed=1)
    assert len({d["id"] for d in docs}) == 5
    assert all(isinstance(d["metadata"]["tags"], list) for d in docs)
    assert all("tags" not in d["metadata"] for d in apps.sample_docs(5, lists=False))


def test_reader_returns_every_record_with_its_text_and_metadata(written):
    pair, path, docs = written
    assert pair.read(path, "docs") == {d["id"]: (d["text"], d["metadata"]) for d in docs}


def test_topk_ranks_each_records_own_vector_first(written):
    pair, path, docs = written
    hits = pair.topk(path, "docs", [apps.embed(d["text"]) for d in docs], 3)
    assert [h[0] for h in hits] == [d["id"] for d in docs]
    assert all(len(h) == 3 for h in hits)


def test_topk_is_reproducible_for_fixed_query_vectors(written):
    pair, path, docs = written
    queries = apps.query_vectors(3)
    first = pair.topk(path, "docs", queries, 5)
    assert first == pair.topk(path, "docs", queries, 5)
    assert all(len(set(ids)) == 5 and set(ids) <= {d["id"] for d in docs} for ids in first)


def test_native_records_are_sorted_and_stable_across_reads(written):
    pair, path, docs = written
    records = native(pair.backend, path)
    assert [r.id for r in records] == sorted(d["id"] for d in docs)
    assert records == native(pair.backend, path)


def test_native_vectors_are_the_embedding_of_the_text(written):
    pair, path, docs = written
    by_id = {d["id"]: d for d in docs}
    for record in native(pair.backend, path):
        stored = record.vector if pair.backend == "chroma" else dict(record.vectors)[""]
        expected = np.asarray(apps.embed(by_id[record.id]["text"]), dtype=np.float32)
        # Qdrant re-normalises cosine vectors on insert: equal up to float32 rounding.
        np.testing.assert_allclose(np.frombuffer(stored, dtype=np.float32), expected, atol=1e-6)


def test_canonical_json_keeps_int_float_and_bool_apart():
    assert len({apps.canonical_json({"a": v}) for v in (1, 1.0, True)}) == 3
    assert apps.canonical_json({"b": 1, "a": [2]}) == apps.canonical_json({"a": [2], "b": 1})
    assert apps.canonical_json(None) is None


def test_helpers_accept_an_open_client_and_leave_it_open(tmp_path):
    docs = apps.sample_docs(4)
    with apps.open_qdrant(tmp_path / "q") as client:
        apps.write_llamaindex_qdrant(client, "docs", docs)
        assert len(apps.read_llamaindex_qdrant(client, "docs")) == 4
        assert len(apps.native_records_qdrant(client, "docs")) == 4
    with apps.open_chroma(tmp_path / "c") as client:
        apps.write_langchain_chroma(client, "docs", docs)
        assert len(apps.read_langchain_chroma(client, "docs")) == 4
        assert client.get_collection("docs").count() == 4


def test_llamaindex_nodes_keep_their_source_document(tmp_path):
    docs = apps.sample_docs(3, lists=False)
    apps.write_llamaindex_chroma(tmp_path / "c", "docs", docs)
    apps.write_llamaindex_qdrant(tmp_path / "q", "docs", docs)
    for nodes in (apps.llamaindex_nodes_chroma(tmp_path / "c", "docs"),
                  apps.llamaindex_nodes_qdrant(tmp_path / "q", "docs")):
        assert {i: n.ref_doc_id for i, n in nodes.items()} == {d["id"]: apps.ref_doc_id(d) for d in docs}


# the layouts docs/layouts.md describes ----------------------------------------------------------

def test_langchain_chroma_keeps_text_in_documents_and_metadata_native_in_an_l2_collection(tmp_path):
    docs = apps.sample_docs(2)
    apps.write_langchain_chroma(tmp_path, "docs", docs)
    rows = {r.id: r for r in apps.native_records_chroma(tmp_path, "docs")}
    assert {i: (r.document, json.loads(r.metadata)) for i, r in rows.items()} == {
        d["id"]: (d["text"], d["metadata"]) for d in docs}
    collection = apps.native_collection_chroma(tmp_path, "docs")
    assert collection["metadata"] is None and collection["hnsw"]["space"] == "l2"


def test_langchain_qdrant_payload_is_page_content_and_metadata_on_an_unnamed_cosine_vector(tmp_path):
    docs = apps.sample_docs(2)
    apps.write_langchain_qdrant(tmp_path, "docs", docs)
    assert payloads("qdrant", str(tmp_path)) == {
        d["id"]: {"page_content": d["text"], "metadata": d["metadata"]} for d in docs}
    # LangChain asks for vectors_config={"": ...}; local mode reports it as a dict with key "".
    vectors = apps.native_collection_qdrant(tmp_path, "docs")["vectors"]
    assert list(vectors) == [""] and vectors[""]["distance"] == "Cosine"


def test_llamaindex_keeps_metadata_twice_and_the_text_where_each_backend_puts_it(tmp_path):
    doc = apps.sample_docs(1, lists=False)[0]
    apps.write_llamaindex_chroma(tmp_path / "c", "docs", [doc])
    apps.write_llamaindex_qdrant(tmp_path / "q", "docs", [doc])
    source = apps.ref_doc_id(doc)
    for backend in ("chroma", "qdrant"):
        (stored,) = payloads(backend, str(tmp_path / backend[0])).values()
        node = json.loads(stored.pop("_node_content"))
        assert stored == {**doc["metadata"], "_node_type": "TextNode",
                          "document_id": source, "doc_id": source, "ref_doc_id": source}
        assert node["metadata"] == doc["metadata"] and node["id_"] == doc["id"]
        assert node["text"] == ("" if backend == "chroma" else doc["text"])
    (row,) = apps.native_records_chroma(tmp_path / "c", "docs")
    assert row.document == doc["text"]
    assert apps.native_collection_qdrant(tmp_path / "q", "docs")["vectors"]["distance"] == "Cosine"


def test_llamaindex_qdrant_needs_the_vector_name_to_query_a_named_vector(tmp_path):
    docs = apps.sample_docs(3)
    apps.write_llamaindex_qdrant(tmp_path, "docs", docs, vector_name="dense")
    assert {r.vectors[0][0] for r in apps.native_records_qdrant(tmp_path, "docs")} == {"dense"}
    assert len(apps.read_llamaindex_qdrant(tmp_path, "docs")) == 3  # get_nodes scrolls, no name needed
    query = [apps.embed(docs[0]["text"])]
    assert apps.topk_llamaindex_qdrant(tmp_path, "docs", query, 1, vector_name="dense") == [[docs[0]["id"]]]
    with pytest.raises(ValueError, match="text-dense"):
        apps.topk_llamaindex_qdrant(tmp_path, "docs", query, 1)


@pytest.mark.parametrize("value, accepted", [
    (["a", "b"], True), ([1, 2], True), ([1.5, 2.5], True), ([True, False], True), ([""], True),
    ([], False), ([1, "a"], False), ([1, 2.5], False), ([True, 1], False), ([1, None], False),
    ([[1], [2]], False), ([{"a": 1}], False), ({"a": 1}, False),
])
def test_chromadb_accepts_only_non_empty_single_type_scalar_lists(tmp_path, value, accepted):
    with apps.open_chroma(tmp_path) as client:
        collection = client.create_collection("lists")
        if not accepted:
            with pytest.raises(ValueError):
                collection.add(ids=["a"], embeddings=[[1.0, 0.0]], metadatas=[{"v": value}])
            return
        collection.add(ids=["a"], embeddings=[[1.0, 0.0]], metadatas=[{"v": value}])
        got = collection.get(ids=["a"])["metadatas"][0]["v"]
        assert apps.canonical_json(got) == apps.canonical_json(value)


def test_chromadb_add_rejects_a_none_value_and_upsert_drops_the_key(tmp_path):
    with apps.open_chroma(tmp_path) as client:
        collection = client.create_collection("nones")
        with pytest.raises(TypeError):
            collection.add(ids=["a"], embeddings=[[1.0, 0.0]], metadatas=[{"v": None, "x": 1}])
        collection.upsert(ids=["b"], embeddings=[[1.0, 0.0]], metadatas=[{"v": None, "x": 1}])
        assert collection.get(ids=["b"])["metadatas"] == [{"x": 1}]


def test_langchain_chroma_get_by_ids_fails_on_a_record_without_metadata_that_search_still_returns(tmp_path):
    doc = {**apps.sample_docs(1)[0], "metadata": {}}
    apps.write_langchain_chroma(tmp_path, "docs", [doc])
    assert apps.native_records_chroma(tmp_path, "docs")[0].metadata is None
    with pytest.raises(ValueError, match="metadata"):  # pydantic's ValidationError is a ValueError
        apps.read_langchain_chroma(tmp_path, "docs")
    assert apps.topk_langchain_chroma(tmp_path, "docs", [apps.embed(doc["text"])], 1) == [[doc["id"]]]


def test_langchain_qdrant_refuses_another_metric_and_reads_foreign_payloads_as_empty_text(tmp_path):
    from langchain_qdrant.qdrant import QdrantVectorStoreError
    from qdrant_client import models

    docs = apps.sample_docs(2)
    with apps.open_qdrant(tmp_path) as client:
        client.create_collection("euclid", vectors_config=models.VectorParams(
            size=apps.DIM, distance=models.Distance.EUCLID))
        client.upsert("euclid", [models.PointStruct(id=docs[0]["id"], vector=apps.embed(docs[0]["text"]),
                                                    payload={"document": "text", "metadata": {"a": 1}})])
        with pytest.raises(QdrantVectorStoreError, match="EUCLID"):
            apps.read_langchain_qdrant(client, "euclid")
        got = apps.read_langchain_qdrant(client, "euclid", distance=models.Distance.EUCLID)
        assert got == {docs[0]["id"]: ("", {"a": 1})}
        apps.write_langchain_qdrant(client, "euclid", [{**docs[1], "metadata": {"_id": "mine", "x": 1}}],
                                    distance=models.Distance.EUCLID)
        # LangChain writes `_id` over the user's key when it reads.
        assert apps.read_langchain_qdrant(client, "euclid", distance=models.Distance.EUCLID)[docs[1]["id"]] == (
            docs[1]["text"], {"x": 1})


def test_llamaindex_qdrant_cannot_read_a_payload_without_node_content_or_text(tmp_path):
    from qdrant_client import models

    with apps.open_qdrant(tmp_path) as client:
        client.create_collection("plain", vectors_config=models.VectorParams(
            size=apps.DIM, distance=models.Distance.COSINE))
        client.upsert("plain", [models.PointStruct(id=apps.sample_docs(1)[0]["id"], vector=apps.embed("x"),
                                                   payload={"document": "text", "metadata": {"a": 1}})])
        with pytest.raises(ValueError, match="text"):
            apps.read_llamaindex_qdrant(client, "plain")


def test_llamaindex_chroma_flattens_none_to_empty_string_but_keeps_null_in_node_content(tmp_path):
    doc = {**apps.sample_docs(1)[0], "metadata": {"a": None, "b": 1}}
    apps.write_llamaindex_chroma(tmp_path, "docs", [doc])
    (stored,) = payloads("chroma", str(tmp_path)).values()
    assert stored["a"] == "" and json.loads(stored["_node_content"])["metadata"] == {"a": None, "b": 1}
    assert apps.read_llamaindex_chroma(tmp_path, "docs") == {doc["id"]: (doc["text"], {"a": None, "b": 1})}
    with pytest.raises(ValueError, match="must be one of"):
        apps.write_llamaindex_chroma(tmp_path, "lists", [{**doc, "metadata": {"tags": ["a"]}}])
