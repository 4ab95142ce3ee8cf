"""Source stores for the comparison: seeded once per (backend, N, dim) as templates, cloned per run.

- Chroma: written by chromadb itself (as an application writes it), cosine, batches of 1000.
- FAISS: vecflow's own format (records.db sidecar), written through vecflow's adapter, cosine.
- Redis: vecflow's raw hashes (`id`, `vector`, `text`, `metadata` JSON and flat fields), written
  through vecflow's adapter under the key prefix `tpl:`; a run gets a copy under its own prefix
  (server-side COPY, no round trip through Python).

Folders are copied whole (the stores are closed), so each run starts from the same bytes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

COLLECTION = "docs"
TEMPLATE_PREFIX = "tpl:"


def template_dir(base: Path, backend: str, n: int, dim: int) -> Path:
    return base / "templates" / f"{backend}-{n}-{dim}"


def ensure_template(base: Path, backend: str, n: int, dim: int, redis_url: str) -> Path | str:
    """The template of backend (seeded now unless already there): a folder, or for Redis its URL."""
    folder = template_dir(base, backend, n, dim)
    done = folder / "SEEDED"
    if backend == "redis":
        # The server lives as long as one comparison: seed it every time.
        _seed(backend, folder, n, dim, redis_url)
        return redis_url
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _seed(backend, folder, n, dim, redis_url)
        done.write_text("ok\n")
    return folder


def _seed(backend: str, folder: Path, n: int, dim: int, redis_url: str, records_from: Path | None = None) -> None:
    # In a child process: the parent stays free of the store clients (and of their memory).
    subprocess.run([sys.executable, "-m", "tests.bench.stores", backend, str(folder), str(n), str(dim), redis_url,
                    *([str(records_from)] if records_from else [])], check=True)


def seed_redis_from(faiss_template: Path, n: int, dim: int, redis_url: str) -> str:
    """The Redis template, its records read from a FAISS template of the same records (the same
    data as ensure_template would generate, without generating it again: at 1M records that
    takes ten minutes)."""
    _seed("redis", Path(faiss_template), n, dim, redis_url, records_from=Path(faiss_template))
    return redis_url


def clone(template: Path | str, backend: str, into: Path, run_prefix: str) -> dict[str, str]:
    """A fresh copy of template for one run; the vecflow store options that open it."""
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(str(template))
        try:
            keys = list(client.scan_iter(match=f"{TEMPLATE_PREFIX}{COLLECTION}:*", count=2000))
            for start in range(0, len(keys), 10_000):  # pipelines of 10,000: bounded replies at 1M keys
                pipe = client.pipeline(transaction=False)
                for key in keys[start:start + 10_000]:
                    pipe.copy(key, run_prefix.encode() + key[len(TEMPLATE_PREFIX):], replace=True)
                pipe.execute()
        finally:
            client.close()
        return {"url": str(template), "key_prefix": run_prefix}
    shutil.copytree(template, into, ignore=shutil.ignore_patterns("SEEDED"))
    return {"path": str(into)}


def forget_redis_prefix(url: str, prefix: str) -> None:
    """Remove every key of one run (whatever is left of its source), and the store marker its
    ledger left (which would make the next run's ledger refuse the store)."""
    import redis

    from vecflow.backends.redis import MARKER_KEY

    client = redis.Redis.from_url(url)
    try:
        client.unlink(f"{MARKER_KEY}{prefix}")
        keys = list(client.scan_iter(match=f"{prefix}*", count=2000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start:start + 1000])
    finally:
        client.close()


def main(argv: list[str]) -> None:
    backend, folder, n, dim, redis_url = argv[0], Path(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    from tests.bench.data import batches
    from vecflow.backends import open_backend

    def records():
        if len(argv) < 6:
            yield from batches(n, dim)
            return
        faiss = open_backend("faiss", {"path": argv[5]})
        try:
            for page, _ in faiss.pages(COLLECTION, 1000):
                yield page
        finally:
            faiss.close()

    if backend == "chroma":
        import chromadb

        client = chromadb.PersistentClient(path=str(folder))
        collection = client.create_collection(COLLECTION, embedding_function=None,
                                              configuration={"hnsw": {"space": "cosine"}})
        for batch in batches(n, dim):
            collection.add(ids=batch.ids, embeddings=batch.vectors, documents=batch.documents,
                           metadatas=batch.metadatas)
        return

    options = {"path": str(folder)} if backend == "faiss" else {"url": redis_url, "key_prefix": TEMPLATE_PREFIX}
    store = open_backend(backend, options)
    try:
        if store.has_collection(COLLECTION):
            store.drop_collection(COLLECTION)
        store.create_collection(COLLECTION, dim, "cosine")
        for batch in records():
            store.upsert(COLLECTION, batch)
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
