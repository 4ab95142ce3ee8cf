"""Play the application: write stores with LangChain's and LlamaIndex's own classes, read them back.

Integration tests use these helpers to check that a store vecflow changed still works for the
framework that wrote it. Vectors come from a hash of the text (no model), so stored vectors, query
vectors and top-k results are reproducible.

- A **doc** is `{"id": uuid str, "text": str, "metadata": dict}`, optionally `"ref_doc_id"` (the
  LlamaIndex source document; derived from the id when absent). Ids are UUID strings because
  LangChain-Qdrant and LlamaIndex-Qdrant need them.
- **Readers** return `{id: (text, metadata)}` for every record as the framework reports it.
  LangChain-Qdrant puts `_id` and `_collection_name` into every Document's metadata (over any user
  keys of those names); the reader takes them out again (`_id` becomes the key), so readers of all
  four pairs compare directly.
- **topk_*** return, per query vector, the ids the framework's own similarity search ranks first.
- **native_records_*** return every record exactly as the plain client returns it, sorted by id, with
  vectors as float32 bytes and metadata / payloads as canonical JSON (`1`, `1.0` and `true` stay
  distinct), for byte-identity assertions.
- `path_or_client` is a folder (opened here and closed before returning) or an open client (left
  open). Qdrant local mode allows one client per folder and process: close vecflow's connection
  before passing a path, or pass vecflow's client.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import chromadb
import numpy as np
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore as LangChainQdrant
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import BasePydanticVectorStore, VectorStoreQuery
from llama_index.vector_stores.chroma import ChromaVectorStore
from llama_index.vector_stores.qdrant import QdrantVectorStore as LlamaIndexQdrant
from qdrant_client import QdrantClient, models

DIM = 16
Doc = dict[str, Any]
Read = dict[str, tuple[str, dict[str, Any]]]
PathOrClient = Any  # a folder (str or os.PathLike) or an open client
_DOC_NAMESPACE = uuid.UUID("5f1d3c1e-8b9a-4c43-9d0b-6b0e3f6a2d11")


# deterministic embeddings ---------------------------------------------------------------------

def embed(text: str, dim: int = DIM) -> list[float]:
    """A unit vector (float32 values as Python floats) seeded by the SHA-256 of `text`."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim)
    return [float(x) for x in (vector / np.linalg.norm(vector)).astype(np.float32)]


def query_vectors(n: int = 4, dim: int = DIM) -> list[list[float]]:
    """`n` fixed query vectors, unrelated to any sample text."""
    return [embed(f"query vector {i}", dim) for i in range(n)]


