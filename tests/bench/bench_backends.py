"""Benchmark: per-backend write, scan and digest throughput, scan cost against offset, and move
throughput between backends. Prints figures; asserts nothing (run it by hand, not under pytest).

    python -m tests.bench.bench_backends [--records 20000] [--dim 384]

Starts its own redis-server on a free loopback port; stores live in a temporary folder on tmpfs
when available. Records come from tests/bench/data.py (seeded: ~300-character documents, 6
metadata fields), the same as compare.py's. For native loop against `vecflow upgrade head`, see
tests/bench/compare.py.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.bench.data import batches
from tests.conftest import running_redis
from vecflow.backends import open_backend
from vecflow.batch import Batch
from vecflow.runtime.digest import collection_digest


def corpus(n: int, dim: int) -> Batch:
    parts = list(batches(n, dim))
    return Batch([i for p in parts for i in p.ids], np.concatenate([p.vectors for p in parts]),
                 [d for p in parts for d in p.documents], [m for p in parts for m in p.metadatas])


def timed(label: str, records: int, function) -> float:
    started = time.perf_counter()
    function()
    seconds = time.perf_counter() - started
    print(f"  {label:<34} {seconds:8.2f} s  {records / seconds:10.0f} records/s")
    return seconds


def scan_cost_by_offset(backend, name: str, total: int, page: int = 500) -> None:
    """Time to fetch one page at increasing offsets: flat when the cursor is O(batch)."""
    cursor, seen, marks = None, 0, {0, total // 4, total // 2, 3 * total // 4}
    figures = []
    while True:
        started = time.perf_counter()
        batch, cursor = backend.scan(name, page, cursor)
        took = time.perf_counter() - started
        if seen in marks:
            figures.append(f"offset {seen}: {took * 1000:.1f} ms")
        seen += len(batch)
        if cursor is None:
            break
    print("  scan page of 500 by offset:        " + ", ".join(figures))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    data = corpus(args.records, args.dim)
    print(f"{args.records} records x {args.dim} dims, cosine, batches of 1000")
    with running_redis(base) as redis_url:
        try:
            run(base, redis_url, data, args.dim)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def run(base: Path, redis_url: str, data: Batch, dim: int) -> None:
    stores = {
        "chroma": {"path": str(base / "chroma")},
        "faiss": {"path": str(base / "faiss")},
        "redis": {"url": redis_url},
        "qdrant": {"path": str(base / "qdrant")},
    }
    backends = {name: open_backend(name, options) for name, options in stores.items()}
    for name, backend in backends.items():
        print(name)
        backend.create_collection("bench", dim, "cosine")
        timed("upsert", len(data), lambda b=backend: [
            b.upsert("bench", data.take(list(range(s, min(s + 1000, len(data))))))
            for s in range(0, len(data), 1000)])
        timed("digest (full scan + hash)", len(data), lambda b=backend: collection_digest(b, "bench", 1000))
        scan_cost_by_offset(backend, "bench", len(data))
        timed("100 queries, k=10", 100, lambda b=backend: b.query("bench", data.vectors[:100], 10))
    print("moves (scan source, upsert target), batches of 1000")
    for source, target in [("chroma", "faiss"), ("faiss", "redis"), ("redis", "qdrant"), ("qdrant", "chroma")]:
        src, dst = backends[source], backends[target]
        dst.create_collection("moved", dim, "cosine")

        def move(src=src, dst=dst) -> None:
            cursor = None
            while True:
                page, cursor = src.scan("bench", 1000, cursor)
                dst.upsert("moved", page)
                if cursor is None:
                    return

        timed(f"{source} -> {target}", len(data), move)
    for backend in backends.values():
        backend.close()


if __name__ == "__main__":
    main()
