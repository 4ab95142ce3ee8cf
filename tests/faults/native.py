"""What the application sees in a project's stores, read with each backend's own client.

No vecflow adapter code is involved: Chroma through chromadb, Qdrant through qdrant-client, FAISS
folders through sqlite3 (the records.db sidecar the application reads), Redis through redis-py.
The reading runs in a fresh process (`python -m tests.faults.native vecflow.ini`), so no client
cache of this process (chromadb shares one system per path) can answer from memory for a folder
another process changed, and no Qdrant local-mode folder lock stays held.

The result is plain JSON: store -> collection -> {"collection": its settings, "records": key ->
record}, where key is the record's own key in that backend (Chroma/FAISS id, Qdrant point id,
the Redis key after the collection prefix) and vectors are the hex of their float32 bytes.

Beside it, `read_project` also gives vecflow's own view: the logical digest of every collection
through vecflow's adapters (what vecflow will compare and restore next; the exact bits and values
it keeps in its state included), so state that only vecflow reads is compared too.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vecflow.backends.qdrant import MARKER_COLLECTION
from vecflow.config import StoreConfig, load_config

Contents = dict[str, dict[str, dict[str, Any]]]


def vector_hex(vector: Any) -> str:
    return np.asarray(vector, dtype=np.float32).tobytes().hex()


def _plain(value: Any) -> Any:
    """JSON round trip: the structure compared is the one written out."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def read_chroma(options: dict[str, str]) -> dict[str, Any]:
    import chromadb

    client = chromadb.PersistentClient(path=options["path"])
    try:
        out = {}
        for collection in client.list_collections():
            got = collection.get(include=["embeddings", "documents", "metadatas"])
            records = {rid: {"document": document, "metadata": metadata, "vector": vector_hex(embedding)}
                       for rid, document, metadata, embedding in zip(got["ids"], got["documents"],
                                                                    got["metadatas"], got["embeddings"])}
            out[collection.name] = {"collection": {"metadata": collection.metadata,
                                                   "configuration": collection.configuration_json,
                                                   SELF_SEARCH: _self_search(collection, got)},
                                    "records": records}
        return out
    finally:
        client.close()


# Chroma's search is an HNSW graph: approximate, and shaped by the history of its writes, so a
# run whose batches were replayed after kills may build a graph in which one record in a hundred
# is not the top hit for its own vector, with the records themselves identical. More than that is
# what a damaged segment looks like.
SELF_SEARCH = "not_found_by_own_vector"


def _settings_unfound(collection: Any) -> list[str]:
    return collection.get(SELF_SEARCH, []) if isinstance(collection, dict) else []


def _settings(collection: Any) -> Any:
    """A collection's settings without the self-search result (compared with a tolerance)."""
    if isinstance(collection, dict):
        return {k: v for k, v in collection.items() if k != SELF_SEARCH}
    return collection


def _self_search(collection: Any, got: dict[str, Any]) -> list[str]:
    """Records whose own vector does not find them first: what the application's queries see of
    the HNSW segment (a get() reads the SQLite side only; a segment chromadb can no longer load
    fails here)."""
    if not got["ids"]:
        return []
    found = collection.query(query_embeddings=np.asarray(got["embeddings"], dtype=np.float32), n_results=1,
                             include=[])["ids"]
    return sorted(rid for rid, hits in zip(got["ids"], found) if hits[:1] != [rid])


def read_qdrant(options: dict[str, str]) -> dict[str, Any]:
    from qdrant_client import QdrantClient

    client = QdrantClient(path=options["path"])
    try:
        out = {}
        for described in client.get_collections().collections:
            if described.name == MARKER_COLLECTION:  # vecflow's marker: which ledger, not the application's
                continue
            records, offset = {}, None
            while True:
                points, offset = client.scroll(described.name, limit=1000, offset=offset, with_payload=True,
                                               with_vectors=True)
                for point in points:
                    vectors = point.vector if isinstance(point.vector, dict) else {"": point.vector}
                    records[str(point.id)] = {"payload": point.payload,
                                              "vectors": {k: vector_hex(v) for k, v in vectors.items()}}
                if offset is None:
                    break
            config = client.get_collection(described.name).config.model_dump(mode="json")
            out[described.name] = {"collection": config, "records": records}
        return out
    finally:
        client.close()