class HashEmbeddings(Embeddings):
    """LangChain embeddings: `embed(text)`."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [embed(text, self.dim) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return embed(text, self.dim)


class HashEmbedding(BaseEmbedding):
    """LlamaIndex embed model: `embed(text)` (for indexes and query engines built over a store)."""

    dim: int = DIM

    def _get_text_embedding(self, text: str) -> list[float]:
        return embed(text, self.dim)

    def _get_query_embedding(self, query: str) -> list[float]:
        return embed(query, self.dim)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return embed(query, self.dim)


def sample_docs(n: int = 24, *, lists: bool = True, seed: int = 0) -> list[Doc]:
    """`n` docs with uuid ids and str / int / float / bool metadata (and a list of str if `lists`).

    Floats have few significant digits: chromadb 1.5.9 returns some 16-17 digit floats 1 ulp off.
    LlamaIndex-Chroma refuses lists (flat metadata only): use `lists=False` there.
    """
    topics = ["rivers", "compilers", "tea", "glaciers", "chess", "bridges", "moths", "opera"]
    docs = []
    for i in range(n):
        metadata: dict[str, Any] = {
            "title": f"Document {i}",
            "year": 1990 + i,
            "rating": round(1 + (i * 37 % 40) / 10, 1),
            "draft": i % 3 == 0,
        }
        if lists:
            metadata["tags"] = [topics[i % len(topics)], topics[(i * 5 + 1) % len(topics)]]
        docs.append({
            "id": str(uuid.uuid5(_DOC_NAMESPACE, f"{seed}/{i}")),
            "text": f"Document {i} is about {topics[i % len(topics)]} (variant {seed}.{i}).",
            "metadata": metadata,
        })
    return docs


def ref_doc_id(doc: Doc) -> str:
    """The LlamaIndex source-document id of a doc (its `ref_doc_id` key, else derived from its id)."""
    return doc.get("ref_doc_id") or str(uuid.uuid5(_DOC_NAMESPACE, "source/" + doc["id"]))


def _floats(vector: Sequence[float]) -> list[float]:
    return [float(x) for x in vector]


# connections ---------------------------------------------------------------------------------

@contextlib.contextmanager
def open_chroma(path_or_client: PathOrClient) -> Iterator[Any]:
    """A Chroma client: an embedded one for a folder (closed on exit), or the given client."""
    if not isinstance(path_or_client, (str, os.PathLike)):
        yield path_or_client
        return
    # chromadb shares one client system per path string: spell each folder one way.
    client = chromadb.PersistentClient(path=os.path.abspath(path_or_client))
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def open_qdrant(path_or_client: PathOrClient) -> Iterator[QdrantClient]:
    """A Qdrant client: local mode for a folder (closed on exit), or the given client."""
    if not isinstance(path_or_client, (str, os.PathLike)):
        yield path_or_client
        return
    client = QdrantClient(path=os.fspath(path_or_client))
    try:
        yield client
    finally:
        client.close()


def _scroll(client: QdrantClient, collection: str, **kwargs: Any) -> Iterator[Any]:
    offset = None
    while True:
        points, offset = client.scroll(collection, limit=1024, offset=offset, **kwargs)
        yield from points
        if offset is None:
            return


# LangChain -----------------------------------------------------------------------------------

def _documents(docs: Sequence[Doc]) -> list[Document]:
    return [Document(id=d["id"], page_content=d["text"], metadata=d.get("metadata") or {}) for d in docs]


def _langchain_chroma(client: Any, collection: str, dim: int) -> Chroma:
    return Chroma(client=client, collection_name=collection, embedding_function=HashEmbeddings(dim),
                  create_collection_if_not_exists=False)


def write_langchain_chroma(path_or_client: PathOrClient, collection: str, docs: Sequence[Doc], *,
                           dim: int = DIM, collection_metadata: dict | None = None) -> list[str]:
    """`Chroma(...).add_documents(docs)`; the collection is created by LangChain if missing
    (space l2 unless `collection_metadata={"hnsw:space": ...}`)."""
    with open_chroma(path_or_client) as client:
        store = Chroma(client=client, collection_name=collection, embedding_function=HashEmbeddings(dim),
                       collection_metadata=collection_metadata)
        return store.add_documents(_documents(docs))


def read_langchain_chroma(path_or_client: PathOrClient, collection: str, *, dim: int = DIM) -> Read:
    """Every record via `Chroma.get_by_ids`, which leaves out records whose document is None and
    raises a pydantic ValidationError on a record without metadata (LangChain writes `{}` so)."""
    with open_chroma(path_or_client) as client:
        store = _langchain_chroma(client, collection, dim)
        ids = store.get(include=[])["ids"]
        return {d.id: (d.page_content, d.metadata) for d in store.get_by_ids(ids)}


def topk_langchain_chroma(path_or_client: PathOrClient, collection: str,
                          vectors: Sequence[Sequence[float]], k: int, *, dim: int = DIM) -> list[list[str]]:
    with open_chroma(path_or_client) as client:
        store = _langchain_chroma(client, collection, dim)
        return [[d.id for d in store.similarity_search_by_vector(_floats(v), k=k)] for v in vectors]


def write_langchain_qdrant(path_or_client: PathOrClient, collection: str, docs: Sequence[Doc], *,
                           dim: int = DIM, distance: models.Distance = models.Distance.COSINE,
                           vector_name: str = "") -> list[str]:
    """`QdrantVectorStore.from_documents(docs, path=...)` (LangChain creates the collection: COSINE,
    vector `vector_name`, "" by default). With an open client the collection must exist."""
    if isinstance(path_or_client, (str, os.PathLike)):
        store = LangChainQdrant.from_documents(
            _documents(docs), HashEmbeddings(dim), path=os.fspath(path_or_client), collection_name=collection,
            distance=distance, vector_name=vector_name)
        store.client.close()
        return [d["id"] for d in docs]
    store = LangChainQdrant(client=path_or_client, collection_name=collection, embedding=HashEmbeddings(dim),
                            distance=distance, vector_name=vector_name)
    return [str(i) for i in store.add_documents(_documents(docs))]


def _langchain_qdrant(client: QdrantClient, collection: str, dim: int, distance: models.Distance,
                      vector_name: str) -> LangChainQdrant:
    # The constructor validates the collection (dimension, metric, vector name) as an app would.
    return LangChainQdrant(client=client, collection_name=collection, embedding=HashEmbeddings(dim),
                           distance=distance, vector_name=vector_name)


def _langchain_qdrant_entry(document: Document) -> tuple[str, tuple[str, dict[str, Any]]]:
    metadata = dict(document.metadata)
    point_id = metadata.pop("_id")
    metadata.pop("_collection_name")
    return str(point_id), (document.page_content, metadata)


def read_langchain_qdrant(path_or_client: PathOrClient, collection: str, *, dim: int = DIM,
                          distance: models.Distance = models.Distance.COSINE, vector_name: str = "") -> Read:
    """Every point via `QdrantVectorStore.get_by_ids` (ids listed with the plain client: LangChain
    has no "all documents" call), minus the `_id` / `_collection_name` LangChain adds."""
    with open_qdrant(path_or_client) as client:
        store = _langchain_qdrant(client, collection, dim, distance, vector_name)
        ids = [point.id for point in _scroll(client, collection, with_payload=False, with_vectors=False)]
        return dict(_langchain_qdrant_entry(d) for d in store.get_by_ids(ids))


def topk_langchain_qdrant(path_or_client: PathOrClient, collection: str, vectors: Sequence[Sequence[float]],
                          k: int, *, dim: int = DIM, distance: models.Distance = models.Distance.COSINE,
                          vector_name: str = "") -> list[list[str]]:
    with open_qdrant(path_or_client) as client:
        store = _langchain_qdrant(client, collection, dim, distance, vector_name)
        return [[str(d.metadata["_id"]) for d in store.similarity_search_by_vector(_floats(v), k=k)]
                for v in vectors]


# LlamaIndex ----------------------------------------------------------------------------------

def _nodes(docs: Sequence[Doc], dim: int) -> list[TextNode]:
    return [TextNode(id_=d["id"], text=d["text"], metadata=dict(d.get("metadata") or {}),
                     embedding=embed(d["text"], dim),
                     relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=ref_doc_id(d))})
            for d in docs]


def _index(vector_store: BasePydanticVectorStore, docs: Sequence[Doc], dim: int) -> list[str]:
    nodes = _nodes(docs, dim)
    # Nodes carry embed(text) already, so the index embeds nothing; the embed model serves queries.
    VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=vector_store),
                     embed_model=HashEmbedding(dim=dim))
    return [n.node_id for n in nodes]


def _read_nodes(vector_store: BasePydanticVectorStore) -> Read:
    return {n.node_id: (n.get_content(metadata_mode=MetadataMode.NONE), n.metadata)
            for n in vector_store.get_nodes(None)}


def _topk(vector_store: BasePydanticVectorStore, vectors: Sequence[Sequence[float]], k: int) -> list[list[str]]:
    return [vector_store.query(VectorStoreQuery(query_embedding=_floats(v), similarity_top_k=k)).ids
            for v in vectors]


def write_llamaindex_chroma(path_or_client: PathOrClient, collection: str, docs: Sequence[Doc], *,
                            dim: int = DIM, collection_metadata: dict | None = None) -> list[str]:
    """A `VectorStoreIndex` over `ChromaVectorStore`; the app creates the collection with the plain
    client, as LlamaIndex's docs show (`get_or_create_collection`, space l2 unless told)."""
    with open_chroma(path_or_client) as client:
        chroma_collection = client.get_or_create_collection(collection, metadata=collection_metadata)
        return _index(ChromaVectorStore(chroma_collection=chroma_collection), docs, dim)


