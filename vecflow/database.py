"""The SQL database behind vecflow's own bookkeeping: a SQLite file, or a PostgreSQL database.

The ledger (runtime/ledger.py), the snapshots (runtime/snapshots.py) and vecflow's state
(state.py) write their SQL once, in the subset both databases speak: `?` placeholders,
`INSERT ... ON CONFLICT`, `RETURNING`, double-quoted identifiers. A `Database` translates only
what differs: placeholders, column types, transactions and their write lock, the catalogue
(tables, columns), format versions, insertion order (`rowid`), sizes and errors. The rules about
what is recorded and when stay in the callers, the same for both.

A location is a path (a SQLite file) or a `postgresql://` URL. With PostgreSQL every component
lives in one schema of that database (`vecflow` unless the URL's `schema=` parameter names
another), so a second machine pointed at the same URL sees the same ledger, snapshots and state.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from vecflow.errors import ConfigError, LedgerError
from vecflow.read_only import connect_read_only, copy_into_memory

URL_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "vecflow"
INSTALL_HINT = "pip install 'vecflow[postgres]' (psycopg)"
# How long a write waits for another runner's transaction (SQLite busy_timeout, PostgreSQL lock_timeout).
WAIT_SECONDS = 30


def is_database_url(location: object) -> bool:
    """True for a `postgresql://` (or `postgres://`) URL, False for a path."""
    return isinstance(location, str) and location.lower().startswith(URL_SCHEMES)


def redacted_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def split_schema(url: str) -> tuple[str, str]:
    """(the URL libpq reads, the schema named by its `schema=` parameter or the default)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not schema or not all(c.isalnum() or c == "_" for c in schema) or schema[0].isdigit():
        raise ConfigError(f"ledger URL {redacted_url(url)}: schema={schema!r} must be letters, digits and _")
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema.lower()


def upsert_sql(table: str, columns: Sequence[str], keys: Sequence[str], replace: bool = True) -> str:
    """INSERT a row, or replace (replace=False: keep) the row with the same keys (both databases'
    ON CONFLICT form)."""
    names = ", ".join(f'"{c}"' for c in columns)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in keys)
    conflict = ", ".join(f'"{k}"' for k in keys)
    action = f"DO UPDATE SET {updates}" if updates and replace else "DO NOTHING"
    return (f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" * len(columns))}) '
            f"ON CONFLICT ({conflict}) {action}")


def open_database(location: str | Path | None, component: str, read_only: bool = False,
                  copy: bool = True) -> Database:
    """The database at a location; `component` ('ledger', 'snapshots', 'state') names it in
    messages and keys its format version.

    read_only (dry runs): nothing reaches the database. A SQLite file is read into memory (copy,
    so code that writes as it reads changes the copy only), or opened read-only (copy=False: a
    missing file reads as an empty database); PostgreSQL runs everything in one transaction that
    is rolled back when the database is closed."""
    if is_database_url(location):
        return PostgresDatabase(str(location), component, read_only=read_only)
    if read_only and location is not None:
        return SQLiteDatabase.read_only(Path(location), component, copy)
    return SQLiteDatabase(None if location is None else Path(location), component)


class Database:
    """One connection: statements run on their own (autocommit) unless inside `transaction()`."""

    kind = ""
    rowid = "rowid"  # the column giving insertion order, for paging a table by a cursor

    def __init__(self, where: str, component: str) -> None:
        self.where = where  # a path or a redacted URL: for messages
        self.component = component

    # statements --------------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.execute(sql, params).fetchone()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.execute(sql, params)
        names = [column[0] for column in cursor.description or ()]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    @contextlib.contextmanager
    def transaction(self, lock: bool = False) -> Iterator[Database]:
        """One transaction. lock=True first takes the write lock (SQLite: BEGIN IMMEDIATE on the
        file; PostgreSQL: an advisory lock of the schema), so two runners' check-then-write
        transactions, and their table creations, run one after the other."""
        self._begin(lock)
        try:
            yield self
            self.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # a connection that broke cannot roll back
                self.execute("ROLLBACK")
            raise

    def _begin(self, lock: bool) -> None:
        raise NotImplementedError

    # catalogue ---------------------------------------------------------------------------------

    def tables(self) -> set[str]:
        raise NotImplementedError

    def columns(self, table: str) -> set[str]:
        raise NotImplementedError

    def create_table(self, table: str, columns: dict[str, str], primary_key: str | None = None,
                     ordered: bool = False, compact: bool = False) -> None:
        """CREATE TABLE IF NOT EXISTS, with columns in SQLite's type names (translated here).
        ordered: the table is paged by `rowid` (insertion order); compact: SQLite's WITHOUT ROWID."""
        raise NotImplementedError

    def add_column(self, table: str, column: str, kind: str) -> None:
        self.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {self._type(kind)}')

    def _type(self, kind: str) -> str:
        return kind

    def format_version(self) -> int:
        """The component's format version (0: none recorded)."""
        raise NotImplementedError

    def set_format_version(self, version: int) -> None:
        raise NotImplementedError

    def after_explicit_ids(self, table: str, column: str) -> None:
        """Rows were inserted with explicit values of an auto-numbered column: new rows continue after them."""

    def size_of(self, tables: Iterable[str]) -> int:
        """Bytes these tables take on disk (SQLite: the whole file)."""
        raise NotImplementedError

    def reclaim_space(self) -> None:
        """Give the space of dropped tables back to the file system."""

    def close(self) -> None:
        raise NotImplementedError


