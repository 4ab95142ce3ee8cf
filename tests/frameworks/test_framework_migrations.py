"""vecflow migrates stores the frameworks wrote, and the frameworks read them back at every step.

The application is played by LangChain and LlamaIndex themselves (tests/frameworks/apps.py): they
write the store with their own classes, vecflow runs real revisions through `vecflow.command`, and
the framework reads the store after the upgrade and after the downgrade. "Restored exactly" is
checked where the application looks: its documents, metadata and top-k, and every native record
as the plain client returns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.frameworks import apps
from tests.project import Project

K = 5
QUERIES = apps.query_vectors(4)


@dataclass(frozen=True)
class App:
    name: str
    backend: str
    write: Any
    read: Any
    topk: Any
    native: Any
    lists: bool


LANGCHAIN_CHROMA = App("langchain-chroma", "chroma", apps.write_langchain_chroma, apps.read_langchain_chroma,
                       apps.topk_langchain_chroma, apps.native_records_chroma, lists=True)
LANGCHAIN_QDRANT = App("langchain-qdrant", "qdrant", apps.write_langchain_qdrant, apps.read_langchain_qdrant,
                       apps.topk_langchain_qdrant, apps.native_records_qdrant, lists=True)
LLAMAINDEX_CHROMA = App("llamaindex-chroma", "chroma", apps.write_llamaindex_chroma, apps.read_llamaindex_chroma,
                        apps.topk_llamaindex_chroma, apps.native_records_chroma, lists=False)
LLAMAINDEX_QDRANT = App("llamaindex-qdrant", "qdrant", apps.write_llamaindex_qdrant, apps.read_llamaindex_qdrant,
                        apps.topk_llamaindex_qdrant, apps.native_records_qdrant, lists=True)


def seen_by(app: App, path: str, collection: str = "docs") -> tuple[dict, list, list]:
    """What the application sees: (documents and metadata by id, top-k ids, native records)."""
    return (app.read(path, collection), app.topk(path, collection, QUERIES, K), app.native(path, collection))


def project_on(tmp_path: Path, stores: dict[str, tuple[str, str]]) -> Project:
    """A project whose stores point at the application's folders: name -> (backend, path)."""
    (main_backend, main_path), *_ = stores.values()
    extra = {name: (backend, {"path": path}) for name, (backend, path) in list(stores.items())[1:]}
    return Project(tmp_path / "project", {"path": main_path}, backend=main_backend, batch_size=10,
                   extra_stores=extra)


@pytest.mark.parametrize("app", [LANGCHAIN_CHROMA, LANGCHAIN_QDRANT, LLAMAINDEX_CHROMA, LLAMAINDEX_QDRANT],
                         ids=lambda app: app.name)
def test_field_ops_and_their_downgrade_on_a_framework_store(tmp_path, app):
    store = str(tmp_path / "store")
    docs = apps.sample_docs(30, lists=app.lists)
    app.write(store, "docs", docs)
    before = seen_by(app, store)
    project = project_on(tmp_path, {"main": (app.backend, store)})
    project.write_python("r1", None, """\
        op.rename_field("docs", "title", "heading")
        op.add_field("docs", "source", default="web")
    """)

    project.run("upgrade", "head")
    after, topk_after, _ = seen_by(app, store)
    for doc in docs:
        text, metadata = after[doc["id"]]
        assert text == doc["text"], "the application still finds every document's text"
        expected = {("heading" if k == "title" else k): v for k, v in doc["metadata"].items()}
        assert metadata == {**expected, "source": "web"}
    assert topk_after == before[1], "field ops leave vectors untouched"
    if app is LLAMAINDEX_CHROMA or app is LLAMAINDEX_QDRANT:
        flat = {r.id: r for r in app.native(store, "docs")}
        for doc in docs:
            row = flat[doc["id"]]
            fields = row.metadata if app.backend == "chroma" else row.payload
            assert '"heading"' in fields and '"title"' not in fields, "flat copy renamed with the node's"

    lines = project.run("downgrade", "base")
    assert any("restored exactly (native records" in line for line in lines)
    assert seen_by(app, store) == before, "after the downgrade the application sees its store as it was"


@pytest.mark.slow
@pytest.mark.parametrize("chroma_app, qdrant_app", [(LANGCHAIN_CHROMA, LANGCHAIN_QDRANT),
                                                    (LLAMAINDEX_CHROMA, LLAMAINDEX_QDRANT)],
                         ids=["langchain", "llamaindex"])
def test_move_chroma_to_qdrant_and_back_in_the_framework_layout(tmp_path, chroma_app, qdrant_app):
    chroma, qdrant = str(tmp_path / "chroma"), str(tmp_path / "qdrant")
    docs = apps.sample_docs(30, lists=chroma_app.lists)
    chroma_app.write(chroma, "docs", docs)
    original, original_topk, original_native = seen_by(chroma_app, chroma)
    project = project_on(tmp_path, {"main": ("chroma", chroma), "q": ("qdrant", qdrant)})
    project.write_python("r1", None, 'op.move_collection("main:docs", "q:docs")')
    project.write_python("r2", "r1", 'op.move_collection("q:docs", "main:docs2")')

    lines = project.run("upgrade", "r1")
    assert any("target q:docs: layout" in line and "metric cosine" in line for line in lines), lines
    assert qdrant_app.read(qdrant, "docs") == original, "the framework reads the Qdrant copy unchanged"
    assert _same_neighbours(qdrant_app.topk(qdrant, "docs", QUERIES, K), original_topk)

    project.run("upgrade", "r2")
    assert chroma_app.read(chroma, "docs2") == original
    assert _same_neighbours(chroma_app.topk(chroma, "docs2", QUERIES, K), original_topk)
    if chroma_app is LLAMAINDEX_CHROMA:
        nodes = apps.llamaindex_nodes_chroma(chroma, "docs2")
        assert {node.ref_doc_id for node in nodes.values()} == {apps.ref_doc_id(d) for d in docs}

    project.run("downgrade", "base")
    assert seen_by(chroma_app, chroma) == (original, original_topk, original_native)


def test_llamaindex_chroma_converted_to_langchain_qdrant_is_read_by_langchain(tmp_path):
    chroma, qdrant = str(tmp_path / "chroma"), str(tmp_path / "qdrant")
    docs = apps.sample_docs(20, lists=False)
    apps.write_llamaindex_chroma(chroma, "docs", docs)
    project = project_on(tmp_path, {"main": ("chroma", chroma), "q": ("qdrant", qdrant)})
    project.write_python("r1", None, 'op.copy_collection("main:docs", "q:docs", target_layout="langchain")')

    preview = project.run("upgrade", "head", dry_run=True)
    assert any("target layout: langchain (target_layout)" in line for line in preview), preview
    assert any(line.strip().startswith("lossy: LlamaIndex node fields") for line in preview), preview
    project.run("upgrade", "head")
    seen = apps.read_langchain_qdrant(qdrant, "docs")
    assert seen == {d["id"]: (d["text"], d["metadata"]) for d in docs}
    payload_keys = {key for point in apps.native_records_qdrant(qdrant, "docs") for key in _keys(point.payload)}
    assert payload_keys == {"page_content", "metadata"}


def _keys(payload_json: str) -> set[str]:
    import json

    return set(json.loads(payload_json))


def _same_neighbours(found: list[list[str]], expected: list[list[str]]) -> bool:
    """Top-k agreement across two HNSW indexes over the same 30 vectors (tiny: exact in practice)."""
    return all(set(a) == set(b) for a, b in zip(found, expected))
