"""The ledger: applied revisions, attempts, per-step checkpoints and the runner's lease.

A SQLite file (sqlite-utils), WAL mode, one autocommitted write per call: when a method returns,
what it recorded is durable. Tables:

- applied:  revision, checksum, path, applied_at        (the applied set; heads are derived)
- attempts: one row per upgrade/downgrade of one revision (who, host, when, outcome, error)
- steps:    one row per step of an attempt (op, status, cursor, rows done, digests, snapshot)
- lease:    the single migration lock (owner, host, pid, expiry, heartbeat)
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from vecflow.errors import LedgerError, LockError

RUNNING, DONE, FAILED, ABANDONED, STAMPED = "running", "done", "failed", "abandoned", "stamped"


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


class Ledger:
    """Applied state and history of one project, stored in a SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        self.db = sqlite_utils.Database(conn)
        self._create_tables()

    def close(self) -> None:
        self.db.conn.close()

    def _create_tables(self) -> None:
        db = self.db
        db["applied"].create(
            {"revision": str, "checksum": str, "path": str, "applied_at": str}, pk="revision", if_not_exists=True
        )
        db["attempts"].create(
            {"id": int, "revision": str, "direction": str, "user": str, "host": str, "pid": int,
             "started_at": str, "finished_at": str, "outcome": str, "error": str, "checksum": str,
             "resumes": int},
            pk="id", if_not_exists=True,
        )
        db["steps"].create(
            {"attempt_id": int, "step_index": int, "op": str, "description": str, "status": str,
             "cursor": str, "rows_done": int, "digest_before": str, "digest_after": str,
             "snapshot": str, "started_at": str, "finished_at": str},
            pk=("attempt_id", "step_index"), if_not_exists=True,
        )
        db["lease"].create(
            {"name": str, "user": str, "host": str, "pid": int, "token": str, "acquired_at": str,
             "heartbeat_at": str, "expires_at": float},
            pk="name", if_not_exists=True,
        )

    # applied set -------------------------------------------------------------------------------

    def applied(self) -> dict[str, dict[str, Any]]:
        """revision -> its applied row (checksum, path, applied_at)."""
        return {row["revision"]: row for row in self.db["applied"].rows}

    def mark_applied(self, revision: str, checksum: str, path: str) -> None:
        self.db["applied"].upsert(
            {"revision": revision, "checksum": checksum, "path": path, "applied_at": _now()}, pk="revision"
        )

    def mark_unapplied(self, revision: str) -> None:
        self.db.execute("DELETE FROM applied WHERE revision = ?", [revision])

    def accept_checksum(self, revision: str, checksum: str) -> None:
        """Record an applied script's new checksum (check --repair), keeping when it was applied."""
        self.db.execute("UPDATE applied SET checksum = ? WHERE revision = ?", [checksum, revision])

    def clear_applied(self) -> None:
        self.db.execute("DELETE FROM applied")

    # attempts and steps ------------------------------------------------------------------------

    def begin_attempt(self, revision: str, direction: str, owner: Owner, checksum: str) -> int:
        table = self.db["attempts"].insert(
            {"revision": revision, "direction": direction, "user": owner.user, "host": owner.host,
             "pid": owner.pid, "started_at": _now(), "finished_at": None, "outcome": RUNNING,
             "error": None, "checksum": checksum, "resumes": 0}
        )
        return int(table.last_pk)

    def finish_attempt(self, attempt_id: int, outcome: str, error: str | None = None) -> None:
        """Close an attempt; an earlier error stays recorded when a resumed attempt succeeds."""
        changes: dict[str, Any] = {"finished_at": _now(), "outcome": outcome}
        if error is not None:
            changes["error"] = error
        self.db["attempts"].update(attempt_id, changes)

    def resume_attempt(self, attempt_id: int, owner: Owner) -> None:
        self.db.execute(
            "UPDATE attempts SET outcome = ?, resumes = resumes + 1, user = ?, host = ?, pid = ? WHERE id = ?",
            [RUNNING, owner.user, owner.host, owner.pid, attempt_id],
        )

    def unfinished_attempts(self) -> list[dict[str, Any]]:
        """Attempts that crashed (still 'running' while the caller holds the lease) or failed."""
        return list(self.db["attempts"].rows_where("outcome IN (?, ?)", [RUNNING, FAILED], order_by="id"))

    def abandon_unfinished(self) -> list[dict[str, Any]]:
        """Give up on unfinished attempts (stamp does this); returns them."""
        rows = self.unfinished_attempts()
        for row in rows:
            self.db["attempts"].update(row["id"], {"outcome": ABANDONED, "finished_at": _now()})
        return rows

    def attempts(self, revision: str | None = None) -> list[dict[str, Any]]:
        where, args = ("revision = ?", [revision]) if revision else (None, [])
        return list(self.db["attempts"].rows_where(where, args, order_by="id"))

    def record_stamp(self, revision: str, direction: str, owner: Owner, checksum: str) -> None:
        """A stamp is an attempt that ran no step."""
        attempt_id = self.begin_attempt(revision, direction, owner, checksum)
        self.finish_attempt(attempt_id, STAMPED)

    def last_completed_attempt(self, revision: str, direction: str) -> dict[str, Any] | None:
        """The latest attempt that ran (not stamped) in that direction, unless a stamp came later."""
        rows = list(self.db["attempts"].rows_where(
            "revision = ? AND direction = ? AND outcome IN (?, ?)", [revision, direction, DONE, STAMPED],
            order_by="id desc", limit=1))
        return rows[0] if rows and rows[0]["outcome"] == DONE else None

    def steps(self, attempt_id: int) -> list[dict[str, Any]]:
        return list(self.db["steps"].rows_where("attempt_id = ?", [attempt_id], order_by="step_index"))

    def step(self, attempt_id: int, index: int) -> dict[str, Any] | None:
        rows = list(self.db["steps"].rows_where("attempt_id = ? AND step_index = ?", [attempt_id, index]))
        return rows[0] if rows else None

    def start_step(self, attempt_id: int, index: int, op: str, description: str,
                   digest_before: dict[str, str], snapshot: str | None) -> None:
        self.db["steps"].insert(
            {"attempt_id": attempt_id, "step_index": index, "op": op, "description": description,
             "status": RUNNING, "cursor": None, "rows_done": 0, "digest_before": json.dumps(digest_before),
             "digest_after": None, "snapshot": snapshot, "started_at": _now(), "finished_at": None},
            replace=True,
        )

    def checkpoint(self, attempt_id: int, index: int, cursor: str | None, rows_done: int) -> None:
        self.db.execute(
            "UPDATE steps SET cursor = ?, rows_done = ? WHERE attempt_id = ? AND step_index = ?",
            [cursor, rows_done, attempt_id, index],
        )

    def finish_step(self, attempt_id: int, index: int, digest_after: dict[str, str]) -> None:
        self.db.execute(
            "UPDATE steps SET status = ?, digest_after = ?, finished_at = ? WHERE attempt_id = ? AND step_index = ?",
            [DONE, json.dumps(digest_after), _now(), attempt_id, index],
        )

    # lease ---------------------------------------------------------------------------------------

    def acquire_lease(self, owner: Owner, lease_seconds: float) -> None:
        """Take the migration lease, or raise LockError naming its live holder.

        A lease is taken over when it expired, or when its holder is a dead process on this host.
        """
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT user, host, pid, token, acquired_at, expires_at FROM lease "
                               "WHERE name = 'migration'").fetchone()
            if row is not None:
                user, host, pid, token, acquired_at, expires_at = row
                alive = expires_at > time.time() and not (host == owner.host and not _pid_alive(pid))
                if alive and token != owner.token:
                    raise LockError(
                        f"another vecflow runner holds the lock: {user}@{host} (pid {pid}) since "
                        f"{acquired_at}; its lease expires in {int(expires_at - time.time())} s if it stops "
                        "heartbeating. Wait for it to finish, then retry"
                    )
            conn.execute(
                "INSERT OR REPLACE INTO lease (name, user, host, pid, token, acquired_at, heartbeat_at, expires_at) "
                "VALUES ('migration', ?, ?, ?, ?, ?, ?, ?)",
                [owner.user, owner.host, owner.pid, owner.token, _now(), _now(), time.time() + lease_seconds],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def heartbeat(self, owner: Owner, lease_seconds: float) -> None:
        cur = self.db.conn.execute(
            "UPDATE lease SET heartbeat_at = ?, expires_at = ? WHERE name = 'migration' AND token = ?",
            [_now(), time.time() + lease_seconds, owner.token],
        )
        if cur.rowcount == 0:
            raise LockError(f"lost the migration lease (taken over by another runner); {owner} stops here")

    def release_lease(self, owner: Owner) -> None:
        self.db.execute("DELETE FROM lease WHERE name = 'migration' AND token = ?", [owner.token])

    def lease_holder(self) -> dict[str, Any] | None:
        rows = list(self.db["lease"].rows_where("name = 'migration'"))
        return rows[0] if rows else None


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