class SQLiteDatabase(Database):
    """A SQLite file in WAL mode with synchronous=FULL (None: in memory, for one process)."""

    kind = "sqlite"

    def __init__(self, path: Path | None, component: str) -> None:
        super().__init__(":memory:" if path is None else str(path), component)
        self.path = path
        if path is not None:
            if path.is_dir():
                raise LedgerError(f"cannot open {component} {path}: it is a directory")
            path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.where, timeout=WAIT_SECONDS, isolation_level=None, check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout = {WAIT_SECONDS * 1000}")

    @classmethod
    def read_only(cls, path: Path, component: str, copy: bool) -> SQLiteDatabase:
        """The file's content without a way to change the file (see open_database)."""
        if path.is_dir():
            raise LedgerError(f"cannot open {component} {path}: it is a directory")
        database = cls.__new__(cls)
        Database.__init__(database, str(path), component)
        database.path = None  # nothing here is the file
        if copy or not path.is_file():
            database.conn = copy_into_memory(path)
        else:
            database.conn = connect_read_only(path)
        return database

    def durable(self) -> None:
        """WAL and synchronous=FULL: a committed transaction is on disk. Called after the
        component checked the file is its own (a foreign file is left as it was)."""
        if self.path is not None:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def _begin(self, lock: bool) -> None:
        self.conn.execute("BEGIN IMMEDIATE" if lock else "BEGIN")

    def tables(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.conn.execute(f'PRAGMA table_info("{table}")')}

    def create_table(self, table: str, columns: dict[str, str], primary_key: str | None = None,
                     ordered: bool = False, compact: bool = False) -> None:
        keys = [f'"{name}" {kind}' for name, kind in columns.items()] + ([primary_key] if primary_key else [])
        self.conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({", ".join(keys)}){" WITHOUT ROWID" * compact}')

    def format_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def set_format_version(self, version: int) -> None:
        self.conn.execute(f"PRAGMA user_version = {int(version)}")

    def size_of(self, tables: Iterable[str]) -> int:
        if self.path is None:
            return 0
        return sum(path.stat().st_size for path in (self.path, Path(f"{self.path}-wal")) if path.exists())

    def reclaim_space(self) -> None:
        self.conn.execute("VACUUM")

    def close(self) -> None:
        self.conn.close()


# SQLite's type names, as vecflow's tables use them, in PostgreSQL.
_PG_TYPES = {"INTEGER PRIMARY KEY": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "INTEGER": "BIGINT",
             "FLOAT": "DOUBLE PRECISION", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}


