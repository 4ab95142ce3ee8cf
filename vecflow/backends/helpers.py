"""Small helpers every adapter shares: one-line error text, URL redaction, JSON of numpy values."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (the transport error under a client's wrapper)."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def redacted(url: str) -> str:
    """The URL without its password, for messages and state scopes."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def json_default(value: Any) -> Any:
    """json.dumps(default=...): numpy scalars and arrays as plain values, anything else refused."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON-serialisable")
