"""Files backend: the shared contract in each format (parquet, vdf, jsonl), plus what is specific to
files: the manifest, copy-on-write parts, `part:row` cursors, VDF folders other tools wrote, and
`vecflow export` / `vecflow import` between every backend and a folder (verified, resumable, and
refusing a folder that no longer matches its manifest)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.backends.contract import AWKWARD_METADATAS, BackendContract, make_batch, scan_all
from tests.conftest import BACKENDS
from tests.frameworks import apps
from tests.project import Project, step_progress
from vecflow.backends import files_folder, open_backend
from vecflow.backends.files import FilesBackend
from vecflow.backends.files_folder import MANIFEST, VDF_META
from vecflow.backends.files_formats import CODECS
from vecflow.batch import Batch
from vecflow.errors import BackendError, ConfigError, LedgerError, OperationError, VerificationError
from vecflow.runtime.digest import batch_digest, collection_digest, collection_digests
from vecflow.runtime.stores import Stores

FORMATS = ["parquet", "vdf", "jsonl"]


class FilesPlainClient:
    """The contract's plain-client hooks: the folder read with pyarrow and json, no vecflow code."""

    def plain_records(self, backend, name):
        rows = []
        for path in sorted((backend.root / name).iterdir()):
            if path.suffix == ".parquet":
                rows += pq.read_table(path).to_pylist()
            elif path.suffix == ".jsonl":
                rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return rows

    def plain_collection_metadata(self, backend, name):
        folder = backend.root / name
        described = {"files": sorted(p.name for p in folder.iterdir())}
        for meta in (MANIFEST, VDF_META):
            if (folder / meta).exists():
                described[meta] = json.loads((folder / meta).read_text(encoding="utf-8"))
        described["schemas"] = [pq.read_schema(path).to_string(show_schema_metadata=True)
                                for path in sorted(folder.glob("*.parquet"))]
        return described


class TestFilesParquetContract(FilesPlainClient, BackendContract):
    @pytest.fixture
    def open_store(self, tmp_path):
        return lambda: FilesBackend(path=str(tmp_path / "files"))


class TestFilesVdfContract(FilesPlainClient, BackendContract):
    @pytest.fixture
    def open_store(self, tmp_path):
        return lambda: FilesBackend(path=str(tmp_path / "files"), format="vdf")


class TestFilesJsonLinesContract(FilesPlainClient, BackendContract):
    @pytest.fixture
    def open_store(self, tmp_path):
        return lambda: FilesBackend(path=str(tmp_path / "files"), format="jsonl")


@pytest.fixture
def store(tmp_path):
    backend = FilesBackend(path=str(tmp_path / "files"))
    yield backend
    backend.close()


def awkward_batch(n: int, dim: int = 16, seed: int = 0) -> Batch:
    """Records with every kind of value a store may not hold natively, and None / empty texts."""
    batch = make_batch(n, dim=dim, seed=seed)
    metadatas = [{**meta, **AWKWARD_METADATAS[i % len(AWKWARD_METADATAS)], "lang": ["en", "日本語", "de"][i % 3]}
                 for i, meta in enumerate(batch.metadatas)]
    documents = [None if i % 17 == 0 else "" if i % 19 == 0 else doc for i, doc in enumerate(batch.documents)]
    return Batch(batch.ids, batch.vectors, documents, metadatas)


def seed(project: Project, ref: str, batch: Batch, metric: str = "cosine", metadata: dict | None = None) -> str:
    digest = project.seed(ref, batch, metric)
    if metadata:
        with project.opened(ref) as (backend, name):
            backend.update_collection_metadata(name, metadata)
    return digest


def collection_metadata(project: Project, ref: str) -> dict:
    with project.opened(ref) as (backend, name):
        return backend.collection_metadata(name)


def attempts(project: Project) -> list[tuple]:
    with sqlite3.connect(project.root / ".vecflow" / "ledger.db") as conn:
        return conn.execute("SELECT revision, direction, outcome, resumes FROM attempts ORDER BY id").fetchall()


# the manifest and the part files ---------------------------------------------------------------


