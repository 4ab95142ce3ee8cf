"""Honest dry runs, on embedded Chroma and FAISS: the plan is simulated in order on samples (what an
earlier step creates, splits or deletes is what a later step previews), a step that would be
refused or fail makes the dry run exit 1 naming it, estimates count the real input, and nothing is
written anywhere: no file of the project, no store, not even a missing store folder."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.project import Project
from vecflow import command
from vecflow.errors import DryRunFailedError, InvalidDataError, VecflowError

pytestmark = pytest.mark.parametrize("backend", ["chroma", "faiss"])


@pytest.fixture
def project(tmp_path, backend):
    """A project whose store lives inside its folder; r1 creates docs (300 records) from a file."""
    project = Project(tmp_path, {"path": str(tmp_path / backend)}, backend=backend, batch_size=100)
    project.write_records("docs.jsonl", 300, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    return project


def failing_dry_run(project: Project, *args: str) -> tuple[str, str]:
    """Run a dry run that must fail: (its error message, what it printed)."""
    with pytest.raises(DryRunFailedError) as failure:
        project.run(*args, dry_run=True)
    return str(failure.value), "\n".join(project.output)


def tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: mtime, size and content hash (folders: mtime only)."""
    found: dict[str, tuple] = {".": (root.stat().st_mtime_ns,)}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        found[path.relative_to(root).as_posix()] = (stat.st_mtime_ns, stat.st_size, content)
    return found


def test_an_expression_that_fails_on_the_sample_fails_the_dry_run_naming_its_step(project):
    project.write_python("r2", "r1", 'op.set_field("docs", "next", "missing + 1")')
    message, printed = failing_dry_run(project, "upgrade", "head")
    assert message == ("the dry run found a step that would fail: upgrade r2, step 1 (set_field docs: next = "
                       "{{ missing + 1 }}): set_field next: expression failed on record 'id-000000': 'missing' is "
                       "undefined")
    assert "     refused: set_field next: expression failed on record 'id-000000'" in printed
    with pytest.raises(InvalidDataError, match="'missing' is undefined"):
        project.run("upgrade", "head")


def test_a_step_on_a_collection_no_earlier_step_creates_fails_the_dry_run(project):
    project.write_python("r2", "r1", 'op.add_field("docs", "lang", "en")\nop.add_field("nowhere", "lang", "en")')
    message, printed = failing_dry_run(project, "upgrade", "head")
    assert message.endswith("upgrade r2, step 2 (add_field nowhere: +lang (default 'en')): collection 'nowhere' "
                            "does not exist")
    # docs is created by r1, earlier in the same plan: its step is previewed on what r1 loads.
    assert "field added: lang; records affected: 300 of 300 records" in printed
    assert "     would fail: collection 'nowhere' does not exist" in printed


def test_a_step_the_preview_refuses_fails_the_dry_run(project):
    project.run("upgrade", "r1")
    project.write_python("r2", "r1", 'op.rename_field("docs", "author", "rank")')
    message, printed = failing_dry_run(project, "upgrade", "head")
    assert message.endswith("upgrade r2, step 1 (rename_field docs: author -> rank): rename_field docs: record "
                            "'id-000000' has both 'author' and 'rank'; resolve the collision first (e.g. drop_field)")
    assert "     refused: 300 of 300 records hold both names" in printed
    with pytest.raises(InvalidDataError, match="has both 'author' and 'rank'"):
        project.run("upgrade", "head")


