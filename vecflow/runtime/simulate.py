"""Dry runs: the plan simulated in order, on samples, with nothing written anywhere.

`upgrade`/`downgrade --dry-run` runs every step of the plan, in order, on simulated stores
(SimulatedStores): a collection is read from its store once, read only, as its first
SAMPLE_SIZE records, and from then on lives in memory. Each step previews itself on what the
steps before it left (Op.preview), then runs there (Op.simulate: Op.run, except for steps that
would act outside the stores, such as reembed loading its model). So a later step sees what
earlier ones created, renamed, split, moved, filled or dropped, with their records transformed,
and an expression, schema, cast or user function that fails, fails on the sample. New snapshots
stay in memory; a downgrade reads the real ones, read only.

Counts are extrapolated. Each sampled record stands for several records of the collection it
was read from (its weight); a record keeps its weight when copied, split or moved; records beyond
the sample (a large data file or snapshot) add their weight to the collection they go into
(`scale`); records outside the sample are looked up in the store when a step asks for them by
id. The report (DryRunReport) holds one entry per step: its preview, estimated time, and why it
would be refused or fail; the command prints it and exits 1 naming the first failing step.
"""

from __future__ import annotations

import bisect
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vecflow.backends import Backend, CollectionInfo, Hit
from vecflow.batch import Batch
from vecflow.errors import DimensionMismatchError, VecflowError
from vecflow.operations.base import Op
from vecflow.runtime.context import StepContext
from vecflow.runtime.digest import Digest
from vecflow.runtime.estimate import SAMPLE_SIZE, estimate_line
from vecflow.runtime.ledger import DONE, Owner
from vecflow.runtime.snapshots import SnapshotStore
from vecflow.runtime.stores import Stores
from vecflow.state import VecflowState

if TYPE_CHECKING:
    from vecflow.runtime.runner import PlannedRevision, Runner

REFUSED = "refused: "
WOULD_FAIL = "would fail: "


# simulated stores --------------------------------------------------------------------------------


@dataclass
class SimulatedCollection:
    """A collection as the plan has left it so far: its sampled records (id -> [vector, document,
    metadata, extras, weight]) and how many records they stand for (scale * the sum of weights)."""

    info: CollectionInfo
    records: dict[str, list[Any]] = field(default_factory=dict)
    scale: float = 1.0
    # Records that came with no known weight (from a data file, a snapshot) held so far.
    fresh: int = 0
    # The store collection the sample was read from, for records outside the sample.
    origin: str | None = None
    hidden_deleted: set[str] = field(default_factory=set)
    read_rate: float | None = None  # rows/s of the sample read from the store
    # Whether `represented` is exact: no record of it was extrapolated from a sample.
    exact: bool = True

    @property
    def represented(self) -> float:
        return self.scale * sum(record[4] for record in self.records.values())