def test_the_manifest_describes_the_folder_and_every_part_in_it(store):
    store.create_collection("docs", 16, "l2", layout="langchain")
    store.upsert("docs", awkward_batch(30))
    store.upsert("docs", awkward_batch(20, seed=1).take(list(range(10))))  # replaces ids of the first part
    store.upsert("docs", make_batch(15, dim=16, start=100))
    store.delete("docs", ["r00003"])
    folder = store.root / "docs"
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert set(manifest) == {"version", "format", "dimension", "metric", "layout", "count", "digest",
                             "embedding_model", "collection_metadata", "exported_from", "generation",
                             "next_part", "parts"}
    assert (manifest["format"], manifest["dimension"], manifest["metric"], manifest["layout"]) == \
        ("parquet", 16, "l2", "langchain")
    assert manifest["count"] == 44 == store.count("docs")
    assert manifest["digest"] == collection_digest(store, "docs").to_text()
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST] + [part["file"] for part in manifest["parts"]])
    assert len({pq.read_schema(folder / part["file"]) for part in manifest["parts"]}) == 1
    for part in manifest["parts"]:
        table = pq.read_table(folder / part["file"])
        assert table.schema.field("vector").type == pa.list_(pa.float32(), 16)
        rows = table.to_pylist()
        batch = Batch([r["id"] for r in rows], np.array([r["vector"] for r in rows], np.float32),
                      [r["document"] for r in rows], [json.loads(r["metadata"]) for r in rows])
        assert (part["rows"], part["digest"]) == (len(rows), batch_digest(batch).to_text())


def test_a_page_that_ends_with_the_empty_id_continues_after_it(store):
    store.create_collection("c", 3, "l2")
    batch = Batch(["0", "1", "00", ""], np.zeros((4, 3), np.float32), [None] * 4, [{}] * 4)
    store.upsert("c", batch)
    assert sorted(scan_all(store, "c", batch_size=1).ids) == ["", "0", "00", "1"]


def test_upserting_existing_ids_rewrites_only_their_part_and_keeps_every_position(store):
    store.create_collection("docs", 16, "cosine")
    for start in (0, 10, 20):
        store.upsert("docs", make_batch(10, dim=16, start=start))
    before = json.loads((store.root / "docs" / MANIFEST).read_text())["parts"]
    order = scan_all(store, "docs").ids
    changed = make_batch(10, dim=16, start=10, seed=5)
    store.upsert("docs", changed)
    store.upsert("docs", changed)
    after = json.loads((store.root / "docs" / MANIFEST).read_text())["parts"]
    assert [p["file"] for p in after][0::2] == [p["file"] for p in before][0::2]
    assert after[1]["file"] != before[1]["file"] and len(list((store.root / "docs").iterdir())) == 4
    assert scan_all(store, "docs").ids == order
    assert store.get("docs", changed.ids).vectors.tobytes() == changed.vectors.tobytes()


def test_a_write_cut_short_before_its_commit_changes_nothing_and_its_files_are_swept(store, monkeypatch):
    store.create_collection("docs", 16, "l2")
    store.upsert("docs", make_batch(10, dim=16))
    digest = collection_digest(store, "docs")
    real_replace = os.replace

    def crash_on_manifest(src, dst):
        if Path(dst).name == MANIFEST:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(files_folder.os, "replace", crash_on_manifest)
    with pytest.raises(BackendError, match="No space left"):
        store.upsert("docs", make_batch(10, dim=16, start=10))
    monkeypatch.undo()
    reopened = FilesBackend(path=str(store.root))
    assert collection_digest(reopened, "docs") == digest
    assert len(list((store.root / "docs").glob("part-*"))) == 2  # the committed part and the orphan
    reopened.upsert("docs", make_batch(5, dim=16, start=50))
    listed = {p["file"] for p in json.loads((store.root / "docs" / MANIFEST).read_text())["parts"]}
    assert {p.name for p in (store.root / "docs").iterdir()} == listed | {MANIFEST}
    reopened.close()


def test_scan_cursors_survive_restarts_and_deletes_behind_them_and_read_only_the_row_groups_needed(tmp_path,
                                                                                               monkeypatch):
    store = FilesBackend(path=str(tmp_path / "files"), part_rows="5000")
    store.create_collection("docs", 8, "l2")
    store.upsert("docs", make_batch(12_000).take(list(range(11_999, -1, -1))))  # parts are sorted by id
    assert [p["rows"] for p in json.loads((store.root / "docs" / MANIFEST).read_text())["parts"]] == [5000, 5000, 2000]
    _, cursor = store.scan("docs", 7000)
    assert cursor == "1:2000:r06999"
    loads = []
    codec = type(CODECS["parquet"])
    real_load = codec.load
    monkeypatch.setattr(codec, "load", lambda self, path, group: loads.append((path.name, group)) or
                        real_load(self, path, group))
    other = FilesBackend(path=str(store.root))
    page, cursor = other.scan("docs", 500, cursor)
    # rows 2000-2499 of part 1 lie in its row groups 0 and 1 (of 2048 rows each): only those are read
    assert page.ids[0] == "r07000" and cursor == "1:2500:r07499" and [group for _, group in loads] == [0, 1]
    # deleting what was just read (the cursor's own id among it) shifts nothing after the cursor
    other.delete("docs", page.ids[::2] + [page.ids[-1]])
    rest = [rid for batch, _ in other.pages("docs", 3000, cursor) for rid in batch.ids]
    assert rest == [f"r{i:05d}" for i in range(7500, 12_000)]
    with pytest.raises(BackendError, match="cursor"):
        other.scan("docs", 10, "r00005")
    other.close()
    store.close()