def test_steps_after_a_split_are_previewed_on_the_records_it_routed(project):
    split = 'op.split_collection("docs", by="author", into={"ada": "ada", "grace": "grace", "linus": "linus"})'
    schema = 'op.apply_schema("ada", {{"rank": {{"type": "int", "max": 3}}}}, max_invalid_fraction={limit})'
    project.write_python("r2", "r1", f"{split}\n{schema.format(limit=0.05)}")
    message, printed = failing_dry_run(project, "upgrade", "head")
    assert "upgrade r2, step 2 (apply_schema ada: fields rank (invalid -> ada_quarantine, at most 5%)): " \
           "apply_schema ada: 20 of 100 records (20.0%) fail the schema" in message
    assert "-> main:ada: 100 records (new)" in printed
    assert "quarantine: 20 of 100 records into ada_quarantine (20.0%, limit 5.0%): the step would FAIL" in printed

    project.write_python("r2", "r1", f"{split}\n{schema.format(limit=0.25)}")
    printed = "\n".join(project.run("upgrade", "head", dry_run=True))
    predicted = {line.split(": ")[0].strip(): line.rpartition("after the plan: ")[2]
                 for line in printed.splitlines() if "after the plan" in line}
    assert predicted == {"main:docs": "does not exist", "main:ada": "80 records", "main:grace": "100 records",
                         "main:linus": "100 records", "main:ada_quarantine": "20 records"}
    project.run("upgrade", "head")
    assert [len(project.records(name)) for name in ("ada", "ada_quarantine", "grace")] == [80, 20, 100]


def test_a_name_or_parameter_the_store_refuses_fails_the_dry_run_as_the_run_would(project, backend):
    name = {"chroma": "x", "faiss": ".x"}[backend]  # too short for Chroma; hidden for FAISS
    for body in (f'op.create_collection("{name}", dim=8)', 'op.create_collection("new", dim=8, params={"colour": 1})'):
        project.write_python("r2", "r1", f'op.add_field("docs", "lang", "en")\n{body}')
        message, _ = failing_dry_run(project, "upgrade", "head")
        with pytest.raises(VecflowError) as failure:
            project.run("upgrade", "head")
        assert "upgrade r2, step 2 (create_collection " in message and message.endswith(f": {failure.value}")
        project.run("downgrade", "r1")  # rolls back the failed upgrade (its add_field)


def test_steps_a_failed_attempt_finished_are_not_simulated_again(project):
    project.run("upgrade", "r1")
    body = 'op.create_collection("extra", dim=8)\nop.set_field("docs", "next", "{expression}")'
    project.write_python("r2", "r1", body.format(expression="missing + 1"))
    with pytest.raises(InvalidDataError):
        project.run("upgrade", "head")
    project.write_python("r2", "r1", body.format(expression="rank + 1"))  # fixed: the rerun resumes at step 2
    printed = project.run("upgrade", "head", dry_run=True)
    assert printed[1:5] == ["  1. create_collection extra (dim 8, cosine)",
                            "     already done: the unfinished attempt resumes after it",
                            "  2. set_field docs: next = {{ rank + 1 }}",
                            "     field set: next; records affected: 300 of 300 records"]
    project.run("upgrade", "head")


def test_a_downgrade_dry_run_predicts_the_records_that_come_back(tmp_path, backend):
    project = Project(tmp_path, {"path": str(tmp_path / backend)}, backend=backend, batch_size=500)
    project.write_records("docs.jsonl", 1500, dim=4)  # more than the 1,000 records a dry run samples
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.delete_records("docs", where="rank == 0")')
    project.run("upgrade", "r1")
    printed = project.run("upgrade", "head", dry_run=True)
    assert "     records deleted: ~300 of 1500 records (sampled 1000) (e.g. 'id-000000', 'id-000005', " \
           "'id-000010'); snapshotted whole first" in printed
    assert printed[-1] == "  main:docs: 1500 records; after the plan: ~1200 records"
    project.run("upgrade", "head")

    assert project.run("downgrade", "r1", dry_run=True)[-1] == (
        "  main:docs: 1200 records; after the plan: 1500 records (as recorded before the upgrade of r2)")
    # The simulation itself (the 300 snapshotted records restored into the sampled collection) agrees.
    with command.open_runner(project.config, read_only=True) as runner:
        report = runner.describe_plan(runner.plan("downgrade", "r1"))
    assert [(c["collection"], c["count"], c["after"]["count"]) for c in report["collections"]] == [
        ("main:docs", 1200, 1500)]
    project.run("downgrade", "r1")
    assert len(project.records("docs")) == 1500


