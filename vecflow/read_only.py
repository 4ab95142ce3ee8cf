"""Reading SQLite files without changing them or anything beside them (dry runs).

Opening a SQLite database in WAL mode the ordinary way creates `-wal` and `-shm` files next to
it, and even SQLite's read-only mode leaves them behind. A closed database (no `-wal` file) is
read as immutable: no lock, no side file. One with a `-wal` file (a writer has it open, or was
killed) is read in read-only mode, which uses the side files already there and adds none.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection to an existing database file that cannot write to it."""
    path = Path(path).resolve()
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "mode=ro&immutable=1"
    return sqlite3.connect(f"{path.as_uri()}?{mode}", uri=True, isolation_level=None, check_same_thread=False,
                           timeout=30)


def copy_into_memory(path: Path) -> sqlite3.Connection:
    """An in-memory database holding what the file holds (empty when there is no file): code that
    writes as it reads (format upgrades, bookkeeping) changes the copy only."""
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    if Path(path).is_file():
        source = connect_read_only(path)
        try:
            source.backup(memory)
        finally:
            source.close()
    return memory
