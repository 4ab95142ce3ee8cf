"""VecflowState: what vecflow must remember to be exact, kept beside the ledger, never in the store.

The application's records and collection metadata hold only what the application wrote. Whatever
vecflow needs on top of that lives here, per collection (a *scope*):

- record entries, by kind and record id: the exact float32 bits of vectors a store changes on
  write (Chroma and Qdrant cosine collections), the original id behind a Qdrant point id, the
  original values of metadata a store cannot hold (a None, a dict, a mixed list);
- collection entries, by kind: the layout a collection was created in, its dimension while it is
  empty, the collection-level metadata of `Backend.collection_metadata`;
- write intents (vecflow/backends/journal.py): what an adapter is about to write, kept until the
  write and its bookkeeping are done, so a write a kill interrupted is finished on the next use.

A scope is `backend|location|collection`, so two stores never share entries. Every entry is
advisory: readers check that the stored data still matches what the entry was recorded for (a
vector hash, the stored string), so an application that rewrote a record since simply wins.

The file is SQLite (`state.db` next to the ledger), or, with a PostgreSQL ledger, two tables in
the ledger's database (vecflow/database.py), so every machine sharing the ledger reads the same
entries. `VecflowState.in_memory()` is for adapters opened without a project (tests, one-off
scripts): exact within the process only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vecflow.database import Database, SQLiteDatabase, is_database_url, open_database, upsert_sql

_TABLES = {
    "record_state": ({"scope": "TEXT NOT NULL", "kind": "TEXT NOT NULL", "id": "TEXT NOT NULL",
                      "value": "BLOB NOT NULL"}, "PRIMARY KEY (scope, kind, id)"),
    "collection_state": ({"scope": "TEXT NOT NULL", "kind": "TEXT NOT NULL", "value": "TEXT NOT NULL"},
                         "PRIMARY KEY (scope, kind)"),
}
_PUT_RECORD = upsert_sql("record_state", ("scope", "kind", "id", "value"), ("scope", "kind", "id"))
_PUT_COLLECTION = upsert_sql("collection_state", ("scope", "kind", "value"), ("scope", "kind"))
_CHUNK = 500  # ids per IN (...) query, below SQLite's variable limit
_PAGE_BYTES = 16384


class VecflowState:
    """Record and collection entries by scope; every write is durable when the call returns."""

    def __init__(self, location: str | Path | None, read_only: bool = False) -> None:
        """location: a SQLite path, a `postgresql://` URL (the ledger's), or None (in memory).
        read_only (dry runs): a SQLite file is worked on as an in-memory copy, PostgreSQL in a
        transaction rolled back at close: the file, or its absence, stays as it was."""
        self.path = None if location is None or read_only or is_database_url(location) else Path(location)
        self._db = open_database(location, "state", read_only=read_only)
        self._lock = threading.Lock()
        if isinstance(self._db, SQLiteDatabase):
            # Entries of a few KB (a Qdrant record's written vector, 3 KB at dim 768) fit a 16 KB
            # page whole; in 4 KB pages they spill to overflow pages: a quarter more file, a third
            # slower to write. Applies to a new file only (an existing one keeps its pages).
            self._db.execute(f"PRAGMA page_size = {_PAGE_BYTES}")
            self._db.durable()
        with self._db.transaction(lock=True):  # two runners creating the tables at once wait in turn
            for table, (columns, key) in _TABLES.items():
                self._db.create_table(table, columns, key, compact=True)

    @property
    def db(self) -> Database:
        """The database the entries are in (`vecflow ledger copy` reads and writes its tables)."""
        return self._db

    @classmethod
    def in_memory(cls) -> VecflowState:
        return cls(None)

    # record entries ----------------------------------------------------------------------------

    def get_records(self, scope: str, kind: str, ids: Iterable[str]) -> dict[str, bytes]:
        """The entries of this kind for those ids that have one."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, bytes] = {}
        with self._lock:
            for lo in range(0, len(wanted), _CHUNK):
                chunk = wanted[lo:lo + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT id, value FROM record_state WHERE scope=? AND kind=? AND id IN ({marks})",
                    (scope, kind, *chunk))
                found.update((rid, bytes(value)) for rid, value in rows.fetchall())
        return found

    def put_records(self, scope: str, kind: str, values: dict[str, bytes | None]) -> None:
        """Set entries; a None value removes that id's entry."""
        self.put_kinds(scope, {kind: values})

    def put_kinds(self, scope: str, kinds: dict[str, dict[str, bytes | None]]) -> None:
        """Set entries of several kinds (kind -> id -> value, None removes) in one transaction."""
        keep = [(scope, kind, rid, value) for kind, values in kinds.items() for rid, value in values.items()
                if value is not None]
        drop = [(scope, kind, rid) for kind, values in kinds.items() for rid, value in values.items()
                if value is None]
        if not keep and not drop:
            return
        with self._lock, self._transaction():
            if drop:
                # Bound ids, not json_each (which cuts a string at a NUL character).
                self._db.executemany("DELETE FROM record_state WHERE scope=? AND kind=? AND id=?", drop)
            if keep:
                self._db.executemany(_PUT_RECORD, keep)

    def forget_records(self, scope: str, ids: Iterable[str]) -> None:
        """Remove every kind of entry for these ids (the records were deleted)."""
        rows = [(scope, rid) for rid in dict.fromkeys(ids)]
        if rows:
            with self._lock, self._transaction():
                self._db.executemany("DELETE FROM record_state WHERE scope=? AND id=?", rows)

    def all_records(self, scope: str, kind: str) -> dict[str, bytes]:
        """Every entry of this kind in the scope (for kinds that stay small, like write intents)."""
        with self._lock:
            rows = self._db.execute("SELECT id, value FROM record_state WHERE scope=? AND kind=?",
                                      (scope, kind)).fetchall()
        return {rid: bytes(value) for rid, value in rows}

    def has_records(self, scope: str, kind: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM record_state WHERE scope=? AND kind=? LIMIT 1",
                                     (scope, kind)).fetchone()
        return row is not None

    # collection entries ------------------------------------------------------------------------

    def get_collection(self, scope: str, kind: str) -> Any:
        """The JSON value of a collection entry, or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM collection_state WHERE scope=? AND kind=?",
                                     (scope, kind)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_collection(self, scope: str, kind: str, value: Any) -> None:
        """Set a collection entry (a JSON value); None removes it."""
        with self._lock, self._transaction():
            if value is None:
                self._db.execute("DELETE FROM collection_state WHERE scope=? AND kind=?", (scope, kind))
            else:
                self._db.execute(_PUT_COLLECTION, (scope, kind, json.dumps(value, sort_keys=True)))

    # whole scopes ------------------------------------------------------------------------------

    def drop_scope(self, scope: str) -> None:
        """Forget a collection (it was dropped)."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM record_state WHERE scope=?", (scope,))
            self._db.execute("DELETE FROM collection_state WHERE scope=?", (scope,))

    def rename_scope(self, old: str, new: str) -> None:
        """Move a collection's entries to its new name (a native rename)."""
        with self._lock, self._transaction():
            for table in ("record_state", "collection_state"):
                self._db.execute(f"DELETE FROM {table} WHERE scope=?", (new,))
                self._db.execute(f"UPDATE {table} SET scope=? WHERE scope=?", (new, old))

    def copy_scope(self, old: str, new: str) -> None:
        """Make a collection's entries those of `old` as well (replacing any of `new`'s).

        Adapters call it just before a native rename: a kill after the store renamed and before
        rename_scope moved the entries then finds them under the new name already."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM record_state WHERE scope=?", (new,))
            self._db.execute("INSERT INTO record_state SELECT ?, kind, id, value FROM record_state "
                               "WHERE scope=?", (new, old))
            self._db.execute("DELETE FROM collection_state WHERE scope=?", (new,))
            self._db.execute("INSERT INTO collection_state SELECT ?, kind, value FROM collection_state "
                               "WHERE scope=?", (new, old))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> Any:
        return self._db.transaction(lock=True)