def llamaindex_nodes_chroma(path_or_client: PathOrClient, collection: str) -> dict[str, BaseNode]:
    """Every node via `ChromaVectorStore.get_nodes(None)`, by node id."""
    with open_chroma(path_or_client) as client:
        store = ChromaVectorStore(chroma_collection=client.get_collection(collection))
        return {n.node_id: n for n in store.get_nodes(None)}


def read_llamaindex_chroma(path_or_client: PathOrClient, collection: str) -> Read:
    with open_chroma(path_or_client) as client:
        return _read_nodes(ChromaVectorStore(chroma_collection=client.get_collection(collection)))


def topk_llamaindex_chroma(path_or_client: PathOrClient, collection: str, vectors: Sequence[Sequence[float]],
                           k: int) -> list[list[str]]:
    with open_chroma(path_or_client) as client:
        return _topk(ChromaVectorStore(chroma_collection=client.get_collection(collection)), vectors, k)


def _llamaindex_qdrant(client: QdrantClient, collection: str, vector_name: str | None) -> LlamaIndexQdrant:
    # vector_name None: LlamaIndex's default ("text-dense", or "" once it sees an unnamed vector).
    return LlamaIndexQdrant(collection_name=collection, client=client, dense_vector_name=vector_name)


def write_llamaindex_qdrant(path_or_client: PathOrClient, collection: str, docs: Sequence[Doc], *,
                            dim: int = DIM, vector_name: str | None = None) -> list[str]:
    """A `VectorStoreIndex` over LlamaIndex's `QdrantVectorStore`. With `vector_name` None LlamaIndex
    creates the collection itself (one unnamed COSINE vector); otherwise the app pre-creates it with
    that named COSINE vector and passes `dense_vector_name`."""
    with open_qdrant(path_or_client) as client:
        if vector_name is not None and not client.collection_exists(collection):
            client.create_collection(collection, vectors_config={
                vector_name: models.VectorParams(size=dim, distance=models.Distance.COSINE)})
        with warnings.catch_warnings():
            # Local mode warns that the doc_id payload index LlamaIndex creates has no effect.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            return _index(_llamaindex_qdrant(client, collection, vector_name), docs, dim)


