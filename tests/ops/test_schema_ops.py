"""apply_schema on every backend: valid records get the validated metadata, invalid ones move into a
quarantine collection with their reason, the threshold refuses before any write, and the derived
downgrade restores every collection exactly (the quarantine is absent again)."""

from __future__ import annotations

import base64
import re
import textwrap

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from tests.project import Project, kill_upgrade_at
from vecflow.batch import Batch
from vecflow.errors import DryRunFailedError, InvalidDataError, OperationError
from vecflow.operations.base import get_op
from vecflow.operations.schema import (
    QUARANTINE_REASON,
    QUARANTINE_STEP,
    QUARANTINE_VECTOR,
    ApplySchemaOp,
    RecordValidator,
    quarantine_batch,
)

FIELD_MAP = """\
    author: {type: str, required: true, enum: [ada, grace, linus]}
    rank: {type: int, required: true, min: 0, max: 4}
    score: {type: float}
    source: {type: str, default: import}
    reviewer: {type: str}
"""
# What the YAML field map refuses, and why (records written by Project.write_records are valid).
VIOLATIONS = {
    "id-000003": ({"rank": 9}, "rank: Input should be less than or equal to 4 (got 9)"),
    "id-000005": ({"author": "bob"}, "author: Input should be one of 'ada', 'grace', 'linus' (got 'bob')"),
    "id-000007": ({"author": None}, "author: Field required"),
    "id-000011": ({"rank": "high"}, "rank: Input should be a valid integer"),
}
ZERO_VECTOR = "id-000013"


def edit(project: Project, changes: dict[str, dict], vectors: dict[str, np.ndarray] | None = None) -> None:
    """Change records in the store directly: metadata keys set (None removes the key), vectors replaced."""
    with project.opened() as (store, name):
        page = store.get(name, sorted(set(changes) | set(vectors or {})))
        metadatas = [{k: v for k, v in {**meta, **changes.get(rid, {})}.items() if v is not None}
                     for rid, meta in zip(page.ids, page.metadatas)]
        for rid, vector in (vectors or {}).items():
            page.vectors[page.ids.index(rid)] = vector
        store.upsert(name, Batch(page.ids, page.vectors, page.documents, metadatas))


def write_field_map_revision(project: Project, extra: str = "") -> None:
    project.write_yaml("step1", "revision: step1\ndown_revision: base0\nupgrade:\n  - apply_schema:\n"
                                "      collection: docs\n" + textwrap.indent(extra, "      ")
                       + "      schema:\n" + textwrap.indent(textwrap.dedent(FIELD_MAP), "        "))


def assert_downgrade_restores(project: Project, before: dict[str, str]) -> None:
    lines = project.run("downgrade", "base0")
    assert any(line.startswith("  verified") for line in lines), lines
    assert {ref: project.digest(ref) for ref in before} == before


# the field map, end to end ------------------------------------------------------------------------


