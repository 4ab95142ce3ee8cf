"""LangChain FAISS folders: vecflow reads what `FAISS.save_local` wrote, moves it to Chroma in the
LangChain layout and back into a folder `FAISS.load_local` opens, and a downgrade gives the
application its original folder back.

The application is played by langchain-community's own `FAISS` class (0.4.2, pinned in the test
extra) with the deterministic `HashEmbeddings` of tests/frameworks/apps.py; Chroma is read back with
LangChain-Chroma (apps.read_langchain_chroma).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import minilm_folder
from tests.frameworks import apps
from tests.project import Project, kill_upgrade_at

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community: "being sunset"
    from langchain_community.vectorstores import FAISS
from langchain_core.embeddings import Embeddings

from vecflow.errors import ConfigError

K = 5
QUERIES = apps.query_vectors(4)


# the application -------------------------------------------------------------------------------

def save_langchain_faiss(folder: Path, docs: list[apps.Doc], **kwargs: Any) -> None:
    """`FAISS.from_texts(texts, HashEmbeddings(), metadatas, ids).save_local(folder)`."""
    store = FAISS.from_texts([d["text"] for d in docs], apps.HashEmbeddings(), metadatas=[d["metadata"] for d in docs],
                             ids=[d["id"] for d in docs], **kwargs)
    store.save_local(str(folder))


def load_langchain_faiss(folder: Path, **kwargs: Any) -> FAISS:
    return FAISS.load_local(str(folder), apps.HashEmbeddings(), allow_dangerous_deserialization=True, **kwargs)


def read_langchain_faiss(folder: Path) -> dict[str, tuple[str, dict]]:
    """{docstore id: (page_content, metadata)} of every indexed Document, which must carry its id."""
    store = load_langchain_faiss(folder)
    documents = {rid: store.docstore.search(rid) for rid in store.index_to_docstore_id.values()}
    assert all(doc.id == rid for rid, doc in documents.items())
    return {rid: (doc.page_content, doc.metadata) for rid, doc in documents.items()}


def native_langchain_faiss(folder: Path) -> dict[str, tuple[dict, bytes]]:
    """{docstore id: (the whole Document as pydantic dumps it, its float32 vector bytes)}: what
    load_local hands the application, ignoring only the positions (a move keeps no order)."""
    store = load_langchain_faiss(folder)
    assert sorted(store.index_to_docstore_id) == list(range(store.index.ntotal))
    vectors = store.index.reconstruct_n(0, store.index.ntotal)
    return {rid: (store.docstore.search(rid).model_dump(), vectors[position].tobytes())
            for position, rid in store.index_to_docstore_id.items()}


def topk_langchain_faiss(folder: Path, **kwargs: Any) -> list[list[str]]:
    store = load_langchain_faiss(folder, **kwargs)
    return [[d.id for d in store.similarity_search_by_vector(list(q), k=K)] for q in QUERIES]


def expected(docs: list[apps.Doc]) -> dict[str, tuple[str, dict]]:
    return {d["id"]: (d["text"], d["metadata"]) for d in docs}


def project_with(tmp_path: Path, **faiss_options: str) -> Project:
    """A project with a Chroma main store and a FAISS store `faiss` over tmp_path/faiss."""
    options = {"path": str(tmp_path / "faiss"), **faiss_options}
    return Project(tmp_path / "project", {"path": str(tmp_path / "chroma")}, batch_size=10,
                   extra_stores={"faiss": ("faiss", options)})


# tests -----------------------------------------------------------------------------------------

def test_vecflow_reads_a_folder_langchain_saved_and_inspect_says_why_it_is_langchains(tmp_path):
    docs = apps.sample_docs(24)
    save_langchain_faiss(tmp_path / "faiss" / "docs", docs)
    project = project_with(tmp_path, allow_pickle="true")

    records = project.records("faiss:docs")
    assert {rid: (r.document, r.metadata) for rid, r in records.items()} == expected(docs)
    assert all(records[d["id"]].vector.tobytes() == np.asarray(apps.embed(d["text"]), np.float32).tobytes()
               for d in docs)
    lines = project.run("inspect", "faiss:docs")
    assert lines[1] == "docs: 24 records, dim 16, l2"
    assert lines[2] == "  layout: langchain (index.faiss + index.pkl: a LangChain FAISS.save_local folder)"
    assert lines[3].startswith("  text: in Document.page_content in index.pkl (LangChain's pickled docstore)")


def test_without_allow_pickle_the_folder_is_not_read_and_the_error_is_one_line(tmp_path):
    save_langchain_faiss(tmp_path / "faiss" / "docs", apps.sample_docs(5))
    project = project_with(tmp_path)
    project.write_python("r1", None, 'op.move_collection("faiss:docs", "main:docs")')
    with pytest.raises(ConfigError, match="set allow_pickle = true in the store's section of vecflow.ini"):
        project.run("upgrade", "head")
    result = project.cli("inspect", "faiss:docs", check=False)
    assert result.returncode == 1
    [message] = result.stderr.strip().splitlines()
    assert "unpickling" in message and "allow_pickle = true" in message
    assert read_langchain_faiss(tmp_path / "faiss" / "docs") == expected(apps.sample_docs(5))


def test_a_langchain_folder_moves_to_chroma_and_back_and_downgrade_restores_it(tmp_path):
    folder = tmp_path / "faiss" / "docs"
    docs = apps.sample_docs(30)
    save_langchain_faiss(folder, docs)
    original, original_native, original_topk = read_langchain_faiss(folder), native_langchain_faiss(folder), \
        topk_langchain_faiss(folder)
    project = project_with(tmp_path, allow_pickle="true")
    project.write_python("r1", None, 'op.move_collection("faiss:docs", "main:docs")')
    project.write_python("r2", "r1", 'op.move_collection("main:docs", "faiss:restored", target_layout="langchain")')

    lines = project.run("upgrade", "r1")
    assert any("target main:docs: layout langchain, metric l2" in line for line in lines), lines
    assert apps.read_langchain_chroma(str(tmp_path / "chroma"), "docs") == original
    assert apps.topk_langchain_chroma(str(tmp_path / "chroma"), "docs", QUERIES, K) == original_topk
    assert not folder.exists()

    project.run("upgrade", "r2")
    restored = tmp_path / "faiss" / "restored"
    assert sorted(p.name for p in restored.iterdir()) == ["index.faiss", "index.pkl"]
    assert read_langchain_faiss(restored) == original
    assert native_langchain_faiss(restored) == original_native, "same Documents and the same vector bits"
    assert topk_langchain_faiss(restored) == original_topk

    lines = project.run("downgrade", "base")
    assert any("restored exactly (native records" in line for line in lines), lines
    assert not restored.exists()
    assert native_langchain_faiss(folder) == original_native
    assert topk_langchain_faiss(folder) == original_topk


def test_a_cosine_collection_becomes_a_normalize_l2_folder_with_the_same_neighbours(tmp_path):
    chroma = str(tmp_path / "chroma")
    docs = apps.sample_docs(30)
    apps.write_langchain_chroma(chroma, "docs", docs, collection_metadata={"hnsw:space": "cosine"})
    chroma_topk = apps.topk_langchain_chroma(chroma, "docs", QUERIES, K)
    project = project_with(tmp_path)  # writing a folder needs no allow_pickle: nothing is unpickled
    project.write_python("r1", None, 'op.copy_collection("main:docs", "faiss:docs", target_layout="langchain")')

    project.run("upgrade", "head")
    folder = tmp_path / "faiss" / "docs"
    assert read_langchain_faiss(folder) == expected(docs)
    app = load_langchain_faiss(folder, normalize_L2=True)
    vectors = app.index.reconstruct_n(0, app.index.ntotal)
    assert type(app.index).__name__ == "IndexFlatL2"
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    assert topk_langchain_faiss(folder, normalize_L2=True) == chroma_topk


def test_a_copy_into_a_folder_killed_midway_resumes_with_nothing_lost_or_duplicated(tmp_path):
    chroma = str(tmp_path / "chroma")
    docs = apps.sample_docs(600)
    apps.write_langchain_chroma(chroma, "docs", docs)
    project = project_with(tmp_path, allow_pickle="true")
    project.write_python("r1", None, 'op.copy_collection("main:docs", "faiss:docs", target_layout="langchain")')

    assert kill_upgrade_at(project, "r1", rows=200) < 600
    assert "Resuming upgrade r1" in project.cli("upgrade", "head").stdout
    folder = tmp_path / "faiss" / "docs"
    assert read_langchain_faiss(folder) == expected(docs)
    assert len(load_langchain_faiss(folder).index_to_docstore_id) == 600
    assert topk_langchain_faiss(folder) == apps.topk_langchain_chroma(chroma, "docs", QUERIES, K)




def test_a_langchain_folder_is_reembedded_with_a_small_model_into_a_new_folder_with_ids_kept(tmp_path):
    model = minilm_folder()
    folder = tmp_path / "faiss" / "docs"
    docs = apps.sample_docs(24)
    save_langchain_faiss(folder, docs)
    original_native = native_langchain_faiss(folder)
    # layout = langchain: the folder reembed rebuilds at the model's dimension is LangChain's too.
    project = project_with(tmp_path, allow_pickle="true", layout="langchain")
    project.write_python("r1", None, f"""\
        op.copy_collection("faiss:docs", "faiss:minilm")
        op.reembed("faiss:minilm", "sentence-transformers:{model}")
    """)

    project.run("upgrade", "head")
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(model))
    embedded = tmp_path / "faiss" / "minilm"
    assert read_langchain_faiss(embedded) == expected(docs), "same ids, texts and metadata"
    app = FAISS.load_local(str(embedded), _Encoder(encoder), allow_dangerous_deserialization=True)
    assert app.index.d == 384
    vectors = app.index.reconstruct_n(0, app.index.ntotal)
    wanted = encoder.encode([app.docstore.search(rid).page_content for rid in app.index_to_docstore_id.values()])
    assert np.allclose(vectors, wanted, atol=1e-5)
    hits = app.similarity_search("a drink made by steeping leaves in hot water", k=3)
    assert all("about tea" in hit.page_content for hit in hits), [hit.page_content for hit in hits]
    assert native_langchain_faiss(folder) == original_native, "the source folder is untouched"

    project.run("downgrade", "base")
    assert not embedded.exists() and native_langchain_faiss(folder) == original_native


class _Encoder(Embeddings):
    """LangChain embeddings over a sentence-transformers model (for the application's queries)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.model.encode([text])[0].tolist()
