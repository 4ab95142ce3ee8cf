"""FAISS adapter: the shared contract (flat and HNSW sidecar stores, and LangChain folders), plus
what is specific to FAISS: the index file is a derived cache of the SQLite sidecar, written
atomically and rebuilt when it is missing, stale or torn; a LangChain folder is read only with
allow_pickle, written as LangChain writes it, and its two files change together or not at all."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

from tests.backends.contract import DIM, BackendContract, make_batch, scan_all
from tests.conftest import unavailable
from vecflow.backends import CollectionInfo, faiss_index, faiss_langchain, open_backend
from vecflow.backends.faiss import INDEX_FILE, INDEX_META, SIDECAR, FaissBackend
from vecflow.batch import Batch
from vecflow.errors import (
    BackendError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    InvalidDataError,
    OperationError,
)
from vecflow.state import VecflowState


def needs_langchain() -> None:
    if importlib.util.find_spec("langchain_community") is None:
        unavailable("langchain-community is not installed (pip install langchain-community)")


def read_pickle(folder: Path, index_name: str = "index"):
    """(docstore, index_to_docstore_id) as LangChain's load_local unpickles them."""
    with open(folder / f"{index_name}.pkl", "rb") as file:
        return pickle.load(file)


def sidecar_rows(store: FaissBackend, name: str, table: str) -> list[dict]:
    """A sidecar table's rows as SQLite holds them (read-only, no vecflow code in between)."""
    uri = (store.root / name / SIDECAR).as_uri() + "?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f"SELECT * FROM {table}")]


class FaissPlainClient:
    """The contract's plain-client hooks: the sidecar read with sqlite3, the index json as a file."""

    def plain_records(self, backend, name):
        return sidecar_rows(backend, name, "records")

    def plain_collection_metadata(self, backend, name):
        directory = backend.root / name
        meta = directory / INDEX_META
        return {"files": sorted(p.name for p in directory.iterdir()),
                "tables": [row["name"] for row in sidecar_rows(backend, name, "sqlite_master")],
                "collection": sidecar_rows(backend, name, "collection"),
                INDEX_META: json.loads(meta.read_text()) if meta.exists() else None}


class TestFaissFlatContract(FaissPlainClient, BackendContract):
    @pytest.fixture
    def open_store(self, tmp_path):
        return lambda: FaissBackend(path=str(tmp_path / "faiss"))


class TestFaissHnswContract(FaissPlainClient, BackendContract):
    @pytest.fixture
    def open_store(self, tmp_path):
        return lambda: FaissBackend(path=str(tmp_path / "faiss"), index_type="hnsw", hnsw_m="16")


class TestFaissLangChainFolderContract(BackendContract):
    """The same contract on LangChain folders (a store whose new collections are LangChain's)."""

    def plain_records(self, backend, name):
        docstore, positions = read_pickle(backend.root / name)
        return [{"position": position, "id": rid, "document": docstore._dict[rid].model_dump()}
                for position, rid in positions.items()]

    def plain_collection_metadata(self, backend, name):
        return sorted(path.name for path in (backend.root / name).iterdir())

    @pytest.fixture
    def open_store(self, tmp_path):
        needs_langchain()

        def open_store():
            backend = FaissBackend(path=str(tmp_path / "faiss"), allow_pickle="true")
            backend.set_layout_option("langchain")
            return backend

        return open_store


@pytest.fixture
def store(tmp_path):
    backend = FaissBackend(path=str(tmp_path / "faiss"))
    yield backend
    backend.close()


def collection_files(store: FaissBackend, name: str) -> set[str]:
    """Files in the collection directory, ignoring SQLite's own journal files."""
    return {p.name for p in (store.root / name).iterdir() if not p.name.startswith(SIDECAR)}


def top1_brute_force(vectors: np.ndarray, queries: np.ndarray, metric: str) -> list[int]:
    if metric == "l2":
        return [int(np.argmin(((vectors - q) ** 2).sum(axis=1))) for q in queries]
    if metric == "cosine":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return [int(np.argmax(vectors @ q)) for q in queries]


def test_faiss_import_is_the_real_package_not_this_module():
    assert faiss_index.faiss is faiss and hasattr(faiss, "IndexIDMap2")


