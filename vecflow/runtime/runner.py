"""The runner: plans revisions into steps, then executes them with checkpoints and digests.

One attempt (ledger row) per revision and direction. Each step records the digests of the
collections it touches before and after it runs, and its progress after every committed batch.
An attempt that did not finish (crash, SIGKILL, error) is resumed by the next run of the same
revision and direction: finished steps are skipped and the interrupted step continues from its
saved state. A downgrade derived from upgrade steps uses the snapshots those steps captured, and
is verified: the digests after it must equal those recorded before the upgrade.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vecflow.config import Config
from vecflow.errors import (
    DigestMismatchError,
    IrreversibleError,
    LedgerError,
    VecflowError,
)
from vecflow.operations.base import Op, StepRecord
from vecflow.runtime.context import StepContext
from vecflow.runtime.digest import Digest, DigestPair, collection_digests
from vecflow.runtime.estimate import estimate_line, sample
from vecflow.runtime.ledger import DONE, FAILED, Ledger, Owner
from vecflow.runtime.snapshots import SnapshotStore, snapshot_name
from vecflow.runtime.stores import Stores
from vecflow.script.directory import ScriptDirectory
from vecflow.script.revision import Revision

UPGRADE, DOWNGRADE = "upgrade", "downgrade"
MISMATCH = "digest-mismatch"
EMPTY_DIGEST = Digest.empty().to_text()


@dataclass
class PlannedRevision:
    revision: Revision
    direction: str
    steps: list[Op]
    # For a downgrade: the digests recorded before the upgrade ran (canonical ref -> digest text).
    expected_digests: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        message = f" ({self.revision.message})" if self.revision.message else ""
        return f"{self.revision.revision}{message}"


class Runner:
    def __init__(self, config: Config, scripts: ScriptDirectory, ledger: Ledger, snapshots: SnapshotStore,
                 stores: Stores, out: Callable[[str], None] = print) -> None:
        self.config = config
        self.scripts = scripts
        self.ledger = ledger
        self.snapshots = snapshots
        self.stores = stores
        self.out = out
        self._digests: dict[str, str] = {}
        self._owner: Owner | None = None

    # planning ------------------------------------------------------------------------------------

    def applied(self) -> set[str]:
        return set(self.ledger.applied())

    def check_applied_scripts(self) -> list[str]:
        """Problems with applied revisions: edited scripts, revisions no script defines."""
        problems = []
        graph = self.scripts.revision_map
        for rev, row in sorted(self.ledger.applied().items()):
            if rev not in graph:
                problems.append(f"revision {rev} is applied but no script in {self.scripts.location} defines it; "
                                "restore the script or run 'vecflow stamp --purge <revision>'")
            elif graph.get(rev).script.checksum != row["checksum"]:
                problems.append(f"{graph.get(rev).path} was edited after it was applied (revision {rev}); "
                                "restore it, or run 'vecflow check --repair' to accept the edit")
        return problems

    def plan(self, direction: str, target: str) -> list[PlannedRevision]:
        graph = self.scripts.revision_map
        applied = self.applied()
        if direction == UPGRADE:
            plan = [PlannedRevision(r, UPGRADE, r.script.upgrade_ops()) for r in graph.plan_upgrade(applied, target)]
            for item in plan:
                self._refuse_unmarked_irreversible(item)
            return plan
        return [self._plan_downgrade(r) for r in graph.plan_downgrade(applied, target)]

    @staticmethod
    def _refuse_unmarked_irreversible(item: PlannedRevision) -> None:
        """An upgrade that could not be undone must say so in its script, before anything runs."""
        script = item.revision.script
        if script.has_downgrade or script.irreversible:
            return
        blocking = [step.describe() for step in item.steps if not step.reversible]
        if blocking:
            raise IrreversibleError(
                f"revision {item.revision.revision} ({item.revision.path}): step(s) {'; '.join(blocking)} cannot "
                "be reversed; write a downgrade() or mark the revision irreversible = True. Nothing was run")

    def _plan_downgrade(self, rev: Revision) -> PlannedRevision:
        script = rev.script
        up_attempt = self.ledger.last_completed_attempt(rev.revision, UPGRADE)
        expected: dict[str, str] = {}
        records: dict[int, StepRecord] = {}
        if up_attempt is not None:
            for row in self.ledger.steps(up_attempt["id"]):
                records[row["step_index"]] = StepRecord(row["snapshot"], json.loads(row["cursor"] or "{}"))
                for ref, digest in json.loads(row["digest_before"] or "{}").items():
                    expected.setdefault(ref, digest)
        explicit = script.downgrade_ops()
        if explicit is not None:
            return PlannedRevision(rev, DOWNGRADE, explicit, expected)
        if script.irreversible:
            raise IrreversibleError(f"revision {rev.revision} ({rev.path}) is marked irreversible and has no downgrade")
        steps = []
        for index, up_step in reversed(list(enumerate(script.upgrade_ops()))):
            record = records.get(index, StepRecord())
            if up_step.captures_snapshot and record.snapshot is None:
                raise IrreversibleError(
                    f"revision {rev.revision}: step {index + 1} ({up_step.describe()}) is undone from the snapshot "
                    "it took while running, but the ledger has none (was the revision stamped?); "
                    f"write an explicit downgrade() in {rev.path}")
            inverse = up_step.reverse(record)
            if inverse is None:
                raise IrreversibleError(
                    f"revision {rev.revision}: step {index + 1} ({up_step.describe()}) cannot be reversed; "
                    f"write a downgrade() in {rev.path} or mark the revision irreversible = True")
            steps.append(inverse)
        return PlannedRevision(rev, DOWNGRADE, steps, expected)

    def describe_plan(self, plan: list[PlannedRevision]) -> list[str]:
        """The --dry-run report: revisions, steps, affected collections and their record counts."""
        if not plan:
            return ["Nothing to do: already at the target."]
        lines = []
        touched: list[str] = []
        for item in plan:
            lines.append(f"{item.direction} {item.label}")
            for number, step in enumerate(item.steps, start=1):
                lines.append(f"  {number}. {step.describe()}")
                lines += [f"     {line}" for line in step.preview(self.stores)]
                lines.append(f"     {self._estimate(step)}")
                refs = [self.stores.canonical(r) for r in step.collections()]
                touched += [ref for ref in refs if ref not in touched]
            if not item.steps:
                lines.append("  (no steps)")
        lines.append("collections:")
        for ref in touched:
            backend, name = self.stores.resolve(ref)
            state = f"{backend.count(name)} records" if backend.has_collection(name) else "does not exist yet"
            lines.append(f"  {ref}: {state}")
        return lines

    def _estimate(self, step: Op) -> str:
        refs = step.collections()
        if not refs:
            return estimate_line(self.ledger, step.op_name, 0, None)
        backend, name = self.stores.resolve(refs[0])
        sampled = sample(backend, name)
        return estimate_line(self.ledger, step.op_name, sampled.total if sampled else 0, sampled)

    # execution -----------------------------------------------------------------------------------

    def run(self, plan: list[PlannedRevision], owner: Owner, verify: bool = True) -> None:
        """Execute a plan. The caller holds the lease and built the plan after taking it."""
        self._owner = owner
        resume = self._resumable_attempt(plan)
        for position, item in enumerate(plan):
            self._run_revision(item, owner, resume if position == 0 else None, verify)

    def _resumable_attempt(self, plan: list[PlannedRevision]) -> dict | None:
        unfinished = self.ledger.unfinished_attempts()
        if not unfinished:
            return None
        attempt = unfinished[-1]
        first = plan[0] if plan else None
        if first and (first.revision.revision, first.direction) == (attempt["revision"], attempt["direction"]):
            recorded = [(row["step_index"], row["op"]) for row in self.ledger.steps(attempt["id"])]
            planned = [(i, s.op_name) for i, s in enumerate(first.steps)]
            if recorded != planned[:len(recorded)]:
                raise LedgerError(
                    f"the interrupted {attempt['direction']} of {attempt['revision']} ran other steps than the "
                    "script now plans (was it edited?); restore the script to finish it")
            return attempt
        raise LedgerError(
            f"the {attempt['direction']} of revision {attempt['revision']} started {attempt['started_at']} by "
            f"{attempt['user']}@{attempt['host']} did not finish ({attempt['outcome']}); run "
            f"'vecflow {attempt['direction']} {attempt['revision']}' to resume it, or 'vecflow stamp' to abandon it")

    def _run_revision(self, item: PlannedRevision, owner: Owner, attempt: dict | None, verify: bool) -> None:
        rev = item.revision
        checksum = rev.script.checksum
        if attempt is None:
            attempt_id = self.ledger.begin_attempt(rev.revision, item.direction, owner, checksum)
            self.out(f"{item.direction.capitalize()} {item.label}")
        else:
            attempt_id = attempt["id"]
            self.ledger.resume_attempt(attempt_id, owner)
            self.out(f"Resuming {item.direction} {item.label}")
        try:
            for index, step in enumerate(item.steps):
                self.run_step(step, index, len(item.steps), attempt_id, owner, rev, verify)
            if item.direction == UPGRADE:
                self.ledger.mark_applied(rev.revision, checksum, rev.path or "")
            else:
                self.ledger.mark_unapplied(rev.revision)
                if verify:
                    self._verify_restored(item, attempt_id)
            self.ledger.finish_attempt(attempt_id, DONE)
        except DigestMismatchError:
            raise
        except VecflowError as exc:
            self.ledger.finish_attempt(attempt_id, FAILED, str(exc))
            raise

    def run_step(self, step: Op, index: int, total: int, attempt_id: int, owner: Owner, rev: Revision,
                  verify: bool) -> None:
        row = self.ledger.step(attempt_id, index)
        if row is not None and row["status"] == DONE:
            self.out(f"  [{index + 1}/{total}] {step.describe()}: already done")
            return
        refs = [self.stores.canonical(r) for r in step.collections()]
        if row is None:
            before = {ref: self._digest(ref) for ref in refs}
            snapshot = snapshot_name(attempt_id, index) if step.captures_snapshot else None
            self.ledger.start_step(attempt_id, index, step.op_name, step.describe(), before, snapshot)
            state, rows_done, resumed = {}, 0, False
        else:
            snapshot, state = row["snapshot"], json.loads(row["cursor"] or "{}")
            rows_done, resumed = row["rows_done"], True
            self.out(f"  [{index + 1}/{total}] resuming at {rows_done} rows")
        started = time.monotonic()
        ctx = StepContext(
            stores=self.stores, ledger=self.ledger, snapshots=self.snapshots, owner=owner,
            lease_seconds=self.config.lock_lease_seconds, attempt_id=attempt_id, step_index=index,
            batch_size=self.config.batch_size, snapshot=snapshot, state=state, rows_done=rows_done,
            resumed=resumed, script_dir=Path(rev.path).parent if rev.path else self.scripts.location,
            verify=verify, note=lambda line: self.out(f"      {line}"),
        )
        step.run(ctx)
        # A digest an op computed is logical only; "absent" and empty need no native part.
        known = {ref: text for ref, text in ctx.known_digests.items() if text in ("absent", EMPTY_DIGEST)}
        self._digests.update(known)
        after = {ref: known.get(ref) or self._digest(ref, fresh=True) for ref in refs}
        self.ledger.finish_step(attempt_id, index, after)
        self.out(f"  [{index + 1}/{total}] {step.describe()}: {ctx.rows_done} rows, "
                 f"{time.monotonic() - started:.2f} s")

    def _digest(self, ref: str, fresh: bool = False) -> str:
        if fresh or ref not in self._digests:
            backend, name = self.stores.resolve(ref)
            self._digests[ref] = collection_digests(backend, name, self.config.batch_size,
                                                    on_page=self._heartbeat).to_text()
        return self._digests[ref]

    def _heartbeat(self) -> None:
        if self._owner is not None:
            self.ledger.heartbeat(self._owner, self.config.lock_lease_seconds)

    def _verify_restored(self, item: PlannedRevision, attempt_id: int) -> None:
        if not item.expected_digests:
            self.out(f"  (no digests recorded for {item.revision.revision}'s upgrade; nothing to verify)")
            return
        mismatched = []
        for ref, expected in sorted(item.expected_digests.items()):
            actual = self._digest(ref, fresh=True)
            if not DigestPair.same(expected, actual):
                mismatched.append(f"{ref} is {actual}, was {expected}")
        if mismatched:
            message = (f"downgrade of {item.revision.revision} did not restore the data exactly: "
                       + "; ".join(mismatched))
            self.ledger.finish_attempt(attempt_id, MISMATCH, message)
            raise DigestMismatchError(message)
        self.out(f"  verified: {', '.join(sorted(item.expected_digests))} restored exactly "
                 f"(native records as the application reads them, and logical digest)")

