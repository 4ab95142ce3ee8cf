"""The SQLite ledger file: its format version, foreign and broken files (the rules every ledger
database keeps are in test_ledger_contract.py)."""

from __future__ import annotations

import sqlite3

import pytest

from vecflow.errors import LedgerError
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
