"""Reading a collection's next pages while the caller handles the current one.

A copy loop reads a page from the source, then writes it to the target; `read_ahead` runs the
source's paging loop in a background thread, a bounded number of pages ahead, so the source's
reads overlap the target's writes wherever a client releases the GIL while it works (sockets,
SQLite, FAISS). Pages still arrive in order, each with the cursor of the page after it, so the
caller checkpoints exactly as it would over the plain loop, and its memory is `depth` pages more.

The reader thread does not renew the migration lease: the caller's thread does, page by page and
every second it waits for a page, on the thread that owns the ledger's connection (Backend._ahead).
An error the reader meets is raised in the caller at the page where it happened. Closing the
iterator (the caller stopped early) stops the reader before its next read.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_reader = threading.local()
_DONE = object()
_POLL_SECONDS = 0.1


def in_reader_thread() -> bool:
    """Whether this thread is a read-ahead reader (it leaves the lease to the caller's thread)."""
    return getattr(_reader, "active", False)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(pages: Iterator[T], depth: int = 2, while_waiting: Callable[[], None] | None = None,
               every: float = 1.0) -> Iterator[T]:
    """The items of `pages`, produced in a background thread up to `depth` items ahead.
    while_waiting is called on the caller's thread every `every` seconds the caller waits for an
    item (the lease is kept through a long read, e.g. one retrying while its store is away)."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        _reader.active = True
        try:
            for item in pages:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:  # raised in the caller, at the page where it happened
            offer(_Failed(exc))
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=read, name="vecflow-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = ready.get(timeout=every)
            except queue.Empty:
                if while_waiting is not None:
                    while_waiting()
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
