"""Choosing layouts and target shapes, inspecting stores, and what the native digest proves."""

from __future__ import annotations

import json
from pathlib import Path

import chromadb
import pytest

from tests.frameworks import apps
from tests.project import Project
from vecflow.errors import DigestMismatchError, DryRunFailedError, OperationError


def chroma_and_qdrant(tmp_path: Path) -> tuple[str, str, Project]:
    chroma, qdrant = str(tmp_path / "chroma"), str(tmp_path / "qdrant")
    project = Project(tmp_path / "project", {"path": chroma}, batch_size=10,
                      extra_stores={"q": ("qdrant", {"path": qdrant})})
    return chroma, qdrant, project


def test_inspect_names_the_layout_where_the_text_lives_and_the_fields(tmp_path):
    chroma, qdrant, project = chroma_and_qdrant(tmp_path)
    apps.write_llamaindex_chroma(chroma, "nodes", apps.sample_docs(12, lists=False))
    apps.write_langchain_qdrant(qdrant, "docs", apps.sample_docs(12))

    lines = project.run("inspect", "main:nodes")
    assert "nodes: 12 records, dim 16, l2" in lines
    assert any(line.startswith("  layout: llamaindex (12 of 12 sampled records look written by LlamaIndex)")
               for line in lines), lines
    assert "  ids: uuid 12" in lines
    assert any(line.startswith("  field year: int, 100% filled, e.g. ") for line in lines), lines

    result = project.cli("inspect", "--json", "q:docs")
    (report,) = json.loads(result.stdout)["collections"]
    assert (report["layout"], report["metric"], report["count"]) == ("langchain", "cosine", 12)
    assert report["text"] == "payload 'page_content'"
    assert report["fields"]["tags"]["types"] == {"list": 12}
    assert set(report["fields"]) == {"title", "year", "rating", "draft", "tags"}

    missing = project.cli("inspect", "main:nope", check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no collection 'nope'" in missing.stderr


def test_a_step_layout_overrides_detection_of_the_source(tmp_path):
    chroma, qdrant, project = chroma_and_qdrant(tmp_path)
    docs = [{**doc, "id": f"doc-{i}"} for i, doc in enumerate(apps.sample_docs(10))]  # ids LangChain was given
    apps.write_langchain_chroma(chroma, "docs", docs)
    assert project.run("inspect", "main:docs")[2].startswith("  layout: raw"), "plain ids: not recognisable"
    project.write_python("r1", None, 'op.copy_collection("main:docs", "q:docs", layout="langchain")')
    preview = project.run("upgrade", "head", dry_run=True)
    assert any("source layout: langchain (set by the step's layout=)" in line for line in preview), preview
    project.run("upgrade", "head")
    # LangChain-Qdrant needs UUID point ids: vecflow maps the others and keeps the originals in its state.
    assert [text for text, _ in apps.read_langchain_qdrant(qdrant, "docs").values()] \
        and {p for p in project.records("q:docs")} == {d["id"] for d in docs}


def test_metric_inside_target_params_is_refused_before_anything_runs(tmp_path):
    chroma, _, project = chroma_and_qdrant(tmp_path)
    apps.write_langchain_chroma(chroma, "docs", apps.sample_docs(5))
    project.write_python("r1", None, 'op.copy_collection("main:docs", "q:docs", target_params={"metric": "ip"})')
    result = project.cli("upgrade", "head", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "set the target's metric with target_metric" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "qdrant").exists(), "nothing was created"


def test_an_empty_target_of_another_metric_is_refused_and_nothing_is_left_behind(tmp_path):
    chroma, _, project = chroma_and_qdrant(tmp_path)
    apps.write_langchain_chroma(chroma, "docs", apps.sample_docs(5))
    client = chromadb.PersistentClient(path=chroma)
    client.create_collection("target", configuration={"hnsw": {"space": "ip"}})
    del client
    project.write_python("r1", None, 'op.copy_collection("main:docs", "main:target")')
    with pytest.raises(DryRunFailedError, match="upgrade r1, step 1 .* exists with dim .* metric ip"):
        project.run("upgrade", "head", dry_run=True)
    assert any("refused:" in line and "metric ip" in line for line in project.output), project.output
    with pytest.raises(OperationError, match="exists with dim .* metric ip"):
        project.run("upgrade", "head")
    assert project.run("inspect", "main:target")[1].startswith("target: 0 records")
    lines = project.run("current")
    assert lines[0] == "<base> (nothing applied)" and lines[1].startswith("unfinished: upgrade of r1 (failed)")


def test_restored_exactly_is_not_printed_when_a_byte_the_application_reads_differs(tmp_path):
    chroma, _, project = chroma_and_qdrant(tmp_path)
    apps.write_llamaindex_chroma(chroma, "docs", apps.sample_docs(6, lists=False))
    project.write_python("r1", None, 'op.rename_field("docs", "title", "heading")')
    project.run("upgrade", "head")
    # The application rewrites one node's template meanwhile: nothing vecflow's logical view holds.
    client = chromadb.PersistentClient(path=chroma)
    collection = client.get_collection("docs")
    row = collection.get(limit=1, include=["metadatas"])
    node = json.loads(row["metadatas"][0]["_node_content"])
    node["metadata_template"] = "{key} = {value}"
    collection.update(ids=row["ids"], metadatas=[{"_node_content": json.dumps(node, ensure_ascii=False)}])
    del client
    with pytest.raises(DigestMismatchError, match="did not restore the data exactly"):
        project.run("downgrade", "base")


def test_a_copy_names_the_qdrant_target_vector_and_the_application_opens_it_by_that_name(tmp_path):
    chroma, qdrant, project = chroma_and_qdrant(tmp_path)
    docs = apps.sample_docs(8)
    apps.write_langchain_chroma(chroma, "docs", docs)
    project.write_python("r1", None,
                         'op.copy_collection("main:docs", "q:docs", target_params={"vector_name": "dense"})')
    project.run("upgrade", "head")
    assert apps.read_langchain_qdrant(qdrant, "docs", vector_name="dense") == {
        d["id"]: (d["text"], d["metadata"]) for d in docs}
    (point, *_) = apps.native_records_qdrant(qdrant, "docs")
    assert [name for name, _ in point.vectors] == ["dense"]


def test_reembed_to_a_new_dimension_keeps_the_llamaindex_layout(tmp_path):
    chroma, _, project = chroma_and_qdrant(tmp_path)
    docs = apps.sample_docs(8, lists=False)
    apps.write_llamaindex_chroma(chroma, "docs", docs)
    before = apps.native_records_chroma(chroma, "docs")
    project.write_python("r1", None, 'op.reembed("docs", "tests.ops.sample_embedders:hash12()")')
    project.run("upgrade", "head")
    nodes = apps.llamaindex_nodes_chroma(chroma, "docs")
    assert {node.node_id: (node.get_content(), node.metadata) for node in nodes.values()} == {
        d["id"]: (d["text"], d["metadata"]) for d in docs}, "the rebuilt collection is still LlamaIndex's"
    assert {node.ref_doc_id for node in nodes.values()} == {apps.ref_doc_id(d) for d in docs}
    project.run("downgrade", "base")
    assert apps.native_records_chroma(chroma, "docs") == before


def test_inspect_reads_the_layout_a_files_export_recorded(tmp_path):
    chroma, _, project = chroma_and_qdrant(tmp_path)
    apps.write_llamaindex_chroma(chroma, "docs", apps.sample_docs(6, lists=False))
    project.run("export", "main:docs", str(tmp_path / "export"))
    files = Project(tmp_path / "reader", {"path": str(tmp_path)}, backend="files")
    lines = files.run("inspect", "main:export")
    assert lines[1] == "export: 6 records, dim 16, l2", lines
    assert lines[2].startswith("  layout: llamaindex"), lines