def test_creating_from_a_large_data_file_is_estimated_from_its_lines(project):
    project.run("upgrade", "r1")  # an earlier create_collection run gives the ledger a rate
    rng = np.random.default_rng(1)
    with (project.versions / "data" / "big.jsonl").open("w", encoding="utf-8") as handle:
        for i in range(5000):
            handle.write(json.dumps({"id": f"big-{i}", "vector": rng.standard_normal(8).round(3).tolist()}) + "\n")
    project.write_python("r2", "r1", 'op.create_collection("big", data="data/big.jsonl")')
    printed = project.run("upgrade", "head", dry_run=True)
    estimate = printed[2]
    assert estimate.startswith("     estimated time: ~") and " s for 5000 records (" in estimate, printed
    assert estimate.endswith(" rows/s in earlier create_collection runs)"), printed
    assert printed[-1] == "  main:big: does not exist yet; after the plan: 5000 records"


def test_a_dry_run_changes_no_file_and_no_store(project, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as Python runs by default
    project.write_python("r2", "r1", 'op.drop_field("docs", "rank")\nop.rename_field("docs", "author", "writer")')
    project.run("upgrade", "head")
    # Never imported yet: a dry run must not even leave their bytecode in a __pycache__ folder.
    (project.root / "labels.py").write_text("def label(metadata):\n    return metadata['writer'].upper()\n")
    project.write_python("r3", "r2", """\
        op.split_collection("docs", by="writer", into={"ada": "ada"}, default="rest")
        op.set_field("ada", "score", "score * 2")
        op.add_field("rest", "label", function="labels:label")
        op.copy_collection("rest", "rest_copy")
        """)
    before = tree(project.root)
    assert ".vecflow/snapshots.db" in before and any(name.startswith("versions/__pycache__/r2") for name in before)
    project.run("upgrade", "head", dry_run=True)
    assert project.output[-4:] == ["  main:docs: 300 records; after the plan: does not exist",
                                   "  main:ada: does not exist yet; after the plan: 100 records",
                                   "  main:rest: does not exist yet; after the plan: 200 records",
                                   "  main:rest_copy: does not exist yet; after the plan: 200 records"]
    assert "     field added: label; records affected: 200 of 200 records" in project.output
    project.run("downgrade", "base", dry_run=True)
    assert tree(project.root) == before


def test_the_cli_prints_the_report_then_one_error_line_and_exits_1_creating_nothing(project, backend):
    # Nothing exists yet: no ledger, no .vecflow folder, no store folder.
    project.write_python("r2", "r1", 'op.set_field("docs", "next", "missing + 1")')
    before = tree(project.root)
    result = project.cli("upgrade", "head", "--dry-run", check=False)
    assert result.returncode == 1, result
    assert result.stdout.splitlines()[-1] == "  main:docs: does not exist yet; after the plan: 300 records"
    assert result.stderr.splitlines() == [
        "vecflow: error: the dry run found a step that would fail: upgrade r2, step 1 (set_field docs: next = "
        "{{ missing + 1 }}): set_field next: expression failed on record 'id-000000': 'missing' is undefined"]
    assert tree(project.root) == before
    assert not (project.root / backend).exists() and not (project.root / ".vecflow").exists()


def _schema_contents(url: str) -> dict[str, list]:
    """Every row of every table in the ledger's schema (vecflow's ledger, snapshots and state)."""
    from vecflow.database import open_database

    database = open_database(url, "ledger")
    try:
        return {table: sorted(map(repr, database.execute(f'SELECT * FROM "{table}"').fetchall()))
                for table in sorted(database.tables())}
    finally:
        database.close()


def test_a_dry_run_on_a_postgresql_ledger_changes_nothing_in_its_database(tmp_path, backend, postgres_url):
    project = Project(tmp_path, {"path": str(tmp_path / backend)}, backend=backend, batch_size=100)
    ini = project.root / "vecflow.ini"
    ini.write_text(ini.read_text().replace("ledger = %(here)s/.vecflow/ledger.db", f"ledger = {postgres_url}"))
    project.write_records("docs.jsonl", 300, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.drop_field("docs", "rank")')
    project.run("upgrade", "r1")
    before, files = _schema_contents(postgres_url), tree(project.root)
    project.run("upgrade", "head", dry_run=True)
    assert "  main:docs: 300 records; after the plan: 300 records" in project.output
    project.run("downgrade", "base", dry_run=True)
    assert _schema_contents(postgres_url) == before and tree(project.root) == files
