"""Dry runs: the plan simulated in order, on samples, with nothing written anywhere.

`upgrade`/`downgrade --dry-run` runs every step of the plan, in order, on simulated stores
(runtime/simulated_stores.py): each collection the plan touches, read once from its store as a
sample, then changed in memory by the steps. Each step previews itself on what the steps before it
left (Op.preview), then runs there (Op.simulate: Op.run, except for steps that would act outside
the stores, such as reembed loading its model). So a later step sees what earlier ones created,
renamed, split, moved, filled or dropped, with their records transformed, and an expression,
schema, cast or user function that fails, fails on the sample.

The report (DryRunReport) holds one entry per step (its preview, estimated time, and why it would
be refused or fail) and per collection (records now and after the plan); the command prints it
and exits 1 naming the first failing step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vecflow.errors import VecflowError
from vecflow.operations.base import Op
from vecflow.runtime.digest import Digest
from vecflow.runtime.estimate import estimate_line
from vecflow.runtime.ledger import DONE, Owner
from vecflow.runtime.simulated_stores import SimulatedContext, SimulatedSnapshots, SimulatedStores

if TYPE_CHECKING:
    from vecflow.runtime.runner import PlannedRevision, Runner

REFUSED = "refused: "
WOULD_FAIL = "would fail: "


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
