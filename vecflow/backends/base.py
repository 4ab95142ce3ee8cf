"""The Backend contract: public methods that validate once, protected primitives adapters implement.

Operations are written once on top of the public methods (see DESIGN.md). Each public method checks
its input (metric, dimension, finite vectors, repeated ids, k, batch_size, the collection's
existence) and then calls a small protected primitive (`_scan`, `_upsert`, ...) that only translates
between vecflow and the store. Adapters never interpret migration semantics, and every adapter
passes the shared contract suite in tests/backends/contract.py.

Two views of a record:
- the *logical* record (a Batch row: id, vector, document, metadata, extras), what ops work on and
  the logical digest hashes;
- the *native* record (`NativePage`: the store's own id and field map, exactly as stored), what
  the application reads and the native digest hashes. A layout (vecflow/layouts) maps one to the
  other; adapters of stores with framework layouts (Chroma, Qdrant) implement `_scan_native`.

What vecflow must remember to be exact lives in `self.state` (vecflow/state.py), never in the store.

Transient failures (the store unreachable, timing out, answering 5xx) are retried here, around
each primitive a public method calls, as the store's retry policy says (vecflow/backends/retry.py,
set by runtime/stores.py from [vecflow] retries); adapters only report their client's exceptions
as BackendError raised from them.
"""

from __future__ import annotations

import contextlib
import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import numpy as np

from vecflow.backends.read_ahead import in_reader_thread, read_ahead
from vecflow.backends.retry import RetryPolicy
from vecflow.batch import Batch, metadata_problem
from vecflow.errors import CollectionExistsError, CollectionNotFoundError, InvalidDataError, OperationError
from vecflow.layouts import AUTO, Detected, Layout, Native, check_layout_name, detect_layout, get_layout
from vecflow.state import VecflowState

METRICS = ("cosine", "l2", "ip")
# How many records layout detection samples.
DETECTION_SAMPLE = 20
# Pages a read-ahead loop holds beyond the one being handled (memory: this many pages more).
READ_AHEAD_PAGES = 2


@dataclass(frozen=True)
class CollectionInfo:
    """What describe() reports: enough to recreate the collection elsewhere."""

    name: str
    dim: int
    metric: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class NativePage:
    """A page of records as the store holds them: native ids (as text) and native parts, plus the
    logical batch the layout reads from them (same order)."""

    batch: Batch
    native_ids: list[str]
    natives: list[Native]

    @classmethod
    def concat(cls, pages: list[NativePage]) -> NativePage:
        """The records of these pages (at least one), in order, as one page."""
        return cls(Batch.concat([page.batch for page in pages]), [rid for page in pages for rid in page.native_ids],
                   [native for page in pages for native in page.natives])

    def take(self, positions: list[int]) -> NativePage:
        """The records at these positions, in that order."""
        return NativePage(self.batch.take(positions), [self.native_ids[i] for i in positions],
                          [self.natives[i] for i in positions])


# The page size a copy may always read (copy_batch_size): pages of 1,000 read as fast as larger
# ones from every adapter measured (docs/backends.md, "Batch sizes").
COPY_PAGE_FLOOR = 1000


# One query hit: (record id, score). Scores follow the metric: distance for l2 (squared
# Euclidean) and cosine (1 - cosine similarity), smaller is closer; similarity (dot product) for
# ip, larger is closer. Results are sorted best first.
Hit = tuple[str, float]
T = TypeVar("T")


