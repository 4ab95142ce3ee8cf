"""Stores: backends opened lazily by store name, and `store:collection` references resolved.

Every store gets a retry policy from [vecflow] retries and retry_max_seconds: transient failures
(opening included) are retried with backoff and each retry is reported on one line. Every store
gets [vecflow] batch_size too, when set (else its adapter chooses its page and write sizes).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import cast

from vecflow.backends import Backend, open_backend
from vecflow.backends.retry import RetryPolicy
from vecflow.config import Config
from vecflow.state import VecflowState


def split_ref(ref: str, default_store: str) -> tuple[str, str]:
    """'store:collection' -> (store, collection); a bare 'collection' uses the default store."""
    store, sep, collection = ref.partition(":")
    return (store, collection) if sep else (default_store, ref)


def sibling_ref(ref: str, collection: str) -> str:
    """A reference to another collection in the same store as ref."""
    store, sep, _ = ref.rpartition(":")
    return f"{store}:{collection}" if sep else collection


class Stores:
    """The open connections of one command run; close() releases them all."""

    def __init__(self, config: Config, state: VecflowState | None = None,
                 out: Callable[[str], None] | None = None, read_only: bool = False) -> None:
        """out receives the retry lines (the runner passes its own output); stderr when None.
        read_only (dry runs): stores are opened for reading only and vecflow's state is an
        in-memory copy of state.db, so nothing is written anywhere."""
        self.config = config
        self.read_only = read_only
        self._out = out or _to_stderr
        self._open: dict[str, Backend] = {}
        self._write_guard: Callable[[], None] | None = None
        self._read_observer: Callable[[int], None] | None = None
        self._full_read_observer: Callable[[str], None] | None = None
        self._state = state

    @property
    def state(self) -> VecflowState:
        """vecflow's state for every store of the project: `state.db` beside the ledger (or in
        the PostgreSQL ledger's database)."""
        if self._state is None:
            self._state = VecflowState(self.config.beside_ledger("state.db"), read_only=self.read_only)
        return self._state

    def backend(self, store: str | None = None) -> Backend:
        name = store or self.config.default_store
        if name not in self._open:
            store_config = self.config.store(name)
            policy = self.retry_policy()
            backend = cast(Backend, policy.call(
                store_config.backend, f"connect to store {name!r}",
                lambda: open_backend(store_config.backend, store_config.options, self.state, self.config.here, name,
                                     read_only=self.read_only)))
            backend.set_retry_policy(policy)
            backend.set_batch_size(self.config.batch_size)
            self._open[name] = backend
            self._open[name].write_guard = self._write_guard
            self._open[name].read_observer = self._read_observer
            self._open[name].full_read_observer = self._full_read_for(name)
        return self._open[name]

    def guard_writes(self, guard: Callable[[], None] | None) -> None:
        """Call guard before every write to any store (and on every scanned page): the runner's
        lease check, which raises once the lease is lost."""
        self._write_guard = guard
        for backend in self._open.values():
            backend.write_guard = guard

    def observe_reads(self, observer: Callable[[int], None] | None) -> None:
        """Call observer with the record count of every page any store's scan returns (the
        runner's progress display)."""
        self._read_observer = observer
        for backend in self._open.values():
            backend.read_observer = observer

    def observe_full_reads(self, observer: Callable[[str], None] | None) -> None:
        """Call observer with `store:collection` whenever a scan reads a whole collection (the
        runner's account of the full reads each step made)."""
        self._full_read_observer = observer
        for name, backend in self._open.items():
            backend.full_read_observer = self._full_read_for(name)

    def _full_read_for(self, store: str) -> Callable[[str], None] | None:
        observer = self._full_read_observer
        return None if observer is None else lambda collection: observer(f"{store}:{collection}")

    def retry_policy(self) -> RetryPolicy:
        """A new policy (one per store: each counts its own retries) from the configuration."""
        return RetryPolicy(self.config.retries, self.config.retry_max_seconds, on_retry=self._out)

    def resolve(self, ref: str) -> tuple[Backend, str]:
        store, collection = split_ref(ref, self.config.default_store)
        return self.backend(store), collection

    def canonical(self, ref: str) -> str:
        store, collection = split_ref(ref, self.config.default_store)
        return f"{store}:{collection}"

    def close(self) -> None:
        for backend in self._open.values():
            backend.close()
        self._open.clear()
        if self._state is not None:
            self._state.close()
            self._state = None


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