def test_field_map_quarantines_violations_with_reasons_fills_defaults_and_downgrade_restores(project):
    edit(project, {rid: change for rid, (change, _) in VIOLATIONS.items()} | {"id-000020": {"rank": "3"}},
         vectors={ZERO_VECTOR: np.zeros(8, np.float32)})
    before = {ref: project.digest(ref) for ref in ("docs", "docs_quarantine")}
    assert before["docs_quarantine"] == "absent"
    write_field_map_revision(project)

    preview = "\n".join(project.run("upgrade", "head", dry_run=True))
    assert "quarantine: 5 of 150 records into docs_quarantine (3.3%, limit 5.0%)\n" in preview
    assert "1 x author: Field required" in preview and "1 x vector: all zeros" in preview
    assert "default fills 'source': 145 of 150 records" in preview and "FAIL" not in preview
    assert project.digest("docs") == before["docs"]

    project.run("upgrade", "head")
    quarantined = project.records("docs_quarantine")
    assert sorted(quarantined) == sorted([*VIOLATIONS, ZERO_VECTOR])
    for rid, (_, reason) in VIOLATIONS.items():
        assert quarantined[rid].metadata[QUARANTINE_REASON].startswith(reason)
        assert quarantined[rid].metadata[QUARANTINE_STEP].startswith("snap_")
    assert quarantined[ZERO_VECTOR].metadata[QUARANTINE_REASON].startswith("vector: all zeros")
    assert quarantined["id-000005"].document == "text 5 ünïcødé"
    assert quarantined["id-000003"].metadata["rank"] == 9  # the original metadata, not validated
    records = project.records("docs")
    assert len(records) == 145
    assert all(r.metadata["source"] == "import" and "reviewer" not in r.metadata for r in records.values())
    assert records["id-000020"].metadata["rank"] == 3  # lax mode: "3" -> 3
    assert records["id-000004"].metadata["tags"] == ["a", "b"]  # extra fields are kept
    assert records["id-000004"].metadata["draft"] is True

    assert_downgrade_restores(project, before)


def test_field_map_reports_reasons_in_the_dry_run_and_changes_nothing(project):
    edit(project, {"id-000001": {"author": "bob"}, "id-000002": {"author": "eve"}})
    write_field_map_revision(project)
    preview = "\n".join(project.run("upgrade", "head", dry_run=True))
    assert "2 x author: Input should be one of 'ada', 'grace', 'linus'\n" in preview
    assert "metadata rewritten (defaults, coercions): 148 of 150 records" in preview


# pydantic models ----------------------------------------------------------------------------------


def test_pydantic_model_class_schema_quarantines_out_of_range_records_and_downgrade_restores(project):
    before = {ref: project.digest(ref) for ref in ("docs", "docs_quarantine")}
    project.write_python("step1", "base0", 'op.apply_schema("docs", Article, max_invalid_fraction=0.25)',
                         extra="from tests.ops.sample_schemas import Article")
    project.run("upgrade", "head")
    quarantined = project.records("docs_quarantine")
    assert sorted(quarantined) == [f"id-{i:06d}" for i in range(4, 150, 5)]
    assert quarantined["id-000004"].metadata[QUARANTINE_REASON] == (
        "rank: Input should be less than or equal to 3 (got 4)")
    records = project.records("docs")
    assert len(records) == 120
    meta = records["id-000000"].metadata
    assert meta["source"] == "import" and meta["score"] == 0.0 and isinstance(meta["score"], float)
    assert meta["tags"] == ["a", "b"] and meta["draft"] is True  # no `extra` in the model: kept
    assert_downgrade_restores(project, before)


def test_threshold_exceeded_fails_before_writing_anything(project):
    before = {ref: project.digest(ref) for ref in ("docs", "docs_quarantine")}
    project.write_python("step1", "base0", 'op.apply_schema("docs", "tests.ops.sample_schemas:Article")')
    with pytest.raises(DryRunFailedError, match=r"upgrade step1, step 1 \(apply_schema docs: .*30 of 150 records"):
        project.run("upgrade", "head", dry_run=True)
    assert any("the step would FAIL before writing anything" in line for line in project.output)
    with pytest.raises(InvalidDataError) as failure:
        project.run("upgrade", "head")
    message = str(failure.value)
    assert "30 of 150 records (20.0%) fail the schema, more than max_invalid_fraction 5.0%" in message
    assert "nothing was written" in message
    assert re.search(r"First failures: 'id-\d{6}': rank: Input should be less than or equal to 3 \(got 4\) \| ",
                     message)
    assert {ref: project.digest(ref) for ref in before} == before


# vectors ------------------------------------------------------------------------------------------


