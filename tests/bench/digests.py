"""Digest throughput.

    python -m tests.bench.digests pages [--n N] [--rounds R]
    python -m tests.bench.digests BACKEND STORE_OPTIONS_JSON [BATCH_SIZE]

`pages`: the hashing alone, over pages of benchmark records already in memory (tests/bench/data.py,
pages of 1,000, native pages as a store with a text slot and the raw layout holds them), at dim 384
and 768: the logical digest (batch_digest, what collection_digest computes) and the logical +
native pair (page_digests, what collection_digests and verification compute), each against the
record-by-record code it replaced (tests/digest_reference.py, the "before"), interleaved page by
page in one process. Rates are records / wall time (the median round, and the sum of each page's
best time: what a shared machine's load distorts least) and records / CPU time of the process.
Prints a table and one JSON line.

BACKEND: vecflow.runtime.digest.collection_digests end to end on one collection (the store's scan
included), and the hashing alone over its pages already in memory. Prints one JSON line of
records/s figures (tests/bench/compare.py runs this on every source collection).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

from tests import digest_reference
from tests.bench.data import batches
from vecflow.backends import open_backend
from vecflow.backends.base import NativePage
from vecflow.batch import Batch
from vecflow.layouts.base import Native
from vecflow.runtime.digest import batch_digest, collection_digests, native_digest, page_digests

COLLECTION = "docs"
DIMS = (384, 768)


def store_rates(argv: list[str]) -> None:
    backend_name, options = argv[0], json.loads(argv[1])
    batch_size = int(argv[2]) if len(argv) > 2 else 500
    backend = open_backend(backend_name, options)
    try:
        count = backend.count(COLLECTION)
        started = time.perf_counter()
        collection_digests(backend, COLLECTION, batch_size)
        end_to_end = time.perf_counter() - started

        started = time.perf_counter()
        pages = [page for page, _ in backend.native_pages(COLLECTION, batch_size)]
        scan_only = time.perf_counter() - started

        logical = _seconds(lambda: [batch_digest(page.batch) for page in pages])
        native = _seconds(lambda: [native_digest(page) for page in pages])
        both = _seconds(lambda: [page_digests(page) for page in pages])
    finally:
        backend.close()
    print(json.dumps({
        "backend": backend_name, "records": count, "batch_size": batch_size,
        "collection_digests_rec_s": count / end_to_end, "collection_digests_seconds": end_to_end,
        "scan_native_only_rec_s": count / scan_only,
        "hash_logical_rec_s": count / logical, "hash_native_rec_s": count / native,
        "hash_both_rec_s": count / both,
    }))


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def native_page(batch: Batch) -> NativePage:
    """The page a store with a text slot holds for batch in the raw layout (Chroma's)."""
    return NativePage(batch, list(batch.ids), [Native(d, dict(m)) for d, m in zip(batch.documents, batch.metadatas)])


def contenders() -> dict[str, Callable[[NativePage], object]]:
    return {
        "logical before": lambda page: digest_reference.batch_digest(page.batch),
        "logical": lambda page: batch_digest(page.batch),
        "pair before": lambda page: (digest_reference.batch_digest(page.batch), digest_reference.native_digest(page)),
        "pair": page_digests,
        # The ceiling: BLAKE2b over each record's vector bytes alone, with no other work.
        "vectors alone": lambda page: [hashlib.blake2b(row, digest_size=16).digest() for row in page.batch.vectors],
    }


def page_rates(n: int, rounds: int) -> dict:
    """Each contender digests each page in turn, page by page, `rounds` times (so the machine's load
    falls on all alike); a contender's rates are n / its wall time per round (best, median), n /
    the sum of its best wall time on each page, and n / its least CPU time in a round."""
    load_before = os.getloadavg()
    results = {}
    for dim in DIMS:
        pages = [native_page(batch) for batch in batches(n, dim)]
        work = contenders()
        walls = {name: [[0.0] * len(pages) for _ in range(rounds)] for name in work}
        cpus = {name: [0.0] * rounds for name in work}
        for round_ in range(rounds):
            for index, page in enumerate(pages):
                for name, run in work.items():
                    wall, cpu = time.perf_counter(), time.process_time()
                    run(page)
                    walls[name][round_][index] = time.perf_counter() - wall
                    cpus[name][round_] += time.process_time() - cpu
        results[dim] = {}
        for name in work:
            per_round = [sum(seconds) for seconds in walls[name]]
            best_pages = sum(min(walls[name][r][i] for r in range(rounds)) for i in range(len(pages)))
            results[dim][name] = {"wall_best_rec_s": n / min(per_round),
                                  "wall_median_rec_s": n / statistics.median(per_round),
                                  "wall_best_pages_rec_s": n / best_pages, "cpu_rec_s": n / min(cpus[name])}
    return {"records": n, "rounds": rounds, "load_before": load_before, "load_after": os.getloadavg(),
            "cpus": os.cpu_count(), "rates": results}


MEASURES = {"wall_best_pages_rec_s": "wall, best per page", "wall_median_rec_s": "wall, median round",
            "cpu_rec_s": "CPU time"}


def page_table(result: dict) -> str:
    lines = ["| dim | digest | measure | before (rec/s) | after (rec/s) | after ÷ before |",
             "|---|---|---|---|---|---|"]
    for dim, rates in result["rates"].items():
        for kind in ("logical", "pair"):
            before, after = rates[f"{kind} before"], rates[kind]
            for key, measure in MEASURES.items():
                lines.append(f"| {dim} | {kind} | {measure} | {before[key]:,.0f} | {after[key]:,.0f} | "
                             f"{after[key] / before[key]:.2f}× |")
    ceiling = ", ".join(f"{rates['vectors alone'][key]:,.0f} rec/s at dim {dim}"
                        for dim, rates in result["rates"].items() for key in ["wall_best_pages_rec_s"])
    lines.append(f"\nBLAKE2b over the vectors alone (no other work; wall, best per page): {ceiling}.")
    loads = [" / ".join(f"{a:.2f}" for a in result[f"load_{when}"]) for when in ("before", "after")]
    lines.append(f"{result['records']:,} records a dim in pages of 1,000, {result['rounds']} rounds; load average "
                 f"(1/5/15 min) {loads[0]} before, {loads[1]} after, on {result['cpus']} CPUs.")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[:1] != ["pages"]:
        store_rates(argv)
        return
    parser = argparse.ArgumentParser(prog="python -m tests.bench.digests pages")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv[1:])
    result = page_rates(args.n, args.rounds)
    print(page_table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