def test_registry_opens_the_store_with_ini_strings(tmp_path):
    backend = open_backend(
        "faiss", {"path": str(tmp_path / "s"), "index_type": "HNSW", "hnsw_m": "12"}
    )
    backend.create_collection("alpha", DIM, "l2")
    assert backend.describe("alpha").params == {
        "index_type": "hnsw",
        "hnsw_m": 12,
        "hnsw_ef_construction": 40,
        "hnsw_ef_search": 64,
    }
    backend.close()


@pytest.mark.parametrize(
    "options",
    [
        {"index_type": "ivf"},
        {"index_type": "hnsw", "hnsw_m": "zero"},
        {"index_type": "hnsw", "hnsw_ef_search": "-1"},
    ],
)
def test_bad_store_options_are_config_errors(tmp_path, options):
    with pytest.raises(ConfigError):
        FaissBackend(path=str(tmp_path / "s"), **options)


def test_describe_reports_flat_and_hnsw_params_per_collection(store):
    store.create_collection("flat", DIM, "l2")
    store.create_collection(
        "graph", DIM, "cosine", index_type="hnsw", hnsw_m="8", hnsw_ef_construction=100
    )
    assert store.describe("flat").params == {"index_type": "flat"}
    info = store.describe("graph")
    assert (info.dim, info.metric) == (DIM, "cosine")
    assert info.params == {
        "index_type": "hnsw",
        "hnsw_m": 8,
        "hnsw_ef_construction": 100,
        "hnsw_ef_search": 64,
    }
    # describe() params are valid create_collection() params (the copy-based rename relies on it)
    store.create_collection("copy", info.dim, info.metric, **info.params)
    assert store.describe("copy").params == info.params


def test_unknown_collection_params_are_operation_errors(store):
    with pytest.raises(OperationError, match="nlist"):
        store.create_collection("alpha", DIM, "l2", nlist=10)
    with pytest.raises(OperationError, match="hnsw_m"):
        store.create_collection("alpha", DIM, "l2", index_type="hnsw", hnsw_m=0)
    assert store.list_collections() == [] and list(store.root.iterdir()) == []


def test_the_sidecar_holds_no_collection_metadata_of_vecflows(store):
    store.create_collection("alpha", DIM, "l2")
    store.update_collection_metadata("alpha", {"embedding": {"model": "m1"}})
    tables = {row["name"] for row in sidecar_rows(store, "alpha", "sqlite_master") if row["type"] == "table"}
    assert tables == {"collection", "records", "tombstones", "sqlite_sequence"}
    [row] = sidecar_rows(store, "alpha", "collection")
    assert (row["dim"], row["metric"], json.loads(row["params"])) == (DIM, "l2", {"index_type": "flat"})
    assert store.collection_metadata("alpha") == {"embedding": {"model": "m1"}}


def test_the_state_scope_names_the_store_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = FaissBackend(path="relative")
    try:
        assert store.scope("alpha") == f"faiss|{tmp_path / 'relative'}|alpha"
    finally:
        store.close()


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "a\\b", "../escape", "x" * 201])
def test_bad_collection_names_are_refused(store, name):
    with pytest.raises(BackendError, match="invalid faiss collection name"):
        store.create_collection(name, DIM, "l2")
    with pytest.raises(BackendError):
        store.has_collection(name)
    assert list(store.root.iterdir()) == []


def test_on_disk_layout_is_one_directory_per_collection(store):
    store.create_collection("alpha", DIM, "l2")
    store.upsert("alpha", make_batch(10))
    store.query("alpha", make_batch(1).vectors, 3)
    store.close()
    assert [p.name for p in store.root.iterdir()] == ["alpha"]
    assert collection_files(store, "alpha") == {INDEX_FILE, INDEX_META}
    assert faiss.read_index(str(store.root / "alpha" / INDEX_FILE)).ntotal == 10
    assert json.loads((store.root / "alpha" / INDEX_META).read_text())["version"] == 1


def test_rename_is_a_directory_rename_and_refuses_existing_targets(store):
    store.create_collection("a", DIM, "l2")
    store.create_collection("b", DIM, "l2")
    store.upsert("a", make_batch(5))
    store.query("a", make_batch(1).vectors, 1)
    with pytest.raises(CollectionExistsError):
        store.rename_collection("a", "b")
    with pytest.raises(CollectionNotFoundError):
        store.rename_collection("missing", "c")
    store.rename_collection("a", "c")
    assert store.list_collections() == ["b", "c"]
    assert collection_files(store, "c") == {INDEX_FILE, INDEX_META}
    assert store.query("c", make_batch(1).vectors, 1)[0][0][0] == "r00000"


