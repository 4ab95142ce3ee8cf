"""Field ops digest what they rewrite as they rewrite it (issue 13, build point 2).

A field step reads its collection once: its rewrite pass takes the `logical|native` digests
before and after the step (runtime/rewrite_digest.py), where the runner used to read the
collection before the step and again after it (three full reads). The digests it records must be
those a full read gives, also when the step was killed between writing a page and checkpointing
it, and when it failed part-way and is rolled back.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.project import Project
from tests.test_recovery import killed_in
from vecflow.batch import Batch
from vecflow.errors import InvalidDataError
from vecflow.runtime.context import DIGESTS_BEFORE, StepContext
from vecflow.runtime.ledger import Ledger
from vecflow.runtime.rewrite_digest import TALLIES
from vecflow.runtime.runner import recorded_before

N, BATCH = 120, 40  # three pages

STEPS = {
    "rename_field": 'op.rename_field("docs", "author", "writer")',
    # New floats of 16-17 digits: about one in ten comes back from Chroma 1 ulp off, so the native
    # digest after must come from what Chroma holds, not from what was sent.
    "set_field": 'op.set_field("docs", "score", "score * 3.3 + 0.1", where="rank > 1")',
    "add_field": 'op.add_field("docs", "source", expression="author ~ \'/\' ~ rank")',
    "drop_field": 'op.drop_field("docs", "rank")',
    "cast_field": 'op.cast_field("docs", "score", "str")',
}


def records(n: int = N) -> Batch:
    rng = np.random.default_rng(3)
    return Batch([f"id-{i:04d}" for i in range(n)], rng.standard_normal((n, 8)).astype(np.float32),
                 [f"text {i}" for i in range(n)],
                 [{"author": ["ada", "grace"][i % 2], "rank": i % 4, "score": float(rng.random())} for i in range(n)])


def field_project(tmp_path, backend: str = "chroma") -> Project:
    project = Project(tmp_path, {"path": f"%(here)s/{backend}"}, backend=backend, batch_size=BATCH)
    project.seed("docs", records())
    return project


def step_row(project: Project, revision: str) -> dict:
    ledger = Ledger(project.config.ledger)
    try:
        attempt = max((a for a in ledger.attempts() if a["revision"] == revision and a["direction"] == "upgrade"),
                      key=lambda a: a["id"])
        return ledger.steps(attempt["id"])[0]
    finally:
        ledger.close()


def with_page_two_record(project: Project, **fields) -> Project:
    """The project with these fields set on record id-0050 (page 2 of three)."""
    with project.opened() as (backend, name):
        backend.update_metadata(name, ["id-0050"], [{**records().metadatas[50], **fields}])
    return project


def assert_restored_exactly(project: Project, out: list[str] | str, initial: str) -> None:
    """A downgrade's or rollback's output says main:docs was restored exactly, and it was."""
    text = out if isinstance(out, str) else "\n".join(out)
    assert "  verified: main:docs restored exactly (native records as the application reads them, and logical " \
           "digest)" in text, text
    assert project.digest_pair("docs") == initial


@pytest.mark.parametrize("backend", ["chroma", "faiss"])
def test_each_field_step_reads_its_collection_once_and_records_what_a_full_read_gives(tmp_path, backend):
    project = field_project(tmp_path, backend)
    revisions = list(STEPS)
    digests = [project.digest_pair("docs")]
    for number, name in enumerate(revisions):
        project.write_python(name, revisions[number - 1] if number else None, STEPS[name])
        output = project.run("upgrade", name)
        # Before: main:docs 3 (digest before main:docs, <op>, digest after main:docs).
        assert f"      full reads: main:docs 1 ({name})" in output, output
        digests.append(project.digest_pair("docs"))
        row = step_row(project, name)
        assert recorded_before(row) == {"main:docs": digests[-2]}
        assert json.loads(row["digest_after"]) == {"main:docs": digests[-1]}
        assert json.loads(row["digest_before"]) == {}  # not the runner's: the op's, in the step state
    output = project.run("downgrade", "base")
    assert "\n".join(output).count("verified: main:docs restored exactly") == len(revisions), output
    assert project.digest_pair("docs") == digests[0]


def test_a_chroma_field_step_reads_each_record_whole_once_and_reads_back_only_its_metadata(tmp_path, monkeypatch):
    """The pass reads each page whole (vectors for the digest before), writes what changed without
    reading it again first, and reads back only the metadata: `update` leaves vectors and
    documents, so the digest after takes them from the page as read. It is still the digest a full
    read gives, with the floats Chroma holds 1 ulp off."""
    from chromadb.api.models.Collection import Collection

    project = field_project(tmp_path)
    project.write_python("r1", None, STEPS["set_field"])
    reads, get = [], Collection.get

    def counted(collection, *args, **kwargs):
        if kwargs.get("ids") is not None:
            reads.append((tuple(sorted(kwargs.get("include", ()))), len(kwargs["ids"])))
        return get(collection, *args, **kwargs)

    monkeypatch.setattr(Collection, "get", counted)
    project.run("upgrade", "head")
    monkeypatch.undo()
    whole = ("documents", "embeddings", "metadatas")
    assert sum(n for include, n in reads if include == whole) == N
    rewritten = sum(1 for m in records().metadatas if m["rank"] > 1)
    assert sum(n for include, n in reads if include == ("metadatas",)) >= rewritten
    assert {include for include, _ in reads} == {whole, ("metadatas",)}
    assert json.loads(step_row(project, "r1")["digest_after"]) == {"main:docs": project.digest_pair("docs")}
    scores = {rid: r.metadata["score"] for rid, r in project.records("docs").items()}
    assert scores == {rid: m["score"] * 3.3 + 0.1 if m["rank"] > 1 else m["score"]
                      for rid, m in zip(records().ids, records().metadatas)}
    with project.opened() as (backend, name):
        held = backend.client.get_collection(name).get(include=["metadatas"])
    assert any(fields["score"] != scores[rid] for rid, fields in zip(held["ids"], held["metadatas"]))


@pytest.mark.parametrize("then", ["rerun", "rollback", "stamp"])
def test_a_field_step_killed_after_writing_a_page_before_its_checkpoint_records_the_digest_before(tmp_path, then):
    project = field_project(tmp_path)
    project.write_python("r1", None, STEPS["rename_field"])
    initial = project.digest_pair("docs")
    # Saves: page 1 pending, page 1 done, page 2 pending, then page 2 is written; killed at page 2's checkpoint.
    killed_in(project, "vecflow.runtime.context:StepContext.save", "upgrade", "head", call=4)
    row = step_row(project, "r1")
    state = json.loads(row["cursor"])
    assert row["rows_done"] == BATCH and state[TALLIES]["scan"]["pending"] is not None
    assert DIGESTS_BEFORE not in state
    rewritten = project.records("docs")
    assert sum("writer" in r.metadata for r in rewritten.values()) == 2 * BATCH  # page 2 was written

    if then == "rerun":
        out = project.cli("upgrade", "head").stdout
        assert f"resuming at {BATCH} rows" in out
        row = step_row(project, "r1")
        assert recorded_before(row) == {"main:docs": initial}
        assert json.loads(row["digest_after"]) == {"main:docs": project.digest_pair("docs")}
        out = project.cli("downgrade", "base").stdout
    elif then == "rollback":
        out = project.cli("downgrade", "base").stdout
        assert out.startswith("Rolling back the unfinished upgrade of r1"), out
        # The rollback first completed the digest before from the pages the step had not reached.
        assert recorded_before(step_row(project, "r1")) == {"main:docs": initial}
    else:
        # The stamp adopts the attempt, after completing its digest before: the downgrade verifies.
        assert "Abandoned the unfinished upgrade of r1" in project.cli("stamp", "r1").stdout
        assert recorded_before(step_row(project, "r1")) == {"main:docs": initial}
        out = project.cli("downgrade", "base").stdout
    assert_restored_exactly(project, out, initial)


def test_a_field_step_that_fails_part_way_completes_its_digest_before_and_is_rolled_back_verified(tmp_path):
    project = with_page_two_record(field_project(tmp_path), writer="x")
    initial = project.digest_pair("docs")
    project.write_python("r1", None, STEPS["rename_field"])
    with pytest.raises(InvalidDataError, match="'id-0050' has both 'author' and 'writer'"):
        project.run("upgrade", "head")
    assert project.digest_pair("docs") != initial  # page 1 was rewritten
    # On failure the step read the pages it had not reached, so the digest before is whole.
    assert recorded_before(step_row(project, "r1")) == {"main:docs": initial}
    out = project.run("downgrade", "base")
    assert out[0].startswith("Rolling back the unfinished upgrade of r1")
    assert_restored_exactly(project, out, initial)


class Killed(BaseException):
    """Stands in for a SIGKILL: not an Exception, so nothing in vecflow catches it."""


def test_records_added_while_a_field_step_was_stopped_leave_no_partial_digest_before(tmp_path, monkeypatch):
    """The page read again after the kill holds other records than the one written: the digest
    before cannot be completed, and the step says so instead of recording part of it."""
    project = field_project(tmp_path)
    project.write_python("r1", None, STEPS["rename_field"])
    original, calls = StepContext.save, [0]

    def save(ctx, rows=0, **changes):
        calls[0] += 1
        if calls[0] == 4:
            raise Killed
        original(ctx, rows, **changes)

    monkeypatch.setattr(StepContext, "save", save)
    with pytest.raises(Killed):
        project.run("upgrade", "head")
    monkeypatch.undo()
    with project.opened() as (backend, name):
        added = records(41).take([40])
        backend.upsert(name, Batch(["id-0040a"], added.vectors, added.documents, [{"author": "new"}]))
    out = project.run("upgrade", "head")
    assert any("digest before could not be completed" in line for line in out), out
    row = step_row(project, "r1")
    assert "main:docs" not in recorded_before(row)
    assert json.loads(row["digest_after"]) == {"main:docs": project.digest_pair("docs")}
