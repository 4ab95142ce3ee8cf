"""Benchmark: each adapter's write and scan rate against batch size, and the cost of a checkpoint.
Prints figures; asserts nothing (run it by hand, not under pytest).

    python -m tests.bench.batch_sizes [--n 10000] [--dim 768] [--sizes 100,256,500,1000,2000,5000]
        [--backends chroma,qdrant,redis,faiss,files] [--rounds 2] [--tmpfs] [--checkpoints 2000] [--scan-only]
        [--chroma-get]

Write: N records upserted through the adapter (vecflow's public `upsert`, so the adapter's own
bookkeeping is paid) in calls of each size, into a fresh cosine collection each time; the adapter's
split into its write size is lifted (`write_batch_size` returns the size measured), so the size is
what reaches the store. Scan: one full pass of `scan` in pages of each size. Sizes run in a
different order each round (the machine is shared: compare within one run). Stores live on disk
(a temporary folder under /tmp) unless --tmpfs. Checkpoints: the time of `StepContext.save` (a
ledger checkpoint and a lease heartbeat), on disk and on tmpfs. --chroma-get: chromadb's own
`get(ids=...)` by size, without vecflow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.bench.data import batches
from tests.conftest import running_redis
from vecflow.backends import Backend, open_backend
from vecflow.batch import Batch


def corpus(n: int, dim: int) -> Batch:
    parts = list(batches(n, dim))
    return Batch([i for p in parts for i in p.ids], np.concatenate([p.vectors for p in parts]),
                 [d for p in parts for d in p.documents], [m for p in parts for m in p.metadatas])


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def chunks(data: Batch, size: int) -> list[Batch]:
    return [data.take(list(range(lo, min(lo + size, len(data))))) for lo in range(0, len(data), size)]


def unsplit(backend: Backend) -> None:
    """Let each upsert reach the store whole, whatever the adapter's write size."""
    backend.write_batch_size = lambda name: 10**9  # type: ignore[method-assign]
    if backend.name == "qdrant":
        from vecflow.backends import qdrant
        qdrant._MAX_CHUNK = 10**9
        qdrant._REQUEST_BYTES = 10**12


def measure_backend(kind: str, options: dict[str, Any], data: Batch, sizes: list[int], rounds: int,
                    scan_only: bool = False) -> None:
    backend = open_backend(kind, options)
    unsplit(backend)
    writes: dict[int, list[float]] = {s: [] for s in sizes}
    scans: dict[int, list[float]] = {s: [] for s in sizes}
    print(f"{kind}: {load()}", flush=True)
    if scan_only:
        scan_name = "scanned"
        backend.create_collection(scan_name, data.dim, "cosine")
        for piece in chunks(data, 1000):
            backend.upsert(scan_name, piece)
    for round_ in range(rounds):
        order = sizes if round_ % 2 == 0 else sizes[::-1]
        for size in [] if scan_only else order:
            name = f"w{size}r{round_}"
            backend.create_collection(name, data.dim, "cosine")
            pieces = chunks(data, size)
            started = time.perf_counter()
            for piece in pieces:
                backend.upsert(name, piece)
            writes[size].append(len(data) / (time.perf_counter() - started))
            if size == order[0]:
                scan_name = name
            else:
                backend.drop_collection(name)
        for size in order:
            started, cursor, seen = time.perf_counter(), None, 0
            while True:
                page, cursor = backend.scan(scan_name, size, cursor)
                seen += len(page)
                if cursor is None:
                    break
            assert seen == len(data)
            scans[size].append(len(data) / (time.perf_counter() - started))
        if not scan_only:
            backend.drop_collection(scan_name)
        print(f"  round {round_ + 1} done, {load()}", flush=True)
    print(f"  {'size':>6} {'write rec/s (rounds)':>32} {'scan rec/s (rounds)':>40} {'scan median':>12}")
    for size in sizes:
        w = " ".join(f"{v:7.0f}" for v in writes[size])
        s = " ".join(f"{v:7.0f}" for v in scans[size])
        print(f"  {size:>6} {w:>32} {s:>40} {statistics.median(scans[size]):12.0f}")
    backend.close()