def test_options_formats_and_collection_parameters(tmp_path):
    with pytest.raises(ConfigError, match="format"):
        FilesBackend(path=str(tmp_path / "a"), format="csv")
    with pytest.raises(ConfigError, match="part_rows"):
        FilesBackend(path=str(tmp_path / "a"), part_rows="0")
    store = open_backend("files", {"path": str(tmp_path / "s"), "format": "vdf"})
    store.create_collection("a", 4, "ip")
    store.create_collection("b", 4, "ip", format="jsonl")
    assert store.describe("a").params == {"format": "vdf"} and store.describe("b").params == {"format": "jsonl"}
    with pytest.raises(OperationError, match="unknown parameter"):
        store.create_collection("c", 4, "ip", index_type="hnsw")
    with pytest.raises(OperationError, match="plain folder name"):
        store.create_collection("c/d", 4, "ip")
    store.upsert("b", Batch(["x"], np.ones((1, 4), np.float32), ["t"], [{"k": [1, None]}], [{"node": {"a": 1}}]))
    line = json.loads(next((store.root / "b").glob("*.jsonl")).read_text())
    assert line == {"id": "x", "vector": [1.0] * 4, "document": "t", "metadata": {"k": [1, None]},
                    "extras": {"node": {"a": 1}}}
    assert store.get("b", ["x"]).extras == [{"node": {"a": 1}}]
    store.close()


def test_vdf_columns_keep_every_value_exact_and_say_how_in_their_field_metadata(tmp_path):
    store = FilesBackend(path=str(tmp_path / "files"), format="vdf")
    store.create_collection("docs", 2, "l2")
    metadatas = [{"n": 1, "maybe": None, "mixed": 1, "id": "user id", "tags": ["a"], "gone": 1.5},
                 {"n": 2, "maybe": None, "mixed": "one", "id": "other", "tags": []},
                 {"n": 3, "maybe": None, "mixed": 2.5, "id": "third", "tags": ["b", None], "gone": None}]
    batch = Batch(["a", "b", "c"], np.eye(3, 2, dtype=np.float32), ["x", None, ""], metadatas)
    store.upsert("docs", batch)
    assert store.get("docs", batch.ids).metadatas == metadatas
    schema = pq.read_schema(next((store.root / "docs").glob("*.parquet")))
    assert schema.names == ["id", "vector", "document", "n", "maybe", "mixed", "metadata_id", "tags", "gone"]
    assert schema.field("n").type == pa.int64() and schema.field("n").metadata is None
    assert schema.field("maybe").metadata == {b"null_means": b"none"}
    assert schema.field("mixed").metadata == {b"encoding": b"json"}
    assert schema.field("gone").metadata == {b"encoding": b"json"}  # both None and absent
    assert schema.field("metadata_id").metadata == {b"metadata_key": b"id"}
    assert schema.field("tags").type == pa.list_(pa.string())
    store.close()


# VDF folders other tools wrote -----------------------------------------------------------------


