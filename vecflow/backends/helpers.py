"""Small helpers every adapter shares: one-line error text, URL redaction, JSON of numpy values."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vecflow.database import redacted_url
from vecflow.errors import ConfigError


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (the transport error under a client's wrapper)."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def redacted(url: str) -> str:
    """The URL without its password, for messages and state scopes (the ledger's rule)."""
    return redacted_url(url)


def json_default(value: Any) -> Any:
    """json.dumps(default=...): numpy scalars and arrays as plain values, anything else refused."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON-serialisable")


def option_bool(backend: str, option: str, value: bool | str | None) -> bool | None:
    """A boolean store option as vecflow.ini spells it (true/false, yes/no, on/off, 1/0)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{backend} store option {option}={value!r} is not a boolean (true or false)")


def fsync_directory(path: Path) -> None:
    """Make a rename or a new file in this folder durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# vecflow's store marker (runtime/markers.py) in a store that is a folder: a hidden file beside
# the collections' folders, which neither vecflow nor the frameworks list as a collection.
MARKER_FILE = ".vecflow-marker.json"


def read_marker_file(root: Path) -> str | None:
    try:
        return (root / MARKER_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write_marker_file(root: Path, text: str) -> None:
    """Write, fsync, rename: a kill leaves the old marker or the new one."""
    staging = root / f"{MARKER_FILE}.{os.getpid()}.tmp"
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, root / MARKER_FILE)
    fsync_directory(root)


def rows_by_ids(conn: Any, select: str, ids: list[str], chunk: int = 500) -> Iterator[tuple]:
    """The rows of `select`, a query ending in `IN`, for these ids: bound parameters in chunks
    below SQLite's variable limit. Not json_each, which cuts a string at its first NUL character
    (an id "a\\x00b" would match "a")."""
    for lo in range(0, len(ids), chunk):
        part = ids[lo:lo + chunk]
        yield from conn.execute(f"{select} ({','.join('?' * len(part))})", part)
