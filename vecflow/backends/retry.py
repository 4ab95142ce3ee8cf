"""Retrying transient backend failures: which errors are transient, and the backoff between tries.

A failure is transient when the store may answer the same request once it is back: a refused,
reset or timed-out connection, an HTTP 5xx (or 429), a Redis still loading its data. Adapters
report client failures as BackendError raised from the client's exception, so the classification
reads the exception chain by type and no adapter needs to know about retries. Errors that name
what is wrong with the request (a missing collection, a dimension, bad options) never are.

The wait before retry k (1-based) is drawn uniformly from [0, min(max_wait, BASE * 2 ** (k-1))]
("full jitter"): retries of many runners spread out, and no single wait exceeds max_wait.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from vecflow.backends.helpers import one_line
from vecflow.errors import BackendError, VecflowError

T = TypeVar("T")

# The cap of the first wait, in seconds; it doubles with every retry up to max_wait.
BASE_SECONDS = 0.5
# HTTP statuses worth another try: the server is overloaded, restarting or behind a proxy.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# gRPC codes of the same kind (Qdrant with prefer_grpc).
_RETRY_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})


def is_transient(exc: BaseException) -> bool:
    """Whether exc (or the client exception it was raised from) may succeed when retried."""
    if isinstance(exc, VecflowError) and type(exc) is not BackendError:
        return False  # a missing collection, a dimension, a config error: the same answer again
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if _transient_itself(current):
            return True
        todo += [current.__cause__, current.__context__, getattr(current, "source", None)]
    return False


def _transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):  # refused, reset, aborted, broken pipe; socket timeouts
        return True
    if _is(exc, "redis.exceptions", "ConnectionError", "TimeoutError", "BusyLoadingError", "TryAgainError"):
        return True  # BusyLoadingError: the server is loading its AOF or RDB after a restart
    if _is(exc, "httpx", "TransportError"):  # connect, read, write, pool timeouts; protocol errors
        return True
    if _is(exc, "httpx", "HTTPStatusError"):
        return exc.response.status_code in _RETRY_STATUSES  # type: ignore[attr-defined]
    if _is(exc, "qdrant_client.http.exceptions", "UnexpectedResponse"):
        return getattr(exc, "status_code", None) in _RETRY_STATUSES
    if _is(exc, "chromadb.errors", "ChromaError"):
        try:
            return int(exc.code()) in _RETRY_STATUSES  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            return False
    if _is(exc, "grpc", "RpcError") and callable(getattr(exc, "code", None)):
        return getattr(exc.code(), "name", "") in _RETRY_GRPC  # type: ignore[attr-defined]
    return False


def _is(exc: BaseException, module: str, *names: str) -> bool:
    """isinstance against a client's exception classes, without importing the client: an
    exception of a module that was never imported cannot be raised."""
    loaded = sys.modules.get(module)
    types = tuple(t for t in (getattr(loaded, name, None) for name in names) if isinstance(t, type))
    return bool(types) and isinstance(exc, types)


@dataclass
class RetryPolicy:
    """How often and how long to retry a store's transient failures (`retries`, `retry_max_seconds`
    in [vecflow]), and where to report each retry. retries = 0 turns retrying off.

    `sleep`, `random` and `clock` are injectable so the schedule is testable without waiting."""

    retries: int = 0
    max_wait: float = 30.0
    on_retry: Callable[[str], None] = lambda line: None
    sleep: Callable[[float], None] = time.sleep
    random: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic
    # Calls that failed transiently and were tried again; copy loops compare it across a page to
    # notice that the store was away (and may have come back without the data written earlier).
    retried: int = field(default=0, init=False)

    def cap(self, retry: int) -> float:
        """The longest wait before retry number `retry` (1-based)."""
        return min(self.max_wait, BASE_SECONDS * 2.0 ** (retry - 1))

    def wait(self, retry: int) -> float:
        """The wait before retry number `retry`: full jitter under its cap."""
        return self.random() * self.cap(retry)

    def longest_total_wait(self) -> float:
        """The most all the waits of one call can add up to (what the docs call the retry budget)."""
        return sum(self.cap(k) for k in range(1, self.retries + 1))

    def call(self, backend: str, action: str, attempt: Callable[[], T], settled: Callable[[], bool] | None = None,
             before_retry: Callable[[], None] | None = None) -> T | None:
        """attempt(), retried while it fails transiently. `settled`, for writes that are not
        idempotent as such (create, drop, rename), says before a retry whether the lost try
        already took effect; the call then returns None without trying again. `before_retry`
        runs after each wait (the runner's lease check: an error it raises ends the call).

        When the retries run out, a BackendError says so and tells to rerun once the store is
        back; a migration resumes from its last checkpoint."""
        started = self.clock()
        retry = 0
        while True:
            try:
                return attempt()
            except Exception as exc:
                retry += 1
                if not is_transient(exc) or self.retries == 0:
                    raise
                if retry > self.retries:
                    raise BackendError(
                        f"{one_line(exc)}; gave up after {self.retries} retries in {self.clock() - started:.1f} s "
                        f"({backend} {action}). Rerun the same command once the store is reachable: a "
                        "migration resumes from its last checkpoint") from exc
                delay = self.wait(retry)
                self.on_retry(f"retrying {backend} {action} in {delay:.1f} s (retry {retry} of {self.retries}): "
                              f"{one_line(exc)}")
                self.retried += 1
                self.sleep(delay)
            if before_retry is not None:
                before_retry()
            if settled is not None and _quietly(settled):
                return None


def _quietly(check: Callable[[], bool]) -> bool:
    """A settled check that fails (the store still away) counts as not settled."""
    try:
        return check()
    except Exception:
        return False