class SimulatedBackend(Backend):
    """One store as the plan leaves it, in memory: collections are read from `real` (opened read
    only) when first used. Subclassed per real adapter class (simulated_class), so that two
    simulated stores are of the same class exactly when their real adapters are."""

    real_class: type[Backend] = Backend

    def __init__(self, real: Backend, weights: dict[str, float]) -> None:
        self.real = real
        self._where = real.location
        self._layout_option = real._layout_option
        self._weights = weights  # id -> the weight the record was last read with, shared by all stores
        self._collections: dict[str, SimulatedCollection | None] = {}
        self.initial: dict[str, int | None] = {}  # record counts in the store, before the plan
        self.attach_state(VecflowState.in_memory())

    # what the simulation reports -----------------------------------------------------------------

    def collection(self, name: str) -> SimulatedCollection | None:
        if name not in self._collections:
            self._collections[name] = self._load(name)
        return self._collections[name]

    def represented_count(self, name: str) -> int:
        """The records the collection would hold (extrapolated from its sample)."""
        self._require(name)
        return round(self._live(name).represented)

    def encoded_fields(self, metadatas: list[dict[str, Any]]) -> dict[str, str]:
        return self.real.encoded_fields(metadatas)

    def search_is_exact(self, name: str) -> bool:
        return True

    def _load(self, name: str) -> SimulatedCollection | None:
        real = self.real
        if not real.has_collection(name):
            self.initial[name] = None
            return None
        total = real.count(name)
        started = time.monotonic()
        page, _ = real.scan(name, SAMPLE_SIZE)
        seconds = time.monotonic() - started
        self.initial[name] = total
        info = real.describe(name)
        collection = SimulatedCollection(
            CollectionInfo(name, info.dim, info.metric, dict(info.params)),
            scale=total / len(page) if len(page) else 1.0, origin=name if len(page) < total else None,
            read_rate=len(page) / seconds if len(page) and seconds > 0 else None, exact=len(page) >= total)
        for i, rid in enumerate(page.ids):
            collection.records[rid] = [page.vectors[i].copy(), page.documents[i], copy.deepcopy(page.metadatas[i]),
                                       copy.deepcopy(page.extras[i]), 1.0]
        detected = real.layout_of(name)
        self._layouts()[name] = detected
        self.state.put_collection(self.scope(name), "layout", detected.layout.name)
        if metadata := real.collection_metadata(name):
            self.state.put_collection(self.scope(name), "info", metadata)
        return collection

    def _live(self, name: str) -> SimulatedCollection:
        collection = self.collection(name)
        assert collection is not None  # callers went through _require
        return collection

    def _hidden(self, collection: SimulatedCollection, ids: list[str]) -> Batch:
        """Records outside the sample that the store holds under these ids (and no step deleted)."""
        wanted = [rid for rid in ids if rid not in collection.records and rid not in collection.hidden_deleted]
        if collection.origin is None or not wanted:
            return Batch.empty(collection.info.dim)
        return self.real.get(collection.origin, wanted)

    def _remember(self, collection: SimulatedCollection, ids: list[str]) -> None:
        for rid in ids:
            self._weights[rid] = collection.records[rid][4] * collection.scale

    # primitives ------------------------------------------------------------------------------------

    def _list_collections(self) -> list[str]:
        known = {name for name, collection in self._collections.items() if collection is not None}
        return list(known | {name for name in self.real.list_collections() if name not in self._collections})

    def _has_collection(self, name: str) -> bool:
        return self.collection(name) is not None

    def _create_collection(self, name: str, dim: int, metric: str, params: dict[str, Any]) -> None:
        self.real.check_new_collection(name, dict(params))
        self._collections[name] = SimulatedCollection(CollectionInfo(name, dim, metric, dict(params)))

    def _drop_collection(self, name: str) -> None:
        self._collections[name] = None

    def _rename_collection(self, old: str, new: str) -> bool:
        collection = self._live(old)
        collection.info = CollectionInfo(new, collection.info.dim, collection.info.metric, collection.info.params)
        self._collections[new], self._collections[old] = collection, None
        return True

    def _count(self, name: str) -> int:
        return len(self._live(name).records)

    def _describe(self, name: str) -> CollectionInfo:
        return self._live(name).info

    def _scan(self, name: str, batch_size: int, cursor: str | None) -> tuple[Batch, str | None]:
        collection = self._live(name)
        ids = sorted(collection.records)
        start = 0 if cursor is None else bisect.bisect_right(ids, cursor)
        chosen = ids[start:start + batch_size]
        self._remember(collection, chosen)
        more = start + batch_size < len(ids)
        return self._batch(collection, chosen), (chosen[-1] if more else None)

    def _get(self, name: str, ids: list[str]) -> Batch:
        collection = self._live(name)
        held = [rid for rid in dict.fromkeys(ids) if rid in collection.records]
        self._remember(collection, held)
        hidden = self._hidden(collection, ids)
        if not len(hidden):
            return self._batch(collection, held)
        found = self._batch(collection, held)
        page = Batch(found.ids + hidden.ids, np.concatenate([found.vectors.reshape(-1, collection.info.dim),
                                                              hidden.vectors]),
                     found.documents + hidden.documents, found.metadatas + hidden.metadatas,
                     (found.extras or []) + (hidden.extras or []))
        position = {rid: i for i, rid in enumerate(page.ids)}
        return page.take([position[rid] for rid in dict.fromkeys(ids) if rid in position])

    def _upsert(self, name: str, batch: Batch) -> None:
        collection = self._live(name)
        if batch.dim != collection.info.dim:
            raise DimensionMismatchError(f"{self.name} collection {name!r} has dimension {collection.info.dim}; "
                                         f"the records have {batch.dim}")
        unknown = [rid for rid in batch.ids if rid not in collection.records]
        hidden = set(self._hidden(collection, unknown).ids)
        for i, rid in enumerate(batch.ids):
            if rid in hidden:
                continue  # replaces a record outside the sample: the count stays
            held = collection.records.get(rid)
            weight = held[4] if held else None
            if held is None and rid in self._weights:
                weight = self._weights[rid] / collection.scale
                collection.exact = collection.exact and abs(self._weights[rid] - 1) < 1e-9
            if weight is None:
                total = sum(record[4] for record in collection.records.values())
                if collection.fresh >= SAMPLE_SIZE and total > 0:
                    collection.scale = (collection.scale * total + 1) / total  # stands for one more
                    continue
                collection.fresh += 1
                weight = 1 / collection.scale
            collection.records[rid] = [batch.vectors[i].copy(), batch.documents[i], copy.deepcopy(batch.metadatas[i]),
                                       copy.deepcopy(batch.extras[i]), weight]

    def _update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        collection = self._live(name)
        for rid, metadata in zip(ids, metadatas):
            if rid in collection.records:
                collection.records[rid][2] = copy.deepcopy(metadata)

    def _delete(self, name: str, ids: list[str]) -> None:
        collection = self._live(name)
        for rid in self._hidden(collection, ids).ids:
            total = sum(record[4] for record in collection.records.values())
            if total > 0:
                collection.scale = max(collection.scale * total - 1, 0) / total
            collection.hidden_deleted.add(rid)
        for rid in ids:
            collection.records.pop(rid, None)

    def _query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        collection = self._live(name)
        ids = sorted(collection.records)
        if not ids:
            return [[] for _ in vectors]
        stored = np.stack([collection.records[rid][0] for rid in ids]).astype(np.float64)
        queries = vectors.astype(np.float64)
        metric = collection.info.metric
        if metric == "ip":
            scores, best_first = queries @ stored.T, -1
        elif metric == "cosine":
            unit = stored / np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-30)
            scores = 1 - (queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)) @ unit.T
            best_first = 1
        else:
            scores = ((queries[:, None, :] - stored[None, :, :]) ** 2).sum(axis=2)
            best_first = 1
        hits = []
        for row in scores:
            order = np.argsort(best_first * row, kind="stable")[:k]
            hits.append([(ids[j], float(row[j])) for j in order])
        return hits

    def _batch(self, collection: SimulatedCollection, ids: list[str]) -> Batch:
        if not ids:
            return Batch.empty(collection.info.dim)
        rows = [collection.records[rid] for rid in ids]
        return Batch(list(ids), np.stack([row[0] for row in rows]), [row[1] for row in rows],
                     [copy.deepcopy(row[2]) for row in rows], [copy.deepcopy(row[3]) for row in rows])


