"""Snapshots: the data a lossy step destroys, captured before it writes, so its downgrade can
restore it exactly.

Snapshots live in one SQLite file beside the ledger. Each snapshot is a table named after the
attempt and step that wrote it. Two kinds:
- records: whole records (id, float32 vector bytes, document, metadata JSON) plus the
  collection's description, for steps that drop or rebuild a collection;
- values: one metadata field's prior value per record id (or "absent"), for field steps.
Writes are insert-or-ignore: when a batch is replayed after a crash, the first (true) prior
value wins over the already-modified one.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from vecflow.backends.base import CollectionInfo
from vecflow.batch import Batch
from vecflow.errors import LedgerError
from vecflow.read_only import connect_read_only

ABSENT = object()


def snapshot_name(attempt_id: int, step_index: int) -> str:
    return f"snap_{attempt_id}_{step_index}"


# The file's format, in PRAGMA user_version: 1 is the layout above (files without a version are
# format 1 and get the number when opened).
SNAPSHOT_FORMAT = 1


class SnapshotStore:
    def __init__(self, path: Path, read_only: bool = False) -> None:
        """read_only: only read the file (dry runs); nothing is created or changed, and a missing
        file reads as one holding no snapshot. Path(":memory:") keeps snapshots in memory."""
        self.path = Path(path)
        try:
            if read_only:
                self._open_read_only()
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            self._create_or_check()
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot open the snapshot file {self.path}: {exc}") from exc
        except OSError as exc:
            raise LedgerError(f"cannot open the snapshot file {self.path}: {exc}") from exc

    def _open_read_only(self) -> None:
        if self.path.is_file():
            self.conn = connect_read_only(self.path)
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SNAPSHOT_FORMAT:
                raise LedgerError(f"snapshot file {self.path} has format version {version}; this vecflow reads "
                                  f"format {SNAPSHOT_FORMAT} and older: upgrade vecflow (pip install -U vecflow)")
            if self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'").fetchone():
                return
            self.conn.close()
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        self._create_or_check()

    def _create_or_check(self) -> None:
        conn = self.conn
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SNAPSHOT_FORMAT:
                raise LedgerError(f"snapshot file {self.path} has format version {version}; this vecflow reads "
                                  f"format {SNAPSHOT_FORMAT} and older: upgrade vecflow (pip install -U vecflow)")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "snapshots" not in tables:
                raise LedgerError(f"{self.path} is not a vecflow snapshot file (it holds tables "
                                  f"{', '.join(sorted(tables))}); move it away or point `ledger =` elsewhere")
            conn.execute("CREATE TABLE IF NOT EXISTS snapshots (name TEXT PRIMARY KEY, kind TEXT, info TEXT)")
            columns = {row[1] for row in conn.execute("PRAGMA table_info(snapshots)")}
            if not {"name", "kind", "info"} <= columns:
                raise LedgerError(f"{self.path} is not a vecflow snapshot file (its table snapshots has columns "
                                  f"{', '.join(sorted(columns))})")
            if version != SNAPSHOT_FORMAT:
                conn.execute(f"PRAGMA user_version = {SNAPSHOT_FORMAT}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()

    def _check(self, name: str, kind: str) -> None:
        row = self.conn.execute("SELECT kind FROM snapshots WHERE name = ?", [name]).fetchone()
        if row is None:
            raise LedgerError(f"snapshot {name} is missing from {self.path}; cannot restore exactly")
        if row[0] != kind:
            raise LedgerError(f"snapshot {name} holds {row[0]}, not {kind}")
        table = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone()
        if table is None:
            raise LedgerError(f"snapshot {name} is listed in {self.path} but its table is gone; cannot restore "
                              "exactly (restore the file from a backup)")

    def listing(self) -> list[dict[str, Any]]:
        """Every snapshot: name, kind, rows and the bytes its rows take (an estimate from the
        stored values)."""
        found = []
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for name, kind in self.conn.execute("SELECT name, kind FROM snapshots ORDER BY rowid").fetchall():
            rows, size = 0, 0
            if name in tables:
                value = "length(vector) + length(document) + length(metadata)" if kind == "records" else "length(value)"
                rows, size = self.conn.execute(f'SELECT COUNT(*), COALESCE(SUM(length(id) + {value}), 0) '
                                               f'FROM "{name}"').fetchone()
            found.append({"name": name, "kind": kind, "rows": rows, "bytes": size})
        return found

    def remove(self, names: list[str]) -> None:
        """Delete snapshots, then give the space back to the file system."""
        for name in names:
            with self.conn:
                self.conn.execute("BEGIN")
                self.conn.execute(f'DROP TABLE IF EXISTS "{name}"')
                self.conn.execute("DELETE FROM snapshots WHERE name = ?", [name])
        if names:
            self.conn.execute("VACUUM")

    def file_bytes(self) -> int:
        return sum(path.stat().st_size for path in (self.path, Path(f"{self.path}-wal")) if path.exists())

    def exists(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM snapshots WHERE name = ?", [name]).fetchone() is not None

    # records -------------------------------------------------------------------------------------

    def begin_records(self, name: str, info: CollectionInfo, layout: str | None = None) -> None:
        """layout: the framework layout the records were in, so a restore writes them back in it."""
        self.conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{name}" (id TEXT PRIMARY KEY, vector BLOB, has_document INTEGER, '
            "document TEXT, metadata TEXT, extras TEXT)"
        )
        self.conn.execute(
            "INSERT OR IGNORE INTO snapshots (name, kind, info) VALUES (?, 'records', ?)",
            [name, json.dumps({"name": info.name, "dim": info.dim, "metric": info.metric, "params": info.params,
                               "layout": layout})],
        )

    def add_records(self, name: str, batch: Batch) -> None:
        rows = [
            (rid, batch.vectors[i].astype("<f4").tobytes(), int(batch.documents[i] is not None),
             batch.documents[i], json.dumps(batch.metadatas[i], ensure_ascii=False),
             json.dumps(batch.extras[i], ensure_ascii=False) if batch.extras[i] else None)
            for i, rid in enumerate(batch.ids)
        ]
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(f'INSERT OR IGNORE INTO "{name}" VALUES (?, ?, ?, ?, ?, ?)', rows)

    def records_layout(self, name: str) -> str | None:
        """The layout a records snapshot was taken in (None for snapshots taken before layouts)."""
        self._check(name, "records")
        info = json.loads(self.conn.execute("SELECT info FROM snapshots WHERE name = ?", [name]).fetchone()[0])
        return info.get("layout")

    def records_info(self, name: str) -> CollectionInfo:
        self._check(name, "records")
        info = json.loads(self.conn.execute("SELECT info FROM snapshots WHERE name = ?", [name]).fetchone()[0])
        return CollectionInfo(info["name"], info["dim"], info["metric"], info["params"])

    def read_records(self, name: str, after: int, limit: int) -> tuple[Batch, int | None]:
        """Records with rowid > after (at most limit), and the rowid to continue from (None at the end)."""
        self._check(name, "records")
        dim = self.records_info(name).dim
        rows = self.conn.execute(
            f'SELECT rowid, id, vector, has_document, document, metadata, extras FROM "{name}" '
            "WHERE rowid > ? ORDER BY rowid LIMIT ?", [after, limit]).fetchall()
        if not rows:
            return Batch.empty(dim), None
        vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), dim)
        batch = Batch([r[1] for r in rows], vectors, [r[4] if r[3] else None for r in rows],
                      [json.loads(r[5]) for r in rows], [json.loads(r[6]) if r[6] else {} for r in rows])
        return batch, (rows[-1][0] if len(rows) == limit else None)

    def lookup_records(self, name: str, ids: list[str]) -> dict[str, tuple[str | None, dict[str, Any]]]:
        """(document, metadata) already recorded in a records snapshot for these ids: a page
        replayed after a crash is computed from its original records, not from what was written."""
        found: dict[str, tuple[str | None, dict[str, Any]]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f'SELECT id, has_document, document, metadata FROM "{name}" WHERE id IN ({marks})', chunk)
            for rid, has_document, document, metadata in rows:
                found[rid] = (document if has_document else None, json.loads(metadata))
        return found

    # field values --------------------------------------------------------------------------------

    def begin_values(self, name: str, field: str) -> None:
        self.conn.execute(f'CREATE TABLE IF NOT EXISTS "{name}" (id TEXT PRIMARY KEY, present INTEGER, value TEXT, '
                          "position INTEGER)")
        self.conn.execute(
            "INSERT OR IGNORE INTO snapshots (name, kind, info) VALUES (?, 'values', ?)",
            [name, json.dumps({"field": field})],
        )

    def add_values(self, name: str, values: list[tuple[str, Any]] | list[tuple[str, Any, int | None]]) -> None:
        """(id, prior value or ABSENT[, position]) tuples. The position is the field's index among
        the record's metadata keys, so a restore puts it back where it was (the key order is part
        of what an application reads in JSON, e.g. LlamaIndex's node JSON)."""
        rows = [(v[0], int(v[1] is not ABSENT), None if v[1] is ABSENT else json.dumps(v[1], ensure_ascii=False),
                 v[2] if len(v) > 2 else None) for v in values]
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(f'INSERT OR IGNORE INTO "{name}" VALUES (?, ?, ?, ?)', rows)

    def read_values(self, name: str, after: int, limit: int) -> tuple[list[tuple[str, Any, int | None]], int | None]:
        """(id, prior value or ABSENT, position or None) with rowid > after, and where to continue."""
        self._check(name, "values")
        rows = self.conn.execute(
            f'SELECT rowid, id, present, value, position FROM "{name}" WHERE rowid > ? ORDER BY rowid LIMIT ?',
            [after, limit]).fetchall()
        values = [(r[1], json.loads(r[3]) if r[2] else ABSENT, r[4]) for r in rows]
        return values, (rows[-1][0] if rows and len(rows) == limit else None)

    def lookup_values(self, name: str, ids: list[str]) -> dict[str, Any]:
        """Prior values already recorded for these ids (id -> value or ABSENT)."""
        found: dict[str, Any] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for rid, present, value in self.conn.execute(
                    f'SELECT id, present, value FROM "{name}" WHERE id IN ({marks})', chunk):
                found[rid] = json.loads(value) if present else ABSENT
        return found