def test_a_directory_that_is_not_a_collection_is_not_listed_or_overwritten(store):
    (store.root / "notes").mkdir()
    (store.root / "notes" / "index.faiss").write_bytes(b"someone else's")
    assert store.list_collections() == []
    with pytest.raises(CollectionExistsError):
        store.create_collection("notes", DIM, "l2")
    assert (store.root / "notes" / "index.faiss").read_bytes() == b"someone else's"


def test_drop_then_recreate_is_seen_by_another_open_connection(store, tmp_path):
    other = FaissBackend(path=str(store.root))
    store.create_collection("alpha", DIM, "l2")
    store.upsert("alpha", make_batch(10))
    assert other.count("alpha") == 10
    store.drop_collection("alpha")
    store.create_collection("alpha", 3, "ip")
    assert (other.count("alpha"), other.describe("alpha").dim) == (0, 3)
    other.close()
    assert [p.name for p in store.root.iterdir()] == ["alpha"]


def test_upsert_does_not_touch_the_index_file(store):
    store.create_collection("alpha", DIM, "l2")
    store.upsert("alpha", make_batch(10))
    assert collection_files(store, "alpha") == set()
    store.query("alpha", make_batch(1).vectors, 1)
    before = (store.root / "alpha" / INDEX_FILE).stat()
    for start in range(10, 50, 10):
        store.upsert("alpha", make_batch(10, start=start))
    after = (store.root / "alpha" / INDEX_FILE).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_index_file_is_written_through_a_temp_file_and_rename(store, monkeypatch):
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(faiss_index.os, "replace", spy)
    store.create_collection("alpha", DIM, "l2")
    store.upsert("alpha", make_batch(10))
    store.query("alpha", make_batch(1).vectors, 1)
    directory = store.root / "alpha"
    assert [dst for _, dst in replaced] == [directory / INDEX_FILE, directory / INDEX_META]
    assert all(src.parent == directory and src.name.endswith(".tmp") for src, _ in replaced)
    store.close()
    assert collection_files(store, "alpha") == {INDEX_FILE, INDEX_META}


def test_failed_index_write_keeps_the_old_index_and_leaves_no_temp_file(store, monkeypatch):
    store.create_collection("alpha", DIM, "l2")
    store.upsert("alpha", make_batch(10))
    store.query("alpha", make_batch(1).vectors, 1)
    saved = (store.root / "alpha" / INDEX_FILE).read_bytes()

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss_index.os, "replace", crash)
    store.upsert("alpha", make_batch(10, start=10, seed=1))
    hits = store.query("alpha", make_batch(10, start=10, seed=1).vectors[[5]], 1)
    assert hits[0][0][0] == "r00015"  # the query still answers from the in-memory index
    assert (store.root / "alpha" / INDEX_FILE).read_bytes() == saved
    assert collection_files(store, "alpha") == {INDEX_FILE, INDEX_META}
    monkeypatch.undo()
    store.close()
    reopened = FaissBackend(path=str(store.root))
    assert (
        reopened.query("alpha", make_batch(10, start=10, seed=1).vectors[[5]], 1)[0][0][0]
        == "r00015"
    )
    reopened.close()


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "delete-json", "swap-json"])
def test_a_missing_torn_or_mismatched_index_is_rebuilt(store, damage):
    store.create_collection("alpha", DIM, "l2")
    store.upsert("alpha", make_batch(30))
    store.query("alpha", make_batch(1).vectors, 1)
    old_meta = (store.root / "alpha" / INDEX_META).read_bytes()
    store.upsert("alpha", make_batch(30, start=30, seed=1))
    store.query("alpha", make_batch(1).vectors, 1)
    store.close()
    index_file, meta_file = store.root / "alpha" / INDEX_FILE, store.root / "alpha" / INDEX_META
    if damage == "delete":
        index_file.unlink()
    elif damage == "truncate":
        index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
    elif damage == "garbage":
        index_file.write_bytes(os.urandom(4096))
    elif damage == "delete-json":
        meta_file.unlink()
    else:  # a json from an older index next to a newer index file: a race between two writers
        meta_file.write_bytes(old_meta)

    reopened = FaissBackend(path=str(store.root))
    queries = make_batch(30, start=30, seed=1).vectors[[3, 29]]
    assert [h[0][0] for h in reopened.query("alpha", queries, 2)] == ["r00033", "r00059"]
    reopened.close()
    assert faiss.read_index(str(index_file)).ntotal == 60
    assert json.loads(meta_file.read_text())["version"] == 2


