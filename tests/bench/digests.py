"""Digest throughput on one collection: vecflow.runtime.digest.collection_digests end to end (the
store's scan included), and the hashing alone over pages already in memory.

    python -m tests.bench.digests BACKEND STORE_OPTIONS_JSON [BATCH_SIZE]

Prints one JSON line of records/s figures.
"""

from __future__ import annotations

import json
import sys
import time

from vecflow.backends import open_backend
from vecflow.runtime.digest import batch_digest, collection_digests, native_digest

COLLECTION = "docs"


def main(argv: list[str]) -> None:
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

        started = time.perf_counter()
        for page in pages:
            batch_digest(page.batch)
        logical = time.perf_counter() - started
        started = time.perf_counter()
        for page in pages:
            native_digest(page)
        native = time.perf_counter() - started
    finally:
        backend.close()
    print(json.dumps({
        "backend": backend_name, "records": count, "batch_size": batch_size,
        "collection_digests_rec_s": count / end_to_end, "collection_digests_seconds": end_to_end,
        "scan_native_only_rec_s": count / scan_only,
        "hash_logical_rec_s": count / logical, "hash_native_rec_s": count / native,
        "hash_both_rec_s": count / (logical + native),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
