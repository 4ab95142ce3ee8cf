"""reembed and normalize_vectors on every backend: the vectors change as the embedder says, documents
and metadata do not, and the downgrade restores the old vectors bit for bit without embedding."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import minilm_folder
from tests.ops import sample_embedders
from tests.ops.sample_embedders import hash_vector
from tests.plain_view import assert_store_has_no_vecflow_trace
from tests.project import Project, kill_upgrade_at, step_progress
from vecflow.batch import Batch
from vecflow.errors import InvalidDataError, OperationError, VecflowError
from vecflow.runtime.stores import Stores

EMBEDDERS = "tests.ops.sample_embedders"


def describe(project: Project, collection: str = "docs"):
    with project.opened(collection) as (backend, name):
        return backend.describe(name)


def step_state(project: Project, revision: str) -> dict:
    with sqlite3.connect(project.root / ".vecflow" / "ledger.db") as conn:
        row = conn.execute("SELECT s.cursor FROM steps s JOIN attempts a ON a.id = s.attempt_id "
                           "WHERE a.revision = ? AND a.direction = 'upgrade' ORDER BY a.id DESC", [revision]).fetchone()
    return json.loads(row[0])


def upgrade_then_downgrade_exactly(project: Project, body: str, check) -> list[str]:
    """Upgrade with body, check(project, before_records), downgrade without embedding, compare digests."""
    before, records = project.digest("docs"), project.records("docs")
    project.write_python("step1", "base0", body)
    output = project.run("upgrade", "head")
    check(project, records)
    calls = sample_embedders.CALLS["count"]
    sample_embedders.FORBIDDEN["on"] = True
    try:
        lines = project.run("downgrade", "base0")
    finally:
        sample_embedders.FORBIDDEN["on"] = False
    assert sample_embedders.CALLS["count"] == calls
    assert any(line.startswith("  verified") for line in lines), lines
    assert project.digest("docs") == before
    return output


def assert_only_vectors_changed(after: dict, before: dict, expected_vector) -> None:
    assert after.keys() == before.keys()
    for rid, record in after.items():
        assert record.document == before[rid].document
        assert record.metadata == before[rid].metadata
        assert np.array_equal(record.vector, expected_vector(before[rid])), rid


# on every backend --------------------------------------------------------------------------------


def test_reembed_with_the_same_dimension_rewrites_vectors_in_place_and_downgrade_restores_them(project):
    def check(p, before):
        assert describe(p).dim == 8
        assert_only_vectors_changed(p.records("docs"), before, lambda r: hash_vector(r.document, 8))

    output = upgrade_then_downgrade_exactly(project, f'op.reembed("docs", "{EMBEDDERS}:HashEmbedder")', check)
    state = step_state(project, "step1")
    assert (state["embedder"], state["old_dim"], state["dim"]) == (f"{EMBEDDERS}:HashEmbedder", 8, 8)
    assert len(state["fingerprint"]) == 16
    assert any(f"fingerprint {state['fingerprint']}" in line for line in output), output


def collection_metadata(project: Project) -> dict:
    with project.opened() as (backend, name):
        return backend.collection_metadata(name)


def test_reembed_to_a_new_dimension_rebuilds_the_collection_and_downgrade_restores_the_old_one(project):
    metric = describe(project).metric
    stores = Stores(project.config)
    backend, name = stores.resolve("docs")
    backend.update_collection_metadata(name, {"team": "search"})
    stores.close()

    def check(p, before):
        info = describe(p)
        assert (info.dim, info.metric) == (12, metric)
        assert_only_vectors_changed(p.records("docs"), before, lambda r: hash_vector(r.document, 12))
        state = step_state(p, "step1")
        assert collection_metadata(p) == {"team": "search", "embedding": {
            "model": f"{EMBEDDERS}:hash12()", "dim": 12, "fingerprint": state["fingerprint"]}}
        stores = Stores(p.config)
        try:
            assert_store_has_no_vecflow_trace(stores.backend())  # the model is kept in vecflow state
        finally:
            stores.close()

    upgrade_then_downgrade_exactly(project, f'op.reembed("docs", "{EMBEDDERS}:hash12()")', check)
    assert describe(project).dim == 8
    assert step_state(project, "step1")["dim"] == 12
    assert collection_metadata(project) == {"team": "search"}


def test_normalize_vectors_scales_to_unit_length_and_downgrade_restores_the_raw_vectors(project):
    stores = Stores(project.config)
    backend, name = stores.resolve("docs")
    backend.upsert(name, Batch(["zero", "unit"], np.array([[0.0] * 8, [0.6, 0.8] + [0.0] * 6]), [None, "u"],
                               [{}, {"kind": "unit"}]))
    stores.close()

    def unit(record):
        vector = record.vector.astype(np.float64)
        norm = np.linalg.norm(vector)
        return record.vector if norm == 0 else (vector / norm).astype(np.float32)

    def check(p, before):
        after = p.records("docs")
        assert_only_vectors_changed(after, before, unit)
        assert not after["zero"].vector.any()
        norms = np.linalg.norm(np.stack([r.vector for rid, r in after.items() if rid != "zero"]), axis=1)
        assert np.allclose(norms, 1.0, atol=1e-6)

    upgrade_then_downgrade_exactly(project, 'op.normalize_vectors("docs")', check)


# embedder forms, text fields, failures -------------------------------------------------------


@pytest.mark.parametrize("backend", ["faiss"])
def test_an_embedding_function_object_embeds_a_metadata_field_in_a_python_revision(project):
    def check(p, before):
        assert describe(p).dim == 12
        assert_only_vectors_changed(p.records("docs"), before, lambda r: hash_vector(r.metadata["author"], 12))

    output = upgrade_then_downgrade_exactly(
        project, f"from {EMBEDDERS} import ChromaHashEmbedding\n"
                 'op.reembed("docs", ChromaHashEmbedding(12), text_field="author", batch_size=7)', check)
    assert any(f"reembed docs: vectors from author by {EMBEDDERS}.ChromaHashEmbedding" in line
               for line in output), output


@pytest.mark.parametrize("backend", ["faiss"])
def test_a_plain_function_named_in_a_yaml_revision_is_the_embedder(project):
    before = project.records("docs")
    project.write_yaml("step1", f"""\
        revision: step1
        down_revision: base0
        upgrade:
          - reembed: {{collection: docs, embedder: "{EMBEDDERS}:hash8_function"}}
        """)
    project.run("upgrade", "head")
    assert_only_vectors_changed(project.records("docs"), before, lambda r: hash_vector(r.document, 8))


@pytest.mark.parametrize("backend", ["chroma"])
def test_a_record_without_text_fails_the_step_naming_it_before_any_vector_changes(project):
    before = project.digest("docs")
    project.write_python("step1", "base0", f'op.reembed("docs", "{EMBEDDERS}:hash12()", text_field="title")')
    stores = Stores(project.config)
    backend, name = stores.resolve("docs")
    page = backend.get(name, [f"id-{i:06d}" for i in range(150)])
    titles = [{**meta, "title": f"title {rid}"} for rid, meta in zip(page.ids, page.metadatas)]
    titles[97] = {k: v for k, v in titles[97].items() if k != "title"}
    backend.update_metadata(name, page.ids, titles)
    stores.close()
    with_titles = project.digest("docs")
    assert with_titles != before

    with pytest.raises(InvalidDataError, match="record 'id-000097' has no text in metadata field 'title'"):
        project.run("upgrade", "head")
    assert project.digest("docs") == with_titles and describe(project).dim == 8

    # Fix the record and rerun: the step resumes and embeds every record, the fixed one included.
    stores = Stores(project.config)
    backend, name = stores.resolve("docs")
    backend.update_metadata(name, ["id-000097"], [{**page.metadatas[97], "title": "fixed"}])
    stores.close()
    assert any("Resuming upgrade step1" in line for line in project.run("upgrade", "head"))
    records = project.records("docs")
    assert np.array_equal(records["id-000097"].vector, hash_vector("fixed", 12))
    assert np.array_equal(records["id-000003"].vector, hash_vector("title id-000003", 12))


@pytest.mark.parametrize("backend", ["faiss"])
def test_resuming_with_another_embedder_is_refused(project, monkeypatch):
    project.write_python("step1", "base0", f'op.reembed("docs", "{EMBEDDERS}:HashEmbedder")')
    calls = sample_embedders.CALLS["count"]
    original = sample_embedders.embed

    def failing(texts, dim):
        if sample_embedders.CALLS["count"] >= calls + 3:
            raise RuntimeError("model server went away")
        return original(texts, dim)

    monkeypatch.setattr(sample_embedders, "embed", failing)
    with pytest.raises(OperationError, match="embedder .*HashEmbedder failed: RuntimeError: model server went away"):
        project.run("upgrade", "head")
    monkeypatch.setattr(sample_embedders, "embed", original)
    project.write_python("step1", "base0", f'op.reembed("docs", "{EMBEDDERS}:hash12()")')
    with pytest.raises(OperationError, match="not the one the interrupted run used"):
        project.run("upgrade", "head")


@pytest.mark.parametrize("backend", ["faiss"])
def test_planning_show_check_and_dry_run_never_load_the_embedder(project):
    project.write_python("step1", "base0", 'op.reembed("docs", "no_such_module.anywhere:Model()")\n'
                                           'op.reembed("docs", "sentence-transformers:/no/such/model")\n'
                                           'op.normalize_vectors("docs")')
    assert "  1. reembed docs: vectors from document by no_such_module.anywhere:Model()" in project.run("show", "step1")
    # The only problem check finds is that step1 is not applied yet: it did not load the embedder.
    with pytest.raises(VecflowError, match="check failed: 1 problem"):
        project.run("check")
    lines = project.run("upgrade", "head", dry_run=True)
    assert "     vectors re-embedded from the documents; dim 8 -> known at run time (the model is only loaded " \
           "when the step runs); records affected: all 150" in lines, lines
    assert "     vectors scaled to unit length; records affected: 150 of 150 records (snapshotted); zero vectors " \
           "left as they are: 0 of 150 records" in lines, lines
    with pytest.raises(OperationError, match="cannot import no_such_module.anywhere"):
        project.run("upgrade", "head")


@pytest.mark.parametrize("spec, message", [
    ("all-MiniLM-L6-v2", "neither 'sentence-transformers:MODEL' nor 'package.module:attribute'"),
    ("sentence-transformers:", "needs a model name or folder"),
    (42, "must be a string or a callable"),
])
def test_malformed_embedders_are_refused_when_the_step_is_recorded(spec, message):
    from vecflow.operations import Operations

    with pytest.raises(OperationError, match=message):
        Operations().reembed("docs", spec)


# crash safety ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["faiss"])
def test_a_failure_between_dropping_and_recreating_the_collection_is_resumed(project, monkeypatch):
    from vecflow.backends.faiss import FaissBackend

    before, records = project.digest("docs"), project.records("docs")
    project.write_python("step1", "base0", f'op.reembed("docs", "{EMBEDDERS}:hash12()")')
    create = FaissBackend.create_collection

    def fail_once(self, *args, **kwargs):
        monkeypatch.setattr(FaissBackend, "create_collection", create)
        raise OSError("disk full")

    monkeypatch.setattr(FaissBackend, "create_collection", fail_once)
    with pytest.raises(Exception, match="disk full"):
        project.run("upgrade", "head")
    assert project.digest("docs") == "absent"
    assert any("Resuming upgrade step1" in line for line in project.run("upgrade", "head"))
    assert_only_vectors_changed(project.records("docs"), records, lambda r: hash_vector(r.document, 12))
    project.run("downgrade", "base0")
    assert project.digest("docs") == before



def test_killed_reembed_with_a_new_dimension_resumes_to_the_same_vectors(fast_tmp_path, monkeypatch):
    """SIGKILL the subprocess while it embeds into the rebuilt collection; the rerun completes it.
    The embedder module sits beside the revisions (`_embedders.py`, ignored as a revision)."""
    n, batch = 1200, 50
    project = Project(fast_tmp_path / "p", {"path": "%(here)s/faiss"}, backend="faiss", batch_size=batch)
    project.write_records("docs.jsonl", n, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    shutil.copy(Path(sample_embedders.__file__), project.versions / "_embedders.py")
    project.write_yaml("r2", """\
        revision: r2
        down_revision: r1
        upgrade:
          - reembed: {collection: docs, embedder: "_embedders:hash12()"}
        """)
    project.cli("upgrade", "r1")
    before, records = project.digest("docs"), project.records("docs")
    monkeypatch.setenv("VECFLOW_TEST_EMBED_DELAY", "0.02")
    kill_upgrade_at(project, "r2", 5 * batch)
    rows, status = step_progress(project.root / ".vecflow" / "ledger.db", "r2")
    assert status == "running" and 5 * batch <= rows < n, rows
    assert describe(project).dim == 12

    monkeypatch.setenv("VECFLOW_TEST_EMBED_DELAY", "0")
    assert "Resuming upgrade r2" in project.cli("upgrade", "head").stdout
    assert_only_vectors_changed(project.records("docs"), records, lambda r: hash_vector(r.document, 12))
    assert "verified" in project.cli("downgrade", "r1").stdout
    assert project.digest("docs") == before and describe(project).dim == 8


# a real model ------------------------------------------------------------------------------------

TOPICS = ["cooking pasta", "football match", "stock market", "mountain hiking", "python programming",
          "violin concert", "rainy weather", "electric cars", "chess openings", "gardening tomatoes"]




def test_reembed_with_all_minilm_l6_v2_finds_semantic_neighbours_and_downgrade_restores_exactly(tmp_path):
    folder = minilm_folder()
    project = Project(tmp_path / "project", {"path": str(tmp_path / "chroma")}, batch_size=20)
    data = project.versions / "data" / "docs.jsonl"
    data.parent.mkdir()
    rng = np.random.default_rng(7)
    with data.open("w", encoding="utf-8") as handle:
        for i in range(50):
            handle.write(json.dumps({"id": f"doc-{i:02d}", "vector": rng.standard_normal(8).tolist(),
                                     "document": f"A note about {TOPICS[i % 10]}, number {i}.",
                                     "metadata": {"topic": TOPICS[i % 10]}}) + "\n")
    project.write_python("base0", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("step1", "base0", f'op.reembed("docs", "sentence-transformers:{folder}")')
    project.run("upgrade", "base0")
    before = project.digest("docs")

    lines = project.run("upgrade", "head", dry_run=True)
    assert any("dim 8 -> 384, the collection is rebuilt with the new dimension; records affected: all 50" in line
               for line in lines), lines
    started = time.monotonic()
    project.run("upgrade", "head")
    state = step_state(project, "step1")
    assert (state["dim"], state["old_dim"]) == (384, 8) and len(state["fingerprint"]) == 16

    from sentence_transformers import SentenceTransformer
    query = SentenceTransformer(str(folder)).encode(["Which team scored a goal in the game?"])
    stores = Stores(project.config)
    backend, name = stores.resolve("docs")
    assert backend.describe(name).dim == 384
    hits = backend.query(name, np.asarray(query, dtype=np.float32), 5)[0]
    stores.close()
    records = project.records("docs")
    assert all(records[rid].metadata["topic"] == "football match" for rid, _ in hits), hits
    assert time.monotonic() - started < 60

    assert any(line.startswith("  verified") for line in project.run("downgrade", "base0"))
    assert project.digest("docs") == before