def write_vector_io_folder(folder: Path, exported: int = 60) -> dict:
    """A VDF folder as vector-io 0.1.247 writes one (README "Universal Vector Dataset Format",
    src/vdf_io/meta_types.py, export_vdf/vdb_export_cls.py): VDF_META.json and, per index, a folder
    of Parquet files with `id`, `vector` (float64 lists, as pandas writes them) and one column per
    metadata field; here two indexes, one of them in a namespace, with text in `model_map`."""
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((60, 8))
    published = [datetime.datetime(2024, 1, 1 + i % 28, 12, 0) for i in range(60)]
    (folder / "wiki").mkdir(parents=True)
    for number, rows in enumerate((range(0, 40), range(40, 60)), start=1):
        rows = list(rows)
        pq.write_table(pa.table({
            "id": [f"wiki-{i}" for i in rows],
            "vector": pa.array([vectors[i].tolist() for i in rows], pa.list_(pa.float64())),
            "text": [f"Article {i} about rivers" for i in rows],
            "title": [f"Title {i}" for i in rows],
            "views": pa.array([None if i % 10 == 0 else i * 100 for i in rows], pa.int64()),
            "score": [i / 3 for i in rows],
            "tags": [["geo", f"t{i % 3}"] for i in rows],
            "published": pa.array([published[i] for i in rows], pa.timestamp("us")),
        }), folder / "wiki" / f"{number}.parquet")
    pq.write_table(pa.table({"id": [1, 2], "vector": [[0.5] * 4, [0.25] * 4], "note": ["first", "second"]}),
                   folder / "notes.parquet")
    namespace = {"namespace": "", "index_name": "wiki", "total_vector_count": 60, "exported_vector_count": exported,
                 "dimensions": 8, "model_name": "cohere/embed-multilingual-v2.0",
                 "model_map": {"vector": {"model_name": "cohere/embed-multilingual-v2.0", "text_column": "text",
                                          "dimensions": 8, "vector_column": "vector"}},
                 "vector_columns": ["vector"], "data_path": "wiki", "metric": "Cosine", "index_config": None,
                 "schema_dict_str": None}
    notes = {"namespace": "ns1", "index_name": "notes", "total_vector_count": 2, "exported_vector_count": 2,
             "dimensions": 4, "model_name": "NOT_PROVIDED", "vector_columns": ["vector"],
             "data_path": "notes.parquet", "metric": "Dot"}
    (folder / VDF_META).write_text(json.dumps({
        "version": "0.1.247", "file_structure": ["vdf/wiki/1.parquet", "vdf/wiki/2.parquet", "vdf/notes.parquet"],
        "author": "someone", "exported_from": "pinecone", "indexes": {"wiki": [namespace], "notes": [notes]},
        "exported_at": "2024-01-22T13:54:25.649727+05:30", "id_column": "id"}), encoding="utf-8")
    return {f"wiki-{i}": (vectors[i].astype(np.float32).tobytes(), f"Article {i} about rivers",
                          {"title": f"Title {i}", **({} if i % 10 == 0 else {"views": i * 100}), "score": i / 3,
                           "tags": ["geo", f"t{i % 3}"], "published": published[i].isoformat()})
            for i in range(60)}


def test_a_vdf_folder_written_by_the_documented_format_is_imported(tmp_path):
    expected = write_vector_io_folder(tmp_path / "vdf")
    project = Project(tmp_path / "project", {"path": str(tmp_path / "faiss")}, backend="faiss")
    with pytest.raises(BackendError, match=r"holds 2 VDF indexes \(wiki, notes/ns1\)"):
        project.run("import_", str(tmp_path / "vdf"), "main:wiki")
    lines = project.run("import_", str(tmp_path / "vdf" / "wiki"), "main:wiki")
    assert any("60 records in 2 Parquet file(s)" in line for line in lines), lines
    assert any("verified main:wiki: 60 records" in line for line in lines), lines
    records = project.records("main:wiki")
    assert {rid: (r.vector.tobytes(), r.document, r.metadata) for rid, r in records.items()} == expected
    assert collection_metadata(project, "main:wiki") == {"embedding": {"model": "cohere/embed-multilingual-v2.0"}}
    project.run("import_", str(tmp_path / "vdf" / "notes" / "ns1"), "main:notes")
    notes = project.records("main:notes")
    assert sorted(notes) == ["1", "2"] and notes["2"].metadata == {"note": "second"} and notes["1"].document is None
    stores = Stores(project.config)
    try:
        assert stores.backend().describe("notes").metric == "ip"
    finally:
        stores.close()
    assert [row[1:3] for row in attempts(project)] == [("import", "done"), ("import", "done")]


def test_a_vdf_folder_whose_files_do_not_hold_what_its_meta_says_is_refused(tmp_path):
    write_vector_io_folder(tmp_path / "vdf", exported=61)
    project = Project(tmp_path / "project", {"path": str(tmp_path / "faiss")}, backend="faiss")
    with pytest.raises(VerificationError, match="declares 61 vectors for 'wiki', its Parquet files hold 60"):
        project.run("import_", str(tmp_path / "vdf" / "wiki"), "main:wiki")
    assert attempts(project) == []