class PostgresDatabase(Database):
    """A schema of a PostgreSQL database, through psycopg; every commit is durable (synchronous_commit)."""

    kind = "postgresql"
    rowid = "seq"

    def __init__(self, url: str, component: str, read_only: bool = False) -> None:
        conninfo, self.schema = split_schema(url)
        super().__init__(redacted_url(url), component)
        self.read_only = read_only
        try:
            import psycopg
        except ImportError:
            raise ConfigError(f"a PostgreSQL ledger needs psycopg: {INSTALL_HINT}") from None
        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        try:
            self.conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=WAIT_SECONDS)
        except psycopg.OperationalError as exc:
            raise LedgerError(f"cannot reach the {component} database {self.where}: {_one_line(exc)}") from exc
        except (psycopg.Error, ValueError, TypeError) as exc:  # libpq's URL parser: ProgrammingError
            raise LedgerError(f"cannot use the {component} database URL {self.where}: {_one_line(exc)}") from exc
        # The write lock: one advisory lock per schema, which every component's check-then-write
        # transactions and table creations take (as SQLite's BEGIN IMMEDIATE locks the file).
        self._lock_key = f"vecflow:{self.schema}"
        try:
            self.execute(f"SET lock_timeout = '{WAIT_SECONDS}s'")
            if read_only:
                self.execute("BEGIN")  # rolled back by close(): nothing this connection does stays
            if self.one("SELECT 1 FROM pg_namespace WHERE nspname = ?", [self.schema]) is None:
                with contextlib.suppress(LedgerError):  # another runner created it a moment ago
                    self.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            self.execute(f'SET search_path TO "{self.schema}"')
        except BaseException:
            self.conn.close()
            raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            return _Decoded(self.conn.execute(_placeholders(sql), [_encode(value) for value in params]))
        except self._errors as exc:
            raise LedgerError(f"{self.component} database {self.where}: {_one_line(exc)}") from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [[_encode(value) for value in row] for row in rows]
        if not rows:
            return
        try:
            with self.conn.cursor() as cursor:
                cursor.executemany(_placeholders(sql), rows)
        except self._errors as exc:
            raise LedgerError(f"{self.component} database {self.where}: {_one_line(exc)}") from exc

    def _begin(self, lock: bool) -> None:
        self.execute("BEGIN")
        if lock:
            self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", [self._lock_key])

    @contextlib.contextmanager
    def transaction(self, lock: bool = False) -> Iterator[Database]:
        if not self.read_only:
            with super().transaction(lock) as database:
                yield database
            return
        # Inside the read-only session's own transaction (no write lock: it would be held to the end).
        self.execute("SAVEPOINT vecflow_step")
        try:
            yield self
            self.execute("RELEASE SAVEPOINT vecflow_step")
        except BaseException:
            with contextlib.suppress(Exception):
                self.execute("ROLLBACK TO SAVEPOINT vecflow_step")
            raise

    def tables(self) -> set[str]:
        return {row[0] for row in self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [self.schema]).fetchall()}

    def columns(self, table: str) -> set[str]:
        return {row[0] for row in self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            [self.schema, table]).fetchall()}

    def _type(self, kind: str) -> str:
        for sqlite_kind, pg_kind in _PG_TYPES.items():
            if kind == sqlite_kind or kind.startswith(sqlite_kind + " "):
                return pg_kind + kind[len(sqlite_kind):]
        return kind

    def create_table(self, table: str, columns: dict[str, str], primary_key: str | None = None,
                     ordered: bool = False, compact: bool = False) -> None:
        keys = [f'"{name}" {self._type(kind)}' for name, kind in columns.items()]
        if ordered:
            keys.insert(0, f'"{self.rowid}" BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE')
        keys += [primary_key] if primary_key else []
        self.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({", ".join(keys)})')

    def format_version(self) -> int:
        if "formats" not in self.tables():
            return 0
        row = self.one("SELECT version FROM formats WHERE component = ?", [self.component])
        return 0 if row is None else int(row[0])

    def set_format_version(self, version: int) -> None:
        self.create_table("formats", {"component": "TEXT PRIMARY KEY", "version": "INTEGER"})
        self.execute("INSERT INTO formats (component, version) VALUES (?, ?) ON CONFLICT (component) "
                     "DO UPDATE SET version = excluded.version", [self.component, version])

    def after_explicit_ids(self, table: str, column: str) -> None:
        self.execute(f"SELECT setval(pg_get_serial_sequence(?, ?), GREATEST((SELECT MAX(\"{column}\") "
                     f'FROM "{table}"), 1))', [f'"{self.schema}"."{table}"', column])

    def size_of(self, tables: Iterable[str]) -> int:
        names = list(tables)
        if not names:
            return 0
        marks = ",".join("?" * len(names))
        row = self.one(f"SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n "
                       f"ON n.oid = c.relnamespace WHERE n.nspname = ? AND c.relkind = 'r' AND c.relname IN ({marks})",
                       [self.schema, *names])
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self.read_only:
            with contextlib.suppress(Exception):
                self.conn.execute("ROLLBACK")
        self.conn.close()


# PostgreSQL text cannot hold NUL, which record ids and documents may: such a string (and one that
# starts with the escape character) is stored escaped. The encoding is injective, so equality and
# IN (...) compare as before, and every value read back is decoded.
_ESCAPE, _ESCAPED = "\ue000", {"\ue000": "\ue000\ue001", "\x00": "\ue000\ue002"}
_UNESCAPE = re.compile("\ue000([\ue001\ue002])")


def _encode(value: Any) -> Any:
    if isinstance(value, str) and ("\x00" in value or value.startswith(_ESCAPE)):
        return _ESCAPE + value.replace(_ESCAPE, _ESCAPED[_ESCAPE]).replace("\x00", _ESCAPED["\x00"])
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_ESCAPE):
        return _UNESCAPE.sub(lambda m: _ESCAPE if m.group(1) == "\ue001" else "\x00", value[1:])
    return value


class _Decoded:
    """A psycopg cursor whose rows come back decoded (see _encode)."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self.description = cursor.description

    def fetchone(self) -> tuple | None:
        row = self._cursor.fetchone()
        return None if row is None else tuple(_decode(value) for value in row)

    def fetchall(self) -> list[tuple]:
        return [tuple(_decode(value) for value in row) for row in self._cursor.fetchall()]

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())


def _placeholders(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 (a deliberate cache)
    """`?` -> `%s` (psycopg's placeholder); a literal % doubled."""
    if sql not in cache:
        cache[sql] = sql.replace("%", "%%").replace("?", "%s")
    return cache[sql]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def retry_while_busy(open_: Any, what: str, seconds: float = WAIT_SECONDS) -> Any:
    """Call open_() again while SQLite says the file is locked (two runners creating it at once)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return open_()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise LedgerError(f"cannot open {what}: {exc}") from exc
            time.sleep(0.05)
