"""SIGKILL a real `vecflow upgrade` in the middle of a multi-batch step, rerun, compare digests."""

from __future__ import annotations

import shutil

import pytest

from tests.project import Project, kill_upgrade_at, step_progress

N_RECORDS, BATCH = 10_000, 500

STEPS = {
    # A self-referencing expression: replaying a batch must not add 1 twice.
    "set_field": 'op.set_field("docs", "rank", "rank + 1")',
    # Snapshots prior values: a replayed batch must not overwrite them with the dropped state.
    "drop_field": 'op.drop_field("docs", "author")',
    "rename_field": 'op.rename_field("docs", "author", "writer")',
}


def make_project(root, step: str) -> Project:
    project = Project(root, {"path": "%(here)s/chroma"}, batch_size=BATCH)
    project.write_records("docs.jsonl", N_RECORDS, dim=16)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", STEPS[step])
    return project


@pytest.mark.parametrize("step", sorted(STEPS))
def test_killed_upgrade_resumes_to_the_same_digest(fast_tmp_path, step):
    tmp_path = fast_tmp_path
    reference = make_project(tmp_path / "reference", step)
    reference.cli("upgrade", "r1")
    initial = reference.digest("docs")
    # The killed project starts from the same state (the store path is relative to vecflow.ini).
    shutil.copytree(reference.root, tmp_path / "killed")
    project = Project.__new__(Project)
    project.root, project.versions = tmp_path / "killed", tmp_path / "killed" / "versions"
    assert project.digest("docs") == initial
    reference.cli("upgrade", "head")
    expected = reference.digest("docs")
    rows_at_kill = kill_upgrade_at(project, "r2", 2 * BATCH)
    rows, status = step_progress(project.root / ".vecflow" / "ledger.db", "r2")
    assert status == "running" and BATCH <= rows < N_RECORDS, (rows, status, rows_at_kill)

    resumed = project.cli("upgrade", "head").stdout
    assert "Resuming upgrade r2" in resumed and f"resuming at {rows} rows" in resumed
    assert project.digest("docs") == expected
    assert project.cli("current").stdout.split()[0] == "r2"

    # The snapshot taken across the crash still restores the data exactly.
    assert "verified" in project.cli("downgrade", "r1").stdout
    assert project.digest("docs") == initial