def test_nan_vectors_cannot_enter_any_store(project, backend):
    """Every backend refuses NaN and infinity on write (the Backend base checks once), so a schema
    never meets such a vector in data vecflow wrote; apply_schema still quarantines one it reads."""
    bad = np.arange(8, dtype=np.float32)
    bad[2], bad[5] = np.nan, np.inf
    with project.opened() as (store, name), pytest.raises(InvalidDataError, match="NaN or infinite"):
        store.upsert(name, Batch(["nan"], bad[None, :], [None], [{}]))
    with project.opened() as (store, name):
        assert store.get(name, ["nan"]).ids == []


def test_expected_dimension_is_checked_on_every_record(project):
    project.write_python("step1", "base0", 'op.apply_schema("docs", {}, dim=16)')
    with pytest.raises(InvalidDataError, match=r"150 of 150 .* 'id-\d{6}': vector: dimension 8, expected 16"):
        project.run("upgrade", "head")


def test_validator_checks_vectors_that_no_store_holds():
    """Records produced by a map function can carry any vector: wrong dimension, NaN, zeros."""
    validator = RecordValidator(ApplySchemaOp.build("docs", {}).validator().model, dim=4)
    page = Batch(["ok", "nan", "zero", "ones"], np.array([[1, 2, 3], [np.nan, 1, 1], [0, 0, 0], [1, 1, 1]]),
                 [None] * 4, [{}] * 4)
    reasons = [verdict.reason for verdict in validator.check(page)]
    assert reasons == ["vector: dimension 3, expected 4"] * 4
    validator.dim = None
    reasons = [verdict.reason for verdict in validator.check(page)]
    assert reasons == ["", "vector: NaN or infinite values", "vector: all zeros (allow_zero_vectors is false)", ""]
    moved = quarantine_batch(page, reasons, "snap_1_0", dim=4)
    assert moved.dim == 4 and not moved.vectors.any()
    assert base64.b64decode(moved.metadatas[3][QUARANTINE_VECTOR]) == page.vectors[3].tobytes()


def test_zero_vectors_pass_when_allowed():
    op = ApplySchemaOp.build("docs", {}, allow_zero_vectors=True)
    page = Batch(["zero"], np.zeros((1, 3)), [None], [{"a": 1}])
    assert op.validator().check(page)[0].metadata == {"a": 1}


# replay after a crash -----------------------------------------------------------------------------


class SimulatedCrash(BaseException):
    """Stops a run like SIGKILL would: no error handler runs, the attempt stays unfinished."""


@pytest.mark.parametrize("crash_after", ["_quarantine", "_write_page"])
def test_a_replayed_page_gives_the_result_of_one_run(project, monkeypatch, crash_after):
    """A crash after the quarantine write (before the delete), or after a whole page was written
    (before its checkpoint): the rerun validates the page from the snapshotted originals, so a
    non-idempotent validator is applied exactly once and nothing is lost or duplicated."""
    edit(project, {"id-000050": {"rank": "x"}, "id-000051": {"rank": None}})
    before = {ref: project.digest(ref) for ref in ("docs", "docs_quarantine")}
    project.write_python("step1", "base0", 'op.apply_schema("docs", "tests.ops.sample_schemas:ScaledRank")')
    original = getattr(ApplySchemaOp, crash_after)
    calls = []

    def crashing(self, ctx, *args):
        result = original(self, ctx, *args)
        calls.append(ctx.state.get("write"))
        if crash_after == "_quarantine" or len(calls) == 2:  # a page after the first one
            raise SimulatedCrash
        return result

    monkeypatch.setattr(ApplySchemaOp, crash_after, crashing)
    with pytest.raises(SimulatedCrash):
        project.run("upgrade", "head")
    monkeypatch.setattr(ApplySchemaOp, crash_after, original)
    assert any(line.startswith("Resuming upgrade step1") for line in project.run("upgrade", "head"))

    records = project.records("docs")
    assert len(records) == 148
    assert all(r.metadata["rank"] == int(r.id[-6:]) % 5 * 10 for r in records.values())
    assert sorted(project.records("docs_quarantine")) == ["id-000050", "id-000051"]
    assert_downgrade_restores(project, before)


