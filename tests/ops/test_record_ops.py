"""cast_field, map_records, delete_records and add_field's computed values, on every backend:
upgrade, check the data, downgrade, and the digest equals the original. Plus replays after a crash
between a page's write and its checkpoint, refusals, and the YAML and dry-run forms."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.project import Project
from vecflow.errors import DryRunFailedError, InvalidDataError, OperationError, ScriptError
from vecflow.operations import get_op
from vecflow.operations.base import StepRecord
from vecflow.runtime.context import StepContext
from vecflow.runtime.stores import Stores
from vecflow.script.scripts import load_yaml_script

N, BATCH = 120, 40
BAD_QTY = ("id-000047", "id-000097")


def metadata(i: int) -> dict:
    meta = {
        "author": ["ada", "grace", "linus"][i % 3], "rank": i % 5, "score": i / 8, "draft": i % 2 == 0,
        "year": str(2000 + i % 20), "price": str(i / 4), "flag": ["yes", "no", "true", "0"][i % 4],
        "tags": ["a", "b"] if i % 4 == 0 else "c", "qty": "n/a" if f"id-{i:06d}" in BAD_QTY else "12",
    }
    if i % 6 == 5:
        del meta["year"]
    return meta


@pytest.fixture
def project(fast_tmp_path, backend, store_options):
    # On tmpfs: fsync is free there (Qdrant local mode commits once per point).
    options = store_options if backend == "redis" else {"path": str(fast_tmp_path / backend)}
    project = Project(fast_tmp_path / "project", options, backend=backend, batch_size=BATCH)
    rng = np.random.default_rng(7)
    path = project.versions / "data" / "docs.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({
        "id": f"id-{i:06d}", "vector": rng.standard_normal(8).astype(np.float32).tolist(),
        "document": None if i % 7 == 3 else f"text {i} ünïcødé", "metadata": metadata(i)}) + "\n"
        for i in range(N)), encoding="utf-8")
    project.write_python("base0", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.run("upgrade", "base0")
    return project


def round_trip(project: Project, check, body: str | None = None) -> None:
    """Upgrade to the step1 revision (written here from body, or already written), check, downgrade."""
    before = project.digest("docs")
    if body is not None:
        project.write_python("step1", "base0", body)
    project.run("upgrade", "head")
    check(project.records("docs"))
    lines = project.run("downgrade", "base0")
    assert any(line.startswith("  verified") for line in lines), lines
    assert project.digest("docs") == before


class Crash(BaseException):
    """Stands in for SIGKILL: raised after a page was written, before its checkpoint."""


def crash_before_checkpoint(monkeypatch, page: int) -> None:
    real, calls = StepContext.save, []

    def save(self, rows=0, **changes):
        if self.step_index == 0 and rows:
            calls.append(rows)
            if len(calls) == page:
                raise Crash
        real(self, rows, **changes)

    monkeypatch.setattr(StepContext, "save", save)


def scan_pages(project: Project) -> list[list]:
    """The collection's records page by page, in the order the ops scan them."""
    stores = Stores(project.config)
    try:
        backend, name = stores.resolve("docs")
        pages, cursor = [], None
        while True:
            page, cursor = backend.scan(name, BATCH, cursor)
            pages.append(list(page.records()))
            if cursor is None:
                return pages
    finally:
        stores.close()


# cast_field -------------------------------------------------------------------------------------


def test_cast_field_converts_types_and_downgrade_restores_the_originals_exactly(project):
    def check(records):
        meta = records["id-000010"].metadata
        assert meta["year"] == 2010 and meta["price"] == 2.5 and meta["flag"] is True
        assert records["id-000009"].metadata["flag"] is False and records["id-000011"].metadata["flag"] is False
        assert meta["rank"] == "0" and meta["tags"] == ["c"] and meta["qty"] == 12
        assert records["id-000008"].metadata["tags"] == ["a", "b"]
        assert records["id-000008"].metadata["flag"] is True and records["id-000010"].metadata["year"] == 2010
        assert isinstance(records["id-000004"].metadata["price"], float)
        assert "year" not in records["id-000005"].metadata
        assert records["id-000047"].metadata["qty"] is None  # skipped by the first cast, nulled by the second
        assert records["id-000003"].document is None
    round_trip(project, check, """\
        op.cast_field("docs", "year", "int")
        op.cast_field("docs", "price", "float")
        op.cast_field("docs", "flag", "bool")
        op.cast_field("docs", "tags", "list")
        op.cast_field("docs", "rank", "str")
        op.cast_field("docs", "qty", "int", on_error="skip")
        op.cast_field("docs", "qty", "int", on_error="null")
        """)


def test_cast_field_failure_names_the_record_and_leaves_its_page_unwritten(project):
    project.write_python("step1", "base0", 'op.cast_field("docs", "qty", "int")')
    with pytest.raises(InvalidDataError) as failure:
        project.run("upgrade", "head")
    message = str(failure.value)
    assert "cast_field docs" in message and "'n/a'" in message and "\n" not in message
    pages = scan_pages(project)
    failing = next(n for n, page in enumerate(pages) if any(r.id in BAD_QTY for r in page))
    assert f"record {next(r.id for r in pages[failing] if r.id in BAD_QTY)!r}" in message
    for number, page in enumerate(pages):
        expected = int if number < failing else str
        assert all(type(r.metadata["qty"]) is expected for r in page if r.id not in BAD_QTY), number


