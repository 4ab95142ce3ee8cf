"""SIGKILL a real `vecflow upgrade` in the middle of a multi-batch step, rerun, compare digests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.project import Project

N_RECORDS, BATCH = 10_000, 500

STEPS = {
    # A self-referencing expression: replaying a batch must not add 1 twice.
    "set_field": 'op.set_field("docs", "rank", "rank + 1")',
    # Snapshots prior values: a replayed batch must not overwrite them with the dropped state.
    "drop_field": 'op.drop_field("docs", "author")',
    "rename_field": 'op.rename_field("docs", "author", "writer")',
}


def make_project(root, step: str) -> Project:
    project = Project(root, {"path": str(root / "chroma")}, batch_size=BATCH)
    project.write_records("docs.jsonl", N_RECORDS, dim=16)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", STEPS[step])
    return project


def step_progress(ledger) -> tuple[int, str] | None:
    """rows_done and status of revision r2's step, read from the ledger while the runner writes."""
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT s.rows_done, s.status FROM steps s JOIN attempts a ON a.id = s.attempt_id "
                               "WHERE a.revision = 'r2' AND s.step_index = 0").fetchone()
    except sqlite3.Error:
        return None
    return row


def kill_mid_step(project: Project) -> int:
    ledger = project.root / ".vecflow" / "ledger.db"
    process = subprocess.Popen([sys.executable, "-m", "vecflow", "upgrade", "head"], cwd=project.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            progress = step_progress(ledger)
            if progress and progress[0] >= 2 * BATCH:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return progress[0]
            if process.poll() is not None:
                pytest.fail(f"upgrade finished before it could be killed: {process.stderr.read().decode()}")
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            process.kill()
    pytest.fail("the step never reached 2 batches")


@pytest.mark.parametrize("step", sorted(STEPS))
def test_killed_upgrade_resumes_to_the_same_digest(tmp_path, step):
    reference = make_project(tmp_path / "reference", step)
    reference.cli("upgrade", "r1")
    initial = reference.digest("docs")
    reference.cli("upgrade", "head")
    expected = reference.digest("docs")

    project = make_project(tmp_path / "killed", step)
    project.cli("upgrade", "r1")
    assert project.digest("docs") == initial
    rows_at_kill = kill_mid_step(project)
    rows, status = step_progress(project.root / ".vecflow" / "ledger.db")
    assert status == "running" and BATCH <= rows < N_RECORDS, (rows, status, rows_at_kill)

    resumed = project.cli("upgrade", "head").stdout
    assert "Resuming upgrade r2" in resumed and f"resuming at {rows} rows" in resumed
    assert project.digest("docs") == expected
    assert project.cli("current").stdout.split()[0] == "r2"

    # The snapshot taken across the crash still restores the data exactly.
    assert "verified" in project.cli("downgrade", "r1").stdout
    assert project.digest("docs") == initial