# an existing quarantine ---------------------------------------------------------------------------


def test_existing_quarantine_keeps_its_records_and_downgrade_removes_only_what_the_step_added(project):
    with project.opened("docs_quarantine") as (store, name):
        store.create_collection(name, 8, "l2")
        store.upsert(name, Batch(["old-1", "id-000003"], np.ones((2, 8)), ["kept", None],
                                 [{QUARANTINE_REASON: "from an earlier run"}, {"rank": "older copy"}]))
    edit(project, {"id-000003": {"rank": 9}, "id-000008": {"author": "bob"}})
    before = {ref: project.digest(ref) for ref in ("docs", "docs_quarantine")}
    write_field_map_revision(project, extra="quarantine: docs_quarantine\n")
    project.run("upgrade", "head")
    quarantined = project.records("docs_quarantine")
    assert sorted(quarantined) == ["id-000003", "id-000008", "old-1"]
    assert quarantined["id-000003"].metadata["rank"] == 9
    assert_downgrade_restores(project, before)


# arguments ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schema", "message"), [
    ({"a": {"type": "text"}}, "a.type: Input should be 'str', 'int', 'float', 'bool', 'list' or 'dict'"),
    ({"a": {"type": "str", "maximum": 3}}, "a.maximum: unknown key (known: type, required, default, min, max"),
    ({"a": {"type": "int", "pattern": "^x"}}, "a: pattern applies to type str, not int"),
    ({"a": {"type": "int", "required": True, "default": 1}}, "a: a required field cannot have a default"),
    ({"a": {"type": "int", "max": 3, "default": 7}}, "a: default 7 is not valid: Input should be less than or equal"),
    ({"a": {"type": "int", "min": 5, "max": 1}}, "a: min 5 is greater than max 1"),
    ({"a": {"type": "int", "enum": ["x"]}}, "a: enum values must be of type int"),
    ({"a": {"type": "str", "pattern": "("}}, "a: pattern '(' is not a valid regular expression"),
    ({"a": {"type": "str", "min": 1.5}}, "a: min and max of a str are lengths"),
    ({"a": "int"}, "a: Input should be a valid dictionary {type: ...}"),
    ("no_colon", "'no_colon' is not a 'package.module:Model' path"),
    (42, "must be a pydantic model class, a 'package.module:Model' path or a field map"),
])
def test_invalid_schemas_are_refused_with_a_clear_message(schema, message):
    with pytest.raises(OperationError) as failure:
        get_op("apply_schema").build("docs", schema)
    assert f"apply_schema: schema: {message}" in str(failure.value) or message in str(failure.value)


@pytest.mark.parametrize(("path", "message"), [
    ("tests.ops.missing:Model", "apply_schema docs: cannot import 'tests.ops.missing:Model'"),
    ("tests.ops.sample_schemas:Missing", "tests.ops.sample_schemas has no attribute 'Missing'"),
    ("tests.project:Project", "apply_schema docs: schema 'tests.project:Project' is not a pydantic model class"),
])
def test_a_dotted_path_is_imported_when_the_step_runs(path, message):
    op = ApplySchemaOp.build("docs", path)
    with pytest.raises(OperationError, match=re.escape(message)):
        op.validator()


def test_quarantine_defaults_to_a_sibling_and_must_differ_from_the_collection():
    assert ApplySchemaOp.build("other:docs", {}).collections() == ["other:docs", "other:docs_quarantine"]
    assert ApplySchemaOp.build("other:docs", {}, "bad").collections() == ["other:docs", "other:bad"]
    with pytest.raises(OperationError, match="quarantine must be another collection"):
        ApplySchemaOp.build("docs", {}, "docs")


