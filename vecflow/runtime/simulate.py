"""Dry runs: the plan simulated in order, on samples, with nothing written anywhere.

`upgrade`/`downgrade --dry-run` runs every step of the plan, in order, on simulated stores
(runtime/simulated_stores.py): each collection the plan touches, read once from its store as a
sample, then changed in memory by the steps. Each step previews itself on what the steps before it
left (Op.preview), then runs there (Op.simulate: Op.run, except for steps that would act outside
the stores, such as reembed loading its model). So a later step sees what earlier ones created,
renamed, split, moved, filled or dropped, with their records transformed, and an expression,
schema, cast or user function that fails, fails on the sample.

The report is plain data (docs/json.md, "Dry runs"; `vecflow.report.plan_lines` makes the text):
one entry per step (its preview, estimated time, and why it would be refused or fail) and per
collection (records now and after the plan), and `failure`, the line naming the first failing
step, with which the command exits 1.
"""

from __future__ import annotations

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


def simulate(runner: Runner, plan: list[PlannedRevision]) -> dict[str, Any]:
    """Simulate a plan on samples of the collections it touches (runner opened read only)."""
    report: dict[str, Any] = {"notes": [], "revisions": [], "collections": [], "failure": None}
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
                 report: dict[str, Any]) -> None:
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
            rev = item.revision
            steps: list[dict[str, Any]] = []
            self.report["revisions"].append({"direction": item.direction, "revision": rev.revision,
                                             "message": rev.message, "steps": steps})
            for index, step in enumerate(item.steps):
                refs = [self.stores.canonical(ref) for ref in step.collections()]
                entry = {"number": index + 1, "op": step.op_name, "description": step.describe(),
                         "collections": refs, "preview": [], "estimate": None, "failure": None, "skipped": None}
                steps.append(entry)
                self.touched += [ref for ref in refs if ref not in self.touched]
                if stopped:
                    entry["skipped"] = stopped
                elif index in done.get((rev.revision, item.direction), ()):
                    entry["skipped"] = "already done: the unfinished attempt resumes after it"
                else:
                    self._step(item, position, index, step, entry)
                    if entry["failure"]:
                        self.report["failure"] = (
                            f"the dry run found a step that would fail: {item.direction} {rev.revision}, step "
                            f"{index + 1} ({entry['description']}): {entry['failure']}")
                        stopped = f"not simulated: the run stops at {rev.revision} step {index + 1}"
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
                self.report["notes"].append(
                    f"note: the unfinished {attempt['direction']} of {attempt['revision']} ({attempt['outcome']}) is "
                    "settled first (see 'vecflow current'); this simulation starts from the stores as they are")
        return done

    def _step(self, item: PlannedRevision, position: int, index: int, step: Op, entry: dict[str, Any]) -> None:
        refs = entry["collections"]
        try:
            before = [self._count(ref) for ref in refs]
        except VecflowError as exc:  # a store that is not configured or cannot be reached
            entry["failure"] = str(exc)
            entry["estimate"] = estimate_line(self.runner.ledger, step.op_name, 0, None)
            return
        try:
            entry["preview"] = step.preview(self.stores)
        except VecflowError as exc:
            entry["preview"] = [f"{REFUSED}{exc}"]
        refused = next((line for line in entry["preview"] if line.startswith(REFUSED)), None)
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
            entry["failure"] = str(exc)
        if entry["failure"] is None and refused is not None:
            entry["failure"] = refused.removeprefix(REFUSED)
        after = [self._count(ref) for ref in refs]
        records = max([count for count in before + after if count is not None], default=0)
        entry["estimate"] = estimate_line(self.runner.ledger, step.op_name, records, self._read_rate(refs))

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
        """Each collection: its records now and after the plan. After a downgrade, what the ledger
        recorded before the upgrade (the downgrade verifies it) is given with the simulated count."""
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
            now = backend.initial.get(name)
            after: dict[str, Any] = {"exists": collection is not None,
                                     "count": None if collection is None else round(collection.represented),
                                     "exact": collection is None or collection.exact, "recorded": None}
            if ref in recorded and not self.report["failure"]:
                count, revision = recorded[ref]
                after["recorded"] = {"revision": revision, "exists": count is not None, "count": count}
            self.report["collections"].append({"collection": ref, "exists": now is not None, "count": now,
                                               "after": after})