def test_a_stale_index_catches_up_with_the_sidecar(store):
    store.create_collection("alpha", DIM, "l2")
    store.upsert("alpha", make_batch(20))
    store.query("alpha", make_batch(1).vectors, 1)
    store.close()
    writer = FaissBackend(path=str(store.root))
    writer.upsert("alpha", make_batch(20, start=20, seed=5))
    writer.delete("alpha", ["r00000"])
    moved = make_batch(1, start=1, seed=8)
    writer.upsert("alpha", moved)
    writer.close()
    reader = FaissBackend(path=str(store.root))
    assert reader.query("alpha", make_batch(1).vectors, 1)[0][0][0] != "r00000"
    [(moved_id, distance)] = reader.query("alpha", moved.vectors, 1)[0]
    assert moved_id == "r00001" and distance < 1e-5
    assert (
        reader.query("alpha", make_batch(20, start=20, seed=5).vectors[[7]], 1)[0][0][0] == "r00027"
    )
    reader.close()


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_index_is_patched_not_rebuilt_when_faiss_allows_it(store, monkeypatch, index_type):
    rebuilds = []
    real_rebuild = faiss_index.rebuild
    monkeypatch.setattr(faiss_index, "rebuild", lambda *a: rebuilds.append(1) or real_rebuild(*a))
    store.create_collection("alpha", DIM, "l2", index_type=index_type)
    store.upsert("alpha", make_batch(20))
    store.query("alpha", make_batch(1).vectors, 1)
    assert len(rebuilds) == 1
    added = make_batch(20, start=20, seed=1)
    store.upsert("alpha", added)  # new records: added
    touched = make_batch(20)
    touched.metadatas = [{"touched": True}] * 20  # same vectors: the index does not change
    store.upsert("alpha", touched)
    assert store.query("alpha", added.vectors[[13]], 1)[0][0][0] == "r00033"
    assert len(rebuilds) == 1
    store.delete("alpha", ["r00033"])  # flat removes ids; HNSW cannot, so it rebuilds
    assert store.query("alpha", added.vectors[[13]], 1)[0][0][0] != "r00033"
    assert len(rebuilds) == (1 if index_type == "flat" else 2)


def test_update_metadata_writes_only_the_sidecar(store):
    store.create_collection("alpha", DIM, "l2", index_type="hnsw")
    store.upsert("alpha", make_batch(10))
    store.query("alpha", make_batch(1).vectors, 1)
    before = (store.root / "alpha" / INDEX_META).read_bytes()
    store.update_metadata("alpha", ["r00003", "missing"], [{"k": [1, {"x": None}]}, {"no": 1}])
    assert store.query("alpha", make_batch(10).vectors[[3]], 1)[0][0][0] == "r00003"
    assert (store.root / "alpha" / INDEX_META).read_bytes() == before
    assert store.get("alpha", ["r00003"]).metadatas == [{"k": [1, {"x": None}]}]
    with pytest.raises(InvalidDataError):
        store.update_metadata("alpha", ["r00003"], [])


def test_delete_and_reinsert_of_an_id_is_not_returned_twice(store):
    store.create_collection("alpha", DIM, "l2")
    store.upsert("alpha", make_batch(10))
    store.query("alpha", make_batch(1).vectors, 1)
    store.delete("alpha", ["r00004"])
    store.upsert("alpha", make_batch(10).take([4]))
    hits = store.query("alpha", make_batch(10).vectors[[4]], 10)[0]
    assert [rid for rid, _ in hits].count("r00004") == 1 and len(hits) == 10


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_large_query_after_many_batches_matches_brute_force(store, metric):
    store.create_collection("alpha", 32, metric)
    batches = [make_batch(400, dim=32, start=400 * i, seed=i) for i in range(5)]
    for i, batch in enumerate(batches):
        store.upsert("alpha", batch)
        if i == 2:
            store.query("alpha", batch.vectors[:1], 1)  # an index saved mid-way, then patched
    vectors = np.concatenate([b.vectors for b in batches])
    queries = np.random.default_rng(42).standard_normal((25, 32)).astype(np.float32)
    hits = store.query("alpha", queries, 5)
    expected = top1_brute_force(vectors, queries, metric)
    assert [row[0][0] for row in hits] == [f"r{i:05d}" for i in expected]


