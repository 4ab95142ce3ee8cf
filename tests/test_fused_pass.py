"""Consecutive field steps on one collection that leave each other's fields alone run as one pass
(runtime/fused_pass.py, issue 10): each page is read once and written once for all of them. What
they leave, what the ledger records, and how they resume and are undone must be what the same
steps leave one by one."""

from __future__ import annotations

import json

import pytest

from tests.project import Project
from tests.test_field_digests import BATCH, N, assert_restored_exactly, field_project, with_page_two_record
from tests.test_recovery import killed_in
from vecflow.errors import InvalidDataError
from vecflow.operations.base import Op, get_op
from vecflow.runtime.fused_pass import FUSED_STEPS, steps_in_one_pass
from vecflow.runtime.ledger import DONE, Ledger
from vecflow.runtime.runner import recorded_before

# Independent: each touches its own fields (the set_field reads rank, which nobody writes).
STEPS = ['op.rename_field("docs", "author", "writer")',
         'op.set_field("docs", "decade", "(rank + 1) * 10", where="rank > 0")',
         'op.drop_field("docs", "score")']


def fused_project(tmp_path, backend: str = "chroma") -> Project:
    project = field_project(tmp_path / "fused", backend)
    project.write_python("r1", None, "\n".join(STEPS))
    return project


def expected_records(tmp_path, backend: str = "chroma") -> dict:
    """The same steps as three revisions, run one by one: what the pass must leave."""
    project = field_project(tmp_path / "one-by-one", backend)
    for number, body in enumerate(STEPS):
        project.write_python(f"s{number}", f"s{number - 1}" if number else None, body)
    output = project.run("upgrade", "head")
    assert not any("one pass" in line for line in output), output
    return held(project)


def held(project: Project) -> dict:
    """Each record's metadata (with its key order) and document, and the collection's digests."""
    return {"records": {rid: (list(r.metadata.items()), r.document) for rid, r in project.records("docs").items()},
            "digests": project.digest_pair("docs")}


def steps_of(project: Project) -> list[dict]:
    ledger = Ledger(project.config.ledger)
    try:
        attempt = max((a for a in ledger.attempts() if a["direction"] == "upgrade"), key=lambda a: a["id"])
        return ledger.steps(attempt["id"])
    finally:
        ledger.close()


@pytest.mark.parametrize("backend", ["chroma", "faiss"])
def test_independent_field_steps_run_as_one_pass_and_leave_what_they_leave_one_by_one(tmp_path, backend,
                                                                                       monkeypatch):
    expected = expected_records(tmp_path, backend)
    project = fused_project(tmp_path, backend)
    initial = project.digest_pair("docs")
    writes = []
    with project.opened() as (store, _):
        rewrite = type(store).rewrite_metadata
    monkeypatch.setattr(type(store), "rewrite_metadata",
                        lambda self, name, page, ids, metas: writes.append(len(ids)) or rewrite(self, name, page, ids,
                                                                                              metas))
    output = project.run("upgrade", "head")
    monkeypatch.undo()
    assert output[1].startswith(f"  [1-3/3] rename_field docs: author -> writer; set_field docs: "
                                f"decade = {{{{ (rank + 1) * 10 }}}} where rank > 0; drop_field docs: -score: {N} rows")
    assert "      steps 1-3 ran as one pass over main:docs" in output
    assert "      full reads: main:docs 1 (rename_field)" in output
    assert len(writes) == N // BATCH and sum(writes) == N  # one write per page, every record changed once
    assert held(project) == expected

    rows = steps_of(project)
    assert [row["status"] for row in rows] == [DONE] * 3 and [row["rows_done"] for row in rows] == [N] * 3
    assert recorded_before(rows[0]) == {"main:docs": initial}
    assert [json.loads(row["digest_after"]) for row in rows] == [{}, {}, {"main:docs": expected["digests"]}]
    assert json.loads(rows[0]["cursor"])[FUSED_STEPS] == 3
    assert len({row["snapshot"] for row in rows}) == 3

    output = project.run("downgrade", "base")
    assert_restored_exactly(project, output, initial)


def build(text: str) -> Op:
    """An op from its script line, e.g. 'set_field("docs", "x", "y + 1")'."""
    name, _, args = text.partition("(")
    return eval(f"get_op({name!r}).build({args}", {"get_op": get_op})


@pytest.mark.parametrize(("steps", "carried"), [
    ([STEPS[0][3:], STEPS[1][3:], STEPS[2][3:]], 3),
    # set_field writes the field the rename reads: the rename must see the new value.
    (['set_field("docs", "author", "author | upper")', 'rename_field("docs", "author", "writer")'], 1),
    # the rename writes `writer`, which the where reads.
    (['rename_field("docs", "author", "writer")', 'set_field("docs", "x", "1", where="writer == \'ada\'")'], 1),
    # An expression over the whole metadata, or a user function, may read any field.
    (['set_field("docs", "x", "metadata | length")', 'drop_field("docs", "score")'], 1),
    (['add_field("docs", "x", function="json:dumps")', 'drop_field("docs", "score")'], 1),
    (['add_field("docs", "x", expression="rank * 2")', 'drop_field("docs", "score")'], 2),
    (['cast_field("docs", "rank", "str")', 'drop_field("docs", "score")', 'drop_field("other", "score")'], 2),
    (['drop_field("docs", "score")', 'copy_collection("docs", "other")', 'drop_field("docs", "rank")'], 1),
    (['copy_collection("docs", "other")', 'drop_field("docs", "rank")'], 1),
])
def test_which_consecutive_steps_run_as_one_pass(steps, carried):
    ops = [build(text) for text in steps]
    assert steps_in_one_pass(ops, 0, lambda index: None, lambda ref: ref) == carried


