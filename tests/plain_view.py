"""What an application sees in a store, read with the store's own client (no vecflow adapter code),
and a check that nothing of vecflow's is in it."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from tests.backends.contract import private_traces
from vecflow.backends import Backend


def plain_view(backend: Backend, name: str) -> dict[str, Any]:
    """Every record and the collection's own metadata of one collection, as plain structures."""
    if backend.name == "chroma":
        collection = backend.client.get_collection(name)
        got = collection.get(include=["documents", "metadatas"])
        return {"records": list(zip(got["ids"], got["documents"], got["metadatas"])),
                "collection": collection.metadata}
    if backend.name == "qdrant":
        points, _ = backend.client.scroll(name, limit=100_000, with_payload=True)
        return {"records": [(str(p.id), p.payload) for p in points],
                "collection": backend.client.get_collection(name).config.model_dump(mode="json")}
    if backend.name == "faiss":
        uri = (backend.root / name / "records.db").as_uri() + "?mode=ro"
        with sqlite3.connect(uri, uri=True) as conn:
            return {"records": conn.execute("SELECT * FROM records").fetchall(),
                    "collection": conn.execute("SELECT * FROM collection").fetchall()}
    if backend.name == "redis":
        raw = backend._client
        keys = sorted(raw.scan_iter(match=f"{backend._key_prefix}{name}:*", count=1000))
        return {"records": [raw.hgetall(key) for key in keys], "collection": None}
    if backend.name == "files":
        import pyarrow.parquet as pq

        folder = backend.root / name
        records = []
        for path in sorted(folder.iterdir()):
            if path.suffix == ".parquet":
                records += pq.read_table(path).to_pylist()
            elif path.suffix == ".jsonl":
                records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        manifests = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")}
        return {"records": records, "collection": manifests}
    raise AssertionError(f"no plain view for {backend.name}")


def assert_store_has_no_vecflow_trace(backend: Backend) -> None:
    """No vecflow-named key or marker string in any record or collection metadata of the store."""
    traces = [trace for name in backend.list_collections()
              for trace in private_traces(plain_view(backend, name), name)]
    assert traces == [], traces[:5]