def test_hnsw_finds_stored_vectors_in_a_larger_collection(store):
    store.create_collection("alpha", 32, "cosine", index_type="hnsw")
    batches = [make_batch(500, dim=32, start=500 * i, seed=i) for i in range(4)]
    for batch in batches:
        store.upsert("alpha", batch)
    probes = np.concatenate([b.vectors[::50] for b in batches])
    expected = [rid for b in batches for rid in b.ids[::50]]
    found = [row[0][0] for row in store.query("alpha", probes, 3)]
    assert np.mean([f == e for f, e in zip(found, expected, strict=True)]) >= 0.95


def test_scores_follow_the_metric(store):
    vectors = np.array([[1, 0], [0, 2], [3, 4]], np.float32)
    batch = Batch(["x", "y", "z"], vectors, [None] * 3, [{}] * 3)
    for metric in ("l2", "ip", "cosine"):
        store.create_collection(metric, 2, metric)
        store.upsert(metric, batch)
    query = np.array([[1, 0]], np.float32)
    assert store.query("l2", query, 3)[0] == [("x", 0.0), ("y", 5.0), ("z", 20.0)]
    assert store.query("ip", query, 3)[0] == [("z", 3.0), ("x", 1.0), ("y", 0.0)]
    cosine = store.query("cosine", query, 3)[0]
    assert [rid for rid, _ in cosine] == ["x", "z", "y"]
    assert np.allclose([s for _, s in cosine], [0.0, 0.4, 1.0], atol=1e-6)
    # the sidecar keeps the raw vectors of a cosine collection, not the normalised ones
    assert store.get("cosine", ["z"]).vectors.tobytes() == vectors[[2]].tobytes()


def test_query_asks_for_more_than_there_is(store):
    store.create_collection("alpha", DIM, "l2")
    store.upsert("alpha", make_batch(3))
    assert len(store.query("alpha", make_batch(1).vectors, 10)[0]) == 3
    with pytest.raises(DimensionMismatchError):
        store.query("alpha", np.zeros((1, DIM + 1), np.float32), 1)


def test_scan_cursor_is_rejected_when_it_is_not_ours(store):
    store.create_collection("alpha", DIM, "l2")
    with pytest.raises(BackendError, match="cursor"):
        store.scan("alpha", 10, "r00005")


def test_metadata_that_is_not_json_is_refused_before_writing(store):
    store.create_collection("alpha", 2, "l2")
    batch = Batch(
        ["a", "b"],
        np.zeros((2, 2), np.float32),
        [None, None],
        [{"n": np.int64(3)}, {"bad": object()}],
    )
    with pytest.raises(InvalidDataError, match="'b'"):
        store.upsert("alpha", batch)
    assert store.count("alpha") == 0


# LangChain folders ---------------------------------------------------------------------------


class Crash(BaseException):
    """A process dying at this point (nothing catches a BaseException on the way out)."""


def save_with_langchain(folder: Path, batch: Batch, index: str = "flat", index_name: str = "index") -> None:
    """What an application does: FAISS.from_embeddings (or a FAISS over its own index) + save_local."""
    needs_langchain()
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_core.embeddings import FakeEmbeddings

    pairs = list(zip(batch.documents, batch.vectors.tolist()))
    if index == "flat":
        store = FAISS.from_embeddings(pairs, FakeEmbeddings(size=batch.dim), metadatas=batch.metadatas,
                                      ids=batch.ids)
    else:
        store = FAISS(FakeEmbeddings(size=batch.dim), faiss.IndexHNSWFlat(batch.dim, 8), InMemoryDocstore(), {})
        store.add_embeddings(pairs, metadatas=batch.metadatas, ids=batch.ids)
    store.save_local(str(folder), index_name=index_name)


def load_with_langchain(folder: Path, index_name: str = "index"):
    from langchain_community.vectorstores import FAISS
    from langchain_core.embeddings import FakeEmbeddings

    index = faiss.read_index(str(folder / f"{index_name}.faiss"))
    return FAISS.load_local(str(folder), FakeEmbeddings(size=index.d), index_name=index_name,
                            allow_dangerous_deserialization=True)