_SIMULATED: dict[type[Backend], type[SimulatedBackend]] = {}


def simulated_class(real: type[Backend]) -> type[SimulatedBackend]:
    """The simulated adapter class standing for one real adapter class."""
    if real not in _SIMULATED:
        _SIMULATED[real] = type(f"Simulated{real.__name__}", (SimulatedBackend,), {
            "name": real.name, "layouts": real.layouts, "normalises_cosine": real.normalises_cosine,
            "has_text_slot": real.has_text_slot, "real_class": real})
    return _SIMULATED[real]


class SimulatedStores(Stores):
    """The project's stores as the plan leaves them; the real ones are only read."""

    def __init__(self, real: Stores) -> None:
        super().__init__(real.config, state=VecflowState.in_memory())
        self.real = real
        self.weights: dict[str, float] = {}

    def backend(self, store: str | None = None) -> Backend:
        name = store or self.config.default_store
        if name not in self._open:
            real = self.real.backend(name)
            self._open[name] = simulated_class(type(real))(real, self.weights)
        return self._open[name]

    def simulated(self, ref: str) -> tuple[SimulatedBackend, str]:
        backend, name = self.resolve(ref)
        assert isinstance(backend, SimulatedBackend)
        return backend, name


class SimulatedSnapshots:
    """Snapshots for a simulation: the ones steps take stay in memory; the ones real runs took
    (which a downgrade restores from) are read from the project's snapshot file."""

    def __init__(self, real: SnapshotStore) -> None:
        self.real = real
        self.own = SnapshotStore(Path(":memory:"))

    def exists(self, name: str) -> bool:
        return self.own.exists(name) or self.real.exists(name)

    def close(self) -> None:
        self.own.close()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            store = self.real if self.real.exists(name) and not self.own.exists(name) else self.own
            return getattr(store, method)(name, *args, **kwargs)
        return call


class SimulatedContext(StepContext):
    """A StepContext whose checkpoints go nowhere (there is no attempt to record)."""

    def save(self, rows: int = 0, **changes: Any) -> None:
        self.state.update(changes)
        self.rows_done += rows


# the report --------------------------------------------------------------------------------------


