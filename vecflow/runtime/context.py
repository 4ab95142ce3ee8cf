"""StepContext: what a running op sees, and the checkpointed batch loops ops are built from.

A step's progress is a small JSON state (scan cursor, phase, counters) saved in the ledger after
every committed batch. On resume the op receives the saved state and continues from it, so every
loop here must be idempotent for the batch that was written but not yet checkpointed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vecflow.backends import Backend
from vecflow.batch import Batch
from vecflow.errors import CollectionNotFoundError, LockError, VecflowError
from vecflow.progress import Progress, Task
from vecflow.runtime.ledger import DONE, Ledger, Owner
from vecflow.runtime.rewrite_digest import RewriteTally, unfinished_tallies
from vecflow.runtime.snapshots import SnapshotStore
from vecflow.runtime.stores import Stores

# The step-state key of the digests an op computed before the step (record_digest_before).
DIGESTS_BEFORE = "digests_before"
# Records per page of a loop no store chooses for (a snapshot's own digest, an embedder's calls),
# when the project sets no batch_size.
DEFAULT_BATCH_SIZE = 500


class StepContext:
    def __init__(
        self,
        *,
        stores: Stores,
        ledger: Ledger,
        snapshots: SnapshotStore,
        owner: Owner,
        lease_seconds: float,
        attempt_id: int,
        step_index: int,
        batch_size: int | None,
        snapshot: str | None,
        state: dict[str, Any],
        rows_done: int,
        resumed: bool,
        script_dir: Path,
        verify: bool = True,
        note: Callable[[str], None] = lambda line: None,
        progress: Progress | None = None,
    ) -> None:
        self.stores = stores
        self.ledger = ledger
        self.snapshots = snapshots
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.attempt_id = attempt_id
        self.step_index = step_index
        # The project's batch_size; None: each store's adapter chooses (page_size).
        self.batch_size = batch_size
        self.snapshot = snapshot
        self.state = state
        self.rows_done = rows_done
        self.resumed = resumed
        self.script_dir = script_dir
        self.verify = verify
        self.note = note
        # Final digests an op already computed (canonical ref -> text); the runner skips rescanning.
        self.known_digests: dict[str, str] = {}
        # The runner's display: the step's task counts rows_done; track() opens tasks inside it.
        self.progress = progress or Progress()

    def resolve(self, ref: str) -> tuple[Backend, str]:
        return self.stores.resolve(ref)

    def require(self, ref: str) -> tuple[Backend, str]:
        backend, name = self.resolve(ref)
        if not backend.has_collection(name):
            raise CollectionNotFoundError(f"collection {ref!r} does not exist")
        return backend, name

    def page_size(self, ref: str | None = None) -> int:
        """Records per page, and so per checkpoint, of a loop over collection `ref` or of one
        that writes into it from a snapshot or a file: the project's batch_size when set, else
        the size the store's adapter reads best (Backend.read_batch_size; its upsert splits a
        page into the requests it writes best). Without ref: batch_size, else DEFAULT_BATCH_SIZE."""
        if ref is None:
            return self.batch_size or DEFAULT_BATCH_SIZE
        backend, name = self.resolve(ref)
        return backend.read_batch_size(name, self.batch_size)

    def know_digest(self, ref: str, digest: str) -> None:
        """Tell the runner a collection's digest after this step, computed while verifying: a
        logical digest text, or a whole `logical|native` pair (which spares the runner's read)."""
        self.known_digests[self.stores.canonical(ref)] = digest

    def record_digest_before(self, ref: str, digest: str) -> None:
        """The `logical|native` digest before this step of a collection the op declared in
        `digested_while_running`, computed as it read it; kept in the step state (saved with the
        next checkpoint), where the runner finds it (`digests_before`)."""
        self.state.setdefault(DIGESTS_BEFORE, {})[self.stores.canonical(ref)] = digest

    @property
    def digests_before(self) -> dict[str, str]:
        return dict(self.state.get(DIGESTS_BEFORE, {}))

    def save(self, rows: int = 0, **changes: Any) -> None:
        """Record progress after a durable write; also renews the runner's lease."""
        self.state.update(changes)
        self.rows_done += rows
        self.ledger.checkpoint(self.attempt_id, self.step_index, json.dumps(self.state), self.rows_done)
        self.ledger.heartbeat(self.owner, self.lease_seconds)
        self.progress.rows(self.rows_done)

    def expect(self, rows: int | Callable[[], int | None] | None) -> None:
        """Tell the progress display about how many more rows this step will count from here
        (a function is called only when progress is shown)."""
        more = self.progress.measure(rows)
        if more is not None:
            self.progress.expect(self.rows_done + more)

    @contextlib.contextmanager
    def track(self, what: str, total: int | Callable[[], int | None] | None = None) -> Iterator[Task]:
        """Show a long read inside this step (a verification pass, a snapshot capture): it counts
        the records the stores' scans return meanwhile, against total when given."""
        with self.progress.task(what, total, reads=True) as task:
            yield task

    # loops -------------------------------------------------------------------------------------

    def rewrite_records(self, ref: str, transform: Callable[[Batch], Batch | None], key: str = "scan",
                        metadata_only: bool = False, digest: bool = False) -> None:
        """Scan a collection and write what transform returns for each page, checkpointing.

        transform gets a page and returns the changed records (or None); it must give the same
        result when called again on a page it already rewrote. With metadata_only, only their
        metadata is written (vectors and documents are left untouched in the store).

        With digest, the pass also takes the collection's digests before the step and after it
        (runtime/rewrite_digest.py), for an op that declares ref in `digested_while_running`
        and writes it only through this pass: the runner then reads it neither before nor after.
        """
        backend, name = self.resolve(ref)
        if digest and not backend.has_collection(name):
            self.record_digest_before(ref, "absent")
            self.save()
        backend, name = self.require(ref)
        size = backend.rewrite_batch_size(name, self.batch_size)
        tally = RewriteTally.load(self.state, key, self.stores.canonical(ref), size, self.verify) if digest else None
        if self.state.get(f"{key}_done"):
            if tally is not None:
                self._digested(ref, tally)
            return
        if self.state.get(key) is None:
            self.expect(lambda: backend.count(name))
        try:
            for native, cursor in backend.native_pages(name, tally.size if tally else size, self.state.get(key)):
                page = native.batch
                before = tally.page_before(native) if tally is not None else None
                changed = transform(page) if len(page) else None
                written = list(changed.ids) if changed is not None else []
                back = None  # the rewritten records read back, when the write did it
                if written:
                    if tally is not None and tally.hold(before, native, cursor):
                        tally.save_into(self.state, key)
                        self.save()
                    if metadata_only and tally is not None and tally.after is not None:
                        back = backend.rewrite_metadata(name, native, changed.ids, changed.metadatas)
                    elif metadata_only:
                        backend.update_metadata(name, changed.ids, changed.metadatas)
                    else:
                        backend.upsert(name, changed)
                if tally is not None:
                    tally.fold(before, tally.page_after(backend, name, native, written, back))
                    tally.save_into(self.state, key)
                    if cursor is None:
                        self._digested(ref, tally)
                self.save(len(page), **{key: cursor, f"{key}_done": cursor is None})
        except LockError:
            raise  # the lease is gone: nothing more is read or recorded
        except VecflowError:
            if tally is not None:
                self._finish_digest_before(ref, backend, name, tally, self.state.get(key))
            raise

    def _digested(self, ref: str, tally: RewriteTally) -> None:
        """A rewrite pass reached its end: its digests before and after are the step's."""
        if tally.before is not None and self.stores.canonical(ref) not in self.digests_before:
            self.record_digest_before(ref, tally.before.to_text())
        if tally.lost:
            self.note(f"{ref}: records were added or removed while this step was stopped, so its digest "
                      "before could not be completed; undoing the step will not be verified for it")
        if tally.after is not None:
            self.know_digest(ref, tally.after.to_text())

    def _finish_digest_before(self, ref: str, backend: Backend, name: str, tally: RewriteTally,
                              cursor: str | None) -> None:
        """The op failed part-way through its rewrite: complete the digest before from the pages it
        had not reached (unchanged), so rolling the step back can be verified. A store that fails
        this read too leaves it to the runner's rollback (finish_digests_before)."""
        if self.stores.canonical(ref) in self.digests_before:
            return
        try:
            pair = tally.finish_before(backend, name, cursor)
        except LockError:
            raise
        except VecflowError:
            return
        if pair is not None:
            self.record_digest_before(ref, pair.to_text())
            self.save()

    def copy_into_snapshot(self, ref: str, key: str = "snapshot_scan") -> None:
        """Stream every record of a collection into this step's records snapshot."""
        backend, name = self.require(ref)
        self.snapshots.begin_records(self.snapshot, backend.describe(name), backend.layout_of(name).layout.name)
        if self.state.get(f"{key}_done"):
            return
        if self.state.get(key) is None:
            self.expect(lambda: backend.count(name))
        for page, cursor in backend.pages_ahead(name, self.page_size(ref), self.state.get(key)):
            if len(page):
                self.snapshots.add_records(self.snapshot, page)
            self.save(len(page), **{key: cursor, f"{key}_done": cursor is None})

    def rewrite_from_values(self, ref: str, snapshot: str, rewrite: Callable[[dict, Any, int | None], dict],
                            key: str = "after") -> None:
        """For every record listed in a values snapshot, write rewrite(metadata, snapshotted value,
        its key position) as its metadata (vectors untouched), checkpointing; records deleted since
        are skipped."""
        backend, name = self.require(ref)
        after = self.state.get(key, 0)
        if after is not None:
            self.expect(lambda: self.snapshots.rows_after(snapshot, "values", after))
        while after is not None:
            values, after = self.snapshots.read_values(snapshot, after, self.page_size(ref))
            value_of = {rid: (value, position) for rid, value, position in values}
            page = backend.get(name, list(value_of))
            if len(page):
                backend.update_metadata(name, page.ids, [rewrite(meta, *value_of[rid])
                                                         for rid, meta in zip(page.ids, page.metadatas)])
            self.save(len(page), **{key: after})

    def restore_from_snapshot(self, ref: str, snapshot: str, key: str = "restore_after") -> None:
        """Upsert every record of a records snapshot into a collection, checkpointing."""
        backend, name = self.resolve(ref)
        after = self.state.get(key, 0)
        if after is not None:
            self.expect(lambda: self.snapshots.rows_after(snapshot, "records", after))
        while after is not None:
            page, after = self.snapshots.read_records(snapshot, after, self.page_size(ref))
            if len(page):
                backend.upsert(name, page)
            self.save(len(page), **{key: after})


def finish_rewrite_digests(ledger: Ledger, stores: Stores, attempt_id: int, required: bool = True) -> None:
    """Complete the digest before of each rewrite pass (rewrite_records with digest) that a step of
    an attempt left part-way, killed or failed, by reading what the pass had not reached, which is
    still as it was: the runner does it before it rolls the attempt back, a stamp before it may
    adopt it (not required: a store it cannot read leaves that digest out)."""
    for row in ledger.steps(attempt_id):
        state = json.loads(row["cursor"] or "{}")
        changed = False
        for key, tally in unfinished_tallies(state) if row["status"] != DONE else []:
            if tally.ref in state.get(DIGESTS_BEFORE, {}):
                continue
            try:
                backend, name = stores.resolve(tally.ref)
                pair = tally.finish_before(backend, name, state.get(key)) if backend.has_collection(name) else None
            except LockError:
                raise
            except VecflowError:
                if required:
                    raise
                continue
            if pair is not None:
                state.setdefault(DIGESTS_BEFORE, {})[tally.ref] = pair.to_text()
                changed = True
        if changed:
            ledger.checkpoint(attempt_id, row["step_index"], json.dumps(state), row["rows_done"])