def as_langchain_sees_it(folder: Path, index_name: str = "index") -> dict:
    """{id: (position, Document.id, page_content, metadata, vector bytes)} after FAISS.load_local."""
    store = load_with_langchain(folder, index_name)
    vectors = store.index.reconstruct_n(0, store.index.ntotal)
    assert sorted(store.index_to_docstore_id) == list(range(store.index.ntotal))
    out = {}
    for position, rid in store.index_to_docstore_id.items():
        doc = store.docstore.search(rid)
        out[rid] = (position, doc.id, doc.page_content, doc.metadata, vectors[position].tobytes())
    return out


def file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture
def folders(tmp_path):
    """A store with allow_pickle whose new collections are LangChain folders, and its state."""
    needs_langchain()
    state = VecflowState(tmp_path / "state.db")
    opened = []

    def connect(**options) -> FaissBackend:
        backend = FaissBackend(path=str(tmp_path / "faiss"), **{"allow_pickle": "true", **options})
        backend.set_layout_option("langchain")
        backend.attach_state(state)
        opened.append(backend)
        return backend

    yield connect
    for backend in opened:
        backend.close()
    state.close()


def test_allow_pickle_and_index_name_are_checked_when_the_store_opens(tmp_path):
    for options in ({"allow_pickle": "maybe"}, {"index_name": "a/b"}, {"index_name": ".hidden"}, {"index_name": ""}):
        with pytest.raises(ConfigError):
            FaissBackend(path=str(tmp_path / "s"), **options)
    assert FaissBackend(path=str(tmp_path / "s"), allow_pickle="Yes").allow_pickle is True


