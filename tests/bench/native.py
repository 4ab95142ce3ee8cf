"""The hand-written loops: each pair's move (or field change) over the native clients only, as fast
as we could make them, with none of vecflow's safety (no checkpoints, digests or verification).

    python -m tests.bench.native PAIR SOURCE_OPTIONS_JSON TARGET_OPTIONS_JSON DIM

Prints one JSON line: {"records": n, "seconds": s} (s: the loop itself, imports and client
start-up excluded; the caller also times the whole process).

Read and write paths, chosen by measuring on the benchmark machine (see docs/performance.md):
- Chroma, read: the id list once (`get(include=[])`), then `get(ids=..., include=[embeddings,
  documents, metadatas])` in pages of 1000 (faster than offset/limit pages, and than one get).
- Chroma, write: `add` in batches of 1000 (500 was slower, 2000-5461 no faster).
- FAISS (vecflow's format), read: one streamed `SELECT` over the sidecar (its index holds
  unit-length vectors, so `reconstruct_n` cannot give the records back); write: IndexIDMap2 over
  IndexFlatIP of unit vectors plus a SQLite sidecar of id, exact vector, document and metadata JSON
  (what vecflow's format holds), one transaction, index written once at the end.
- Redis, read: `SCAN MATCH prefix* COUNT 2000`, then pipelined `HMGET key vector text metadata` in
  pages of 1000 (only the fields needed, not HGETALL).
- Qdrant local, write: `upsert(points=[PointStruct...], wait=True)` in batches of 256 (faster than
  1000 or 3000 in local mode); uuid5 point ids, payload = metadata + `document` (the raw layout).
- Redis, write: vecflow's raw hashes (`id`, `vector`, `text`, `metadata` JSON with sorted keys and
  flat copies of the scalar values), one `HSET` per record in unacknowledged pipelines of 1000
  (no MULTI/EXEC, no read before the write).
A move drops the source at the end, as vecflow's does.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

COLLECTION = "docs"
READ_PAGE = {"chroma": 1000, "faiss": 1000, "redis": 1000}
WRITE_BATCH = {"chroma": 1000, "faiss": 5000, "qdrant": 256, "redis": 1000}
CLIENT_MODULES = {"chroma": "chromadb", "faiss": "faiss", "redis": "redis", "qdrant": "qdrant_client"}
QDRANT_NAMESPACE = uuid.UUID("5b0f3f3e-6c1d-5e0a-9a57-7665636c6f77")  # vecflow's, so point ids match

Page = tuple[list[str], np.ndarray, list[str | None], list[dict]]


# sources -------------------------------------------------------------------------------------

class ChromaSource:
    def __init__(self, options: dict) -> None:
        import chromadb

        self.client = chromadb.PersistentClient(path=options["path"])
        self.collection = self.client.get_collection(COLLECTION)

    def pages(self) -> Iterator[Page]:
        ids = self.collection.get(include=[])["ids"]
        size = READ_PAGE["chroma"]
        for start in range(0, len(ids), size):
            got = self.collection.get(ids=ids[start:start + size], include=["embeddings", "documents", "metadatas"])
            yield got["ids"], np.asarray(got["embeddings"], dtype=np.float32), got["documents"], got["metadatas"]

    def drop(self) -> None:
        self.client.delete_collection(COLLECTION)


class FaissSource:
    def __init__(self, options: dict) -> None:
        self.folder = Path(options["path"]) / COLLECTION
        self.db = sqlite3.connect(self.folder / "records.db")

    def pages(self) -> Iterator[Page]:
        rows = self.db.execute("SELECT id, vector, document, metadata FROM records ORDER BY fid")
        while True:
            chunk = rows.fetchmany(READ_PAGE["faiss"])
            if not chunk:
                return
            vectors = np.frombuffer(b"".join(row[1] for row in chunk), dtype="<f4").reshape(len(chunk), -1)
            yield [row[0] for row in chunk], vectors, [row[2] for row in chunk], [json.loads(row[3]) for row in chunk]

    def drop(self) -> None:
        self.db.close()
        shutil.rmtree(self.folder)


class RedisSource:
    def __init__(self, options: dict) -> None:
        import redis

        self.client = redis.Redis.from_url(options["url"])
        self.prefix = f"{options.get('key_prefix', '')}{COLLECTION}:".encode()
        self.keys: list[bytes] = []

    def pages(self) -> Iterator[Page]:
        self.keys = sorted(set(self.client.scan_iter(match=self.prefix + b"*", count=2000, _type="HASH")))
        size, cut = READ_PAGE["redis"], len(self.prefix)
        for start in range(0, len(self.keys), size):
            keys = self.keys[start:start + size]
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, [b"vector", b"text", b"metadata"])
            rows = pipe.execute()
            vectors = np.frombuffer(b"".join(row[0] for row in rows), dtype="<f4").reshape(len(rows), -1)
            yield ([key[cut:].decode() for key in keys], vectors,
                   [None if row[1] is None else row[1].decode() for row in rows], [json.loads(row[2]) for row in rows])

    def drop(self) -> None:
        for start in range(0, len(self.keys), 1000):
            self.client.unlink(*self.keys[start:start + 1000])
        self.client.close()


SOURCES = {"chroma": ChromaSource, "faiss": FaissSource, "redis": RedisSource}


# targets -------------------------------------------------------------------------------------

class ChromaTarget:
    def __init__(self, options: dict, dim: int) -> None:
        import chromadb

        self.client = chromadb.PersistentClient(path=options["path"])
        self.collection = self.client.create_collection(COLLECTION, embedding_function=None,
                                                        configuration={"hnsw": {"space": "cosine"}})

    def write(self, page: Page) -> None:
        ids, vectors, documents, metadatas = page
        self.collection.add(ids=ids, embeddings=vectors, documents=documents, metadatas=metadatas)

    def finish(self) -> int:
        return self.collection.count()


class FaissTarget:
    def __init__(self, options: dict, dim: int) -> None:
        import faiss

        self.faiss = faiss
        self.folder = Path(options["path"]) / COLLECTION
        self.folder.mkdir(parents=True)
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.db = sqlite3.connect(self.folder / "records.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE records (fid INTEGER PRIMARY KEY, id TEXT UNIQUE, vector BLOB, "
                        "document TEXT, metadata TEXT)")
        self.db.execute("BEGIN")
        self.next_fid = 0

    def write(self, page: Page) -> None:
        ids, vectors, documents, metadatas = page
        fids = np.arange(self.next_fid, self.next_fid + len(ids), dtype=np.int64)
        self.next_fid += len(ids)
        self.db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)", [
            (int(fids[i]), ids[i], vectors[i].tobytes(), documents[i], json.dumps(metadatas[i]))
            for i in range(len(ids))])
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
        self.index.add_with_ids(np.ascontiguousarray(unit, dtype=np.float32), fids)

    def finish(self) -> int:
        self.db.execute("COMMIT")
        self.db.close()
        self.faiss.write_index(self.index, str(self.folder / "index.faiss"))
        return int(self.index.ntotal)


class QdrantTarget:
    def __init__(self, options: dict, dim: int) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(path=options["path"])
        self.client.create_collection(COLLECTION, vectors_config=models.VectorParams(
            size=dim, distance=models.Distance.COSINE))

    def write(self, page: Page) -> None:
        ids, vectors, documents, metadatas = page
        points = [self.models.PointStruct(id=str(uuid.uuid5(QDRANT_NAMESPACE, ids[i])), vector=vectors[i].tolist(),
                                          payload={**metadatas[i], "document": documents[i]})
                  for i in range(len(ids))]
        self.client.upsert(COLLECTION, points=points, wait=True)

    def finish(self) -> int:
        count = self.client.count(COLLECTION).count
        self.client.close()
        return count


class RedisTarget:
    def __init__(self, options: dict, dim: int) -> None:
        import redis

        self.client = redis.Redis.from_url(options["url"])
        self.prefix = f"{options.get('key_prefix', '')}{COLLECTION}:"
        self.written = 0

    def write(self, page: Page) -> None:
        ids, vectors, documents, metadatas = page
        pipe = self.client.pipeline(transaction=False)
        for i, rid in enumerate(ids):
            flat = {k: ("1" if v else "0") if isinstance(v, bool) else v for k, v in metadatas[i].items()}
            pipe.hset(self.prefix + rid, mapping={
                "id": rid, "vector": vectors[i].tobytes(), "text": documents[i],
                "metadata": json.dumps(metadatas[i], ensure_ascii=False, separators=(",", ":"), sort_keys=True),
                **flat})
        pipe.execute()
        self.written += len(ids)

    def finish(self) -> int:
        self.client.close()
        return self.written


TARGETS = {"chroma": ChromaTarget, "faiss": FaissTarget, "qdrant": QdrantTarget, "redis": RedisTarget}


def rebatch(pages: Iterator[Page], size: int) -> Iterator[Page]:
    """Pages regrouped into batches of size (the target's best batch, whatever the read page)."""
    held: list[Page] = []
    count = 0
    for page in pages:
        held.append(page)
        count += len(page[0])
        while count >= size:
            merged = _merge(held)
            yield tuple(part[:size] for part in merged)  # type: ignore[misc]
            rest = tuple(part[size:] for part in merged)
            held, count = ([rest], len(rest[0])) if len(rest[0]) else ([], 0)  # type: ignore[list-item]
    if count:
        yield _merge(held)


def _merge(pages: list[Page]) -> Page:
    if len(pages) == 1:
        return pages[0]
    return (sum((p[0] for p in pages), []), np.concatenate([p[1] for p in pages]),
            sum((p[2] for p in pages), []), sum((p[3] for p in pages), []))


def move(source_backend: str, target_backend: str, source: dict, target: dict, dim: int) -> int:
    reader = SOURCES[source_backend](source)
    writer = TARGETS[target_backend](target, dim)
    for page in rebatch(reader.pages(), WRITE_BATCH[target_backend]):
        writer.write(page)
    count = writer.finish()
    reader.drop()
    return count


def rename_and_set(options: dict) -> int:
    """rename_field author -> writer and set_field decade = (year // 10) * 10, in one pass of
    metadata-only reads and `update`s (a None value removes a key)."""
    import chromadb

    collection = chromadb.PersistentClient(path=options["path"]).get_collection(COLLECTION)
    ids = collection.get(include=[])["ids"]
    for start in range(0, len(ids), 1000):
        got = collection.get(ids=ids[start:start + 1000], include=["metadatas"])
        collection.update(ids=got["ids"], metadatas=[
            {"author": None, "writer": m["author"], "decade": (m["year"] // 10) * 10} for m in got["metadatas"]])
    return len(ids)


def main(argv: list[str]) -> None:
    pair, source, target, dim = argv[0], json.loads(argv[1]), json.loads(argv[2]), int(argv[3])
    for backend in pair.split("-"):
        if backend in CLIENT_MODULES:
            importlib.import_module(CLIENT_MODULES[backend])  # before the clock starts
    started = time.perf_counter()
    if pair == "chroma-fields":
        count = rename_and_set(source)
    else:
        source_backend, target_backend = pair.split("-")
        count = move(source_backend, target_backend, source, target, dim)
    print(json.dumps({"records": count, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(sys.argv[1:])