def read_faiss(options: dict[str, str]) -> dict[str, Any]:
    root, out = Path(options["path"]), {}
    if not root.is_dir():
        return out
    for folder in sorted(root.iterdir()):
        # Hidden folders are a collection being created or dropped: no application opens them.
        if folder.name.startswith(".") or not (folder / "records.db").exists():
            continue
        with sqlite3.connect(f"{(folder / 'records.db').as_uri()}?mode=ro", uri=True) as conn:
            settings = conn.execute("SELECT format, dim, metric, params FROM collection").fetchall()
            records = {rid: {"vector": bytes(vector).hex(), "document": document, "metadata": metadata}
                       for rid, vector, document, metadata in
                       conn.execute("SELECT id, vector, document, metadata FROM records")}
        out[folder.name] = {"collection": settings, "records": records}
    return out


def read_redis(options: dict[str, str]) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(options["url"])
    prefix = options.get("key_prefix", "").encode()
    try:
        out: dict[str, Any] = {}
        for key in client.scan_iter(match=prefix + b"*", count=1000):
            collection, _, rid = key[len(prefix):].decode().partition(":")
            fields = {}
            for name, value in client.hgetall(key).items():
                try:
                    fields[name.decode()] = value.decode()
                except UnicodeDecodeError:
                    fields[name.decode()] = {"bytes": value.hex()}
            out.setdefault(collection, {"collection": None, "records": {}})["records"][rid] = fields
        return out
    finally:
        client.close()


READERS = {"chroma": read_chroma, "qdrant": read_qdrant, "faiss": read_faiss, "redis": read_redis}


def read_store(store: StoreConfig) -> dict[str, Any]:
    return _plain(READERS[store.backend](store.options))


@dataclass
class ProjectView:
    native: Contents
    logical: dict[str, dict[str, str]]  # store -> collection -> vecflow's logical digest


def read_project(root: Path, logical: bool = True) -> ProjectView:
    """Every store of the project at root, read in a fresh process: natively, then (unless not
    `logical`) through vecflow, whose first use of a collection may finish what a kill interrupted."""
    args = [str(root / "vecflow.ini")] + ([] if logical else ["--native-only"])
    result = subprocess.run([sys.executable, "-m", "tests.faults.native", *args],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"reading the stores of {root} failed:\n{result.stderr[-3000:]}")
    view = json.loads(result.stdout)
    return ProjectView(view["native"], view["logical"])


def native_contents(root: Path) -> Contents:
    """The stores as the application reads them; nothing of vecflow's runs."""
    return read_project(root, logical=False).native


def logical_digests(ini: str) -> dict[str, dict[str, str]]:
    from vecflow.runtime.digest import collection_digest
    from vecflow.runtime.stores import Stores

    stores = Stores(load_config(ini))
    try:
        result = {}
        for name in sorted(stores.config.stores):
            backend = stores.backend(name)
            result[name] = {collection: collection_digest(backend, collection).to_text()
                            for collection in sorted(backend.list_collections())}
        return result
    finally:
        stores.close()


def compare_logical(expected: dict[str, dict[str, str]], actual: dict[str, dict[str, str]]) -> list[str]:
    """The collections whose vecflow digest differs (or that exist on one side only)."""
    refs = {(s, c) for side in (expected, actual) for s, collections in side.items() for c in collections}
    return [f"{store}:{collection}: vecflow reads {actual.get(store, {}).get(collection, 'nothing')}, "
            f"uninterrupted run {expected.get(store, {}).get(collection, 'nothing')}"
            for store, collection in sorted(refs)
            if expected.get(store, {}).get(collection) != actual.get(store, {}).get(collection)]


@dataclass
class Comparison:
    """How one project's native contents differ from another's (the expected ones)."""

    lost: int = 0
    duplicated: int = 0
    changed: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.lines

    def summary(self) -> str:
        return f"{self.lost} lost, {self.duplicated} duplicated, {self.changed} changed"


