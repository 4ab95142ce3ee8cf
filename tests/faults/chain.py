"""The fault suite's project: an application's collection, then a 5-revision chain over it.

The base state is what an application wrote before vecflow arrived (`main:docs`, seeded through
the adapter). The chain then touches every kind of step the fault suite must survive:

    r1  create_collection notes from JSONL
    r2  rename_field, set_field (self-referencing: `rank + 1`), drop_field on docs; map_records on
        notes clearing the documents of drafts (on Chroma a document going back to None is a
        delete and an insert)
    r3  apply_schema on docs (a few records are quarantined into docs_quarantine)
    r4  reembed docs to another dimension (the collection is rebuilt), normalize_vectors on notes
    r5  split_collection docs by category, move_collection notes into the archive store

Everything is seeded, so two projects built with the same arguments hold the same records, and
an interrupted run can be compared with an uninterrupted one record for record.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tests.project import Project
from vecflow.batch import Batch

REVISIONS = ["r1", "r2", "r3", "r4", "r5"]
EMBEDDER = "tests.ops.sample_embedders:hash12()"
BACKENDS = ["chroma", "faiss", "redis", "qdrant"]
# Small enough for 40 kills per backend in CI, large enough for several pages in every step.
RECORDS, NOTES, BATCH = 150, 60, 50

_SCRIPTS = {
    "r1": 'op.create_collection("notes", data="data/notes.jsonl")',
    "r2": """\
        op.rename_field("docs", "author", "writer")
        op.set_field("docs", "rank", "rank + 1")
        op.drop_field("docs", "draft")
        op.map_records("notes", "_chain_functions:clear_draft_documents")""",
    "r3": """\
        op.apply_schema("docs", {
            "writer": {"type": "str", "required": True, "enum": ["ada", "grace", "linus"]},
            "rank": {"type": "int", "min": 1, "max": 5},
            "score": {"type": "float"},
            "source": {"type": "str", "default": "import"},
        }, max_invalid_fraction=0.1)""",
    "r4": f"""\
        op.reembed("docs", "{EMBEDDER}")
        op.normalize_vectors("notes")""",
    "r5": """\
        op.split_collection("docs", by="category", into={"faq": "docs_faq", "manual": "docs_manual"},
                            default="docs_other")
        op.move_collection("notes", "archive:notes")""",
}


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A scratch folder on tmpfs when the machine has one: Qdrant local mode commits per point and
    fsync is free there. Durability against power loss is not what the fault suite checks; its
    kills are of the process, and the page cache survives them."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# User code beside the revisions (a leading underscore: not a revision), imported by the runner.
_FUNCTIONS = '''"""Functions the chain's revisions name by dotted path."""

from vecflow.batch import Batch


def clear_draft_documents(batch):
    """The drafts lose their text: their documents go back to None."""
    keep = [i for i, meta in enumerate(batch.metadatas) if meta.get("draft") and batch.documents[i] is not None]
    return Batch([batch.ids[i] for i in keep], batch.vectors[keep], [None] * len(keep),
                 [batch.metadatas[i] for i in keep], [batch.extras[i] for i in keep])
'''


def application_records(n: int, dim: int = 8, seed: int = 7) -> Batch:
    """What the application wrote: one author in 37 is outside the schema's enum (quarantined)."""
    rng = np.random.default_rng(seed)
    authors = ["ada", "grace", "linus"]
    return Batch(
        [f"doc-{i:05d}" for i in range(n)],
        rng.standard_normal((n, dim)).astype(np.float32),
        [f"document {i} über vectors" for i in range(n)],
        [{"author": "eve" if i % 37 == 5 else authors[i % 3], "rank": i % 5, "score": i / 9,
          "draft": i % 2 == 0, "category": ["faq", "manual", "blog", "faq", "news"][i % 5]}
         for i in range(n)],
    )


def store_options(backend: str, root: Path, store: str, redis_url: str | None = None) -> dict[str, str]:
    """Options of one store of the project at root: a folder inside it, or a key prefix on Redis
    named after the project folder (so two projects share a server without sharing keys)."""
    if backend == "redis":
        if redis_url is None:
            raise ValueError("a Redis store needs the server's URL")
        return {"url": redis_url, "key_prefix": f"{root.name}.{store}:"}
    return {"path": f"%(here)s/stores/{store}"}


def build_chain(root: Path, backend: str, records: int = RECORDS, notes: int = NOTES, batch_size: int = BATCH,
                redis_url: str | None = None) -> Project:
    """A project at root on `backend`: the application's docs seeded into the main store, the five
    revisions written, nothing applied."""
    project = Project(root, store_options(backend, root, "main", redis_url), backend=backend,
                      batch_size=batch_size,
                      extra_stores={"archive": (backend, store_options(backend, root, "archive", redis_url))})
    project.write_records("notes.jsonl", notes, dim=8, seed=1)
    (project.versions / "_chain_functions.py").write_text(_FUNCTIONS, encoding="utf-8")
    down = None
    for rev in REVISIONS:
        project.write_python(rev, down, _SCRIPTS[rev])
        down = rev
    project.seed("docs", application_records(records))
    return project
