"""A SIGKILL between the writes of one vecflow write, on the real backends, loses nothing.

Each case kills a child process at one chosen point inside a write (the child patches the function
there to SIGKILL itself), then reopens the store with the same vecflow state as a resumed run
would, and checks that the records read back are exactly what the write meant (or, for a kill
before the store was touched, what was there before), that nothing was lost or duplicated, and
that doing the write again changes nothing. Children fork from a forkserver that imported the
backends once, so a kill costs a fork rather than a Python start.

The damaged-Chroma case builds the folder a kill inside chromadb's own index save leaves (see
vecflow/backends/chroma_connect.py) from two real folders, deterministically.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chromadb.api.models.Collection import Collection
from chromadb.errors import InvalidArgumentError

from tests.damaged_chroma import damaged_chroma_folder
from vecflow.backends import exact, faiss_langchain, journal
from vecflow.backends.base import Backend
from vecflow.backends.chroma import ChromaBackend
from vecflow.backends.faiss import FaissBackend
from vecflow.backends.qdrant import QdrantBackend
from vecflow.backends.redis import RedisBackend
from vecflow.backends.retry import is_transient
from vecflow.batch import Batch
from vecflow.errors import BackendError, DamagedStoreError
from vecflow.runtime.digest import collection_digest
from vecflow.state import VecflowState

N, DIM = 12, 8
KILLED = -signal.SIGKILL


def initial() -> Batch:
    rng = np.random.default_rng(1)
    return Batch([f"r{i:02d}" for i in range(N)], rng.standard_normal((N, DIM)).astype(np.float32),
                 [f"old text {i}" for i in range(N)],
                 [{"a": {"deep": [i, None]}, "tag": "old", "z": i} for i in range(N)])


def replacement() -> Batch:
    """New vectors, no document for every other record, other keys in another order (a dict
    value, a None), so every piece of bookkeeping a store keeps is needed to read it back."""
    rng = np.random.default_rng(2)
    return Batch([f"r{i:02d}" for i in range(N)], rng.standard_normal((N, DIM)).astype(np.float32),
                 [None if i % 2 == 0 else f"new text {i}" for i in range(N)],
                 [{"b": i / 3, "a": {"deep": i}, "gone": None} for i in range(N)])


def new_metadata() -> list[dict[str, Any]]:
    return [{"m": {"x": [i, "y"]}, "z": -0.0, "last": i} for i in range(N)]


# stores ------------------------------------------------------------------------------------------

def open_store(kind: str, root: str, redis_url: str = "") -> Backend:
    """A connection to the case's store, with the case's vecflow state (as the runner attaches it)."""
    backend: Backend
    if kind == "chroma":
        backend = ChromaBackend(path=f"{root}/store")
    elif kind == "qdrant":
        backend = QdrantBackend(path=f"{root}/store")
    elif kind == "faiss":
        backend = FaissBackend(path=f"{root}/store", allow_pickle=True)
    else:
        backend = RedisBackend(url=redis_url, key_prefix=f"k{zlib.crc32(root.encode())}:")
    backend.attach_state(VecflowState(Path(root) / "state.db"))
    return backend


def seeded(kind: str, root: Path, layout: str = "raw", redis_url: str = "") -> None:
    backend = open_store(kind, str(root), redis_url)
    try:
        backend.create_collection("docs", DIM, "cosine", layout=layout)
        backend.upsert("docs", initial())
        backend.update_collection_metadata("docs", {"embedding": {"model": "tiny", "dim": DIM}})
    finally:
        backend.close()


def assert_reads(backend: Backend, name: str, expected: Batch) -> None:
    """The collection holds exactly these records: vector bits, documents, metadata, key order."""
    assert backend.count(name) == len(expected)
    got = backend.get(name, expected.ids)
    assert got.ids == expected.ids
    assert got.vectors.tobytes() == expected.vectors.tobytes()
    assert got.documents == expected.documents
    assert [list(m.items()) for m in got.metadatas] == [list(m.items()) for m in expected.metadatas]


# killing a child at a chosen point ---------------------------------------------------------------

def _die(*_: Any, **__: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_point(target: Any, attribute: str, when: str) -> None:
    """Make target.attribute SIGKILL the process before it runs, or right after it returned."""
    original = getattr(target, attribute)

    def before(*args: Any, **kwargs: Any) -> Any:
        _die()

    def after(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _die()
        return result

    setattr(target, attribute, before if when == "before" else after)


KILL_POINTS: dict[str, tuple[Any, str, str]] = {
    # Chroma: a replace whose document goes back to None is a delete, then an insert, then bookkeeping.
    "chroma: intents written, nothing sent": (Collection, "delete", "before"),
    "chroma: record deleted, not inserted": (Collection, "upsert", "before"),
    "chroma: written, exact bits not kept": (exact, "record_bits", "before"),
    "chroma: all done but the intents": (journal, "end", "before"),
    "chroma: metadata updated, nothing kept": (Collection, "update", "after"),
    # Qdrant keeps the written vector of a cosine collection in vecflow's state, put before the write.
    "qdrant: entries put, nothing sent": (QdrantBackend, "_send", "before"),
    "qdrant: written, nothing after": (QdrantBackend, "_send", "after"),
    # FAISS LangChain folders: the files, then the exact bits and the records without text.
    "faiss: staged, files not written": (faiss_langchain, "_commit", "before"),
    "faiss: files written, bits not kept": (faiss_langchain, "_commit", "after"),
    # A native rename: the store renames, then vecflow's state moves.
    "rename: renamed, state not moved": (VecflowState, "rename_scope", "before"),
    # A create: the store creates, then (before the fix) vecflow recorded the layout.
    "create: created": (QdrantBackend, "_create_collection", "after"),
}


def _child(kind: str, root: str, point: str, action: str, redis_url: str) -> None:
    _kill_point(*KILL_POINTS[point])
    backend = open_store(kind, root, redis_url)
    ACTIONS[action](backend)
    os._exit(3)  # the kill point was not reached: the case is wrong


def _first_write(backend: Backend) -> None:
    backend.create_collection("docs", DIM, "cosine")
    backend.upsert("docs", initial())


ACTIONS: dict[str, Callable[[Backend], None]] = {
    "replace": lambda backend: backend.upsert("docs", replacement()),
    "update metadata": lambda backend: backend.update_metadata("docs", initial().ids, new_metadata()),
    "first write": lambda backend: _first_write(backend),
    # A field step's write: the page it read handed over (StepContext.rewrite_records).
    "rewrite metadata": lambda backend: backend.rewrite_metadata("docs", next(backend.native_pages("docs", N))[0],
                                                                 initial().ids, new_metadata()),
    "rename": lambda backend: backend.rename_collection("docs", "moved"),
    "create langchain": lambda backend: backend.create_collection("docs", DIM, "cosine", layout="langchain"),
}


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def kill_child(forkserver: Any, kind: str, root: Path, point: str, action: str, redis_url: str = "") -> None:
    child = forkserver.Process(target=_child, args=(kind, str(root), point, action, redis_url))
    child.start()
    child.join(120)
    assert child.exitcode == KILLED, f"{point}: the child ended with {child.exitcode}, not at the kill point"


# cases -------------------------------------------------------------------------------------------

CHROMA_REPLACE = ["chroma: intents written, nothing sent", "chroma: record deleted, not inserted",
                  "chroma: written, exact bits not kept", "chroma: all done but the intents"]


@pytest.mark.parametrize("point", CHROMA_REPLACE)
def test_chroma_replace_killed_anywhere_is_finished_on_next_use(forkserver, fast_tmp_path, point):
    seeded("chroma", fast_tmp_path)
    kill_child(forkserver, "chroma", fast_tmp_path, point, "replace")
    backend = open_store("chroma", str(fast_tmp_path))
    try:
        assert_reads(backend, "docs", replacement())
        assert backend.state.all_records(backend.scope("docs"), journal.KIND) == {}
        raw = backend.client.get_collection("docs").get(ids=initial().ids, include=["documents"])
        # None, as the application reads it
        assert dict(zip(raw["ids"], raw["documents"])) == dict(zip(replacement().ids, replacement().documents))
        before = collection_digest(backend, "docs", 5)
        backend.upsert("docs", replacement())
        assert collection_digest(backend, "docs", 5) == before
    finally:
        backend.close()


def test_chroma_metadata_update_killed_before_its_bookkeeping_is_finished(forkserver, fast_tmp_path):
    seeded("chroma", fast_tmp_path)
    kill_child(forkserver, "chroma", fast_tmp_path, "chroma: metadata updated, nothing kept", "update metadata")
    backend = open_store("chroma", str(fast_tmp_path))
    try:
        expected = initial().with_metadatas(new_metadata())
        assert_reads(backend, "docs", expected)
        backend.update_metadata("docs", expected.ids, new_metadata())
        assert_reads(backend, "docs", expected)
    finally:
        backend.close()


@pytest.mark.parametrize("point", ["chroma: metadata updated, nothing kept", "chroma: all done but the intents"])
def test_chroma_metadata_rewrite_from_a_page_read_killed_anywhere_is_finished_on_next_use(forkserver, fast_tmp_path,
                                                                                           point):
    seeded("chroma", fast_tmp_path)
    kill_child(forkserver, "chroma", fast_tmp_path, point, "rewrite metadata")
    backend = open_store("chroma", str(fast_tmp_path))
    try:
        expected = initial().with_metadatas(new_metadata())
        assert_reads(backend, "docs", expected)
        assert backend.state.all_records(backend.scope("docs"), journal.KIND) == {}
        page, _ = next(backend.native_pages("docs", N))
        back = backend.rewrite_metadata("docs", page, expected.ids, new_metadata())
        assert_reads(backend, "docs", expected)
        assert back is not None and back.batch.metadatas == expected.metadatas
    finally:
        backend.close()


def test_a_write_chroma_refuses_leaves_nothing_to_finish(fast_tmp_path, monkeypatch):
    """Left behind, the intents of a refused write would fail every later use of the collection."""
    seeded("chroma", fast_tmp_path)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise InvalidArgumentError("refused as the server validates it")

    with monkeypatch.context() as patched:
        patched.setattr(Collection, "upsert", refuse)
        backend = open_store("chroma", str(fast_tmp_path))
        with pytest.raises(BackendError, match="refused as the server validates it"):
            backend.upsert("docs", initial())
        backend.close()
    backend = open_store("chroma", str(fast_tmp_path))
    try:
        assert backend.state.all_records(backend.scope("docs"), journal.KIND) == {}
        assert_reads(backend, "docs", initial())
    finally:
        backend.close()


@pytest.mark.parametrize(("point", "meant"), [("qdrant: entries put, nothing sent", initial),
                                               ("qdrant: written, nothing after", replacement)])
def test_qdrant_cosine_vectors_stay_exact_across_a_kill(forkserver, fast_tmp_path, point, meant):
    seeded("qdrant", fast_tmp_path)
    kill_child(forkserver, "qdrant", fast_tmp_path, point, "replace")
    backend = open_store("qdrant", str(fast_tmp_path))
    try:
        assert_reads(backend, "docs", meant())
        backend.upsert("docs", replacement())
        assert_reads(backend, "docs", replacement())
    finally:
        backend.close()


def test_qdrant_first_write_killed_after_the_store_wrote_reads_exactly(forkserver, fast_tmp_path):
    kill_child(forkserver, "qdrant", fast_tmp_path, "qdrant: written, nothing after", "first write")
    backend = open_store("qdrant", str(fast_tmp_path))
    try:
        assert_reads(backend, "docs", initial())
    finally:
        backend.close()


@pytest.mark.parametrize(("point", "meant"), [("faiss: staged, files not written", initial),
                                               ("faiss: files written, bits not kept", replacement)])
def test_faiss_langchain_folder_reads_exactly_across_a_kill(forkserver, fast_tmp_path, point, meant):
    seeded("faiss", fast_tmp_path, layout="langchain")
    kill_child(forkserver, "faiss", fast_tmp_path, point, "replace")
    backend = open_store("faiss", str(fast_tmp_path))
    try:
        # LangChain keeps metadata as given: the None stays a None.
        assert_reads(backend, "docs", meant())
        backend.upsert("docs", replacement())
        assert_reads(backend, "docs", replacement())
    finally:
        backend.close()


@pytest.mark.parametrize("kind", ["chroma", "faiss", "redis"])
def test_native_rename_killed_before_the_state_moved_keeps_exactness(forkserver, fast_tmp_path, request, kind):
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    seeded(kind, fast_tmp_path, redis_url=redis_url)
    kill_child(forkserver, kind, fast_tmp_path, "rename: renamed, state not moved", "rename", redis_url)
    backend = open_store(kind, str(fast_tmp_path), redis_url)
    try:
        assert not backend.has_collection("docs")
        assert_reads(backend, "moved", initial())
        assert backend.collection_metadata("moved") == {"embedding": {"model": "tiny", "dim": DIM}}
        if kind != "faiss":  # FAISS tells a collection's layout by its files
            assert "recorded" in backend.layout_of("moved").reason
    finally:
        backend.close()


def test_create_killed_right_after_the_store_created_keeps_the_layout(forkserver, fast_tmp_path):
    kill_child(forkserver, "qdrant", fast_tmp_path, "create: created", "create langchain")
    backend = open_store("qdrant", str(fast_tmp_path))
    try:
        assert backend.layout_of("docs").layout.name == "langchain"
    finally:
        backend.close()


# a damaged Chroma folder -------------------------------------------------------------------------

def test_damaged_chroma_folder_stops_with_one_line_and_can_be_dropped(tmp_path):
    damaged = damaged_chroma_folder(tmp_path, tmp_path / "damaged")
    backend = ChromaBackend(path=str(damaged))
    try:
        with pytest.raises(DamagedStoreError) as caught:
            backend.count("docs")
        message = str(caught.value)
        assert "\n" not in message and str(damaged) in message and "chroma-core/chroma#7678" in message
        assert not is_transient(caught.value)  # retrying would hide lost vectors
        with pytest.raises(DamagedStoreError):
            backend.get("docs", ["r500"])  # nothing reaches the damaged collection again
        backend.drop_collection("docs")
        assert backend.list_collections() == []
    finally:
        backend.close()
    backend = ChromaBackend(path=str(damaged))
    try:
        backend.create_collection("docs", DIM, "l2")
        backend.upsert("docs", initial())
        assert backend.count("docs") == N
    finally:
        backend.close()
