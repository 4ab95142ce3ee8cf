"""`vecflow ledger copy`: move a project's history to another ledger database, verified and resumable.

What moves: the ledger's tables (applied set, attempts, steps, the identity), the snapshots and
vecflow's state; from a SQLite ledger that is `ledger.db` with `snapshots.db` and `state.db` beside
it, in a PostgreSQL ledger all of them in its schema. The lease is not copied (the copy holds
both leases while it runs, so no runner migrates either ledger meanwhile).

Every table is copied in pages ordered by its key; each page and the key it ended at are written
in one transaction of the target (`copy:<table>` in the target's meta table), so a copy that was
killed resumes where it stopped when the same command runs again. Snapshot rows keep their
insertion order (SQLite's rowid becomes PostgreSQL's seq and back), which restore cursors rely on.
The copy then verifies: for every table, the row count and an order-independent digest of its
rows are equal on both sides. Only then is the source marked as moved (`moved_to` in its meta
table): a project still pointed at it is refused, with the new URL in the message.

The target carries the source's identity, so the store markers the source wrote name the target
too: nothing has to run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vecflow.database import Database, is_database_url, upsert_sql
from vecflow.errors import LedgerError
from vecflow.runtime.ledger import FAILED, RUNNING, Ledger, Owner
from vecflow.runtime.snapshots import RECORDS_COLUMNS, VALUES_COLUMNS, SnapshotStore
from vecflow.state import VecflowState

PAGE_ROWS = 1000
LEASE_SECONDS = 120.0  # renewed page by page, like a migration's
LEDGER_TABLES = {  # table -> (columns, key columns)
    "applied": (("revision", "checksum", "path", "applied_at"), ("revision",)),
    "attempts": (("id", "revision", "direction", "user", "host", "pid", "started_at", "finished_at", "outcome",
                  "error", "checksum", "resumes", "undoes"), ("id",)),
    "steps": (("attempt_id", "step_index", "op", "description", "status", "cursor", "rows_done", "digest_before",
               "digest_after", "snapshot", "started_at", "finished_at"), ("attempt_id", "step_index")),
}
STATE_TABLES = {
    "record_state": (("scope", "kind", "id", "value"), ("scope", "kind", "id")),
    "collection_state": (("scope", "kind", "value"), ("scope", "kind")),
}


@dataclass
class Table:
    """One table to copy: its columns, the key it is paged by, and whether its rows keep their
    insertion order (the key is then the database's rowid column, copied as well)."""

    db_source: Database
    db_target: Database
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    ordered: bool = False


def copy_ledger(source: str, target: str, out: Callable[[str], None]) -> dict[str, int]:
    """Copy the history at `source` (a ledger.db path or a ledger URL) to `target`; rows per table."""
    if not is_database_url(source) and not Path(source).is_file():
        raise LedgerError(f"there is no ledger at {source}; name the ledger.db of the project to copy")
    if _same(source, target):
        raise LedgerError(f"{source} is both the source and the target of the copy; name two ledgers")
    with _opened(source, target) as (ledger_from, ledger_to, snaps_from, snaps_to, state_from, state_to):
        if ledger_from.moved_to == ledger_to.where:
            out(f"Ledger {ledger_from.where} was already copied to {ledger_to.where}: nothing to do")
            return {}
        _check(ledger_from, ledger_to)
        owner = Owner.current()
        ledger_from.acquire_lease(owner, LEASE_SECONDS)
        try:
            ledger_to.acquire_lease(owner, LEASE_SECONDS)
            try:
                tables = _tables(ledger_from, ledger_to, snaps_from, snaps_to, state_from, state_to)
                resumed = _progress(ledger_to.db, "copy:started") is not None
                _set_meta(ledger_to.db, "copy:started", ledger_from.identity)
                out(f"{'Resuming the copy of' if resumed else 'Copying'} ledger {ledger_from.identity} "
                    f"from {ledger_from.where} to {ledger_to.where}")
                for table in tables:
                    _copy_table(table, ledger_to.db, lambda: (ledger_from.check_lease(), ledger_to.check_lease()))
                counts = _verify(tables)
                _finish(ledger_from, ledger_to)
            finally:
                ledger_to.release_lease(owner)
        finally:
            ledger_from.release_lease(owner)
    return counts


def _same(source: str, target: str) -> bool:
    if is_database_url(source) or is_database_url(target):
        return source == target
    return Path(source).resolve() == Path(target).resolve()


def _beside(location: str, name: str) -> str:
    return location if is_database_url(location) else str(Path(location).parent / name)


@contextlib.contextmanager
def _opened(source: str, target: str) -> Iterator[tuple[Any, ...]]:
    with contextlib.ExitStack() as stack:
        opened = []
        for location in (source, target):
            ledger = Ledger(location)
            stack.callback(ledger.close)
            opened.append(ledger)
        for location in (source, target):
            snapshots = SnapshotStore(_beside(location, "snapshots.db"))
            stack.callback(snapshots.close)
            opened.append(snapshots)
        for location in (source, target):
            state = VecflowState(_beside(location, "state.db"))
            stack.callback(state.close)
            opened.append(state)
        ledger_from, ledger_to, snaps_from, snaps_to, state_from, state_to = opened
        yield ledger_from, ledger_to, snaps_from, snaps_to, state_from, state_to


def _check(source: Ledger, target: Ledger) -> None:
    """Refuse what cannot be copied exactly: a moving source, a target with other history."""
    moved = source.moved_to
    if moved is not None:
        raise LedgerError(f"ledger {source.where} was already copied to {moved}; copy from there")
    unfinished = [a for a in source.unfinished_attempts() if a["outcome"] in (RUNNING, FAILED)]
    if unfinished:
        row = unfinished[-1]
        raise LedgerError(f"ledger {source.where} has an unfinished {row['direction']} of {row['revision']} "
                          f"({row['outcome']}); finish it ('vecflow {row['direction']} ...') or abandon it ('vecflow "
                          "stamp current') before copying the ledger")
    started = _progress(target.db, "copy:started")
    if started == source.identity or target.identity == source.identity:
        return  # a copy of this ledger that stopped part-way, or was done: go on, verify again
    if target.attempts() or target.applied():
        raise LedgerError(f"ledger {target.where} already holds another project's history (ledger "
                          f"{target.identity}); copy into an empty database or schema (?schema=NAME)")


def _tables(ledger_from: Ledger, ledger_to: Ledger, snaps_from: SnapshotStore, snaps_to: SnapshotStore,
            state_from: VecflowState, state_to: VecflowState) -> list[Table]:
    tables = [Table(ledger_from.db, ledger_to.db, name, columns, key)
              for name, (columns, key) in LEDGER_TABLES.items()]
    tables.append(Table(snaps_from.db, snaps_to.db, "snapshots", ("name", "kind", "info"), (), ordered=True))
    for row in snaps_from.db.execute("SELECT name, kind FROM snapshots").fetchall():
        name, kind = row
        columns = RECORDS_COLUMNS if kind == "records" else VALUES_COLUMNS
        if name in snaps_from.db.tables():
            snaps_to.db.create_table(name, columns, ordered=True)
            tables.append(Table(snaps_from.db, snaps_to.db, name, tuple(columns), (), ordered=True))
    tables += [Table(state_from.db, state_to.db, name, columns, key)
               for name, (columns, key) in STATE_TABLES.items()]
    return tables


def _progress(db: Database, key: str) -> str | None:
    row = db.one("SELECT value FROM meta WHERE key = ?", [key])
    return None if row is None else row[0]


def _set_meta(db: Database, key: str, value: str) -> None:
    db.execute(upsert_sql("meta", ("key", "value"), ("key",)), [key, value])


def _pages(db: Database, table: Table, after: list | None = None) -> Iterator[list[tuple]]:
    """The table's rows in pages, ordered by its key (ordered tables: by rowid, which comes first
    in each row), starting after the key `after`."""
    key = (db.rowid,) if table.ordered else table.key
    columns = key + table.columns if table.ordered else table.columns
    select = ", ".join(c if c == db.rowid else f'"{c}"' for c in columns)
    order = ", ".join(c if c == db.rowid else f'"{c}"' for c in key)
    position = [columns.index(c) for c in key]
    while True:
        where, params = "", []
        if after is not None:
            where, params = f"WHERE ({order}) > ({', '.join('?' * len(key))})", list(after)
        rows = db.execute(f'SELECT {select} FROM "{table.name}" {where} ORDER BY {order} LIMIT ?',
                          [*params, PAGE_ROWS]).fetchall()
        if not rows:
            return
        yield [tuple(_plain(v) for v in row) for row in rows]
        if len(rows) < PAGE_ROWS:
            return
        after = [rows[-1][i] for i in position]


def _copy_table(table: Table, target_ledger: Database, keep_leases: Callable[[], object]) -> None:
    """Copy one table page by page. The resume point is in the target ledger's meta table: in the
    page's own transaction when the table is in the ledger's database, else written right after
    it (the rows are insert-or-ignore, so a page copied twice changes nothing)."""
    source, target = table.db_source, table.db_target
    write_columns = ((target.rowid,) + table.columns) if table.ordered else table.columns
    conflict = ("name",) if table.name == "snapshots" else ("id",) if table.ordered else table.key
    insert = upsert_sql(table.name, write_columns, conflict, replace=False)
    key = (0,) if table.ordered else tuple(table.columns.index(c) for c in table.key)
    progress_key = f"copy:{table.name}"
    saved = _progress(target_ledger, progress_key)
    shared = target is target_ledger
    for rows in _pages(source, table, json.loads(saved) if saved else None):
        keep_leases()
        after = json.dumps([rows[-1][i] for i in key])
        with target.transaction():
            target.executemany(insert, rows)
            if shared:
                _set_meta(target, progress_key, after)
        if not shared:
            _set_meta(target_ledger, progress_key, after)
    if table.ordered or table.name == "attempts":
        target.after_explicit_ids(table.name, target.rowid if table.ordered else "id")


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


def _digest(db: Database, table: Table) -> tuple[int, str]:
    """(rows, an order-independent digest of them); ordered tables include their position."""
    total, count = 0, 0
    for rows in _pages(db, table):
        for row in rows:
            text = repr(row).encode("utf-8", "surrogatepass")
            total = (total + int.from_bytes(hashlib.blake2b(text, digest_size=16).digest(), "big")) % (1 << 128)
            count += 1
    return count, f"{total:032x}"


def _verify(tables: list[Table]) -> dict[str, int]:
    counts = {}
    for table in tables:
        here, there = _digest(table.db_source, table), _digest(table.db_target, table)
        if here != there:
            raise LedgerError(f"the copy of table {table.name} does not match its source ({here[0]} rows, digest "
                              f"{here[1]}; copied: {there[0]} rows, digest {there[1]}); run the same command again "
                              "to resume the copy")
        counts[table.name] = here[0]
    return counts


def _finish(source: Ledger, target: Ledger) -> None:
    """Verified: the target takes the source's identity; the source records where it went."""
    with target.db.transaction(lock=True):
        target.db.execute("UPDATE meta SET value = ? WHERE key = 'ledger_id'", [source.identity])
        _set_meta(target.db, "copied_from", source.where)
    _set_meta(source.db, "moved_to", target.where)
