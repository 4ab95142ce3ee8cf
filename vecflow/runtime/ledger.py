"""The ledger: applied revisions, attempts, per-step checkpoints and the runner's lease.

A SQLite file (WAL mode, synchronous=FULL) or a schema of a PostgreSQL database (vecflow/database.py
translates the SQL and the transactions; every rule is here, once): when a method returns, what it
recorded is durable. Tables:

- applied:  revision, checksum, path, applied_at        (the applied set; heads are derived)
- attempts: one row per upgrade/downgrade/rollback of one revision (who, host, when, outcome,
            error; `undoes`: the upgrade attempt a rollback undoes)
- steps:    one row per step of an attempt (op, status, cursor, rows done, digests, snapshot)
- lease:    the single migration lock (owner, host, pid, token, fence, expiry, heartbeat)
- meta:     the ledger's identity (`ledger_id`, a uuid the store markers name)

Fencing: every takeover of the lease increments its `fence`. While a runner holds the lease, each
ledger write runs in one transaction that first takes the ledger's write lock (SQLite: BEGIN
IMMEDIATE; PostgreSQL: an advisory transaction lock), checks the lease is still its own (and renews
it when half of it has run out), so a runner that lost its lease stops before its next write.
Store writes check the same through `check_lease`.

The ledger carries its format version (SQLite: `PRAGMA user_version`; PostgreSQL: the `formats`
table): older ledgers are upgraded in place, newer ones are refused with both versions named.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vecflow.database import Database, SQLiteDatabase, open_database, retry_while_busy, upsert_sql
from vecflow.errors import LedgerError, LockError

RUNNING, DONE, FAILED, ABANDONED, STAMPED, ROLLED_BACK = (
    "running", "done", "failed", "abandoned", "stamped", "rolled-back")
ROLLBACK = "rollback"

# Format 1: the tables without a version (vecflow 0.1 before fencing). Format 2: lease.fence and
# attempts.undoes.
LEDGER_FORMAT = 2
_COLUMNS: dict[str, dict[str, str]] = {
    "applied": {"revision": "TEXT PRIMARY KEY", "checksum": "TEXT", "path": "TEXT", "applied_at": "TEXT"},
    "attempts": {"id": "INTEGER PRIMARY KEY", "revision": "TEXT", "direction": "TEXT", "user": "TEXT",
                 "host": "TEXT", "pid": "INTEGER", "started_at": "TEXT", "finished_at": "TEXT", "outcome": "TEXT",
                 "error": "TEXT", "checksum": "TEXT", "resumes": "INTEGER", "undoes": "INTEGER"},
    "steps": {"attempt_id": "INTEGER", "step_index": "INTEGER", "op": "TEXT", "description": "TEXT",
              "status": "TEXT", "cursor": "TEXT", "rows_done": "INTEGER", "digest_before": "TEXT",
              "digest_after": "TEXT", "snapshot": "TEXT", "started_at": "TEXT", "finished_at": "TEXT"},
    "lease": {"name": "TEXT PRIMARY KEY", "user": "TEXT", "host": "TEXT", "pid": "INTEGER", "token": "TEXT",
              "acquired_at": "TEXT", "heartbeat_at": "TEXT", "expires_at": "FLOAT", "fence": "INTEGER"},
    # Added without a format change (older vecflows ignore it): created when missing.
    "meta": {"key": "TEXT PRIMARY KEY", "value": "TEXT"},
}
_PRIMARY_KEYS = {"steps": "PRIMARY KEY (attempt_id, step_index)"}
# Columns added after format 1: added in place when an older ledger is opened.
_ADDED_IN_FORMAT_2 = {"attempts": "undoes", "lease": "fence"}
# The other components' tables, which share the ledger's schema in a PostgreSQL database.
_NEIGHBOURS = {"formats", "snapshots", "record_state", "collection_state"}
_LEASE = ("name", "user", "host", "pid", "token", "acquired_at", "heartbeat_at", "expires_at", "fence")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER", "unknown")


@dataclass(frozen=True)
class Owner:
    """Who is running: recorded in attempts and in the lease."""

    user: str
    host: str
    pid: int
    token: str

    @classmethod
    def current(cls) -> Owner:
        return cls(_user(), socket.gethostname(), os.getpid(), uuid.uuid4().hex)

    def __str__(self) -> str:
        return f"{self.user}@{self.host} (pid {self.pid})"


@dataclass
class _Held:
    """The lease this process holds: whose it is, its fence, and how long it lasts."""

    owner: Owner
    fence: int
    seconds: float
    expires_at: float = field(default=0.0)
    lost: str = ""  # why the lease was lost, once it was


class Ledger:
    """Applied state and history of one project, in a SQLite file or a PostgreSQL database."""

    def __init__(self, location: Path | str, read_only: bool = False) -> None:
        """location: a path (SQLite) or a `postgresql://` URL. read_only (dry runs): the ledger is
        only read (a SQLite file into memory, PostgreSQL in a transaction rolled back at close), so
        the file, or its absence, stays as it was; an older format is upgraded in the copy only."""
        self.read_only = read_only
        self.db: Database = retry_while_busy(lambda: self._open(location), f"ledger {location}")
        self.where = self.db.where
        self.path = getattr(self.db, "path", None)
        self._held: _Held | None = None

    def _open(self, location: Path | str) -> Database:
        try:
            db = open_database(location, "ledger", read_only=self.read_only)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {location}: {exc}") from exc
        try:
            self.db = db
            self._create_or_upgrade()  # first: a file that is not a ledger is left as it was
            if isinstance(db, SQLiteDatabase):
                db.durable()
        except sqlite3.OperationalError:
            db.close()
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            raise LedgerError(f"cannot open ledger {db.where}: {exc} (is it a vecflow ledger?)") from exc
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    # format ------------------------------------------------------------------------------------

    def _create_or_upgrade(self) -> None:
        db = self.db
        with db.transaction(lock=True):
            version = db.format_version()
            tables = db.tables()
            if version > LEDGER_FORMAT:
                raise LedgerError(
                    f"ledger {db.where} has format version {version}; this vecflow reads format {LEDGER_FORMAT} "
                    "and older: upgrade vecflow (pip install -U vecflow)")
            foreign = {t for t in tables - set(_COLUMNS) - _NEIGHBOURS - {"sqlite_sequence"}
                       if not t.startswith("snap_")}
            if foreign and not tables & set(_COLUMNS):
                raise LedgerError(f"{db.where} is not a vecflow ledger (it holds tables {', '.join(sorted(foreign))}); "
                                  "point `ledger =` in vecflow.ini at another file")
            for table, columns in _COLUMNS.items():
                if table not in tables:
                    db.create_table(table, columns, _PRIMARY_KEYS.get(table))
                    continue
                have = db.columns(table)
                added = _ADDED_IN_FORMAT_2.get(table)
                if added and added not in have and version < 2:
                    db.add_column(table, added, columns[added])
                    have.add(added)
                missing = set(columns) - have
                if missing:
                    raise LedgerError(
                        f"{db.where} is not a vecflow ledger of format {max(version, 1)}: table {table} lacks "
                        f"column(s) {', '.join(sorted(missing))}")
            db.execute("INSERT INTO meta (key, value) VALUES ('ledger_id', ?) ON CONFLICT (key) DO NOTHING",
                       [str(uuid.uuid4())])
            if version != LEDGER_FORMAT:
                db.set_format_version(LEDGER_FORMAT)

    @property
    def format_version(self) -> int:
        return self.db.format_version()

    @property
    def identity(self) -> str:
        """The ledger's uuid: store markers name it, `vecflow ledger copy` carries it over."""
        return str(self.db.one("SELECT value FROM meta WHERE key = 'ledger_id'")[0])

    @property
    def moved_to(self) -> str | None:
        """Where `vecflow ledger copy` moved this ledger's history (None: it was not moved)."""
        row = self.db.one("SELECT value FROM meta WHERE key = 'moved_to'")
        return None if row is None else str(row[0])

    @property
    def shared(self) -> bool:
        """A database other machines reach (PostgreSQL), not a file of this checkout."""
        return not isinstance(self.db, SQLiteDatabase)

    def describe(self) -> str:
        """Where the ledger is, for messages other machines read: a URL, or a file on a host."""
        return self.where if self.shared else f"{self.where} on {socket.gethostname()}"

    # fenced writes -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[Database]:
        """One transaction under the ledger's write lock; while this process holds the lease, it
        first checks the lease is still its own (raising LockError otherwise) and renews it when
        half of it has run out."""
        with self.db.transaction(lock=True) as db:
            if self._held is not None:
                if self._held.lost:
                    raise LockError(self._held.lost)
                self._check_fence(db, self._held)
            yield db

    def _check_fence(self, db: Database, held: _Held) -> None:
        row = db.one('SELECT token, fence, "user", host, pid, acquired_at FROM lease WHERE name = \'migration\'')
        if row is None or row[0] != held.owner.token or (row[1] or 0) != held.fence:
            taker = f"{row[2]}@{row[3]} (pid {row[4]}) took it over at {row[5]}" if row else "it was released"
            held.lost = f"lost the migration lease ({taker}); {held.owner} stops before writing anything more"
            raise LockError(held.lost)
        now = time.time()
        if held.expires_at - now < held.seconds / 2:
            held.expires_at = now + held.seconds
            db.execute("UPDATE lease SET heartbeat_at = ?, expires_at = ? WHERE name = 'migration'",
                       [_now(), held.expires_at])

    def check_lease(self) -> None:
        """Before a store write: raise LockError when this process no longer holds the lease;
        renew it when half of it has run out. A no-op when no lease is held."""
        if self._held is None:
            return
        if not self._held.lost and self._held.expires_at - time.time() >= self._held.seconds / 2:
            row = self.db.one("SELECT token, fence FROM lease WHERE name = 'migration'")
            if row is not None and row[0] == self._held.owner.token and (row[1] or 0) == self._held.fence:
                return
        with self._write():
            pass

    # applied set -------------------------------------------------------------------------------

    def applied(self) -> dict[str, dict[str, Any]]:
        """revision -> its applied row (checksum, path, applied_at)."""
        return {row["revision"]: row for row in self.db.rows("SELECT * FROM applied ORDER BY revision")}

    def mark_applied(self, revision: str, checksum: str, path: str) -> None:
        with self._write() as db:
            self._set_applied(db, revision, checksum, path)

    @staticmethod
    def _set_applied(db: Database, revision: str, checksum: str, path: str) -> None:
        db.execute(upsert_sql("applied", ("revision", "checksum", "path", "applied_at"), ("revision",)),
                   [revision, checksum, path, _now()])

    def mark_unapplied(self, revision: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM applied WHERE revision = ?", [revision])

    def accept_checksum(self, revision: str, checksum: str) -> None:
        """Record an applied script's new checksum (check --repair), keeping when it was applied."""
        with self._write() as db:
            db.execute("UPDATE applied SET checksum = ? WHERE revision = ?", [checksum, revision])

    def clear_applied(self) -> None:
        with self._write() as db:
            db.execute("DELETE FROM applied")

    # attempts and steps ------------------------------------------------------------------------

    def begin_attempt(self, revision: str, direction: str, owner: Owner, checksum: str,
                      undoes: int | None = None) -> int:
        with self._write() as db:
            row = db.one(
                'INSERT INTO attempts (revision, direction, "user", host, pid, started_at, finished_at, outcome, '
                "error, checksum, resumes, undoes) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, NULL, ?, 0, ?) RETURNING id",
                [revision, direction, owner.user, owner.host, owner.pid, _now(), RUNNING, checksum, undoes])
            return int(row[0])

    def finish_attempt(self, attempt_id: int, outcome: str, error: str | None = None) -> None:
        """Close an attempt; an earlier error stays recorded when a resumed attempt succeeds."""
        with self._write() as db:
            self._close(db, attempt_id, outcome, error)

    @staticmethod
    def _close(db: Database, attempt_id: int, outcome: str, error: str | None) -> None:
        if error is None:
            db.execute("UPDATE attempts SET finished_at = ?, outcome = ? WHERE id = ?", [_now(), outcome, attempt_id])
        else:
            db.execute("UPDATE attempts SET finished_at = ?, outcome = ?, error = ? WHERE id = ?",
                       [_now(), outcome, error, attempt_id])

    def close_revision(self, attempt_id: int, direction: str, revision: str, checksum: str, path: str) -> None:
        """A revision's attempt succeeded: change the applied set and close the attempt (and, for
        a rollback, the attempt it undid) in one transaction."""
        with self._write() as db:
            if direction == "upgrade":
                self._set_applied(db, revision, checksum, path)
            elif direction == "downgrade":
                db.execute("DELETE FROM applied WHERE revision = ?", [revision])
            else:
                undone = db.one("SELECT undoes FROM attempts WHERE id = ?", [attempt_id])[0]
                self._close(db, undone, ROLLED_BACK, None)
            self._close(db, attempt_id, DONE, None)

    def resume_attempt(self, attempt_id: int, owner: Owner) -> None:
        with self._write() as db:
            db.execute(
                'UPDATE attempts SET outcome = ?, resumes = resumes + 1, "user" = ?, host = ?, pid = ? WHERE id = ?',
                [RUNNING, owner.user, owner.host, owner.pid, attempt_id])

    def unfinished_attempts(self) -> list[dict[str, Any]]:
        """Attempts that crashed (still 'running' while the caller holds the lease) or failed."""
        return self.db.rows("SELECT * FROM attempts WHERE outcome IN (?, ?) ORDER BY id", [RUNNING, FAILED])

    def attempt(self, attempt_id: int) -> dict[str, Any]:
        rows = self.db.rows("SELECT * FROM attempts WHERE id = ?", [attempt_id])
        if not rows:
            raise LedgerError(f"ledger {self.where} has no attempt {attempt_id}")
        return rows[0]

    def abandon_unfinished(self) -> list[dict[str, Any]]:
        """Give up on unfinished attempts (stamp does this); returns them. Their steps and
        snapshots stay: a later downgrade of the revision still finds them."""
        rows = self.unfinished_attempts()
        with self._write() as db:
            for row in rows:
                db.execute("UPDATE attempts SET outcome = ?, finished_at = ? WHERE id = ?",
                           [ABANDONED, _now(), row["id"]])
        return rows

    def attempts(self, revision: str | None = None) -> list[dict[str, Any]]:
        if revision:
            return self.db.rows("SELECT * FROM attempts WHERE revision = ? ORDER BY id", [revision])
        return self.db.rows("SELECT * FROM attempts ORDER BY id")

    def record_stamp(self, revision: str, direction: str, owner: Owner, checksum: str) -> None:
        """A stamp is an attempt that ran no step. Stamping up a revision whose latest attempt is
        an upgrade a stamp abandoned adopts that attempt instead (outcome 'stamped', its steps
        kept), so a later downgrade still undoes what it did from its snapshots."""
        latest = self._latest_finished(revision)
        if direction == "upgrade" and latest is not None and latest["direction"] == "upgrade" \
                and latest["outcome"] == ABANDONED:
            with self._write() as db:
                self._close(db, latest["id"], STAMPED, None)
            return
        attempt_id = self.begin_attempt(revision, direction, owner, checksum)
        self.finish_attempt(attempt_id, STAMPED)

    def _latest_finished(self, revision: str) -> dict[str, Any] | None:
        """The latest attempt of a revision that is not running or failed, ignoring abandoned
        downgrades (a stamp that abandons a downgrade keeps the revision as it was applied)."""
        for row in self.db.rows("SELECT * FROM attempts WHERE revision = ? AND outcome NOT IN (?, ?) ORDER BY id DESC",
                                [revision, RUNNING, FAILED]):
            if row["direction"] == "downgrade" and row["outcome"] == ABANDONED:
                continue
            return row
        return None

    def upgrade_to_undo(self, revision: str) -> dict[str, Any] | None:
        """The upgrade attempt whose steps (and snapshots) a downgrade of `revision` undoes: its
        latest finished attempt, when that is an upgrade which ran steps (finished, or stopped
        part-way and adopted by a stamp). None after a downgrade, a rollback or a plain stamp."""
        latest = self._latest_finished(revision)
        if latest is None or latest["direction"] != "upgrade" or latest["outcome"] not in (DONE, STAMPED):
            return None
        return latest if self.steps(latest["id"]) else None

    def needed_snapshots(self) -> set[str]:
        """Snapshots something may still restore from: those of the upgrade each applied
        revision's downgrade would undo, and those of every unfinished attempt (and of the upgrade
        an unfinished rollback undoes)."""
        attempts = [self.upgrade_to_undo(revision) for revision in self.applied()]
        for row in self.unfinished_attempts():
            attempts.append(row)
            if row["undoes"] is not None:
                attempts.append(self.attempt(row["undoes"]))
        return {step["snapshot"] for attempt in attempts if attempt for step in self.steps(attempt["id"])
                if step["snapshot"]}

    def steps(self, attempt_id: int) -> list[dict[str, Any]]:
        return self.db.rows("SELECT * FROM steps WHERE attempt_id = ? ORDER BY step_index", [attempt_id])

    def step(self, attempt_id: int, index: int) -> dict[str, Any] | None:
        rows = self.db.rows("SELECT * FROM steps WHERE attempt_id = ? AND step_index = ?", [attempt_id, index])
        return rows[0] if rows else None

    def finished_steps(self, op: str) -> list[dict[str, Any]]:
        """Every finished step of an op that did some rows (for time estimates)."""
        return self.db.rows("SELECT * FROM steps WHERE op = ? AND status = ? AND rows_done > 0", [op, DONE])

    def start_step(self, attempt_id: int, index: int, op: str, description: str,
                   digest_before: dict[str, str], snapshot: str | None) -> None:
        with self._write() as db:
            db.execute(upsert_sql("steps", ("attempt_id", "step_index", "op", "description", "status", "cursor",
                                            "rows_done", "digest_before", "digest_after", "snapshot", "started_at",
                                            "finished_at"), ("attempt_id", "step_index")),
                       [attempt_id, index, op, description, RUNNING, None, 0, json.dumps(digest_before), None,
                        snapshot, _now(), None])

    def checkpoint(self, attempt_id: int, index: int, cursor: str | None, rows_done: int) -> None:
        with self._write() as db:
            db.execute("UPDATE steps SET cursor = ?, rows_done = ? WHERE attempt_id = ? AND step_index = ?",
                       [cursor, rows_done, attempt_id, index])

    def finish_step(self, attempt_id: int, index: int, digest_after: dict[str, str]) -> None:
        with self._write() as db:
            db.execute("UPDATE steps SET status = ?, digest_after = ?, finished_at = ? "
                       "WHERE attempt_id = ? AND step_index = ?",
                       [DONE, json.dumps(digest_after), _now(), attempt_id, index])

    # lease ---------------------------------------------------------------------------------------

    def acquire_lease(self, owner: Owner, lease_seconds: float) -> None:
        """Take the migration lease, or raise LockError naming its live holder.

        A lease is taken over when it expired, or when its holder is a dead process on this host;
        every takeover increments the fence, so the previous holder's next write is refused.
        """
        with self.db.transaction(lock=True) as db:
            row = db.one('SELECT "user", host, pid, token, acquired_at, expires_at, fence FROM lease '
                         "WHERE name = 'migration'")
            fence = 1
            if row is not None:
                user, host, pid, token, acquired_at, expires_at, previous = row
                if _lease_live(host, pid, expires_at, owner.host) and token != owner.token:
                    raise LockError(
                        f"another vecflow runner holds the lock: {user}@{host} (pid {pid}) since "
                        f"{acquired_at}; its lease expires in {int(expires_at - time.time())} s if it stops "
                        "heartbeating. Wait for it to finish, then retry"
                    )
                fence = (previous or 0) + 1
            expires = time.time() + lease_seconds
            db.execute(upsert_sql("lease", _LEASE, ("name",)),
                       ["migration", owner.user, owner.host, owner.pid, owner.token, _now(), _now(), expires, fence])
        self._held = _Held(owner, fence, lease_seconds, expires)

    def heartbeat(self, owner: Owner, lease_seconds: float) -> None:
        """Keep the lease: renew it when half of it has run out; LockError when another runner
        took it over."""
        if self._held is None or self._held.owner.token != owner.token:
            self._held = _Held(owner, self._fence_of(owner), lease_seconds)
        self.check_lease()

    def _fence_of(self, owner: Owner) -> int:
        row = self.db.one("SELECT token, fence FROM lease WHERE name = 'migration'")
        if row is None or row[0] != owner.token:
            raise LockError(f"lost the migration lease (taken over by another runner); {owner} stops here")
        return row[1] or 0

    def release_lease(self, owner: Owner) -> None:
        self._held = None
        self.db.execute("DELETE FROM lease WHERE name = 'migration' AND token = ?", [owner.token])

    def lease_holder(self) -> dict[str, Any] | None:
        rows = self.db.rows("SELECT * FROM lease WHERE name = 'migration'")
        return rows[0] if rows else None

    def live_lease_holder(self) -> dict[str, Any] | None:
        """The lease's holder while no runner could take the lease over (acquire_lease's rule)."""
        holder = self.lease_holder()
        if holder is None or not _lease_live(holder["host"], holder["pid"], holder["expires_at"], socket.gethostname()):
            return None
        return holder


def _lease_live(host: str, pid: int, expires_at: float, here: str) -> bool:
    """A lease that has not expired, held by a process that still exists (checked when the
    holder's host is `here`, the host asking)."""
    return expires_at > time.time() and not (host == here and not _pid_alive(pid))

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed but not yet reaped by its parent) still answers kill(0); it will never run again.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
