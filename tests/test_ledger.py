"""The ledger file: its format version, foreign and broken files, concurrent creation, fencing."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time

import pytest

from vecflow.errors import LedgerError, LockError
from vecflow.runtime.ledger import LEDGER_FORMAT, Ledger, Owner

# The tables vecflow 0.1 wrote before the ledger had a format version (format 1).
FORMAT_1 = """
CREATE TABLE applied (revision TEXT PRIMARY KEY, checksum TEXT, path TEXT, applied_at TEXT);
CREATE TABLE attempts (id INTEGER PRIMARY KEY, revision TEXT, direction TEXT, user TEXT, host TEXT, pid INTEGER,
    started_at TEXT, finished_at TEXT, outcome TEXT, error TEXT, checksum TEXT, resumes INTEGER);
CREATE TABLE steps (attempt_id INTEGER, step_index INTEGER, op TEXT, description TEXT, status TEXT, cursor TEXT,
    rows_done INTEGER, digest_before TEXT, digest_after TEXT, snapshot TEXT, started_at TEXT, finished_at TEXT,
    PRIMARY KEY (attempt_id, step_index));
CREATE TABLE lease (name TEXT PRIMARY KEY, user TEXT, host TEXT, pid INTEGER, token TEXT, acquired_at TEXT,
    heartbeat_at TEXT, expires_at FLOAT);
INSERT INTO applied VALUES ('r1', 'abc', 'versions/r1.py', '2026-01-01T00:00:00');
INSERT INTO attempts VALUES (1, 'r1', 'upgrade', 'ann', 'h', 1, 's', 'f', 'done', NULL, 'abc', 0);
"""


def test_a_new_ledger_carries_its_format_version(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    assert ledger.format_version == LEDGER_FORMAT == 2
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LEDGER_FORMAT


def test_an_unversioned_ledger_is_upgraded_in_place_keeping_its_history(tmp_path):
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.executescript(FORMAT_1)
    ledger = Ledger(tmp_path / "ledger.db")
    assert ledger.format_version == LEDGER_FORMAT
    assert set(ledger.applied()) == {"r1"} and ledger.attempts()[0]["undoes"] is None
    owner = Owner.current()
    ledger.acquire_lease(owner, 60)
    assert ledger.lease_holder()["fence"] == 1


def test_a_ledger_from_a_newer_vecflow_is_refused_naming_both_versions(tmp_path):
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(LedgerError, match="has format version 7; this vecflow reads format 2 and older"):
        Ledger(tmp_path / "ledger.db")


@pytest.mark.parametrize("content, message", [
    (b"not a database at all, just text " * 100, "cannot open ledger .*file is not a database"),
    (None, "is not a vecflow ledger \\(it holds tables customers\\)"),
    ("applied", "table applied lacks column\\(s\\) checksum, path"),
], ids=["text-file", "foreign-tables", "other-columns"])
def test_files_that_are_not_vecflow_ledgers_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "ledger.db"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE customers (id INTEGER)" if content is None
                         else "CREATE TABLE applied (revision TEXT, applied_at TEXT)")
    before = path.read_bytes()
    with pytest.raises(LedgerError, match=message):
        Ledger(path)
    assert path.read_bytes() == before


def test_a_directory_where_the_ledger_should_be_is_refused(tmp_path):
    (tmp_path / "ledger.db").mkdir()
    with pytest.raises(LedgerError, match="it is a directory"):
        Ledger(tmp_path / "ledger.db")


def _open_and_take_lease(path: str, start: float, results) -> None:
    while time.time() < start:
        time.sleep(0.001)
    try:
        ledger = Ledger(path)
        owner = Owner.current()
        try:
            ledger.acquire_lease(owner, 60)
            results.put("lease")
            while time.time() < start + 6:  # hold it while the others try (a dead holder is taken over)
                time.sleep(0.05)
        except LockError:
            results.put("refused")
    except Exception as exc:  # noqa: BLE001 (the test reports what escaped)
        results.put(f"{type(exc).__name__}: {exc}")


def test_runners_creating_the_ledger_together_do_not_crash(tmp_path):
    context = multiprocessing.get_context("spawn")
    for round_ in range(3):
        path = tmp_path / f"ledger{round_}.db"
        results = context.Queue()
        start = time.time() + 1.5
        workers = [context.Process(target=_open_and_take_lease, args=(str(path), start, results)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        outcomes = sorted(results.get(timeout=5) for _ in workers)
        # Exactly one runner holds the lease; the others are refused by the lock, not by SQLite.
        assert outcomes == ["lease", "refused", "refused", "refused"], outcomes


def test_every_takeover_grows_the_fence_and_the_old_holder_writes_nothing(tmp_path):
    path = tmp_path / "ledger.db"
    first, second = Ledger(path), Ledger(path)
    alice, bob = Owner.current(), Owner("bob", "elsewhere", 1, "bob-token")
    first.acquire_lease(alice, lease_seconds=0.2)
    attempt = first.begin_attempt("r1", "upgrade", alice, "sum")
    first.start_step(attempt, 0, "set_field", "set_field docs", {}, None)
    assert first.lease_holder()["fence"] == 1
    time.sleep(0.3)  # alice is paused past her lease...
    second.acquire_lease(bob, lease_seconds=60)  # ...and bob takes it over
    assert second.lease_holder()["fence"] == 2
    second.checkpoint(attempt, 0, '{"scan": "bob"}', 40)
    for write in (lambda: first.checkpoint(attempt, 0, '{"scan": "alice"}', 20),
                  lambda: first.finish_attempt(attempt, "failed", "alice gave up"),
                  lambda: first.mark_applied("r1", "sum", "r1.py"),
                  first.check_lease):
        with pytest.raises(LockError, match="lost the migration lease .*bob@elsewhere"):
            write()
    row = second.step(attempt, 0)
    assert (row["cursor"], row["rows_done"]) == ('{"scan": "bob"}', 40)
    assert second.attempt(attempt)["outcome"] == "running" and second.applied() == {}


def test_a_paused_holder_nobody_replaced_renews_and_goes_on(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    owner = Owner.current()
    ledger.acquire_lease(owner, lease_seconds=0.2)
    time.sleep(0.3)
    ledger.check_lease()  # still ours: renewed, not lost
    assert ledger.lease_holder()["expires_at"] > time.time() + 0.1
    assert ledger.lease_holder()["fence"] == 1


def test_the_snapshot_file_carries_a_format_version_and_refuses_newer_or_broken_files(tmp_path):
    from vecflow.runtime.snapshots import SNAPSHOT_FORMAT, SnapshotStore

    store = SnapshotStore(tmp_path / "snapshots.db")
    store.begin_values("snap_1_0", "rank")
    store.close()
    with sqlite3.connect(tmp_path / "snapshots.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SNAPSHOT_FORMAT
        conn.execute('DROP TABLE "snap_1_0"')
    store = SnapshotStore(tmp_path / "snapshots.db")
    with pytest.raises(LedgerError, match="snapshot snap_1_0 is listed in .* but its table is gone"):
        store.read_values("snap_1_0", 0, 10)
    store.close()
    with sqlite3.connect(tmp_path / "snapshots.db") as conn:
        conn.execute("PRAGMA user_version = 9")
    with pytest.raises(LedgerError, match="has format version 9; this vecflow reads format 1 and older"):
        SnapshotStore(tmp_path / "snapshots.db")
    (tmp_path / "garbage.db").write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(LedgerError, match="cannot open the snapshot file .*garbage.db"):
        SnapshotStore(tmp_path / "garbage.db")