def test_field_map_semantics_lax_coercion_strict_fields_lengths_and_patterns():
    op = ApplySchemaOp.build("docs", {
        "n": {"type": "int", "strict": True}, "x": {"type": "float"}, "flag": {"type": "bool", "default": False},
        "tag": {"type": "str", "pattern": "^[a-z]+$", "min": 2}, "items": {"type": "list", "max": 2},
        "code": {"type": "str", "pattern": "(?<!x)-[0-9]"}})
    check = op.validator().metadata
    assert check({"x": 1, "other": [1]}).metadata == {"x": 1.0, "flag": False, "other": [1]}
    assert check({"flag": "yes", "n": None}).metadata == {"flag": True, "n": None}
    assert check({"n": "3"}).reason == "n: Input should be a valid integer (got '3')"
    assert check({"tag": "a"}).reason.startswith("tag: String should have at least 2 characters")
    assert check({"tag": "AB"}).reason.startswith("tag: String should match pattern")
    assert check({"items": [1, 2, 3]}).reason.startswith("items: List should have at most 2 items")
    assert check({"code": "ab-1"}).metadata == {"code": "ab-1", "flag": False}  # Python re: search, lookbehind
    assert check({"code": "x-1"}).reason.startswith("code: String should match pattern")


def test_a_model_class_decides_about_extra_fields_itself():
    class Ignore(BaseModel):
        model_config = ConfigDict(extra="ignore")
        a: int

    class Forbid(BaseModel):
        model_config = ConfigDict(extra="forbid")
        a: int

    assert ApplySchemaOp.build("d", Ignore).validator().metadata({"a": 1, "b": 2}).metadata == {"a": 1}
    assert ApplySchemaOp.build("d", Forbid).validator().metadata({"a": 1, "b": 2}).reason == (
        "b: Extra inputs are not permitted (got 2)")


def test_apply_schema_is_reversible_and_its_inverse_drops_only_a_quarantine_it_created():
    from vecflow.operations.base import StepRecord

    op = ApplySchemaOp.build("docs", {})
    assert op.reversible
    inverse = op.reverse(StepRecord("snap_1_0", {"created_quarantine": True}))
    assert (inverse.op_name, inverse.drop_quarantine, inverse.quarantine) == ("unapply_schema", True, "docs_quarantine")
    assert not op.reverse(StepRecord("snap_1_0", {"created_quarantine": False})).drop_quarantine


def test_sigkilled_upgrade_resumes_to_the_result_of_an_uninterrupted_run(fast_tmp_path):
    """A real SIGKILL in the write pass, with records deleted from the scanned collection on every
    page: the rerun neither skips nor duplicates records, and the downgrade is still exact."""
    def make(root):
        project = Project(root, {"path": "%(here)s/faiss"}, backend="faiss", batch_size=125)
        project.write_records("docs.jsonl", 5000, dim=8)
        project.write_python("base0", None, 'op.create_collection("docs", data="data/docs.jsonl")')
        project.write_yaml("step1", """\
            revision: step1
            down_revision: base0
            upgrade:
              - apply_schema:
                  collection: docs
                  max_invalid_fraction: 0.25
                  schema: {rank: {type: int, max: 3}, source: {type: str, default: import}}
            """)
        project.run("upgrade", "base0")
        return project

    reference, killed = make(fast_tmp_path / "reference"), make(fast_tmp_path / "killed")
    before = {ref: killed.digest(ref) for ref in ("docs", "docs_quarantine")}
    reference.run("upgrade", "head")
    expected = {ref: reference.digest(ref) for ref in before}
    assert expected["docs_quarantine"].startswith("1000:")

    kill_upgrade_at(killed, "step1", 1250)
    assert "Resuming upgrade step1" in killed.run("upgrade", "head")
    assert {ref: killed.digest(ref) for ref in before} == expected
    assert any(line.startswith("  verified") for line in killed.run("downgrade", "base0"))
    assert {ref: killed.digest(ref) for ref in before} == before