@dataclass
class StepReport:
    number: int
    op: str
    description: str
    preview: list[str] = field(default_factory=list)
    estimate: str = ""
    failure: str | None = None  # why the step would be refused or fail
    skipped: str | None = None  # why it was not simulated

    def lines(self) -> list[str]:
        lines = [f"  {self.number}. {self.description}"]
        if self.skipped:
            return lines + [f"     {self.skipped}"]
        lines += [f"     {line}" for line in self.preview]
        if self.failure and not any(self.failure in line for line in self.preview):
            lines.append(f"     {WOULD_FAIL}{self.failure}")
        return lines + [f"     {self.estimate}"]

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "op": self.op, "description": self.description, "preview": self.preview,
                "estimate": self.estimate, "failure": self.failure, "skipped": self.skipped}


@dataclass
class RevisionReport:
    direction: str
    revision: str
    label: str
    steps: list[StepReport] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"{self.direction} {self.label}"]
        for step in self.steps:
            lines += step.lines()
        return lines + ([] if self.steps else ["  (no steps)"])

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "revision": self.revision, "label": self.label,
                "steps": [step.to_dict() for step in self.steps]}


@dataclass
class CollectionReport:
    ref: str
    now: int | None  # records in the store now; None: it does not exist
    after: int | None  # records after the plan, simulated; None: it would not exist
    exact: bool = True  # `after` is exact (else extrapolated from a sample)
    # A downgrade restores what the ledger recorded before the upgrade (and verifies it):
    # (records then, None when the collection did not exist; the revision).
    recorded: tuple[int | None, str] | None = None

    def line(self) -> str:
        now = "does not exist yet" if self.now is None else f"{self.now} records"
        if self.recorded is not None:
            count, revision = self.recorded
            after = "does not exist" if count is None else f"{count} records"
            after += f" (as recorded before the upgrade of {revision})"
        elif self.after is None:
            after = "does not exist"
        else:
            after = f"{'' if self.exact else '~'}{self.after} records"
        return f"  {self.ref}: {now}; after the plan: {after}"

    def to_dict(self) -> dict[str, Any]:
        recorded = None if self.recorded is None else {"records": self.recorded[0], "revision": self.recorded[1]}
        return {"ref": self.ref, "now": self.now, "after": self.after, "exact": self.exact,
                "recorded_before_upgrade": recorded}


@dataclass
class DryRunReport:
    notes: list[str] = field(default_factory=list)
    revisions: list[RevisionReport] = field(default_factory=list)
    collections: list[CollectionReport] = field(default_factory=list)

    def lines(self) -> list[str]:
        if not self.revisions:
            return ["Nothing to do: already at the target."]
        lines = list(self.notes)
        for revision in self.revisions:
            lines += revision.lines()
        return lines + ["collections:"] + [collection.line() for collection in self.collections]

    def to_dict(self) -> dict[str, Any]:
        return {"notes": self.notes, "revisions": [revision.to_dict() for revision in self.revisions],
                "collections": [collection.to_dict() for collection in self.collections],
                "failure": self.failure()}

    def failing_step(self) -> tuple[RevisionReport, StepReport] | None:
        for revision in self.revisions:
            for step in revision.steps:
                if step.failure:
                    return revision, step
        return None

    def failure(self) -> str | None:
        """The one line naming the first step that would be refused or fail, or None."""
        found = self.failing_step()
        if found is None:
            return None
        revision, step = found
        return (f"the dry run found a step that would fail: {revision.direction} {revision.revision}, step "
                f"{step.number} ({step.description}): {step.failure.removeprefix(REFUSED)}")


# the simulation ----------------------------------------------------------------------------------


def simulate(runner: Runner, plan: list[PlannedRevision]) -> DryRunReport:
    """Simulate a plan on samples of the collections it touches (runner opened read only)."""
    report = DryRunReport()
    if not plan:
        return report
    stores = SimulatedStores(runner.stores)
    snapshots = SimulatedSnapshots(runner.snapshots)
    try:
        Simulation(runner, stores, snapshots, report).run(plan)
    finally:
        snapshots.close()
        stores.close()
    return report