# map_records ------------------------------------------------------------------------------------


MAP_IN_REVISION = """\
from vecflow.batch import Batch


def sign_drafts(batch):
    keep = [i for i, meta in enumerate(batch.metadatas) if meta["draft"]]
    return Batch([batch.ids[i] for i in keep], batch.vectors[keep],
                 [None if batch.documents[i] is None else batch.documents[i].upper() for i in keep],
                 [{**batch.metadatas[i], "stage": "draft", "author": None} for i in keep])
"""


def test_map_records_with_a_function_from_the_revision_and_downgrade_from_the_snapshot(project):
    project.write_python("step1", "base0", 'op.map_records("docs", sign_drafts)', extra=MAP_IN_REVISION)

    def check(records):
        assert records["id-000004"].document == "TEXT 4 ÜNÏCØDÉ"
        assert records["id-000004"].metadata["stage"] == "draft" and records["id-000004"].metadata["author"] is None
        assert records["id-000010"].document is None and records["id-000010"].metadata["stage"] == "draft"
        assert records["id-000005"].document == "text 5 ünïcødé" and "stage" not in records["id-000005"].metadata
    round_trip(project, check)


def test_map_records_replays_a_crashed_page_exactly_once(project, monkeypatch):
    before = project.digest("docs")
    project.write_python("step1", "base0", 'from tests.ops.sample_functions import bump_rank\n\n'
                                           'op.map_records("docs", bump_rank)')
    crash_before_checkpoint(monkeypatch, page=2)
    with pytest.raises(Crash):
        project.run("upgrade", "head")
    monkeypatch.undo()
    assert any("Resuming upgrade" in line for line in project.run("upgrade", "head"))
    records = project.records("docs")
    assert len(records) == N
    for i in range(N):
        record = records[f"id-{i:06d}"]
        assert record.metadata["rank"] == i % 5 + 100
        assert record.document == (None if i % 7 == 3 else f"[{i % 5 + 100}] text {i} ünïcødé")
    assert any(line.startswith("  verified") for line in project.run("downgrade", "base0"))
    assert project.digest("docs") == before


@pytest.mark.parametrize("function", ["rename_ids", "nudge_vectors"])
def test_map_records_refuses_to_change_ids_or_vectors_before_writing(project, function):
    before = project.digest("docs")
    project.write_python("step1", "base0", f'op.map_records("docs", "tests.ops.sample_functions:{function}")')
    with pytest.raises(OperationError, match=r"map_records docs: tests.ops.sample_functions:\w+ "
                                             r"(returned record 'new-id-\d+' that is not in the page|"
                                             r"changed the vector of record 'id-\d+')"):
        project.run("upgrade", "head")
    assert project.digest("docs") == before


# delete_records ---------------------------------------------------------------------------------


def test_delete_records_and_downgrade_reinserts_them_exactly(project):
    def check(records):
        expected = {f"id-{i:06d}" for i in range(N) if not (i % 5 == 3 or i % 3 == 0)}
        assert set(records) == expected
    round_trip(project, check, 'op.delete_records("docs", where="rank == 3 or author == \'ada\'")')


def test_delete_records_resumes_after_a_crash_without_skipping_or_losing_records(project, monkeypatch):
    before = project.digest("docs")
    project.write_python("step1", "base0", 'op.delete_records("docs", "draft or document is none")')
    crash_before_checkpoint(monkeypatch, page=2)
    with pytest.raises(Crash):
        project.run("upgrade", "head")
    monkeypatch.undo()
    project.run("upgrade", "head")
    kept = {f"id-{i:06d}" for i in range(N) if not (i % 2 == 0 or i % 7 == 3)}
    assert set(project.records("docs")) == kept
    assert any(line.startswith("  verified") for line in project.run("downgrade", "base0"))
    assert project.digest("docs") == before


# add_field --------------------------------------------------------------------------------------


def test_add_field_from_an_expression_or_a_function_only_where_missing(project):
    def check(records):
        assert records["id-000005"].metadata["year"] == "unknown-5"
        assert records["id-000004"].metadata["year"] == "2004"
        assert records["id-000004"].metadata["slug"] == "grace-4"
        assert records["id-000007"].metadata["initial"] == "g"
        assert records["id-000001"].metadata["const"] == [1, 2]
    round_trip(project, check, """\
        op.add_field("docs", "year", expression="'unknown-' ~ id[-1]")
        op.add_field("docs", "slug", function="tests.ops.sample_functions:slug")
        op.add_field("docs", "initial", function=lambda meta: meta["author"][0])
        op.add_field("docs", "const", [1, 2])
        """)


# YAML and dry-run -------------------------------------------------------------------------------