def test_a_step_already_begun_carries_the_steps_its_state_names():
    ops = [build(text[3:]) for text in STEPS]
    begun = {"status": "running", "cursor": json.dumps({FUSED_STEPS: 2})}
    assert steps_in_one_pass(ops, 0, lambda index: begun if index == 0 else None, lambda ref: ref) == 2
    # Begun without the mark (killed before the pass began, or by a vecflow without passes): alone.
    alone = {"status": "running", "cursor": "{}"}
    assert steps_in_one_pass(ops, 0, lambda index: alone if index == 0 else None, lambda ref: ref) == 1
    # A step not begun does not carry one that was.
    assert steps_in_one_pass(ops, 0, lambda index: alone if index == 1 else None, lambda ref: ref) == 1


def test_dependent_steps_run_one_by_one_and_each_sees_what_the_one_before_wrote(tmp_path):
    project = field_project(tmp_path)
    project.write_python("r1", None, 'op.set_field("docs", "author", "author | upper")\n'
                                     'op.rename_field("docs", "author", "writer")')
    output = project.run("upgrade", "head")
    assert output[1].startswith("  [1/2] set_field") and any(line.startswith("  [2/2] rename_field")
                                                              for line in output), output
    assert {r.metadata["writer"] for r in project.records("docs").values()} == {"ADA", "GRACE"}


@pytest.mark.parametrize("then", ["rerun", "rollback", "stamp"])
def test_a_pass_killed_after_writing_a_page_before_its_checkpoint_is_resumed_or_undone_exactly(tmp_path, then):
    expected = expected_records(tmp_path)
    project = fused_project(tmp_path)
    initial = project.digest_pair("docs")
    # Saves: the pass's mark, page 1 pending, page 1 done, page 2 pending; page 2 is written, then
    # the kill comes at its checkpoint.
    killed_in(project, "vecflow.runtime.context:StepContext.save", "upgrade", "head", call=5)
    rows = steps_of(project)
    assert [row["status"] for row in rows] == ["running"] * 3 and rows[0]["rows_done"] == BATCH
    written = project.records("docs").values()
    assert sum("writer" in r.metadata and "score" not in r.metadata for r in written) == 2 * BATCH

    if then == "rerun":
        out = project.cli("upgrade", "head").stdout
        assert "[1-3/3] rename_field docs: author -> writer; set_field" in out and f"resuming at {BATCH} rows" in out
        assert held(project) == expected
        assert recorded_before(steps_of(project)[0]) == {"main:docs": initial}
        out = project.cli("downgrade", "base").stdout
    elif then == "rollback":
        out = project.cli("downgrade", "base").stdout
        assert out.startswith("Rolling back the unfinished upgrade of r1"), out
    else:
        assert "Abandoned the unfinished upgrade of r1" in project.cli("stamp", "r1").stdout
        out = project.cli("downgrade", "base").stdout
    assert_restored_exactly(project, out, initial)


def test_a_step_left_unfinished_after_the_first_finished_runs_alone_and_finds_its_work_done(tmp_path):
    expected = expected_records(tmp_path)
    project = fused_project(tmp_path)
    initial = project.digest_pair("docs")
    killed_in(project, "vecflow.runtime.ledger:Ledger.finish_step", "upgrade", "head", call=2)
    assert [row["status"] for row in steps_of(project)] == [DONE, "running", "running"]
    out = project.cli("upgrade", "head").stdout
    assert "[1-3/3] rename_field docs: author -> writer; set_field docs: decade = {{ (rank + 1) * 10 }} where " \
           "rank > 0; drop_field docs: -score: already done" not in out  # the first step's line names it alone
    assert "[1/3] rename_field docs: author -> writer: already done" in out, out
    assert "[2/3] set_field" in out and "[3/3] drop_field" in out, out
    assert held(project) == expected
    out = project.cli("downgrade", "base").stdout
    assert_restored_exactly(project, out, initial)


def test_a_later_step_failing_part_way_fails_the_pass_and_the_rollback_restores_every_step_exactly(tmp_path):
    project = with_page_two_record(field_project(tmp_path), rank="x")
    initial = project.digest_pair("docs")
    project.write_python("r1", None, "\n".join(STEPS))
    with pytest.raises(InvalidDataError, match="expression failed on record 'id-0050'"):
        project.run("upgrade", "head")
    assert sum("writer" in r.metadata for r in project.records("docs").values()) == BATCH  # page 1 was written
    out = project.run("downgrade", "base")
    assert out[0].startswith("Rolling back the unfinished upgrade of r1"), out
    assert_restored_exactly(project, out, initial)