def test_vecflow_reads_a_vdf_folder_another_tool_wrote_but_does_not_write_it(tmp_path):
    write_vector_io_folder(tmp_path / "store" / "vdf")
    store = FilesBackend(path=str(tmp_path / "store"))
    assert store.list_collections() == ["vdf/notes/ns1", "vdf/wiki"]
    assert store.layout_of("vdf/wiki").layout.name == "raw" and store.count("vdf/wiki") == 60
    assert store.query("vdf/wiki", store.get("vdf/wiki", ["wiki-7"]).vectors, 1)[0][0][0] == "wiki-7"
    with pytest.raises(BackendError, match="writes only folders it created"):
        store.upsert("vdf/wiki", store.get("vdf/wiki", ["wiki-7"]))
    with pytest.raises(BackendError, match="writes only folders it created"):
        store.drop_collection("vdf/wiki")
    store.close()


def test_a_vdf_export_reads_as_vector_io_reads_it(tmp_path):
    """VDF_META.json has the fields of vector-io's VDFMeta / NamespaceMeta; its data_path holds every
    Parquet file, with the id, the vector column and the text column model_map names."""
    project = Project(tmp_path / "project", {"path": str(tmp_path / "faiss")}, backend="faiss")
    batch = awkward_batch(50)
    seed(project, "main:docs", batch, metadata={"embedding": {"model": "tiny-model", "dim": 16}})
    project.run("export", "main:docs", str(tmp_path / "out"), file_format="vdf")
    meta = json.loads((tmp_path / "out" / VDF_META).read_text(encoding="utf-8"))
    assert set(meta) == {"version", "file_structure", "author", "exported_from", "indexes", "exported_at", "id_column"}
    ((index, (namespace,)),) = meta["indexes"].items()
    assert index == "out" and meta["exported_from"] == "faiss" and meta["id_column"] == "id"
    assert {key: namespace[key] for key in ("namespace", "index_name", "total_vector_count", "exported_vector_count",
                                            "dimensions", "model_name", "vector_columns", "metric")} == \
        {"namespace": "", "index_name": "out", "total_vector_count": 50, "exported_vector_count": 50,
         "dimensions": 16, "model_name": "tiny-model", "vector_columns": ["vector"], "metric": "Cosine"}
    text = namespace["model_map"]["vector"]["text_column"]
    files = sorted((tmp_path / "out" / namespace["data_path"]).rglob("*.parquet"))
    assert [f"out/{f.name}" for f in files] == meta["file_structure"][:-1]
    rows = {row["id"]: row for f in files for row in pq.read_table(f).to_pylist()}
    assert sorted(rows) == sorted(batch.ids)
    first = rows["r00001"]
    assert np.array(first["vector"], np.float32).tobytes() == batch.vectors[1].tobytes()
    assert first[text] == batch.documents[1] and first["tag"] == "odd" and first["n"] == 1


# export and import ---------------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_export_then_import_gives_back_the_source_digest_on_every_backend(tmp_path, backend, store_options,
                                                                         file_format):
    project = Project(tmp_path / "project", store_options, backend=backend, batch_size=70)
    original = seed(project, "main:docs", awkward_batch(300), metadata={"embedding": {"model": "tiny-model"}})
    lines = project.run("export", "main:docs", str(tmp_path / "export"), file_format=file_format)
    assert any(line.startswith("      verified @export:export: 300 records") for line in lines), lines
    manifest = json.loads((tmp_path / "export" / MANIFEST).read_text(encoding="utf-8"))
    assert (manifest["digest"], manifest["format"], manifest["embedding_model"]) == \
        (original, file_format, "tiny-model")
    lines = project.run("import_", str(tmp_path / "export"), "main:back")
    assert any("every part file matching the digest" in line for line in lines), lines
    assert project.digest("main:back") == original
    assert collection_metadata(project, "main:back") == {"embedding": {"model": "tiny-model"}}
    assert [row[1:3] for row in attempts(project)] == [("export", "done"), ("import", "done")]