YAML_REVISION = """\
    revision: step1
    down_revision: base0
    upgrade:
      - cast_field: {collection: docs, field: price, to: float, on_error: fail}
      - add_field: {collection: docs, field: slug, function: "tests.ops.sample_functions:slug"}
      - add_field: {collection: docs, field: label, expression: "author | upper"}
      - map_records:
          collection: docs
          function: "tests.ops.sample_functions:bump_rank"
          inverse: "tests.ops.sample_functions:unbump_rank"
      - delete_records: {collection: docs, where: "flag == 'no'"}
    """


def test_yaml_revision_with_every_record_op_round_trips(project):
    project.write_yaml("step1", YAML_REVISION)

    def check(records):
        assert len(records) == N - N // 4
        meta = records["id-000006"].metadata
        assert meta["price"] == 1.5 and meta["slug"] == "ada-1" and meta["label"] == "ADA" and meta["rank"] == 101
        assert records["id-000006"].document == "[101] text 6 ünïcødé"
    round_trip(project, check)


def test_dry_run_reports_what_each_record_op_would_do_on_what_the_steps_before_leave(project):
    before = project.digest("docs")
    body = """\
        op.delete_records("docs", where="flag == 'no'")
        op.cast_field("docs", "qty", "int", on_error="{on_error}")
        op.map_records("docs", "tests.ops.sample_functions:bump_rank")
        op.add_field("docs", "slug", function="tests.ops.sample_functions:slug")
        """
    project.write_python("step1", "base0", body.format(on_error="skip"))
    text = "\n".join(project.run("upgrade", "head", dry_run=True))
    assert "records deleted: 30 of 120 records" in text
    # id-000097 (flag 'no') is gone by then: one value is left that cannot become an int.
    assert "1 values cannot become int (first: record 'id-000047': 'n/a' is not a number)" in text
    assert "records mapped by tests.ops.sample_functions:bump_rank; records affected: 90 of 90" in text
    assert "field added: slug; records affected: 90 of 90 records" in text
    assert "main:docs: 120 records; after the plan: 90 records" in text

    project.write_python("step1", "base0", body.format(on_error="fail"))
    with pytest.raises(DryRunFailedError, match=r"upgrade step1, step 2 \(cast_field docs: qty -> int \(on_error "
                                                r"fail\)\): cast_field docs: record 'id-000047': qty = 'n/a' is not"):
        project.run("upgrade", "head", dry_run=True)
    assert "     not simulated: the run stops at step1 step 2" in project.output
    assert project.digest("docs") == before


# arguments (no store needed) --------------------------------------------------------------------


def test_add_field_takes_one_of_default_expression_or_function():
    add_field = get_op("add_field")
    assert add_field.build("docs", "x").default is None
    with pytest.raises(OperationError, match="give one of default, expression or function, not default and"):
        add_field.build("docs", "x", 1, expression="a")
    with pytest.raises(OperationError, match="not expression and function"):
        add_field.build("docs", "x", expression="a", function=len)
    with pytest.raises(OperationError, match="invalid jinja2 expression"):
        add_field.build("docs", "x", expression="a +")


@pytest.mark.parametrize("step, error", [
    ("map_records: {collection: docs, function: not_a_path}", "dotted path 'package.module:function'"),
    ("map_records: {collection: docs}", "function: Field required"),
    ("cast_field: {collection: docs, field: x, to: date}", "to: Input should be 'str', 'int'"),
    ("cast_field: {collection: docs, field: x, to: int, on_error: ignore}", "on_error: Input should be"),
    ("delete_records: {collection: docs, where: 'a ==' }", "invalid jinja2 expression"),
    ("add_field: {collection: docs, field: x, default: 1, function: 'a.b:c'}", "not default and function"),
])
def test_yaml_arguments_are_validated_when_the_script_loads(tmp_path, step, error):
    path = tmp_path / "r1.yaml"
    path.write_text(f"revision: r1\ndown_revision: null\nupgrade:\n  - {step}\n", encoding="utf-8")
    with pytest.raises(ScriptError, match=rf"r1.yaml:4: .*{error}"):
        load_yaml_script(path)


def test_map_records_inverse_is_the_inverse_function_when_given():
    op = get_op("map_records").build("docs", "a.b:f", "a.b:g")
    inverse = op.reverse(StepRecord())
    assert (inverse.function, inverse.inverse) == ("a.b:g", "a.b:f")
    assert inverse.describe() == "map_records docs: a.b:g (inverse a.b:f)"


@pytest.mark.parametrize("backend", ["faiss"])
def test_dotted_paths_are_found_in_the_project_folder_and_import_errors_name_the_path(project):
    (project.root / "record_ops_helpers_7f3a.py").write_text(
        "def shout(metadata):\n    return metadata['author'].upper()\n", encoding="utf-8")
    project.write_python("step1", "base0", 'op.add_field("docs", "loud", function="record_ops_helpers_7f3a:shout")\n'
                                           'op.map_records("docs", "tests.ops.no_such_module:f")')
    with pytest.raises(OperationError, match=r"map_records docs: cannot import 'tests.ops.no_such_module:f': "
                                             r"No module named 'tests.ops.no_such_module'"):
        project.run("upgrade", "head")
    assert project.records("docs")["id-000001"].metadata["loud"] == "GRACE"