def compare(expected: Contents, actual: Contents, limit: int = 12) -> Comparison:
    """Record by record: a key held in fewer places than expected is lost (once per missing place),
    in more places duplicated, and a record in its expected place with other content changed."""
    result = Comparison()
    places: dict[str, list[int]] = {}
    for side, contents in enumerate((expected, actual)):
        for collections in contents.values():
            for body in collections.values():
                for key in body["records"]:
                    places.setdefault(key, [0, 0])[side] += 1
    for want, got in places.values():
        result.lost += max(0, want - got)
        result.duplicated += max(0, got - want)
    for store in sorted(set(expected) | set(actual)):
        want_store, got_store = expected.get(store, {}), actual.get(store, {})
        for collection in sorted(set(want_store) | set(got_store)):
            where = f"{store}:{collection}"
            if collection not in got_store:
                result.lines.append(f"{where}: missing ({len(want_store[collection]['records'])} records expected)")
                continue
            if collection not in want_store:
                held = len(got_store[collection]["records"])
                result.lines.append(f"{where}: unexpected collection with {held} records")
                continue
            want, got = want_store[collection], got_store[collection]
            if _settings(want["collection"]) != _settings(got["collection"]):
                result.lines.append(f"{where}: settings differ: expected {want['collection']!r}, "
                                    f"got {got['collection']!r}")
            unfound = got["collection"].get(SELF_SEARCH, []) if isinstance(got["collection"], dict) else []
            if len(unfound) > max(1, len(got["records"]) // 100):
                result.lines.append(f"{where}: {len(unfound)} records are not found by their own vector "
                                    f"(the uninterrupted run: {len(_settings_unfound(want['collection']))}): "
                                    f"{unfound[:limit]}")
            missing = sorted(set(want["records"]) - set(got["records"]))
            extra = sorted(set(got["records"]) - set(want["records"]))
            changed = sorted(k for k in set(want["records"]) & set(got["records"])
                             if want["records"][k] != got["records"][k])
            result.changed += len(changed)
            if missing:
                result.lines.append(f"{where}: {len(missing)} records missing, e.g. {missing[:3]}")
            if extra:
                result.lines.append(f"{where}: {len(extra)} unexpected records, e.g. {extra[:3]}")
            for key in changed[:3]:
                result.lines.append(f"{where}: record {key!r} changed: "
                                    f"{_difference(want['records'][key], got['records'][key])}")
            if len(changed) > 3:
                result.lines.append(f"{where}: ... {len(changed)} changed records in all")
    if len(result.lines) > limit:
        result.lines[limit:] = [f"... {len(result.lines) - limit} more differences"]
    return result


def _difference(want: Any, got: Any) -> str:
    if isinstance(want, dict) and isinstance(got, dict):
        parts = [f"{k}: {_difference(want.get(k), got.get(k))}" for k in sorted(set(want) | set(got))
                 if want.get(k) != got.get(k)]
        return "{" + "; ".join(parts) + "}"
    return f"expected {want!r:.80}, got {got!r:.80}"


SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlite_rows(path: Path) -> dict[str, list[list[Any]]]:
    """Every table's rows, sorted: the content of a SQLite file, whatever its pages look like
    (closing the last connection checkpoints the WAL, which rewrites pages, not rows)."""
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: sorted((_plain(list(row)) for row in conn.execute(f'SELECT * FROM "{table}"')), key=repr)
                for table in sorted(tables)}


# chromadb's own housekeeping, done by any client that opens and closes an embedded folder, even
# one that only reads: its write-lock rows, the log position each segment has applied, and the HNSW
# segment files it flushes from that log. Every record write also adds a row to embeddings_queue
# (a new seq_id) and stamps the record's row in embeddings, which are compared.
CHROMA_HOUSEKEEPING_TABLES = {"acquire_write", "max_seq_id", "maintenance_log"}
CHROMA_SEGMENT_FILES = {"data_level0.bin", "header.bin", "length.bin", "link_lists.bin", "index_metadata.pickle"}


def files_fingerprint(root: Path) -> dict[str, Any]:
    """What is on disk under root: SQLite files by their rows, every other file by its bytes,
    leaving out what chromadb rewrites whenever a client closes (see CHROMA_HOUSEKEEPING_TABLES)."""
    import hashlib

    result: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        chroma = (path.parent / "chroma.sqlite3").exists() or (path.parent.parent / "chroma.sqlite3").exists()
        if chroma and path.name in CHROMA_SEGMENT_FILES:
            continue
        with path.open("rb") as handle:
            magic = handle.read(len(SQLITE_MAGIC))
        relative = str(path.relative_to(root))
        if magic != SQLITE_MAGIC:
            result[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
            continue
        rows = sqlite_rows(path)
        if path.name == "chroma.sqlite3":
            rows = {table: content for table, content in rows.items() if table not in CHROMA_HOUSEKEEPING_TABLES}
        result[relative] = rows
    return result


def main(ini: str, logical: bool) -> None:
    config = load_config(ini)
    native = {name: read_store(store) for name, store in sorted(config.stores.items())}
    json.dump({"native": native, "logical": logical_digests(ini) if logical else {}}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], "--native-only" not in sys.argv[2:])