def test_import_refuses_a_folder_that_no_longer_matches_its_manifest(tmp_path):
    project = Project(tmp_path / "project", {"path": str(tmp_path / "faiss")}, backend="faiss", batch_size=40)
    seed(project, "main:docs", awkward_batch(100))
    project.run("export", "main:docs", str(tmp_path / "out"))
    part = sorted((tmp_path / "out").glob("part-*.parquet"))[1]
    table = pq.read_table(part)
    documents = table.column("document").to_pylist()
    documents[3] = "edited by hand"
    pq.write_table(table.set_column(table.schema.get_field_index("document"), "document",
                                    pa.array(documents, pa.string())), part)
    result = project.cli("import", str(tmp_path / "out"), "main:copy", check=False)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"vecflow: error: {part} holds records with digest ")
    assert "the folder was changed after it was written" in result.stderr
    assert project.digest("main:copy") == "absent" and [row[1] for row in attempts(project)] == ["export"]
    part.unlink()
    with pytest.raises(VerificationError, match=f"{part.name} cannot be read"):
        project.run("import_", str(tmp_path / "out"), "main:copy")


def test_a_killed_export_resumes_with_nothing_lost_or_duplicated(tmp_path):
    project = Project(tmp_path / "project", {"path": str(tmp_path / "faiss")}, backend="faiss", batch_size=100)
    original = seed(project, "main:docs", make_batch(20_000, dim=32))
    out = tmp_path / "out"
    label = f"main:docs {out}"
    process = subprocess.Popen([sys.executable, "-m", "vecflow", "export", "main:docs", str(out)], cwd=project.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (step_progress(project.root / ".vecflow" / "ledger.db", label) or (0,))[0] < 3000:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.stderr else ""
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    blocked = project.cli("upgrade", "head", check=False)
    assert f"run 'vecflow export {label}' to finish it first" in blocked.stderr
    lines = project.run("export", "main:docs", str(out))
    assert lines[0] == f"Resuming export {label}" and any("resuming at" in line for line in lines), lines
    assert json.loads((out / MANIFEST).read_text())["digest"] == original
    assert attempts(project) == [("main:docs " + str(out), "export", "done", 1)]


def test_a_failed_export_must_be_finished_or_abandoned_before_anything_else_runs(tmp_path, monkeypatch):
    project = Project(tmp_path / "project", {"path": str(tmp_path / "faiss")}, backend="faiss", batch_size=50)
    original = seed(project, "main:docs", make_batch(400, dim=8))
    seed(project, "main:other", make_batch(10, dim=8))
    real_upsert = FilesBackend._upsert
    calls = []

    def fail_on_the_third(self, name, batch):
        calls.append(name)
        if len(calls) == 3:
            raise BackendError("disk unplugged")
        real_upsert(self, name, batch)

    monkeypatch.setattr(FilesBackend, "_upsert", fail_on_the_third)
    with pytest.raises(BackendError, match="disk unplugged"):
        project.run("export", "main:docs", str(tmp_path / "out"), file_format="jsonl")
    monkeypatch.undo()
    with pytest.raises(LedgerError, match=rf"run 'vecflow export main:docs {tmp_path / 'out'} --format jsonl'"):
        project.run("import_", str(tmp_path / "out"), "main:back")
    project.run("export", "main:docs", str(tmp_path / "out"), file_format="jsonl")
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["digest"] == original
    with pytest.raises(OperationError, match="already holds an export of 400 records"):
        project.run("export", "main:docs", str(tmp_path / "out"))
    with pytest.raises(OperationError, match="main:other already holds 10 records"):
        project.run("import_", str(tmp_path / "out"), "main:other")
    assert [row[2] for row in attempts(project)] == ["done"]


def test_a_llamaindex_collection_comes_back_from_an_export_byte_for_byte(tmp_path):
    """The layout and the framework's own parts (the node JSON) travel in the export: LlamaIndex
    reads the imported collection as it read the original, and every native record is identical."""
    chroma, other = str(tmp_path / "chroma"), str(tmp_path / "other")
    docs = apps.sample_docs(30, lists=False)
    apps.write_llamaindex_chroma(chroma, "docs", docs)
    project = Project(tmp_path / "project", {"path": chroma}, backend="chroma",
                      extra_stores={"other": ("chroma", {"path": other})})
    project.run("export", "main:docs", str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["layout"] == "llamaindex"
    project.run("import_", str(tmp_path / "out"), "other:docs")
    assert apps.native_records_chroma(other, "docs") == apps.native_records_chroma(chroma, "docs")
    before, after = apps.llamaindex_nodes_chroma(chroma, "docs"), apps.llamaindex_nodes_chroma(other, "docs")
    assert {i: n.model_dump() for i, n in after.items()} == {i: n.model_dump() for i, n in before.items()}
    stores = Stores(project.config)
    try:
        source, target = stores.resolve("main:docs"), stores.resolve("other:docs")
        assert collection_digests(*target).native == collection_digests(*source).native
    finally:
        stores.close()
