"""The ledger lease through the CLI: a second runner is refused while the first holds it (the
lease rules on every ledger database are in test_ledger_contract.py)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

from tests.project import Project


def test_second_runner_is_refused_while_the_first_holds_the_lock(tmp_path):
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")}, batch_size=20)
    project.write_records("docs.jsonl", 4000, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    first = subprocess.Popen([sys.executable, "-m", "vecflow", "upgrade", "head"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ledger = tmp_path / ".vecflow" / "ledger.db"
    holder = None
    deadline = time.monotonic() + 120
    while holder is None and time.monotonic() < deadline and first.poll() is None:
        try:
            with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
                holder = conn.execute("SELECT user, host, pid FROM lease").fetchone()
        except sqlite3.Error:
            pass
        time.sleep(0.01)
    assert holder is not None, "the first runner never took the lock"
    second = project.cli("upgrade", "head", check=False)
    assert first.wait(300) == 0, first.stderr.read()
    assert second.returncode == 1
    user, host, pid = holder
    assert f"{user}@{host} (pid {first.pid})" in second.stderr and pid == first.pid
    assert "lock" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert project.cli("current").stdout.split()[0] == "r1"