def llamaindex_nodes_qdrant(path_or_client: PathOrClient, collection: str, *,
                            vector_name: str | None = None) -> dict[str, BaseNode]:
    """Every node via `QdrantVectorStore.get_nodes()` (one scroll of at most 9999 points), by node id."""
    with open_qdrant(path_or_client) as client:
        return {n.node_id: n for n in _llamaindex_qdrant(client, collection, vector_name).get_nodes()}


def read_llamaindex_qdrant(path_or_client: PathOrClient, collection: str, *,
                           vector_name: str | None = None) -> Read:
    with open_qdrant(path_or_client) as client:
        return _read_nodes(_llamaindex_qdrant(client, collection, vector_name))


def topk_llamaindex_qdrant(path_or_client: PathOrClient, collection: str, vectors: Sequence[Sequence[float]],
                           k: int, *, vector_name: str | None = None) -> list[list[str]]:
    with open_qdrant(path_or_client) as client:
        return _topk(_llamaindex_qdrant(client, collection, vector_name), vectors, k)


# native records, as the plain clients return them ----------------------------------------------

class ChromaRow(NamedTuple):
    id: str
    vector: bytes  # float32
    document: str | None
    metadata: str | None  # canonical JSON
    uri: str | None


class QdrantPoint(NamedTuple):
    id: str  # str(point id): an unsigned int's digits or a UUID
    vectors: tuple[tuple[str, Any], ...]  # sorted (name, value); an unnamed vector is named ""
    payload: str | None  # canonical JSON


def canonical_json(value: Any) -> str | None:
    """Sorted keys, exact float repr, `1` / `1.0` / `true` distinct; None stays None."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _f32(values: Any) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


def native_records_chroma(path_or_client: PathOrClient, collection: str) -> list[ChromaRow]:
    with open_chroma(path_or_client) as client:
        got = client.get_collection(collection).get(include=["embeddings", "documents", "metadatas", "uris"])
    rows = zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"], got["uris"])
    return sorted(ChromaRow(i, _f32(e), d, canonical_json(m), u) for i, e, d, m, u in rows)


def native_collection_chroma(path_or_client: PathOrClient, collection: str) -> dict[str, Any]:
    """The collection's metadata and index configuration (space, HNSW / SPANN parameters)."""
    with open_chroma(path_or_client) as client:
        col = client.get_collection(collection)
        config = col.configuration
        return {"metadata": col.metadata, "hnsw": config.get("hnsw"), "spann": config.get("spann")}


def _qdrant_vector(value: Any) -> Any:
    if isinstance(value, models.SparseVector):
        return ("sparse", tuple(value.indices), _f32(value.values))
    if value and isinstance(value[0], list):
        return ("multi", len(value), _f32(value))
    return _f32(value)


def native_records_qdrant(path_or_client: PathOrClient, collection: str) -> list[QdrantPoint]:
    with open_qdrant(path_or_client) as client:
        points = list(_scroll(client, collection, with_payload=True, with_vectors=True))
    records = []
    for point in points:
        named = point.vector if isinstance(point.vector, dict) else {"": point.vector}
        vectors = tuple(sorted((name, _qdrant_vector(v)) for name, v in named.items()))
        records.append(QdrantPoint(str(point.id), vectors, canonical_json(point.payload)))
    return sorted(records)


def native_collection_qdrant(path_or_client: PathOrClient, collection: str) -> dict[str, Any]:
    """The collection's vector configuration (names, sizes, distances, sparse vectors) and metadata."""
    with open_qdrant(path_or_client) as client:
        config = client.get_collection(collection).config
    params = config.params.model_dump(mode="json", include={"vectors", "sparse_vectors"})
    return {**params, "metadata": getattr(config, "metadata", None)}