class Simulation:
    def __init__(self, runner: Runner, stores: SimulatedStores, snapshots: SimulatedSnapshots,
                 report: DryRunReport) -> None:
        self.runner = runner
        self.stores = stores
        self.snapshots = snapshots
        self.report = report
        self.owner = Owner.current()
        self.touched: list[str] = []

    def run(self, plan: list[PlannedRevision]) -> None:
        done = self._resumed_steps(plan)
        stopped: str | None = None
        for position, item in enumerate(plan):
            revision = RevisionReport(item.direction, item.revision.revision, item.label)
            self.report.revisions.append(revision)
            for index, step in enumerate(item.steps):
                entry = StepReport(index + 1, step.op_name, step.describe())
                revision.steps.append(entry)
                self._touch(step)
                if stopped:
                    entry.skipped = stopped
                elif index in done.get((item.revision.revision, item.direction), ()):
                    entry.skipped = "already done: the unfinished attempt resumes after it"
                else:
                    self._step(item, position, index, step, entry)
                    if entry.failure:
                        stopped = f"not simulated: the run stops at {item.revision.revision} step {index + 1}"
        self._collections(plan)

    def _resumed_steps(self, plan: list[PlannedRevision]) -> dict[tuple[str, str], set[int]]:
        """Steps an unfinished attempt finished, when the real run would resume it; a note for
        unfinished attempts it would settle otherwise."""
        ledger = self.runner.ledger
        planned = {(item.revision.revision, item.direction) for item in plan}
        done: dict[tuple[str, str], set[int]] = {}
        for attempt in ledger.unfinished_attempts():
            key = (attempt["revision"], attempt["direction"])
            if key in planned:
                done[key] = {row["step_index"] for row in ledger.steps(attempt["id"]) if row["status"] == DONE}
            else:
                self.report.notes.append(
                    f"note: the unfinished {attempt['direction']} of {attempt['revision']} ({attempt['outcome']}) is "
                    "settled first (see 'vecflow current'); this simulation starts from the stores as they are")
        return done

    def _touch(self, step: Op) -> None:
        for ref in step.collections():
            canonical = self.stores.canonical(ref)
            if canonical not in self.touched:
                self.touched.append(canonical)

    def _step(self, item: PlannedRevision, position: int, index: int, step: Op, entry: StepReport) -> None:
        refs = [self.stores.canonical(ref) for ref in step.collections()]
        try:
            before = [self._count(ref) for ref in refs]
        except VecflowError as exc:  # a store that is not configured or cannot be reached
            entry.failure = str(exc)
            entry.estimate = estimate_line(self.runner.ledger, step.op_name, 0, None)
            return
        try:
            entry.preview = step.preview(self.stores)
        except VecflowError as exc:
            entry.preview = [f"{REFUSED}{exc}"]
        refused = next((line for line in entry.preview if line.startswith(REFUSED)), None)
        rev = item.revision
        ctx = SimulatedContext(
            stores=self.stores, ledger=self.runner.ledger, snapshots=self.snapshots,  # type: ignore[arg-type]
            owner=self.owner, lease_seconds=self.runner.config.lock_lease_seconds, attempt_id=0, step_index=index,
            batch_size=self.runner.config.batch_size,
            snapshot=f"dry_run_{position}_{index}" if step.captures_snapshot else None, state={}, rows_done=0,
            resumed=False, script_dir=Path(rev.path).parent if rev.path else self.runner.scripts.location)
        try:
            step.simulate(ctx)
        except VecflowError as exc:
            entry.failure = str(exc)
        if entry.failure is None and refused is not None:
            entry.failure = refused.removeprefix(REFUSED)
        after = [self._count(ref) for ref in refs]
        records = max([count for count in before + after if count is not None], default=0)
        entry.estimate = estimate_line(self.runner.ledger, step.op_name, records, self._read_rate(refs))

    def _count(self, ref: str) -> int | None:
        backend, name = self.stores.simulated(ref)
        return backend.represented_count(name) if backend.has_collection(name) else None

    def _read_rate(self, refs: list[str]) -> float | None:
        for ref in refs:
            backend, name = self.stores.simulated(ref)
            collection = backend.collection(name)
            if collection is not None and collection.read_rate:
                return collection.read_rate
        return None

    def _collections(self, plan: list[PlannedRevision]) -> None:
        recorded: dict[str, tuple[int | None, str]] = {}
        for item in plan:
            for ref, text in item.expected_digests.items():
                count = None if text == "absent" else Digest.from_text(text.partition("|")[0]).count
                recorded[ref] = (count, item.revision.revision)
        for ref in self.touched:
            try:
                backend, name = self.stores.simulated(ref)
                collection = backend.collection(name)
            except VecflowError:
                continue  # the store failed; the step that uses it says why
            entry = CollectionReport(ref, backend.initial.get(name), None if collection is None else
                                     round(collection.represented), collection is None or collection.exact)
            if ref in recorded and not self.report.failing_step():
                entry.recorded = recorded[ref]
            self.report.collections.append(entry)