def test_a_langchain_folder_is_listed_and_detected_but_never_unpickled_without_allow_pickle(tmp_path, monkeypatch):
    save_with_langchain(tmp_path / "faiss" / "docs", make_batch(5))
    store = FaissBackend(path=str(tmp_path / "faiss"))
    store.create_collection("own", DIM, "l2")
    monkeypatch.setattr(faiss_langchain.pickle, "load", lambda *a: pytest.fail("unpickled without allow_pickle"))
    assert store.list_collections() == ["docs", "own"]
    detected = store.layout_of("docs")
    assert detected.layout.name == "langchain"
    assert detected.reason == "index.faiss + index.pkl: a LangChain FAISS.save_local folder"
    assert (store.layout_of("own").layout.name, store.layout_of("own").reason) == (
        "raw", "records.db: vecflow's own FAISS format")
    for call in (lambda: store.count("docs"), lambda: store.scan("docs", 10), lambda: store.describe("docs")):
        with pytest.raises(ConfigError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and "allow_pickle = true" in message and "index.pkl" in message
    store.close()


def test_vecflow_reads_a_folder_langchain_saved_exactly(tmp_path, folders):
    batch = make_batch(25)
    save_with_langchain(tmp_path / "faiss" / "docs", batch)
    store = folders()
    assert store.describe("docs") == CollectionInfo("docs", DIM, "l2", {"index_type": "flat"})
    assert store.count("docs") == 25
    got = scan_all(store, "docs", batch_size=7)
    assert got.ids == batch.ids  # position order
    assert got.vectors.tobytes() == batch.vectors.tobytes()
    assert (got.documents, got.metadatas) == (batch.documents, batch.metadatas)
    assert store.query("docs", batch.vectors[[3]], 1)[0][0] == ("r00003", 0.0)
    assert store.search_is_exact("docs")


def test_what_vecflow_writes_is_what_load_local_reads(tmp_path, folders):
    store = folders()
    store.create_collection("docs", DIM, "l2")
    store.upsert("docs", make_batch(10))
    store.delete("docs", ["r00002", "r00005"])
    changed = make_batch(3, start=7, seed=9)
    store.upsert("docs", changed)  # in place, new vectors
    store.update_metadata("docs", ["r00000"], [{"kept": [1, "a"]}])
    seen = as_langchain_sees_it(tmp_path / "faiss" / "docs")
    expected = make_batch(10).take([0, 1, 3, 4, 6, 7, 8, 9])
    assert list(seen) == expected.ids  # positions renumbered in order, as LangChain's delete does
    for position, (rid, (at, doc_id, text, metadata, vector)) in enumerate(seen.items()):
        assert (at, doc_id, text) == (position, rid, expected.documents[position])
        assert metadata == ({"kept": [1, "a"]} if rid == "r00000" else expected.metadatas[position])
        assert vector == (changed.vectors[changed.ids.index(rid)] if rid in changed.ids
                          else expected.vectors[position]).tobytes()
    app = load_with_langchain(tmp_path / "faiss" / "docs")
    assert [d.id for d in app.similarity_search_by_vector(changed.vectors[1].tolist(), k=1)] == ["r00008"]


def test_update_metadata_and_same_vector_upserts_write_only_the_pickle(tmp_path, folders):
    store = folders()
    store.create_collection("docs", DIM, "ip")
    store.upsert("docs", make_batch(10))
    index_file, pickle_file = tmp_path / "faiss" / "docs" / "index.faiss", tmp_path / "faiss" / "docs" / "index.pkl"
    before, pickled = file_stamp(index_file), file_stamp(pickle_file)
    store.update_metadata("docs", ["r00001"], [{"x": 1}])
    same = make_batch(10)
    same.documents = ["new text"] * 10
    store.upsert("docs", same)
    assert file_stamp(index_file) == before and file_stamp(pickle_file) != pickled
    assert isinstance(faiss.read_index(str(index_file)), faiss.IndexFlatIP)
    assert {v[2] for v in as_langchain_sees_it(tmp_path / "faiss" / "docs").values()} == {"new text"}


def test_a_connection_rereads_a_folder_the_application_saved_meanwhile(tmp_path, folders):
    store = folders()
    save_with_langchain(tmp_path / "faiss" / "docs", make_batch(5))
    assert store.count("docs") == 5
    save_with_langchain(tmp_path / "faiss" / "docs", make_batch(8, seed=3))
    assert store.count("docs") == 8
    assert store.get("docs", ["r00007"]).vectors.tobytes() == make_batch(8, seed=3).vectors[[7]].tobytes()


def test_an_interrupted_two_file_write_is_finished_on_the_next_open(tmp_path, folders, monkeypatch):
    store = folders()
    store.create_collection("docs", DIM, "l2")
    store.upsert("docs", make_batch(10))
    real_replace, calls = os.replace, []

    def dies_after_the_first_rename(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise Crash()
        real_replace(src, dst)

    monkeypatch.setattr(faiss_langchain.os, "replace", dies_after_the_first_rename)
    with pytest.raises(Crash):
        store.upsert("docs", make_batch(5, start=10, seed=1))
    monkeypatch.undo()
    assert calls == ["index.faiss", "index.pkl"]
    folder = tmp_path / "faiss" / "docs"
    assert faiss.read_index(str(folder / "index.faiss")).ntotal == 15 and len(read_pickle(folder)[1]) == 10
    reopened = folders()  # the next open finishes the write
    assert reopened.count("docs") == 15
    assert len(as_langchain_sees_it(folder)) == 15
    assert sorted(p.name for p in folder.iterdir()) == ["index.faiss", "index.pkl"]


def test_after_a_crash_a_folder_the_application_saved_since_wins(tmp_path, folders, monkeypatch):
    store = folders()
    store.create_collection("docs", DIM, "l2")
    store.upsert("docs", make_batch(4))
    real_replace = os.replace
    monkeypatch.setattr(faiss_langchain.os, "replace", lambda src, dst: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        store.upsert("docs", make_batch(3, start=4))
    monkeypatch.setattr(faiss_langchain.os, "replace", real_replace)
    save_with_langchain(tmp_path / "faiss" / "docs", make_batch(6, seed=5))
    assert folders().count("docs") == 6
    assert sorted(p.name for p in (tmp_path / "faiss" / "docs").iterdir()) == ["index.faiss", "index.pkl"]


def test_scan_cursor_follows_deletes_behind_it_and_survives_a_restart(folders):
    store = folders()
    store.create_collection("docs", DIM, "l2")
    store.upsert("docs", make_batch(30))
    seen, cursor = [], None
    while True:
        page, cursor = folders().scan("docs", 7, cursor)  # a new connection per page
        seen += page.ids
        store.delete("docs", page.ids[::2])  # behind the cursor, the page's last record included
        if cursor is None:
            break
    assert seen == make_batch(30).ids
    with pytest.raises(BackendError, match="cursor"):
        store.scan("docs", 5, "17")


def test_metadata_that_cannot_be_pickled_is_refused_before_writing(tmp_path, folders):
    store = folders()
    store.create_collection("docs", 2, "l2")
    pickle_file = tmp_path / "faiss" / "docs" / "index.pkl"
    before = pickle_file.read_bytes()
    batch = Batch(["a", "b"], np.zeros((2, 2), np.float32), ["x", "y"], [{"n": np.int64(3)}, {"f": lambda: 1}])
    with pytest.raises(InvalidDataError, match="'b'"):
        store.upsert("docs", batch)
    assert pickle_file.read_bytes() == before and store.count("docs") == 0
    store.upsert("docs", batch.take([0]))
    assert type(read_pickle(tmp_path / "faiss" / "docs")[0]._dict["a"].metadata["n"]) is int


def test_a_cosine_folder_is_an_l2_index_over_unit_vectors_as_with_normalize_l2(tmp_path, folders):
    store = folders()
    store.create_collection("docs", DIM, "cosine")
    batch = make_batch(20)
    store.upsert("docs", batch)
    index = faiss.read_index(str(tmp_path / "faiss" / "docs" / "index.faiss"))
    assert isinstance(index, faiss.IndexFlatL2)
    assert np.allclose(np.linalg.norm(index.reconstruct_n(0, 20), axis=1), 1, atol=1e-6)
    assert store.describe("docs").metric == "cosine"
    assert scan_all(store, "docs").vectors.tobytes() == batch.vectors.tobytes()  # exact bits, from the state
    [(rid, distance)] = store.query("docs", batch.vectors[[4]] * 3, 1)[0]
    assert rid == "r00004" and abs(distance) < 1e-6
    stateless = FaissBackend(path=str(tmp_path / "faiss"), allow_pickle="true")  # no vecflow state
    assert stateless.describe("docs").metric == "l2"
    assert np.allclose(np.linalg.norm(stateless.get("docs", ["r00001"]).vectors, axis=1), 1, atol=1e-6)
    stateless.close()


def test_folders_other_than_flat_l2_or_ip_or_with_a_broken_pickle_are_refused(tmp_path, folders):
    save_with_langchain(tmp_path / "faiss" / "graph", make_batch(5), index="hnsw")
    save_with_langchain(tmp_path / "faiss" / "torn", make_batch(5))
    docstore, positions = read_pickle(tmp_path / "faiss" / "torn")
    with open(tmp_path / "faiss" / "torn" / "index.pkl", "wb") as file:
        pickle.dump((docstore, {i: positions[i] for i in range(3)}), file)
    store = folders()
    with pytest.raises(BackendError, match="IndexHNSWFlat"):
        store.count("graph")
    with pytest.raises(BackendError, match="does not map each of the index's 5 positions"):
        store.count("torn")
    with pytest.raises(OperationError, match="flat index"):
        store.create_collection("new", DIM, "l2", index_type="hnsw")


def test_index_name_picks_the_files_and_a_shared_directory_keeps_the_others(tmp_path, folders):
    folder = tmp_path / "faiss" / "shared"
    save_with_langchain(folder, make_batch(4), index_name="index")
    save_with_langchain(folder, make_batch(6, seed=2), index_name="other")
    other = folders(index_name="other")
    assert other.count("shared") == 6 and folders().count("shared") == 4
    other.rename_collection("shared", "moved")  # others' files share the directory: copy, then drop
    assert sorted(p.name for p in folder.iterdir()) == ["index.faiss", "index.pkl"]
    assert sorted(p.name for p in (tmp_path / "faiss" / "moved").iterdir()) == ["other.faiss", "other.pkl"]
    assert scan_all(other, "moved").vectors.tobytes() == make_batch(6, seed=2).vectors.tobytes()
    other.drop_collection("moved")
    assert not (tmp_path / "faiss" / "moved").exists() and folders().count("shared") == 4


def test_a_new_folder_never_overwrites_files_already_there(tmp_path, folders):
    store = folders()
    (tmp_path / "faiss" / "notes").mkdir(parents=True)
    (tmp_path / "faiss" / "notes" / "index.faiss").write_bytes(b"someone else's")
    with pytest.raises(CollectionExistsError):
        store.create_collection("notes", DIM, "l2")
    assert (tmp_path / "faiss" / "notes" / "index.faiss").read_bytes() == b"someone else's"
    store.create_collection("fresh", DIM, "l2")
    store.rename_collection("fresh", "renamed")  # the directory holds only the folder: renamed whole
    assert sorted(p.name for p in (tmp_path / "faiss").iterdir()) == ["notes", "renamed"]
