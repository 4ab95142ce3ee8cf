"""What the user can see of the ledger: unfinished attempts, a running runner, heads, snapshots."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

from tests.project import Project
from vecflow.errors import VecflowError


@pytest.fixture
def project(tmp_path):
    project = Project(tmp_path, {"path": "%(here)s/chroma"}, batch_size=50)
    project.write_records("docs.jsonl", 300, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.drop_field("docs", "author")')
    return project


def test_current_and_check_show_a_failed_attempt_until_it_is_finished(project):
    project.run("upgrade", "r1")
    project.write_python("r2", "r1", 'op.drop_field("docs", "author")\nop.set_field("docs", "rank", "1 / 0")')
    with pytest.raises(VecflowError, match="division by zero"):
        project.run("upgrade", "head")
    lines = project.run("current")
    assert lines[0] == "r1"
    assert lines[1].startswith("unfinished: upgrade of r2 (failed), started ")
    assert "step 2 (set_field docs: rank = {{ 1 / 0 }}) running at 0 rows" in lines[1]
    assert "division by zero" in lines[1]
    checked = project.cli("check", check=False)
    assert checked.returncode == 1 and "error: unfinished: upgrade of r2 (failed)" in checked.stdout
    project.write_python("r2", "r1", 'op.drop_field("docs", "author")\nop.set_field("docs", "rank", "rank * 2")')
    project.run("upgrade", "head")
    assert project.run("current") == ["r2 (head)"]
    assert project.run("check")[-1].startswith("OK: 2 revisions, head r2")


def upgrade_holding_the_lease(project) -> subprocess.Popen:
    """`vecflow upgrade head` of 6,000 records in a process of its own, once it holds the lease."""
    project.write_records("docs.jsonl", 6000, dim=8)
    running = subprocess.Popen([sys.executable, "-m", "vecflow", "upgrade", "head"], cwd=project.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = project.root / ".vecflow" / "ledger.db"
    deadline = time.monotonic() + 120
    holder = None
    while holder is None and time.monotonic() < deadline and running.poll() is None:
        try:
            with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
                holder = conn.execute("SELECT pid FROM lease").fetchone()
        except sqlite3.Error:
            pass
        time.sleep(0.01)
    assert holder is not None, running.stderr.read()
    return running


def test_current_shows_the_runner_holding_the_lock(project):
    running = upgrade_holding_the_lease(project)
    lines = project.run("current")
    assert running.wait(300) == 0
    assert any(line.startswith("running: ") and f"(pid {running.pid}) holds the lock since" in line
               for line in lines), lines


def test_check_heads_and_check_fail_below_head_and_the_advice_fixes_it(project):
    project.run("upgrade", "r1")
    with pytest.raises(VecflowError, match="the ledger is at r1, not at the head\\(s\\) r2"):
        project.run("current", check_heads=True)
    checked = project.cli("check", check=False)
    assert checked.returncode == 1
    [advice] = [line for line in checked.stdout.splitlines() if "not at the head" in line]
    command = advice.split("run 'vecflow ")[1].rstrip("'").split()
    project.cli(*command)
    assert project.run("current", check_heads=True) == ["r2 (head)"]
    project.run("check")


def test_snapshots_are_listed_and_pruned_when_nothing_needs_them(project):
    project.run("upgrade", "head")
    [line] = project.run("snapshots")
    assert line.startswith("snap_2_0: values, 300 rows, ") and line.endswith("(needed)")
    assert project.run("snapshots", "prune") and project.run("snapshots") == [line]  # still needed
    project.run("downgrade", "r1")
    assert project.run("snapshots")[0].endswith("(not needed)")
    project.run("upgrade", "head")  # a new attempt, with a snapshot of its own
    assert [row.endswith("(not needed)") for row in project.run("snapshots")] == [True, False]
    pruned = project.run("snapshots", "prune")
    assert pruned[0].startswith("Pruned 1 snapshot(s) (300 rows); snapshots.db ")
    assert [row.split(":")[0] for row in project.run("snapshots")] == ["snap_4_0"]
    before = project.digest("docs")
    project.run("downgrade", "r1")  # the snapshot it needs survived the prune
    assert project.digest("docs") != before and "author" in project.records("docs")["id-000000"].metadata


def test_current_does_not_show_a_killed_runner_as_holding_the_lock(project):
    running = upgrade_holding_the_lease(project)
    running.kill()
    running.wait(60)
    lines = project.run("current")
    assert not any(line.startswith("running: ") for line in lines), lines  # its lease is taken over at once
    assert "Upgrade" in "\n".join(project.cli("upgrade", "head").stdout.splitlines()[:2])