def measure_chroma_get(folder: Path, data: Batch, sizes: list[int], rounds: int) -> None:
    """chromadb's own get(ids=...) of every record in calls of each size, no vecflow code."""
    import chromadb

    client = chromadb.PersistentClient(path=str(folder))
    collection = client.create_collection("native", embedding_function=None,
                                          configuration={"hnsw": {"space": "cosine"}})
    for piece in chunks(data, 1000):
        collection.add(ids=piece.ids, embeddings=piece.vectors, documents=piece.documents, metadatas=piece.metadatas)
    ids = sorted(collection.get(include=[])["ids"])
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    for round_ in range(rounds):
        for size in sizes if round_ % 2 == 0 else sizes[::-1]:
            started = time.perf_counter()
            for lo in range(0, len(ids), size):
                got = collection.get(ids=ids[lo:lo + size], include=["embeddings", "documents", "metadatas"])
                np.asarray(got["embeddings"], dtype=np.float32)
            rates[size].append(len(ids) / (time.perf_counter() - started))
    print(f"chromadb get(ids=...) alone ({load()}):")
    for size in sizes:
        figures = " ".join(f"{v:7.0f}" for v in rates[size])
        print(f"  {size:>6} {figures:>40} median {statistics.median(rates[size]):7.0f}")


def measure_checkpoints(folder: Path, count: int) -> None:
    """Seconds per StepContext.save (checkpoint + heartbeat), as the runner does it after each batch."""
    from vecflow.runtime.context import StepContext
    from vecflow.runtime.ledger import Ledger, Owner

    ledger = Ledger(folder / "ledger.db")
    owner = Owner.current()
    ledger.acquire_lease(owner, 60.0)
    attempt = ledger.begin_attempt("a1", "upgrade", owner, "0" * 64)
    ledger.start_step(attempt, 0, "copy_collection", "bench", {}, None)
    ctx = StepContext(stores=None, ledger=ledger, snapshots=None, owner=owner, lease_seconds=60.0,  # type: ignore[arg-type]
                      attempt_id=attempt, step_index=0, batch_size=500, snapshot=None, state={}, rows_done=0,
                      resumed=False, script_dir=folder)
    times = []
    for i in range(count):
        started = time.perf_counter()
        ctx.save(500, copy_cursor=f'["doc-{i:08d}"]', digest={"count": i, "sum": "f" * 32})
        times.append(time.perf_counter() - started)
    ledger.close()
    print(f"  {folder}: median {statistics.median(times) * 1000:.2f} ms, "
          f"p90 {sorted(times)[int(len(times) * 0.9)] * 1000:.2f} ms per save ({count} saves, {load()})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--sizes", default="100,256,500,1000,2000,5000")
    parser.add_argument("--backends", default="chroma,qdrant,redis,faiss,files")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tmpfs", action="store_true", help="keep the stores on /dev/shm instead of disk")
    parser.add_argument("--checkpoints", type=int, default=0, help="also time this many checkpoints")
    parser.add_argument("--scan-only", action="store_true", help="write once, then only scan (--rounds passes)")
    parser.add_argument("--chroma-get", action="store_true", help="also time chromadb's own get(ids=...) by size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="vecflow-bench-", dir="/dev/shm" if args.tmpfs else None))
    print(f"{args.n} records x {args.dim} dims, cosine, sizes {sizes}, {args.rounds} rounds, stores in {base}, "
          f"{load()}", flush=True)
    try:
        if args.checkpoints:
            print("checkpoints (StepContext.save):")
            for folder in (base / "disk", Path(tempfile.mkdtemp(prefix="vecflow-bench-", dir="/dev/shm"))):
                folder.mkdir(exist_ok=True)
                measure_checkpoints(folder, args.checkpoints)
                if str(folder).startswith("/dev/shm"):
                    shutil.rmtree(folder, ignore_errors=True)
        kinds = [k for k in args.backends.split(",") if k]
        if not kinds and not args.chroma_get:
            return
        data = corpus(args.n, args.dim)
        if args.chroma_get:
            measure_chroma_get(base / "chroma-native", data, sizes, args.rounds)
        with running_redis(base) as redis_url:
            stores = {"chroma": {"path": str(base / "chroma")}, "faiss": {"path": str(base / "faiss")},
                      "redis": {"url": redis_url}, "qdrant": {"path": str(base / "qdrant")},
                      "files": {"path": str(base / "files")}}
            for kind in kinds:
                measure_backend(kind, stores[kind], data, sizes, args.rounds, args.scan_only)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
