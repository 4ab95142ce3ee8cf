"""Snapshots: the data a lossy step destroys, captured before it writes, so its downgrade can
restore it exactly.

Snapshots live in one SQLite file beside the ledger (`snapshots.db`), or, with a PostgreSQL
ledger, in the ledger's database, so a second machine can undo a step the first one ran. Each
snapshot is a table named after the attempt and step that wrote it. Two kinds:
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
from vecflow.database import Database, SQLiteDatabase, open_database
from vecflow.errors import LedgerError

ABSENT = object()


def snapshot_name(attempt_id: int, step_index: int) -> str:
    return f"snap_{attempt_id}_{step_index}"


# A snapshot table's columns (each table also has SQLite's rowid, or PostgreSQL's seq).
RECORDS_COLUMNS = {"id": "TEXT PRIMARY KEY", "vector": "BLOB", "has_document": "INTEGER", "document": "TEXT",
                   "metadata": "TEXT", "extras": "TEXT"}
VALUES_COLUMNS = {"id": "TEXT PRIMARY KEY", "present": "INTEGER", "value": "TEXT", "position": "INTEGER"}


def _names(columns: dict[str, str]) -> str:
    return ", ".join(f'"{name}"' for name in columns)


# The file's format, in PRAGMA user_version: 1 is the layout above (files without a version are
# format 1 and get the number when opened).
SNAPSHOT_FORMAT = 1


class SnapshotStore:
    def __init__(self, location: Path | str, read_only: bool = False) -> None:
        """location: the snapshot file's path, or the PostgreSQL ledger's URL. read_only (dry
        runs): only read; nothing is created or changed, and a missing file (or one without
        vecflow's snapshots) reads as one holding no snapshot."""
        try:
            self.db: Database = open_database(location, "snapshots", read_only=read_only, copy=False)
        except OSError as exc:
            raise LedgerError(f"cannot open the snapshot file {location}: {exc}") from exc
        self.path = getattr(self.db, "path", None)
        self.where = self.db.where
        if read_only:
            try:
                self._check_read_only()
            except sqlite3.DatabaseError as exc:
                self.db.close()
                raise LedgerError(f"cannot open the snapshot file {self.where}: {exc}") from exc
            return
        try:
            self._create_or_check()
            if isinstance(self.db, SQLiteDatabase):
                self.db.durable()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise LedgerError(f"cannot open the snapshot file {self.where}: {exc}") from exc
        except BaseException:
            self.db.close()
            raise

    def _check_read_only(self) -> None:
        """A read-only store: refuse a newer format; one holding no snapshots table reads as an
        empty store in memory."""
        version = self.db.format_version()
        if version > SNAPSHOT_FORMAT:
            self.db.close()
            raise LedgerError(f"snapshot file {self.where} has format version {version}; this vecflow reads "
                              f"format {SNAPSHOT_FORMAT} and older: upgrade vecflow (pip install -U vecflow)")
        if "snapshots" not in self.db.tables():
            self.db.close()
            self.db = open_database(None, "snapshots")
            self._create_or_check()

    @property
    def label(self) -> str:
        """What holds the snapshots, in a message: 'snapshots.db', or the database."""
        return self.path.name if self.path is not None else f"the snapshot tables in {self.where}"

    def _create_or_check(self) -> None:
        db = self.db
        with db.transaction(lock=True):
            version = db.format_version()
            if version > SNAPSHOT_FORMAT:
                raise LedgerError(f"snapshot file {self.where} has format version {version}; this vecflow reads "
                                  f"format {SNAPSHOT_FORMAT} and older: upgrade vecflow (pip install -U vecflow)")
            tables = db.tables()
            if isinstance(db, SQLiteDatabase) and tables and "snapshots" not in tables:
                raise LedgerError(f"{self.where} is not a vecflow snapshot file (it holds tables "
                                  f"{', '.join(sorted(tables))}); move it away or point `ledger =` elsewhere")
            db.create_table("snapshots", {"name": "TEXT PRIMARY KEY", "kind": "TEXT", "info": "TEXT"}, ordered=True)
            columns = db.columns("snapshots")
            if not {"name", "kind", "info"} <= columns:
                raise LedgerError(f"{self.where} is not a vecflow snapshot file (its table snapshots has columns "
                                  f"{', '.join(sorted(columns))})")
            if version != SNAPSHOT_FORMAT:
                db.set_format_version(SNAPSHOT_FORMAT)

    def close(self) -> None:
        self.db.close()

    def _check(self, name: str, kind: str) -> None:
        row = self.db.one("SELECT kind FROM snapshots WHERE name = ?", [name])
        if row is None:
            raise LedgerError(f"snapshot {name} is missing from {self.where}; cannot restore exactly")
        if row[0] != kind:
            raise LedgerError(f"snapshot {name} holds {row[0]}, not {kind}")
        if name not in self.db.tables():
            raise LedgerError(f"snapshot {name} is listed in {self.where} but its table is gone; cannot restore "
                              "exactly (restore the file from a backup)")

    def listing(self) -> list[dict[str, Any]]:
        """Every snapshot: name, kind, rows and the bytes its rows take (an estimate from the
        stored values)."""
        found = []
        tables = self.db.tables()
        for name, kind in self.db.execute(f"SELECT name, kind FROM snapshots ORDER BY {self.db.rowid}").fetchall():
            rows, size = 0, 0
            if name in tables:
                value = "length(vector) + length(document) + length(metadata)" if kind == "records" else "length(value)"
                rows, size = self.db.one(f'SELECT COUNT(*), COALESCE(SUM(length(id) + {value}), 0) FROM "{name}"')
            found.append({"name": name, "kind": kind, "rows": rows, "bytes": size})
        return found

    def remove(self, names: list[str]) -> None:
        """Delete snapshots, then give the space back to the file system."""
        for name in names:
            with self.db.transaction():
                self.db.execute(f'DROP TABLE IF EXISTS "{name}"')
                self.db.execute("DELETE FROM snapshots WHERE name = ?", [name])
        if names:
            self.db.reclaim_space()

    def file_bytes(self) -> int:
        """Bytes the snapshots take: the file (SQLite), or the snapshot tables (PostgreSQL)."""
        return self.db.size_of([row[0] for row in self.db.execute("SELECT name FROM snapshots").fetchall()]
                               + ["snapshots"])

    def exists(self, name: str) -> bool:
        return self.db.one("SELECT 1 FROM snapshots WHERE name = ?", [name]) is not None

    # records -------------------------------------------------------------------------------------

    def begin_records(self, name: str, info: CollectionInfo, layout: str | None = None) -> None:
        """layout: the framework layout the records were in, so a restore writes them back in it."""
        self.db.create_table(name, RECORDS_COLUMNS, ordered=True)
        self.db.execute(
            "INSERT INTO snapshots (name, kind, info) VALUES (?, 'records', ?) ON CONFLICT (name) DO NOTHING",
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
        with self.db.transaction():
            self.db.executemany(f'INSERT INTO "{name}" ({_names(RECORDS_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) '
                                "ON CONFLICT (id) DO NOTHING", rows)

    def records_layout(self, name: str) -> str | None:
        """The layout a records snapshot was taken in (None for snapshots taken before layouts)."""
        self._check(name, "records")
        info = json.loads(self.db.one("SELECT info FROM snapshots WHERE name = ?", [name])[0])
        return info.get("layout")

    def records_info(self, name: str) -> CollectionInfo:
        self._check(name, "records")
        info = json.loads(self.db.one("SELECT info FROM snapshots WHERE name = ?", [name])[0])
        return CollectionInfo(info["name"], info["dim"], info["metric"], info["params"])

    def read_records(self, name: str, after: int, limit: int) -> tuple[Batch, int | None]:
        """Records with rowid > after (at most limit), and the rowid to continue from (None at the end)."""
        self._check(name, "records")
        dim = self.records_info(name).dim
        rowid = self.db.rowid
        rows = self.db.execute(
            f'SELECT {rowid}, id, vector, has_document, document, metadata, extras FROM "{name}" '
            f"WHERE {rowid} > ? ORDER BY {rowid} LIMIT ?", [after, limit]).fetchall()
        if not rows:
            return Batch.empty(dim), None
        vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), dim)
        batch = Batch([r[1] for r in rows], vectors, [r[4] if r[3] else None for r in rows],
                      [json.loads(r[5]) for r in rows], [json.loads(r[6]) if r[6] else {} for r in rows])
        return batch, (rows[-1][0] if len(rows) == limit else None)

    def rows_after(self, name: str, kind: str, after: int) -> int:
        """How many rows of a snapshot come after rowid `after` (what a restore from there reads)."""
        self._check(name, kind)
        return self.db.one(f'SELECT COUNT(*) FROM "{name}" WHERE {self.db.rowid} > ?', [after])[0]

    def lookup_records(self, name: str, ids: list[str]) -> dict[str, tuple[str | None, dict[str, Any]]]:
        """(document, metadata) already recorded in a records snapshot for these ids: a page
        replayed after a crash is computed from its original records, not from what was written."""
        found: dict[str, tuple[str | None, dict[str, Any]]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f'SELECT id, has_document, document, metadata FROM "{name}" WHERE id IN ({marks})', chunk)
            for rid, has_document, document, metadata in rows.fetchall():
                found[rid] = (document if has_document else None, json.loads(metadata))
        return found

    # field values --------------------------------------------------------------------------------

    def begin_values(self, name: str, field: str) -> None:
        self.db.create_table(name, VALUES_COLUMNS, ordered=True)
        self.db.execute(
            "INSERT INTO snapshots (name, kind, info) VALUES (?, 'values', ?) ON CONFLICT (name) DO NOTHING",
            [name, json.dumps({"field": field})],
        )

    def add_values(self, name: str, values: list[tuple[str, Any]] | list[tuple[str, Any, int | None]]) -> None:
        """(id, prior value or ABSENT[, position]) tuples. The position is the field's index among
        the record's metadata keys, so a restore puts it back where it was (the key order is part
        of what an application reads in JSON, e.g. LlamaIndex's node JSON)."""
        rows = [(v[0], int(v[1] is not ABSENT), None if v[1] is ABSENT else json.dumps(v[1], ensure_ascii=False),
                 v[2] if len(v) > 2 else None) for v in values]
        with self.db.transaction():
            self.db.executemany(f'INSERT INTO "{name}" ({_names(VALUES_COLUMNS)}) VALUES (?, ?, ?, ?) '
                                "ON CONFLICT (id) DO NOTHING", rows)

    def read_values(self, name: str, after: int, limit: int) -> tuple[list[tuple[str, Any, int | None]], int | None]:
        """(id, prior value or ABSENT, position or None) with rowid > after, and where to continue."""
        self._check(name, "values")
        rowid = self.db.rowid
        rows = self.db.execute(
            f'SELECT {rowid}, id, present, value, position FROM "{name}" WHERE {rowid} > ? ORDER BY {rowid} LIMIT ?',
            [after, limit]).fetchall()
        values = [(r[1], json.loads(r[3]) if r[2] else ABSENT, r[4]) for r in rows]
        return values, (rows[-1][0] if rows and len(rows) == limit else None)

    def lookup_values(self, name: str, ids: list[str]) -> dict[str, Any]:
        """Prior values already recorded for these ids (id -> value or ABSENT)."""
        found: dict[str, Any] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for rid, present, value in self.db.execute(
                    f'SELECT id, present, value FROM "{name}" WHERE id IN ({marks})', chunk).fetchall():
                found[rid] = json.loads(value) if present else ABSENT
        return found

