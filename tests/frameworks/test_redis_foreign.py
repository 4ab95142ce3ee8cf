"""Redis hashes other tools wrote are adopted, copied or moved to Chroma and Qdrant in their
framework's layout, read there by the framework, and left (or restored) byte for byte.

The Redis servers here have no search module, and the frameworks' Redis classes create an index
before anything else, so they cannot run: each writer below stores hashes with redis-py exactly as
its framework's source does (the version is named at each writer). A private redis-server keeps
the frameworks' default key prefixes (`llama_index/vector_...`) apart from the other tests' keys.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import redis
from llama_index.core.schema import MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.utils import node_to_metadata_dict

from tests.conftest import running_redis
from tests.frameworks import apps
from tests.project import Project, kill_upgrade_at, step_progress
from vecflow.backends.redis import MARKER_KEY
from vecflow.runtime.stores import Stores

K = 5


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A redis-server of this module's own (no search module, like the Debian package)."""
    with running_redis(tmp_path_factory.mktemp("redis-foreign")) as url:
        yield url


@pytest.fixture
def client(redis_server):
    """A plain client on an empty server."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield client
    client.close()


def every_hash(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    """HGETALL of every key of the server: what the applications can read, byte for byte (but
    vecflow's store marker, its one reserved key: docs/team.md#markers)."""
    keys = sorted(set(client.scan_iter(count=5000)) - {MARKER_KEY.encode()})
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        return dict(zip(keys, pipe.execute()))


# the frameworks' writers, replayed with redis-py --------------------------------------------------

def redis_docs(n: int, *, lists: bool, seed: int = 0) -> list[dict]:
    """apps.sample_docs without the bool field: neither framework can store a bool in a hash
    (redis-py refuses it), nor LlamaIndex a list (RedisVL's HashStorage refuses it)."""
    docs = apps.sample_docs(n, lists=lists, seed=seed)
    for doc in docs:
        doc["metadata"].pop("draft")
    return docs


def embedding_like(docs: list[dict], dim: int, seed: int = 0) -> list[list[float]]:
    """Unit vectors around 40 centres, as real embeddings cluster (random ones defeat any ANN index)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    vectors = centres[rng.integers(0, 40, len(docs))] + 0.35 * rng.standard_normal((len(docs), dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32).tolist()


def text_nodes(docs: list[dict], vectors: list[list[float]]) -> list[TextNode]:
    """The nodes an app indexes (as tests/frameworks/apps.py builds them)."""
    return [TextNode(id_=d["id"], text=d["text"], metadata=dict(d["metadata"]), embedding=vector,
                     relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=apps.ref_doc_id(d))})
            for d, vector in zip(docs, vectors)]


def write_llamaindex_redis(client: redis.Redis, docs: list[dict], vectors: list[list[float]] | None = None,
                           prefix: str = "llama_index/vector", separator: str = "_") -> None:
    """llama-index-vector-stores-redis 0.9.0 `RedisVectorStore.add`: per node
    `{id, doc_id, text, vector: array_to_buffer(embedding, "FLOAT32"), **node_to_metadata_dict(node,
    remove_text=True, flat_metadata=False)}` (llama-index-core 0.14.25), stored by RedisVL 0.28
    `HashStorage.write` (HSET) under `prefix.rstrip(separator) + separator + node_id`; the default
    schema is index `llama_index`, prefix `llama_index/vector`, separator `_`."""
    vectors = vectors or [apps.embed(d["text"]) for d in docs]
    with client.pipeline(transaction=False) as pipe:
        for node in text_nodes(docs, vectors):
            record = {"id": node.node_id, "doc_id": node.ref_doc_id,
                      "text": node.get_content(metadata_mode=MetadataMode.NONE),
                      "vector": np.array(node.get_embedding()).astype("float32").tobytes()}
            mapping = {**record, **node_to_metadata_dict(node, remove_text=True, flat_metadata=False)}
            pipe.hset(f"{prefix.rstrip(separator)}{separator}{node.node_id}", mapping=mapping)
        pipe.execute()


def write_langchain_redis(client: redis.Redis, index_name: str, docs: list[dict], dim: int = apps.DIM) -> None:
    """langchain-redis 0.2.6 `RedisVectorStore.add_texts(texts, metadatas, ids=...)` with the default
    config (key_prefix = index_name, content_field `text`, embedding_field `embedding`, FLOAT32,
    default_tag_separator '|'): key `{key_prefix}:{id}`, fields text, embedding, _index_name,
    `_metadata_json = json.dumps(metadata)`, then each metadata value (None skipped, lists joined)."""
    embeddings = apps.HashEmbeddings(dim).embed_documents([d["text"] for d in docs])
    with client.pipeline(transaction=False) as pipe:
        for doc, embedding in zip(docs, embeddings):
            metadata = doc["metadata"]
            record: dict[str, Any] = {"text": doc["text"],
                                      "embedding": np.array(embedding).astype("float32").tobytes(),
                                      "_index_name": index_name, "_metadata_json": json.dumps(metadata)}
            for name, value in metadata.items():
                if value is None:
                    continue
                record[name] = "|".join(value) if isinstance(value, list) else value
            pipe.hset(f"{index_name}:{doc['id']}", mapping=record)
        pipe.execute()


def write_community_redis(client: redis.Redis, index_name: str, docs: list[dict], dim: int = apps.DIM) -> None:
    """langchain_community 0.4.2 `Redis.add_texts(texts, metadatas, keys=ids)`: key
    `doc:{index_name}:{id}`, `{content, content_vector: float32 bytes, **_prepare_metadata(metadata)}`
    (None as "", lists of str joined with ',')."""
    embeddings = apps.HashEmbeddings(dim).embed_documents([d["text"] for d in docs])
    with client.pipeline(transaction=False) as pipe:
        for doc, embedding in zip(docs, embeddings):
            clean = {k: "" if v is None else ",".join(v) if isinstance(v, list) else v
                     for k, v in doc["metadata"].items()}
            pipe.hset(f"doc:{index_name}:{doc['id']}", mapping={
                "content": doc["text"], "content_vector": np.array(embedding).astype("float32").tobytes(), **clean})
        pipe.execute()


# the two frameworks, on Redis and where vecflow copies them -------------------------------------

@dataclass(frozen=True)
class Framework:
    name: str
    collection: str  # the Redis collection (index) name
    lists: bool
    write_redis: Any
    read_chroma: Any
    topk_chroma: Any
    read_qdrant: Any
    topk_qdrant: Any
    writer: str  # as `vecflow inspect` names it, and where the keys are


LLAMAINDEX = Framework("llamaindex", "llama_index", False, lambda client, docs: write_llamaindex_redis(client, docs),
                       apps.read_llamaindex_chroma, apps.topk_llamaindex_chroma, apps.read_llamaindex_qdrant,
                       apps.topk_llamaindex_qdrant, "LlamaIndex; keys llama_index/vector_<id>")
LANGCHAIN = Framework("langchain", "lc_docs", True, lambda client, docs: write_langchain_redis(client, "lc_docs", docs),
                      apps.read_langchain_chroma, apps.topk_langchain_chroma, apps.read_langchain_qdrant,
                      apps.topk_langchain_qdrant, "LangChain (langchain-redis); keys lc_docs:<id>")


def project_with(tmp_path, redis_url: str, batch_size: int = 7, **redis_options: str) -> Project:
    """Chroma as the main store, the Redis server as `redis`, Qdrant local mode as `q`."""
    return Project(tmp_path / "project", {"path": str(tmp_path / "chroma")}, batch_size=batch_size,
                   extra_stores={"redis": ("redis", {"url": redis_url, **redis_options}),
                                 "q": ("qdrant", {"path": str(tmp_path / "qdrant")})})


def cosine_topk(docs: list[dict], queries: list[list[float]], k: int,
                vectors: list[list[float]] | None = None) -> list[set[str]]:
    vectors = np.array(vectors or [apps.embed(d["text"]) for d in docs], np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = np.array(queries) @ vectors.T
    return [{docs[i]["id"] for i in np.argsort(-row)[:k]} for row in scores]


@pytest.mark.parametrize("framework", [LLAMAINDEX, LANGCHAIN], ids=lambda f: f.name)
def test_framework_hashes_are_adopted_copied_to_chroma_and_qdrant_and_read_there_by_the_framework(
        tmp_path, client, redis_server, framework):
    docs = redis_docs(24, lists=framework.lists)
    framework.write_redis(client, docs)
    before = every_hash(client)
    project = project_with(tmp_path, redis_server)
    name = framework.collection

    lines = project.run("inspect", f"redis:{name}")
    assert f"{name}: 24 records, dim 16, cosine" in lines, lines
    assert f"  layout: {framework.name} (20 of 20 sampled hashes look written by {framework.writer}, found under " \
           "its key prefix)" in lines, lines

    project.write_python("r1", None, f'op.copy_collection("redis:{name}", "main:{name}")')
    project.write_python("r2", "r1", f'op.copy_collection("main:{name}", "q:{name}")')
    lines = project.run("upgrade", "head")
    assert sum("verified" in line for line in lines) == 2, lines

    expected = {d["id"]: (d["text"], d["metadata"]) for d in docs}
    chroma, qdrant = str(tmp_path / "chroma"), str(tmp_path / "qdrant")
    assert framework.read_chroma(chroma, name) == expected
    assert framework.read_qdrant(qdrant, name) == expected
    queries = apps.query_vectors(4)
    nearest = cosine_topk(docs, queries, K)
    assert [set(ids) for ids in framework.topk_chroma(chroma, name, queries, K)] == nearest
    assert [set(ids) for ids in framework.topk_qdrant(qdrant, name, queries, K)] == nearest
    opened = Stores(project.config)
    try:
        backend, _ = opened.resolve(f"redis:{name}")
        on_redis = backend.query(name, np.array(queries, np.float32), K)
    finally:
        opened.close()
    assert [{rid for rid, _ in hits} for hits in on_redis] == nearest, "Redis ranks as the copies do"

    project.run("downgrade", "base")
    assert every_hash(client) == before, "vecflow wrote nothing to Redis, and left every byte"
    assert project.digest(f"main:{name}") == project.digest(f"q:{name}") == "absent"


@pytest.mark.parametrize("framework", [LLAMAINDEX, LANGCHAIN], ids=lambda f: f.name)
def test_a_new_redis_collection_gets_exactly_the_hashes_the_framework_writes(tmp_path, client, redis_server,
                                                                               framework):
    docs = redis_docs(15, lists=framework.lists)
    project = project_with(tmp_path, redis_server)
    if framework is LLAMAINDEX:  # from the app's Chroma collection (LlamaIndex keeps the node JSON there)
        apps.write_llamaindex_chroma(str(tmp_path / "chroma"), "docs", docs)
        source = "main:docs"
    else:  # from LangChain-Qdrant, which keeps the metadata's key order (Chroma does not)
        apps.write_langchain_qdrant(str(tmp_path / "qdrant"), "docs", docs, distance=apps.models.Distance.DOT)
        source = "q:docs"
    project.write_python("r1", None, f'op.copy_collection("{source}", "redis:{framework.collection}")')
    project.run("upgrade", "head")
    written = every_hash(client)
    assert len(written) == 15

    client.flushall()
    framework.write_redis(client, docs)
    assert written == every_hash(client)


def test_legacy_langchain_hashes_are_read_through_the_key_prefix_and_copied_as_langchain_sees_them(
        tmp_path, client, redis_server):
    docs = redis_docs(12, lists=True)
    write_community_redis(client, "users", docs)
    before = every_hash(client)
    project = project_with(tmp_path, redis_server, key_prefix="doc:")
    assert "  layout: langchain (12 of 12 sampled hashes look written by LangChain (langchain_community); keys " \
           "doc:users:<id>, found under its key prefix)" in project.run("inspect", "redis:users")
    project.write_python("r1", None, 'op.copy_collection("redis:users", "main:users")')
    project.run("upgrade", "head")
    # langchain_community keeps metadata as flat strings only: what its app reads is what moves
    as_strings = {d["id"]: (d["text"], {k: ",".join(v) if isinstance(v, list) else str(v)
                                        for k, v in d["metadata"].items()}) for d in docs}
    assert apps.read_langchain_chroma(str(tmp_path / "chroma"), "users") == as_strings
    project.run("downgrade", "base")
    assert every_hash(client) == before


def test_langchain_hashes_moved_to_chroma_downgrade_to_the_same_bytes(tmp_path, client, redis_server):
    # Chroma returns metadata keys in a random order; `_metadata_json` is rebuilt in the written one.
    docs = redis_docs(12, lists=True)
    write_langchain_redis(client, "lc_docs", docs)
    before = every_hash(client)
    project = project_with(tmp_path, redis_server)
    project.write_python("r1", None, 'op.move_collection("redis:lc_docs", "main:lc_docs")')
    project.run("upgrade", "head")
    assert not set(client.scan_iter()) - {MARKER_KEY.encode()}, "moved: the Redis hashes are gone"
    lines = project.run("downgrade", "base")
    assert any("restored exactly (native records" in line for line in lines), lines
    assert every_hash(client) == before


@pytest.mark.slow
def test_llamaindex_redis_to_chroma_to_qdrant_survives_a_kill_and_downgrades_to_the_same_bytes(
        fast_tmp_path, client, redis_server):
    """The issue's migration at 20,000 x 768 cosine: Redis -> Chroma -> Qdrant as two moves, the
    first SIGKILLed during its Redis scan and resumed, then `downgrade base`."""
    n, dim, batch = 20_000, 768, 1000
    docs = redis_docs(n, lists=False, seed=3)
    vectors = embedding_like(docs, dim)
    write_llamaindex_redis(client, docs, vectors)
    before = every_hash(client)
    project = project_with(fast_tmp_path, redis_server, batch_size=batch)
    original = project.digest("redis:llama_index")
    project.write_python("r1", None, 'op.move_collection("redis:llama_index", "main:llama_index")')
    project.write_python("r2", "r1", 'op.move_collection("main:llama_index", "q:llama_index")')

    killed_at = kill_upgrade_at(project, "r1", random.Random().randint(3, 15) * batch)
    rows, status = step_progress(project.root / ".vecflow" / "ledger.db", "r1")
    assert status == "running" and killed_at <= rows < n
    assert every_hash(client) == before, "the source is only read until the copy is verified"

    out = project.cli("upgrade", "head").stdout
    assert f"resuming at {rows} rows" in out and "verified main:llama_index: 20000 records" in out, out
    assert "verified q:llama_index: 20000 records" in out, out
    assert project.digest("q:llama_index") == original, "no record lost or doubled"
    assert not set(client.scan_iter()) - {MARKER_KEY.encode()}, "moved: the Redis hashes are gone"
    queries = vectors[:3]
    found = apps.topk_llamaindex_qdrant(str(fast_tmp_path / "qdrant"), "llama_index", queries, K)
    assert [set(ids) for ids in found] == cosine_topk(docs, queries, K, vectors)

    out = project.cli("downgrade", "base").stdout
    assert "restored exactly" in out, out
    assert every_hash(client) == before


@pytest.mark.parametrize("framework", [LLAMAINDEX, LANGCHAIN], ids=lambda f: f.name)
def test_field_ops_on_framework_hashes_change_every_copy_and_downgrade_to_the_same_bytes(tmp_path, client,
                                                                                       redis_server, framework):
    docs = redis_docs(12, lists=framework.lists)
    framework.write_redis(client, docs)
    before = every_hash(client)
    project = project_with(tmp_path, redis_server, batch_size=5)
    name = framework.collection
    project.write_python("r1", None, f"""\
        op.rename_field("redis:{name}", "title", "heading")
        op.add_field("redis:{name}", "source", default="web")
    """)
    project.run("upgrade", "head")
    for fields in every_hash(client).values():
        assert b"title" not in fields and fields[b"heading"].startswith(b"Document ") and fields[b"source"] == b"web"
        inner = fields[b"_node_content" if framework is LLAMAINDEX else b"_metadata_json"]
        assert b'"heading"' in inner and b'"title"' not in inner, "the JSON copy changes with the flat one"
    lines = project.run("downgrade", "base")
    assert any("restored exactly (native records" in line for line in lines), lines
    assert every_hash(client) == before