class Backend(ABC):
    """A connection to one store. Constructed with the store's options from vecflow.ini."""

    name: ClassVar[str]
    # True when the store normalises vectors of cosine collections on write and vecflow cannot
    # give the written bits back (verification then compares vectors within a tolerance).
    normalises_cosine: ClassVar[bool] = False
    # True when the store has a column for the text (Chroma's documents); False when the text
    # lives in the field map (a Qdrant payload).
    has_text_slot: ClassVar[bool] = True
    # The layouts this adapter can read and write.
    layouts: ClassVar[tuple[str, ...]] = ("raw",)
    # Records per scanned page and per write request this store handles best, when the project
    # sets no batch_size (read_batch_size, write_batch_size). Adapters state their own numbers,
    # measured in docs/performance.md#batch-sizes; _read_batch_size / _write_batch_size may
    # depend on the collection, _write_batch_limit is a limit the store enforces.
    preferred_read_batch: ClassVar[int] = 1000
    preferred_write_batch: ClassVar[int] = 1000
    # Records per page of a pass that rewrites a collection in place (rewrite_batch_size); None:
    # the read size.
    preferred_rewrite_batch: ClassVar[int | None] = None

    _state: VecflowState | None = None
    _state_root: Path | None = None
    _layout_option: str | None = None
    _layout_cache: dict[str, Detected] | None = None
    _retry_policy: RetryPolicy | None = None
    _in_retried_call: bool = False
    _batch_size: int | None = None
    # Set by the runner while it holds the migration lease: raises LockError once the lease is
    # lost, so a runner that lost it stops before its next write to the store (fencing).
    write_guard: Callable[[], None] | None = None
    # Told how many records each scanned page held (the runner's progress display counts them).
    read_observer: Callable[[int], None] | None = None
    # Called with the collection's name when a scan from its first page reaches its last (a full read).
    full_read_observer: Callable[[str], None] | None = None
    _read_only: bool = False

    @classmethod
    def open_read_only(cls, **options: Any) -> Backend:
        """Open the store for reading only (dry runs): every write raises, and nothing is written
        on the way, not even what opening a store usually creates (a missing store folder stays
        missing and reads as a store without collections). Adapters whose client writes to the
        store as it opens it override this."""
        backend = cls.__new__(cls)
        backend._read_only = True
        backend.__init__(**options)  # type: ignore[misc]
        return backend

    # configuration shared by every adapter ------------------------------------------------------

    def _before_write(self) -> None:
        if self._read_only:
            raise OperationError(f"{self.name} store {self.location} is read-only here (the source of a "
                                 "verification); vecflow tried to write to it, which is a bug")
        if self.write_guard is not None:
            self.write_guard()

    @contextlib.contextmanager
    def read_only(self) -> Iterator[None]:
        """Within: nothing is written to the store, derived files (FAISS's saved index) included;
        a write raises. Verification reads a copy's source this way."""
        previous, self._read_only = self._read_only, True
        try:
            yield
        finally:
            self._read_only = previous

    def _keep_lease(self) -> None:
        """Long scans (digests, verification, snapshots) renew the lease the same way, page by page
        (not from a read-ahead thread: the caller's writes renew it on the ledger's thread)."""
        if self.write_guard is not None and not in_reader_thread():
            self.write_guard()

    @property
    def state(self) -> VecflowState:
        """vecflow's state for this store (an in-memory one until the runner attaches the project's)."""
        if self._state is None:
            self._state = VecflowState.in_memory()
        return self._state

    def attach_state(self, state: VecflowState, project_root: Path | None = None) -> None:
        """Use the project's state. Stores inside `project_root` are scoped by their path relative
        to it, so moving or copying the project folder keeps its state valid."""
        self._state = state
        self._state_root = project_root

    @property
    def location(self) -> str:
        """Where the store is (a path, or a URL without its password), for messages and state scopes."""
        return str(getattr(self, "_where", ""))

    def scope(self, name: str) -> str:
        """The state scope of one collection of this store."""
        return f"{self.name}|{self._scope_location()}|{name}"

    def _scope_location(self) -> str:
        where = self.location
        root = self._state_root
        if root is None or not os.path.isabs(where):
            return where
        path, sep, rest = where.partition(" (")  # Chroma adds " (tenant ..., database ...)"
        try:
            relative = Path(path).resolve().relative_to(Path(root).resolve())
        except ValueError:
            return where
        return f"project:{relative.as_posix()}{sep}{rest}"

    def set_layout_option(self, layout: str | None) -> None:
        """The store section's `layout =` (auto, raw, langchain, llamaindex)."""
        check_layout_name(layout)
        if layout not in (None, AUTO) and layout not in self.layouts:
            raise OperationError(f"{self.name} store: layout {layout!r} is not supported here; "
                                 f"{self.name} supports {', '.join(self.layouts)}")
        self._layout_option = layout

    def set_retry_policy(self, policy: RetryPolicy | None) -> None:
        """Retry this store's transient failures as policy says (None, the default: never)."""
        self._retry_policy = policy

    def set_batch_size(self, batch_size: int | None) -> None:
        """The project's `batch_size` ([vecflow] batch_size, -x batch_size=N): every page read
        from this store and every write request to it is that size (a write within the store's
        own limit). None, the default: the adapter chooses (read_batch_size, write_batch_size)."""
        if batch_size is not None and not _is_size(batch_size):
            raise OperationError(f"{self.name} store {self.location}: batch_size must be a positive integer or "
                                 f"None, got {batch_size!r}")
        self._batch_size = None if batch_size is None else int(batch_size)

    @property
    def batch_size(self) -> int | None:
        """The project's batch_size set on this store, or None when the adapter chooses."""
        return self._batch_size

    def read_batch_size(self, name: str, configured: int | None = None) -> int:
        """Records per page for a loop over collection `name`, and so per checkpoint of a step
        that reads it: the resolver of "configured or the adapter's choice". `configured` (a
        caller's own size, e.g. StepContext.batch_size) when given, else the project's batch_size
        set on this store, else the size this adapter reads best. Pass it to `pages(name, size)`."""
        for size in (configured, self._batch_size):
            if size is not None:
                return check_batch_size(self.name, name, size, "batch_size", "read")
        return check_batch_size(self.name, name, self._read_batch_size(name), "the adapter's read batch size", "read")

    def copy_batch_size(self, name: str, write_size: int, configured: int | None = None) -> int:
        """Records per page when copying collection `name` into a store that writes `write_size`
        records per request: read_batch_size, but when neither the caller nor the project set a
        size, at most max(write_size, COPY_PAGE_FLOOR): a page much larger than the target writes
        at once only holds memory (FAISS's pages of 5,000 copied into Chroma's writes of 1,000 held
        129 MB more at dim 768, for no speed: docs/backends.md, "Batch sizes")."""
        size = self.read_batch_size(name, configured)
        if configured is not None or self._batch_size is not None:
            return size
        return min(size, max(write_size, COPY_PAGE_FLOOR))

    def rewrite_batch_size(self, name: str, configured: int | None = None) -> int:
        """Records per page, and so per checkpoint, of a pass that reads collection `name` and
        writes each page back into it (StepContext.rewrite_records): as read_batch_size, with the
        size this adapter rewrites best when neither is set (its writes weigh there too)."""
        if configured is not None or self._batch_size is not None or self.preferred_rewrite_batch is None:
            return self.read_batch_size(name, configured)
        return check_batch_size(self.name, name, self.preferred_rewrite_batch, "the adapter's rewrite batch size",
                                "rewrite")

    def write_batch_size(self, name: str, configured: int | None = None) -> int:
        """Records per write request when upserting into collection `name`: `configured` when
        given, else the project's batch_size, else the size this adapter writes best; never more
        than the store accepts in one request (Chroma's `get_max_batch_size()`). `upsert` splits
        a larger batch into requests of this size itself; callers may pass pages of any size."""
        size = next((s for s in (configured, self._batch_size) if s is not None), None)
        what = "batch_size"
        if size is None:
            size, what = self._write_batch_size(name), "the adapter's write batch size"
        size = check_batch_size(self.name, name, size, what, "write")
        limit = self._write_batch_limit(name)
        return size if limit is None else min(size, check_batch_size(self.name, name, limit, "the store's batch limit",
                                                                     "write"))

    @property
    def retried_calls(self) -> int:
        """How many calls to this store failed transiently and were tried again, so far."""
        return self._retry_policy.retried if self._retry_policy is not None else 0

    # collections ---------------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        """Names of the collections in the store, sorted."""
        return sorted(self._retried("list_collections", self._list_collections))

    def has_collection(self, name: str) -> bool:
        return self._retried(f"has_collection {name!r}", lambda: self._has_collection(name))

    def create_collection(self, name: str, dim: int, metric: str = "cosine", layout: str | None = None,
                          **params: Any) -> None:
        """Create an empty collection; CollectionExistsError when it exists. `layout` is the
        framework layout its records will be written in (else the store's `layout`, else raw)."""
        self._before_write()
        metric = check_metric(self.name, name, metric)
        dim = check_dimension(self.name, name, dim)
        chosen = self._layout_for_new(name, layout)
        if self.has_collection(name):
            raise CollectionExistsError(f"{self.name} store {self.location} already has a collection {name!r}")
        self.state.drop_scope(self.scope(name))
        # Recorded before the create: a kill right after it must not leave a collection whose
        # layout is detected from no records (a langchain target would be written as raw).
        self.state.put_collection(self.scope(name), "layout", chosen)
        self.state.put_collection(self.scope(name), "dim", dim)
        # A create whose answer was lost may have taken effect: found on retry, it is done.
        self._retried(f"create_collection {name!r}", lambda: self._create_collection(name, dim, metric, dict(params)),
                      settled=lambda: self._has_collection(name))
        self._forget_layout(name)

    def check_new_collection(self, name: str, params: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Raise what create_collection would raise for this name and these index parameters,
        without creating anything (a dry run's simulated create). Adapters whose store refuses
        names or parameters override it with the store's rules."""

    def drop_collection(self, name: str) -> None:
        """Delete a collection and its records; CollectionNotFoundError when it is absent."""
        self._before_write()
        self._require(name)
        self._retried(f"drop_collection {name!r}", lambda: self._drop_collection(name),
                      settled=lambda: not self._has_collection(name))
        self.state.drop_scope(self.scope(name))
        self._forget_layout(name)

    def rename_collection(self, old: str, new: str, batch_size: int | None = None) -> None:
        """Rename natively where the store can, else by copy, verify, then drop (reading pages of
        batch_size records; None: read_batch_size).

        When `new` already exists in the fallback it is taken for a partial copy left by an
        interrupted rename (callers check for a genuine name clash first), and the copy continues."""
        self._before_write()
        self._require(old)
        renamed = self._retried(f"rename_collection {old!r}", lambda: self._rename_collection(old, new),
                                settled=lambda: not self._has_collection(old) and self._has_collection(new))
        if renamed is not False:  # None: a rename whose answer was lost took effect
            self.state.rename_scope(self.scope(old), self.scope(new))
            self._forget_layout(old)
            self._forget_layout(new)
            return
        from vecflow.errors import VerificationError
        from vecflow.runtime.digest import collection_digest

        info = self.describe(old)
        if not self.has_collection(new):
            self.create_collection(new, info.dim, info.metric, layout=self.layout_of(old).layout.name,
                                   **info.params)
        for batch, _ in self.pages(old, batch_size):
            self.upsert(new, batch)
        before, after = collection_digest(self, old, batch_size), collection_digest(self, new, batch_size)
        if before != after:
            raise VerificationError(f"renaming {old!r} to {new!r}: the copy's digest {after} differs from "
                                    f"{before}; {old!r} is kept")
        metadata = self.collection_metadata(old)
        if metadata:
            self.update_collection_metadata(new, metadata)
        self.drop_collection(old)

    def count(self, name: str) -> int:
        """Number of records in the collection."""
        self._require(name)
        return self._retried(f"count {name!r}", lambda: self._count(name))

    def describe(self, name: str) -> CollectionInfo:
        """Dimension, metric and index parameters of the collection."""
        self._require(name)
        return self._retried(f"describe {name!r}", lambda: self._describe(name))

    def collection_metadata(self, name: str) -> dict[str, Any]:
        """Metadata vecflow keeps about the collection (e.g. the model behind its vectors), in its
        own state, not in the store. {} when none was set."""
        self._require(name)
        return dict(self.state.get_collection(self.scope(name), "info") or {})

    def update_collection_metadata(self, name: str, values: dict[str, Any]) -> None:
        """Merge values into the collection's metadata; a None value removes that key."""
        self._before_write()
        info = {**self.collection_metadata(name), **values}
        self.state.put_collection(self.scope(name), "info",
                                  {k: v for k, v in info.items() if v is not None} or None)

    # layouts -------------------------------------------------------------------------------------

    def layout_of(self, name: str) -> Detected:
        """The layout a collection's records are in, and why: the store's `layout =` when set,
        else the one it was created with, else detected from a sample of its records."""
        cache = self._layouts()
        if name not in cache:
            self._require(name)
            cache[name] = self._retried(f"layout detection {name!r}", lambda: self._resolve_layout(name))
        return cache[name]

    def _layouts(self) -> dict[str, Detected]:
        if self._layout_cache is None:
            self._layout_cache = {}
        return self._layout_cache

    def override_layout(self, name: str, layout: str, reason: str) -> None:
        """Read and write a collection in this layout for the rest of this connection (a step's
        `layout=`), whatever was detected or recorded."""
        self._require(name)
        if layout not in self.layouts:
            raise OperationError(f"{self.name} store: layout {layout!r} is not supported here; "
                                 f"{self.name} supports {', '.join(self.layouts)}")
        self._layouts()[name] = Detected(get_layout(layout), reason)

    def text_location(self, name: str) -> str:
        """Where the application keeps a record's text in this collection (for `vecflow inspect`)."""
        return self.layout_of(name).layout.where_text_lives(self.has_text_slot)

    # records -------------------------------------------------------------------------------------

    def scan(self, name: str, batch_size: int, cursor: str | None = None) -> tuple[Batch, str | None]:
        """One page of records in a stable order, and the cursor of the next page (None at the end).

        The cursor is a string that stays valid across processes and restarts while the
        collection is only read or upserted in place, and fetching the page after a cursor costs
        O(batch_size), not O(offset). Pass None to start from the beginning.
        """
        self._require(name)
        self._keep_lease()
        size = check_batch_size(self.name, name, batch_size)
        page, after = self._retried(f"scan {name!r}", lambda: self._scan(name, size, cursor))
        if self.read_observer is not None:
            self.read_observer(len(page))
        return page, after

    def scan_native(self, name: str, batch_size: int, cursor: str | None = None) -> tuple[NativePage, str | None]:
        """Like scan, with each record's native parts (for native digests and inspect)."""
        self._require(name)
        self._keep_lease()
        size = check_batch_size(self.name, name, batch_size)
        page, after = self._retried(f"scan {name!r}", lambda: self._scan_native(name, size, cursor))
        if self.read_observer is not None:
            self.read_observer(len(page.batch))
        return page, after

    def pages(self, name: str, batch_size: int | None = None,
              cursor: str | None = None) -> Iterator[tuple[Batch, str | None]]:
        """Every page of a collection from cursor on, each with the cursor of the page after it
        (None with the last page, which may be empty): the one paging loop over scan.

        Pages hold batch_size records; None: read_batch_size(name) (the project's batch_size, else
        the adapter's choice). A checkpointed loop saves that cursor once it has handled the page
        and resumes by passing it back. The next page is read only when asked for, so the caller
        may write to the pages it has seen (upsert in place, or delete) between pages.
        """
        size = functools.partial(self.read_batch_size, name, batch_size)  # resolved as the first page is read
        return self._full_reads(_paging(self.scan, name, size, cursor), name, cursor)

    def native_pages(self, name: str, batch_size: int | None = None,
                     cursor: str | None = None) -> Iterator[tuple[NativePage, str | None]]:
        """Like pages, over scan_native."""
        size = functools.partial(self.read_batch_size, name, batch_size)
        return self._full_reads(_paging(self.scan_native, name, size, cursor), name, cursor)

    def pages_ahead(self, name: str, batch_size: int | None = None,
                    cursor: str | None = None) -> Iterator[tuple[Batch, str | None]]:
        """Like pages, read in a background thread a few pages ahead (vecflow/backends/read_ahead.py),
        so this store's reads overlap what the caller does with each page. Not for a loop that
        writes to this store (it would read pages the loop has not yet written to)."""
        return self._ahead(self.pages(name, batch_size, cursor))

    def native_pages_ahead(self, name: str, batch_size: int | None = None,
                           cursor: str | None = None) -> Iterator[tuple[NativePage, str | None]]:
        """Like native_pages, read ahead as pages_ahead is."""
        return self._ahead(self.native_pages(name, batch_size, cursor))

    def _ahead(self, paging: Iterator[tuple[Page, str | None]]) -> Iterator[tuple[Page, str | None]]:
        """The lease is renewed page by page on the caller's thread, as the plain loop does."""
        with contextlib.closing(read_ahead(paging, READ_AHEAD_PAGES, while_waiting=self._keep_lease)) as pages:
            for page in pages:
                self._keep_lease()
                yield page

    def _full_reads(self, paging: Iterator[tuple[Page, str | None]], name: str,
                    cursor: str | None) -> Iterator[tuple[Page, str | None]]:
        """paging, telling `full_read_observer` once a pass from the first page has read the last."""
        for page, following in paging:
            yield page, following
            if following is None and cursor is None and self.full_read_observer is not None:
                self.full_read_observer(name)

    def upsert(self, name: str, batch: Batch) -> None:
        """Insert or replace records by id (idempotent; for a repeated id the last one wins).
        Durable when it returns. A batch larger than write_batch_size(name) is written in
        requests of that size, in order, after `_check_upsert` found nothing the store refuses in
        any of them; a failure part-way (the store down) leaves the earlier requests written,
        which a checkpointed loop writes again on resume (idempotent)."""
        self._upsert_in_requests(name, batch, self._upsert)

    def upsert_read_back(self, name: str, batch: Batch) -> NativePage | None:
        """upsert, then the written records as the store now holds them (a native page, ids as
        upsert keeps them), where the adapter reads its writes back anyway (`_upsert_read_back`:
        Chroma reads every write back for the exact bits of cosine vectors and for its float
        values), so a copy can digest its target as it writes it; None where it does not, and the
        caller reads the target itself."""
        if type(self)._upsert_read_back is Backend._upsert_read_back:
            self.upsert(name, batch)
            return None
        pages: list[NativePage] = []
        self._upsert_in_requests(name, batch, lambda name, part: pages.append(self._upsert_read_back(name, part)))
        return NativePage.concat(pages) if pages else NativePage(batch.take([]), [], [])

    def _upsert_in_requests(self, name: str, batch: Batch, write: Callable[[str, Batch], None]) -> None:
        """The checks of upsert, then `write` of each request's records (retried as one call)."""
        self._before_write()
        self._require(name)
        if not len(batch):
            return
        batch.check_finite(f"upsert into {self.name} collection {name!r}")
        batch.check_text(f"upsert into {self.name} collection {name!r}")
        unique = last_of_each_id(batch)
        size = self.write_batch_size(name)
        if len(unique) > size:
            self._check_upsert(name, unique)  # a refusal in a later request must write nothing either
        for start in range(0, len(unique), size):
            if start:
                self._before_write()  # a long batch: a runner that lost its lease stops between requests
            part = unique if size >= len(unique) else unique.take(list(range(start, min(start + size, len(unique)))))
            self._retried(f"upsert {name!r}", lambda part=part: write(name, part))

    def update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Replace the whole metadata of existing records, leaving vectors and documents untouched.

        Unknown ids are ignored. Field operations use this, so they never rewrite vectors (some
        stores, e.g. Chroma cosine collections, change vector bits on every write)."""
        wanted = self._metadata_to_write("update_metadata", name, ids, metadatas)
        if wanted:
            self._retried(f"update_metadata {name!r}",
                          lambda: self._update_metadata(name, list(wanted), list(wanted.values())))

    def rewrite_metadata(self, name: str, page: NativePage, ids: list[str],
                         metadatas: list[dict[str, Any]]) -> NativePage | None:
        """update_metadata of records of `page`, then those records as the store reads them after
        the write (as get_native gives them; records gone meanwhile left out), or None when the
        adapter cannot read native records by id. A rewrite pass digests what it wrote with it
        (StepContext.rewrite_records).

        page: the records as the caller read them just before (native_pages). The adapter may
        take it as what the store holds instead of reading the records again before the write,
        provided it finds and rewrites a record another writer changed since; and it may take
        the vectors and document texts, which a metadata-only write leaves, from it instead of
        reading them back. The metadata is always read back from the store: it may hold values
        other than those sent (Chroma changes float ulps), and a digest hashes what the
        application reads."""
        wanted = self._metadata_to_write("rewrite_metadata", name, ids, metadatas)
        position = {rid: i for i, rid in enumerate(page.batch.ids)}
        if outside := next((rid for rid in wanted if rid not in position), None):
            raise InvalidDataError(f"rewrite_metadata on {name!r}: record {outside!r} is not in the page given")
        held = page.take([position[rid] for rid in wanted])
        if not wanted:
            return held
        return self._retried(f"update_metadata {name!r}",
                             lambda: self._rewrite_metadata(name, held, list(wanted.values())))

    def _metadata_to_write(self, method: str, name: str, ids: list[str],
                           metadatas: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """What a metadata-only write was asked for, checked (the last of a repeated id wins)."""
        self._before_write()
        self._require(name)
        if len(ids) != len(metadatas):
            raise InvalidDataError(f"{method} on {name!r}: {len(ids)} ids but {len(metadatas)} metadatas")
        wanted = dict(zip(ids, metadatas))
        for rid, metadata in wanted.items():
            if problem := metadata_problem(metadata):
                raise InvalidDataError(f"{method} on {self.name} collection {name!r}, record {rid!r}: {problem}")
        return wanted

    def delete(self, name: str, ids: list[str]) -> None:
        """Delete records by id; unknown ids are ignored."""
        self._before_write()
        self._require(name)
        unique = list(dict.fromkeys(ids))
        if unique:
            self._retried(f"delete {name!r}", lambda: self._delete(name, unique))
            self.state.forget_records(self.scope(name), unique)

    def get(self, name: str, ids: list[str]) -> Batch:
        """The records with these ids that exist, in the order asked."""
        self._require(name)
        wanted = list(ids)
        return self._retried(f"get {name!r}", lambda: self._get(name, wanted))

    def get_native(self, name: str, ids: list[str]) -> NativePage | None:
        """The records with these ids that exist, as scan_native reads them (native parts and the
        logical batch); None when the adapter cannot read native records by id. A rewrite reads
        back what it upserted with it, for the digest after the step (StepContext.rewrite_records;
        after a metadata-only write, `rewrite_metadata` reads them back)."""
        self._require(name)
        wanted = list(ids)
        return self._retried(f"get {name!r}", lambda: self._get_native(name, wanted))

    def query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The k nearest records of each query vector, best first."""
        self._require(name)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise OperationError(f"query on {self.name} collection {name!r}: k must be a positive integer, got {k!r}")
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if queries.ndim != 2:
            raise InvalidDataError(f"query on {name!r}: query vectors must be 2-D, got shape {queries.shape}")
        if not len(queries):
            return []
        if not np.isfinite(queries).all():
            raise InvalidDataError(f"query on {self.name} collection {name!r}: a query vector is NaN or infinite")
        return self._retried(f"query {name!r}", lambda: self._query(name, queries, int(k)))

    def search_is_exact(self, name: str) -> bool:
        """True when query() is exact (brute force) for this collection, False for ANN indexes."""
        return False

    def encoded_fields(self, metadatas: list[dict[str, Any]]) -> dict[str, str]:
        """Metadata fields this store cannot hold natively and writes another way, with how (for
        the --dry-run coercion report). Empty when everything is stored as is."""
        return {}

    # the store's marker --------------------------------------------------------------------------

    def read_marker(self) -> str | None:
        """The marker text vecflow keeps in this store, outside every collection and record (it
        names the ledger that migrates the store: runtime/markers.py), or None."""
        return self._retried("read the vecflow marker", self._read_marker)

    def write_marker(self, text: str) -> None:
        """Replace the store's marker (a small JSON text); durable on return."""
        self._before_write()
        self._retried("write the vecflow marker", lambda: self._write_marker(text))

    def _read_marker(self) -> str | None:
        """Adapters keep the marker where the application does not list it (docs/team.md#markers).
        The default: a store with no such place, which is never marked (nor checked)."""
        return None

    def _write_marker(self, text: str) -> None:  # noqa: B027 (optional: see _read_marker)
        """Write the marker (see _read_marker)."""

    def close(self) -> None:  # noqa: B027 (optional hook: most adapters need no cleanup)
        """Release connections and files; the instance is unusable afterwards. Safe to call twice."""

    # primitives adapters implement ---------------------------------------------------------------

    @abstractmethod
    def _list_collections(self) -> list[str]: ...

    def _has_collection(self, name: str) -> bool:
        return name in self._list_collections()

    @abstractmethod
    def _create_collection(self, name: str, dim: int, metric: str, params: dict[str, Any]) -> None:
        """metric and dim are valid and the name is free; refuse unknown params with OperationError."""

    @abstractmethod
    def _drop_collection(self, name: str) -> None: ...

    def _rename_collection(self, old: str, new: str) -> bool:
        """Rename natively and return True, or return False for the copy + drop fallback."""
        return False

    @abstractmethod
    def _count(self, name: str) -> int: ...

    @abstractmethod
    def _describe(self, name: str) -> CollectionInfo: ...

    @abstractmethod
    def _scan(self, name: str, batch_size: int, cursor: str | None) -> tuple[Batch, str | None]: ...

    def _scan_native(self, name: str, batch_size: int, cursor: str | None) -> tuple[NativePage, str | None]:
        """Stores without framework layouts: the native record is the logical one."""
        batch, cursor = self._scan(name, batch_size, cursor)
        natives = [Native(doc, meta) for doc, meta in zip(batch.documents, batch.metadatas)]
        return NativePage(batch, list(batch.ids), natives), cursor

    def _sample_natives(self, name: str, limit: int) -> list[tuple[str, Native]]:
        """A few (native id, native record) pairs, for layout detection."""
        page, _ = self._scan_native(name, limit, None)
        return list(zip(page.native_ids, page.natives))

    def _get_native(self, name: str, ids: list[str]) -> NativePage | None:
        """Stores without framework layouts (the native record is the logical one) read them with
        _get; an adapter with its own _scan_native overrides this too, or reads none by id."""
        if type(self)._scan_native is not Backend._scan_native:
            return None
        batch = self._get(name, ids)
        natives = [Native(doc, meta) for doc, meta in zip(batch.documents, batch.metadatas)]
        return NativePage(batch, list(batch.ids), natives)

    @abstractmethod
    def _upsert(self, name: str, batch: Batch) -> None:
        """Non-empty, finite, unique ids, at most write_batch_size(name) records when called by
        upsert; check the dimension against the collection's."""

    def _upsert_read_back(self, name: str, batch: Batch) -> NativePage:
        """_upsert, then the written records as the store holds them now, in the batch's order
        (optional: adapters that read their writes back anyway; see upsert_read_back)."""
        raise NotImplementedError

    def _check_upsert(self, name: str, batch: Batch) -> None:  # noqa: B027 (optional hook)
        """Raise InvalidDataError for what the store would refuse in these records, writing
        nothing: called before the first of several write requests. Adapters whose store refuses
        keys or values it checks in `_upsert` (Chroma's metadata keys) implement it."""

    def _read_batch_size(self, name: str) -> int:
        """Records per page this adapter reads best from collection `name` (validated by the base)."""
        return self.preferred_read_batch

    def _write_batch_size(self, name: str) -> int:
        """Records per write request this adapter writes best into collection `name`."""
        return self.preferred_write_batch

    def _write_batch_limit(self, name: str) -> int | None:
        """The most records the store accepts in one write request, or None for no limit."""
        return None

    def _update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Default: read and re-upsert (for stores whose upsert is bit-stable)."""
        wanted = dict(zip(ids, metadatas))
        current = self._get(name, ids)
        if len(current):
            self._upsert(name, current.with_metadatas([wanted[rid] for rid in current.ids]))

    def _rewrite_metadata(self, name: str, held: NativePage, metadatas: list[dict[str, Any]]) -> NativePage | None:
        """held: the records to write (unique ids, as the caller read them), one metadata each.
        Default: _update_metadata, then _get_native (the whole records read back)."""
        ids = list(held.batch.ids)
        self._update_metadata(name, ids, metadatas)
        return self._get_native(name, ids)

    @abstractmethod
    def _delete(self, name: str, ids: list[str]) -> None: ...

    @abstractmethod
    def _get(self, name: str, ids: list[str]) -> Batch: ...

    @abstractmethod
    def _query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """vectors: a finite (n >= 1, d) float32 array; k >= 1. Check d against the collection's."""

    # helpers -------------------------------------------------------------------------------------

    def _retried(self, action: str, attempt: Callable[[], T], settled: Callable[[], bool] | None = None) -> T:
        """attempt() under the retry policy: the one place transient failures are retried.

        Only the outermost call retries: an adapter primitive that calls public methods is retried
        as a whole, so nested calls never multiply the retry budget. `settled` (see
        RetryPolicy.call) makes a retried create, drop or rename safe when its answer was lost.
        The lease is checked (and renewed) before every retry: a wait may outlast it."""
        policy = self._retry_policy
        if policy is None or self._in_retried_call:
            return attempt()
        self._in_retried_call = True
        try:
            return cast(T, policy.call(self.name, action, attempt, settled, before_retry=self._keep_lease))
        finally:
            self._in_retried_call = False

    def _require(self, name: str) -> None:
        if not self.has_collection(name):
            raise CollectionNotFoundError(f"{self.name} store {self.location} has no collection {name!r}")

    def _layout_for_new(self, name: str, layout: str | None) -> str:
        check_layout_name(layout)
        for choice in (layout, self._layout_option):
            if choice not in (None, AUTO):
                if choice not in self.layouts:
                    raise OperationError(f"{self.name} collection {name!r}: layout {choice!r} is not supported "
                                         f"here; {self.name} supports {', '.join(self.layouts)}")
                return choice
        return "raw"

    def _resolve_layout(self, name: str) -> Detected:
        if self._layout_option not in (None, AUTO):
            return Detected(get_layout(self._layout_option), "set by the store's 'layout' option")
        recorded = self.state.get_collection(self.scope(name), "layout")
        if recorded:
            return Detected(get_layout(recorded), "recorded when vecflow created or converted it")
        if len(self.layouts) == 1:
            return Detected(get_layout(self.layouts[0]), f"the only layout vecflow reads on {self.name}")
        return detect_layout(self._sample_natives(name, DETECTION_SAMPLE), self.has_text_slot)

    def _layout(self, name: str) -> Layout:
        return self.layout_of(name).layout

    def _forget_layout(self, name: str) -> None:
        if self._layout_cache is not None:
            self._layout_cache.pop(name, None)


# validation shared by every adapter ------------------------------------------------------------

def check_metric(backend: str, collection: str, metric: str) -> str:
    if metric not in METRICS:
        raise OperationError(f"{backend} collection {collection!r}: unknown metric {metric!r}; "
                             f"use one of {', '.join(METRICS)}")
    return metric


def check_dimension(backend: str, collection: str, dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise OperationError(f"{backend} collection {collection!r}: dimension must be a positive integer, got {dim!r}")
    return int(dim)


def check_batch_size(backend: str, collection: str, batch_size: Any, what: str = "batch_size",
                     doing: str = "scan") -> int:
    if not _is_size(batch_size):
        raise OperationError(f"{doing} of {backend} collection {collection!r}: {what} must be a positive integer, "
                             f"got {batch_size!r}")
    return int(batch_size)


def _is_size(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


Page = TypeVar("Page")


def _paging(read: Callable[[str, int, str | None], tuple[Page, str | None]], name: str,
            size: Callable[[], int], cursor: str | None) -> Iterator[tuple[Page, str | None]]:
    batch_size = size()
    while True:
        page, cursor = read(name, batch_size, cursor)
        yield page, cursor
        if cursor is None:
            return


def gathered(pages: Iterator[tuple[Page, str | None]], size: int) -> Iterator[tuple[list[Page], str | None]]:
    """Consecutive pages, gathered until they hold at least `size` records or the last page is
    in, each group with the cursor after its last page: a loop that writes a group at a time (in
    the target's write size) and checkpoints after it resumes from that cursor."""
    group: list[Page] = []
    held = 0
    for page, cursor in pages:
        group.append(page)
        held += len(page.batch if isinstance(page, NativePage) else page)
        if held >= size or cursor is None:
            yield group, cursor
            group, held = [], 0


def last_of_each_id(batch: Batch) -> Batch:
    """A batch with one record per id; for a repeated id the last wins, as if written in turn."""
    last = {rid: i for i, rid in enumerate(batch.ids)}
    return batch if len(last) == len(batch) else batch.take(sorted(last.values()))

