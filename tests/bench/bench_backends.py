"""Benchmark: per-backend write, scan and digest throughput, scan cost against offset, and move
throughput between backends. Prints figures; asserts nothing (run it by hand, not under pytest).

    python -m tests.bench.bench_backends [--records 20000] [--dim 384]

Starts its own redis-server on a free loopback port; stores live in a temporary folder on tmpfs
when available.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.conftest import free_port
from vecflow.backends import open_backend
from vecflow.batch import Batch
from vecflow.runtime.digest import collection_digest


def corpus(n: int, dim: int) -> Batch:
    rng = np.random.default_rng(0)
    return Batch([f"doc-{i:07d}" for i in range(n)], rng.standard_normal((n, dim)).astype(np.float32),
                 [f"text {i}" for i in range(n)], [{"i": i, "tag": f"t{i % 10}", "score": i / 7} for i in range(n)])


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
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    stores = {
        "chroma": {"path": str(base / "chroma")},
        "faiss": {"path": str(base / "faiss")},
        "redis": {"url": f"redis://127.0.0.1:{port}"},
        "qdrant": {"path": str(base / "qdrant")},
    }
    data = corpus(args.records, args.dim)
    print(f"{args.records} records x {args.dim} dims, cosine, batches of 1000")
    try:
        backends = {name: open_backend(name, options) for name, options in stores.items()}
        for name, backend in backends.items():
            print(name)
            backend.create_collection("bench", args.dim, "cosine")
            timed("upsert", len(data), lambda b=backend: [
                b.upsert("bench", data.take(list(range(s, min(s + 1000, len(data))))))
                for s in range(0, len(data), 1000)])
            timed("digest (full scan + hash)", len(data), lambda b=backend: collection_digest(b, "bench", 1000))
            scan_cost_by_offset(backend, "bench", len(data))
            timed("100 queries, k=10", 100, lambda b=backend: b.query("bench", data.vectors[:100], 10))
        print("moves (scan source, upsert target), batches of 1000")
        for source, target in [("chroma", "faiss"), ("faiss", "redis"), ("redis", "qdrant"), ("qdrant", "chroma")]:
            src, dst = backends[source], backends[target]
            dst.create_collection("moved", args.dim, "cosine")

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
    finally:
        redis.terminate()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
