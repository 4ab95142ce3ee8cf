"""The ledger lease: one runner at a time, stale leases are taken over."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from tests.project import Project
from vecflow.errors import LockError
from vecflow.runtime.ledger import Ledger, Owner


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


def test_live_lease_refuses_expired_lease_is_taken_over(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    alice = replace(Owner.current(), user="alice")
    ledger.acquire_lease(alice, lease_seconds=60)
    bob = replace(Owner.current(), user="bob")
    with pytest.raises(LockError, match=r"alice@.* \(pid \d+\)"):
        ledger.acquire_lease(bob, lease_seconds=60)
    ledger.db.execute("UPDATE lease SET expires_at = ?", [time.time() - 1])
    ledger.acquire_lease(bob, lease_seconds=60)
    assert ledger.lease_holder()["user"] == "bob"
    with pytest.raises(LockError, match="lost the migration lease"):
        ledger.heartbeat(alice, 60)
    ledger.release_lease(bob)
    assert ledger.lease_holder() is None


def test_lease_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.acquire_lease(replace(Owner.current(), pid=dead.pid, user="ghost"), lease_seconds=3600)
    me = Owner.current()
    ledger.acquire_lease(me, lease_seconds=60)
    assert ledger.lease_holder()["pid"] == os.getpid()
