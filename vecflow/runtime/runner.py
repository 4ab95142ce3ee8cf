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

from vecflow.backends import Backend
from vecflow.config import Config
from vecflow.errors import (
    DamagedStoreError,
    DigestMismatchError,
    IrreversibleError,
    LedgerError,
    LockError,
    VecflowError,
)
from vecflow.operations.base import Op, StepRecord
from vecflow.progress import Progress
from vecflow.runtime import markers
from vecflow.runtime.context import DIGESTS_BEFORE, StepContext, finish_rewrite_digests
from vecflow.runtime.digest import VERSION as DIGEST_VERSION
from vecflow.runtime.digest import Digest, DigestPair, collection_digests
from vecflow.runtime.digest import version_of as digest_version
from vecflow.runtime.fused_pass import run_in_one_pass, steps_in_one_pass
from vecflow.runtime.ledger import DONE, FAILED, ROLLBACK, RUNNING, Ledger, Owner
from vecflow.runtime.simulate import simulate
from vecflow.runtime.snapshots import SnapshotStore, snapshot_name
from vecflow.runtime.stores import Stores, split_ref
from vecflow.script.directory import ScriptDirectory
from vecflow.script.revision import Revision

UPGRADE, DOWNGRADE = "upgrade", "downgrade"
EMPTY_DIGEST = Digest.empty().to_text()


def recorded_before(row: dict) -> dict[str, str]:
    """A step's digests before it ran: the runner's (in the ledger) and those its op computed
    while it read the collection (in the step state, see StepContext.record_digest_before)."""
    state = json.loads(row["cursor"] or "{}")
    return {**state.get(DIGESTS_BEFORE, {}), **json.loads(row["digest_before"] or "{}")}


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
                 stores: Stores, out: Callable[[str], None] = print, progress: Progress | None = None) -> None:
        self.config = config
        self.scripts = scripts
        self.ledger = ledger
        self.snapshots = snapshots
        self.stores = stores
        self.out = out
        # Live progress of steps, digests and verification (shown by the CLI; silent by default).
        self.progress = progress or Progress()
        stores.observe_reads(self.progress.read)
        stores.observe_full_reads(self._full_read)
        # The whole collections the running step has read, each with the part of the step reading it.
        self._reads: list[tuple[str, str]] = []
        self._digests: dict[str, str] = {}
        self._digest_seconds = 0.0
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
        up_attempt = self.ledger.upgrade_to_undo(rev.revision)
        expected = self._digests_before(up_attempt) if up_attempt else {}
        explicit = script.downgrade_ops()
        if explicit is not None:
            return PlannedRevision(rev, DOWNGRADE, explicit, expected)
        if script.irreversible:
            raise IrreversibleError(f"revision {rev.revision} ({rev.path}) is marked irreversible and has no downgrade")
        return PlannedRevision(rev, DOWNGRADE, self._inverse_steps(rev, up_attempt), expected)

    def _digests_before(self, attempt: dict) -> dict[str, str]:
        """The digest of each collection an attempt touched, as it was before the attempt."""
        expected: dict[str, str] = {}
        for row in self.ledger.steps(attempt["id"]):
            for ref, digest in recorded_before(row).items():
                expected.setdefault(ref, digest)
        return expected

    def _inverse_steps(self, rev: Revision, attempt: dict | None) -> list[Op]:
        """The steps undoing an upgrade attempt of rev, last step first. A step the attempt
        finished is undone by its inverse; one it stopped part-way by `reverse_interrupted`; one it
        never started needs nothing. Without an attempt (a stamped revision) every step is undone
        as if it had run, which needs no snapshot."""
        rows = {row["step_index"]: row for row in self.ledger.steps(attempt["id"])} if attempt else {}
        steps: list[Op] = []
        for index, up_step in reversed(list(enumerate(rev.script.upgrade_ops()))):
            row = rows.get(index)
            if attempt is not None and row is None:
                continue
            record = self._step_record(up_step, row)
            where = f"revision {rev.revision}: step {index + 1} ({up_step.describe()})"
            if not record.finished:
                try:
                    steps.extend(up_step.reverse_interrupted(record))
                except IrreversibleError as exc:
                    raise IrreversibleError(f"{where} stopped part-way and cannot be undone ({exc}); fix the cause "
                                            f"and run 'vecflow upgrade {rev.revision}' to finish it instead") from exc
                continue
            if up_step.captures_snapshot and record.snapshot is None:
                raise IrreversibleError(
                    f"{where} is undone from the snapshot it took while running, but the ledger has none (was the "
                    f"revision stamped?); write an explicit downgrade() in {rev.path}")
            inverse = up_step.reverse(record)
            if inverse is None and attempt is not None and attempt["outcome"] in (RUNNING, FAILED):
                raise IrreversibleError(f"cannot roll back the unfinished upgrade of {rev.revision}: step {index + 1} "
                                        f"({up_step.describe()}) cannot be reversed; fix the cause and run 'vecflow "
                                        f"upgrade {rev.revision}' to finish it instead")
            if inverse is None:
                raise IrreversibleError(f"{where} cannot be reversed; write a downgrade() in {rev.path} or mark "
                                        "the revision irreversible = True")
            steps.append(inverse)
        return steps

    def _step_record(self, step: Op, row: dict | None) -> StepRecord:
        if row is None:
            return StepRecord()
        before = recorded_before(row)
        return StepRecord(row["snapshot"], json.loads(row["cursor"] or "{}"),
                          {ref: before.get(self.stores.canonical(ref), "") for ref in step.collections()},
                          finished=row["status"] == DONE)

    def describe_plan(self, plan: list[PlannedRevision]) -> dict:
        """The --dry-run report, as data: the plan simulated in order on samples (runtime/simulate.py):
        each step with its preview, estimated time and why it would be refused or fail, and every
        collection the plan touches with its records now and after (`vecflow.report.plan_lines`
        makes the text, docs/json.md describes the JSON). Open the runner read only
        (command.open_runner) so that nothing is written."""
        return simulate(self, plan)

    # unfinished attempts -------------------------------------------------------------------------

    def settle_unfinished(self, direction: str, target: str, owner: Owner, verify: bool = True) -> bool:
        """Deal with an attempt that did not finish, before a command plans its own work:

        - one the command's plan will resume (same direction, its revision planned) is left for run();
        - an unfinished upgrade is rolled back (undone from its steps' snapshots and verified) when
          the command downgrades, or goes somewhere that revision is not on the way to;
        - an unfinished downgrade is finished first when the command upgrades;
        - an unfinished rollback is always finished first.
        Returns True when it ran something. The caller holds the lease."""
        ran = False
        while True:
            unfinished = self.ledger.unfinished_attempts()
            if not unfinished:
                return ran
            attempt = unfinished[-1]
            if attempt["direction"] not in (UPGRADE, DOWNGRADE, ROLLBACK):
                raise LedgerError(
                    f"the {attempt['direction']} {attempt['revision']} started {attempt['started_at']} by "
                    f"{attempt['user']}@{attempt['host']} did not finish ({attempt['outcome']}); run 'vecflow "
                    f"{attempt['direction']} {attempt['revision']}' to finish it first")
            graph = self.scripts.revision_map
            if attempt["revision"] not in graph:
                raise LedgerError(
                    f"the unfinished {attempt['direction']} of revision {attempt['revision']} has no script in "
                    f"{self.scripts.location}; restore the script, or run 'vecflow stamp current' to abandon it")
            rev = graph.get(attempt["revision"])
            if attempt["direction"] == ROLLBACK:
                self._roll_back(self.ledger.attempt(attempt["undoes"]), owner, verify, attempt)
            elif attempt["direction"] == direction and self._planned(direction, target, rev.revision):
                return ran
            elif attempt["direction"] == UPGRADE:
                self._roll_back(attempt, owner, verify)
            elif direction == UPGRADE:
                self.announce(f"Finishing the interrupted downgrade of {rev.revision} first")
                self._run_revision(self._plan_downgrade(rev), owner, attempt, verify)
            else:
                parent = rev.down_revision[0] if rev.down_revision else "base"
                raise LedgerError(
                    f"the downgrade of revision {rev.revision} did not finish ({attempt['outcome']}) and going to "
                    f"{target} keeps it applied; run 'vecflow downgrade {parent}' to finish it first, then "
                    f"'vecflow upgrade {target}'")
            ran = True

    def _planned(self, direction: str, target: str, revision: str) -> bool:
        graph = self.scripts.revision_map
        applied = self.applied()
        plan = graph.plan_upgrade(applied, target) if direction == UPGRADE else graph.plan_downgrade(applied, target)
        return any(rev.revision == revision for rev in plan)

    def _roll_back(self, attempt: dict, owner: Owner, verify: bool, rollback: dict | None = None) -> None:
        """Undo an upgrade attempt that failed or was interrupted: its finished steps and its
        partial one, last first, as a rollback attempt of its own (resumable like any other),
        then check every collection it touched is as it was before it."""
        rev = self.scripts.revision_map.get(attempt["revision"])
        self._check_recorded_steps(attempt, rev.script.upgrade_ops())
        if rollback is None:
            finish_rewrite_digests(self.ledger, self.stores, attempt["id"])
        item = PlannedRevision(rev, ROLLBACK, self._inverse_steps(rev, attempt), self._digests_before(attempt))
        done = sum(row["status"] == DONE for row in self.ledger.steps(attempt["id"]))
        heading = (f"Rolling back the unfinished upgrade of {item.label} ({attempt['outcome']}, {done} of "
                   f"{len(rev.script.upgrade_ops())} steps done)")
        self._run_revision(item, owner, rollback, verify, undoes=attempt["id"],
                           heading=heading if rollback is None else f"Resuming the rollback of {item.label}")

    def _check_recorded_steps(self, attempt: dict, planned_steps: list[Op]) -> None:
        recorded = [(row["step_index"], row["op"]) for row in self.ledger.steps(attempt["id"])]
        planned = [(i, s.op_name) for i, s in enumerate(planned_steps)]
        if recorded != planned[:len(recorded)]:
            raise LedgerError(
                f"the interrupted {attempt['direction']} of {attempt['revision']} ran other steps than the "
                "script now plans (was it edited?); restore the script to finish it")

    # execution -----------------------------------------------------------------------------------

    def check_plan(self, plan: list[PlannedRevision]) -> None:
        """Before the first write: every step's stores are configured and reachable, and no store
        it writes is marked as another ledger's (runtime/markers.py)."""
        for item in plan:
            for step in item.steps:
                for ref in step.collections():
                    self.stores.resolve(ref)
        for store in sorted({store for item in plan for store in self.written_stores(item)}):
            markers.check(self.stores.backend(store), store, self.ledger)

    def written_stores(self, item: PlannedRevision) -> set[str]:
        """The stores a revision's steps write (a copy's source is only read)."""
        default = self.config.default_store
        return {split_ref(ref, default)[0] for step in item.steps
                for ref in set(step.collections()) - set(step.read_only_collections())}

    def mark_stores(self, stores: set[str]) -> None:
        """Write each store's marker: this ledger, at its current heads."""
        graph = self.scripts.revision_map
        heads = graph.heads_of({r for r in self.ledger.applied() if r in graph})
        for store in sorted(stores):
            markers.write(self.stores.backend(store), self.ledger, heads)

    def run(self, plan: list[PlannedRevision], owner: Owner, verify: bool = True) -> None:
        """Execute a plan. The caller holds the lease, settled unfinished attempts and built the
        plan after that; an attempt left to resume goes first."""
        self._owner = owner
        self.check_plan(plan)
        unfinished = self.ledger.unfinished_attempts()
        resume = unfinished[-1] if unfinished else None
        if resume is not None:
            keys = [(i.revision.revision, i.direction) for i in plan]
            if (resume["revision"], resume["direction"]) not in keys:
                raise LedgerError(
                    f"the {resume['direction']} of revision {resume['revision']} did not finish "
                    f"({resume['outcome']}) and this plan does not include it (settle_unfinished first)")
            position = keys.index((resume["revision"], resume["direction"]))
            plan = [plan[position]] + plan[:position] + plan[position + 1:]
            self._check_recorded_steps(resume, plan[0].steps)
        for position, item in enumerate(plan):
            self._run_revision(item, owner, resume if position == 0 else None, verify)

    def _run_revision(self, item: PlannedRevision, owner: Owner, attempt: dict | None, verify: bool,
                      undoes: int | None = None, heading: str | None = None) -> None:
        """Run (attempt None) or resume one revision's steps, verify a downgrade or rollback, and
        close the attempt together with the applied set."""
        rev = item.revision
        checksum = rev.script.checksum
        if attempt is None:
            attempt_id = self.ledger.begin_attempt(rev.revision, item.direction, owner, checksum, undoes=undoes)
            self.announce(heading or f"{item.direction.capitalize()} {item.label}")
        else:
            attempt_id = attempt["id"]
            self.ledger.resume_attempt(attempt_id, owner)
            self.announce(heading or f"Resuming {item.direction} {item.label}")
        try:
            index = 0
            while index < len(item.steps):
                count = steps_in_one_pass(item.steps, index, lambda i: self.ledger.step(attempt_id, i),
                                          self.stores.canonical)
                self.run_step(item.steps[index], index, len(item.steps), attempt_id, owner, rev, verify,
                              carried=item.steps[index + 1:index + count])
                index += count
            if item.direction != UPGRADE and verify:
                self._verify_restored(item)
            self.ledger.close_revision(attempt_id, item.direction, rev.revision, checksum, rev.path or "")
        except LockError:
            raise  # the lease is gone: record nothing more
        except VecflowError as exc:
            self.ledger.finish_attempt(attempt_id, FAILED, str(exc))
            raise
        self.mark_stores(self.written_stores(item))

    def announce(self, heading: str) -> None:
        """Print the heading of what runs next; after the first one, how long start-up took."""
        self.out(heading)
        self.progress.ready("scripts, ledger, lock and stores opened")

    def run_step(self, step: Op, index: int, total: int, attempt_id: int, owner: Owner, rev: Revision,
                 verify: bool, carried: list[Op] | None = None) -> None:
        """Run one step: digests before, the op, digests after, each shown as progress. Its line
        comes when it ends, with its notes (target created, verified, ...) after it. With carried
        steps (the steps after it, runtime/fused_pass.py), it runs them all in one pass."""
        carried = carried or []
        row = self.ledger.step(attempt_id, index)
        numbers = f"{index + 1}-{index + 1 + len(carried)}" if carried else f"{index + 1}"
        label = f"[{numbers}/{total}] {'; '.join(s.describe() for s in [step, *carried])}"
        if row is not None and row["status"] == DONE:
            self.out(f"  {label}: already done")
            return
        started, self._digest_seconds = time.monotonic(), 0.0
        refs = [self.stores.canonical(r) for r in step.collections()]
        notes: list[str] = []
        self._reads = []
        with self.progress.task(label, lambda: self._size(step), done=row["rows_done"] if row else 0):
            if row is None:
                # Taken with --no-verify too: rolling back a step and verifying its downgrade need them.
                # Those the op computes as it reads are not read first (unless known already).
                deferred = {self.stores.canonical(r) for r in step.digested_while_running()} - set(self._digests)
                before = {ref: self._digest(ref, purpose="digest before") for ref in refs if ref not in deferred}
                snapshot = snapshot_name(attempt_id, index) if step.captures_snapshot else None
                self.ledger.start_step(attempt_id, index, step.op_name, step.describe(), before, snapshot)
                state, rows_done, resumed = {}, 0, False
            else:
                before = recorded_before(row)
                snapshot, state = row["snapshot"], json.loads(row["cursor"] or "{}")
                rows_done, resumed = row["rows_done"], True
                self.out(f"  {label}: resuming at {rows_done} rows")
            ctx = self._context(attempt_id, index, owner, rev, verify, snapshot, state, rows_done, resumed, notes)
            contexts = [ctx, *(self._carried_context(attempt_id, index + k, carried_step, owner, rev, verify, notes)
                               for k, carried_step in enumerate(carried, 1))]
            run = (lambda: run_in_one_pass([step, *carried], contexts)) if carried else (lambda: step.run(ctx))
            try:
                after = self._run_op(step, ctx, refs, before, verify, run)
            except BaseException:
                self.out(f"  {label}: stopped at {ctx.rows_done} rows after {time.monotonic() - started:.2f} s")
                self._out_notes(notes)
                raise
        self.ledger.finish_step(attempt_id, index, {} if carried else after)
        for carried_ctx in contexts[1:]:
            self.ledger.checkpoint(attempt_id, carried_ctx.step_index, json.dumps(carried_ctx.state), ctx.rows_done)
            self.ledger.finish_step(attempt_id, carried_ctx.step_index, after if carried_ctx is contexts[-1] else {})
        if carried:
            notes.append(f"steps {numbers} ran as one pass over {refs[0]}")
        self.out(f"  {label}: {ctx.rows_done} rows, {time.monotonic() - started:.2f} s "
                 f"(digests {self._digest_seconds:.2f} s)")
        self._out_notes([*notes, *self._full_reads_note(step)])

    def _context(self, attempt_id: int, index: int, owner: Owner, rev: Revision, verify: bool, snapshot: str | None,
                 state: dict, rows_done: int, resumed: bool, notes: list[str]) -> StepContext:
        return StepContext(
            stores=self.stores, ledger=self.ledger, snapshots=self.snapshots, owner=owner,
            lease_seconds=self.config.lock_lease_seconds, attempt_id=attempt_id, step_index=index,
            batch_size=self.config.batch_size, snapshot=snapshot, state=state, rows_done=rows_done,
            resumed=resumed, script_dir=Path(rev.path).parent if rev.path else self.scripts.location,
            verify=verify, note=notes.append, progress=self.progress,
        )

    def _carried_context(self, attempt_id: int, index: int, step: Op, owner: Owner, rev: Revision, verify: bool,
                         notes: list[str]) -> StepContext:
        """The context of a step run in the pass of the step before it: its row is begun (before the
        pass writes anything), with no digests of its own."""
        row = self.ledger.step(attempt_id, index)
        if row is None:
            snapshot = snapshot_name(attempt_id, index) if step.captures_snapshot else None
            self.ledger.start_step(attempt_id, index, step.op_name, step.describe(), {}, snapshot)
            row = self.ledger.step(attempt_id, index)
        return self._context(attempt_id, index, owner, rev, verify, row["snapshot"], json.loads(row["cursor"] or "{}"),
                             row["rows_done"], True, notes)

    def _full_read(self, ref: str) -> None:
        # The innermost progress task names the part of the step that read it (the step's own task: the op).
        tasks = self.progress.tasks
        self._reads.append((ref, tasks[-1].name if len(tasks) > 1 else ""))

    def _full_reads_note(self, step: Op) -> list[str]:
        """`full reads: main:docs 1 (move_collection), faiss:docs 1 (verify (target records))`."""
        if not self._reads:
            return []
        parts = []
        for ref in dict.fromkeys(ref for ref, _ in self._reads):
            why = [purpose or step.op_name for read, purpose in self._reads if read == ref]
            parts.append(f"{ref} {len(why)} ({', '.join(dict.fromkeys(why))})")
        return [f"full reads: {'; '.join(parts)}"]

    def _out_notes(self, notes: list[str]) -> None:
        for line in notes:
            self.out(f"      {line}")

    def _run_op(self, step: Op, ctx: StepContext, refs: list[str], before: dict[str, str],
                verify: bool, run: Callable[[], None]) -> dict[str, str]:
        """Run the op (again once, after a damaged collection it can rebuild); the digests after."""
        try:
            run()
        except DamagedStoreError as exc:
            self._restart_after_damage(step, ctx, exc)
            run()  # damaged again: the error stands
        before = {**ctx.digests_before, **before}
        # A digest an op computed is used when it is a whole pair; "absent" and empty need no native part.
        known = {ref: text for ref, text in ctx.known_digests.items()
                 if text in ("absent", EMPTY_DIGEST) or "|" in text}
        read_only = {self.stores.canonical(r) for r in step.read_only_collections()}
        known.update({ref: before[ref] for ref in read_only if before.get(ref) and ref not in known})
        self._digests.update(known)
        if not verify:
            for ref in refs:
                self._digests.pop(ref, None)  # changed, and not digested again
            return {}
        return {ref: known.get(ref) or self._digest(ref, fresh=True, purpose="digest after") for ref in refs}

    def _size(self, step: Op) -> int | None:
        """The records of the step's first existing collection: its progress total until the op
        tells a better one (StepContext.expect)."""
        counts = (_count(*self.stores.resolve(ref)) for ref in step.collections())
        return next((count for count in counts if count is not None), None)

    def _restart_after_damage(self, step: Op, ctx: StepContext, exc: DamagedStoreError) -> None:
        """A collection the step is filling from what it still holds (its source, a data file, a
        snapshot) was found damaged: drop it and set the step back to where the op says it
        rebuilds it. Any other damaged collection: the error stands."""
        damaged = [ref for ref in step.collections() if exc.scope == self._scope(ref)]
        record = self._step_record(step, self.ledger.step(ctx.attempt_id, ctx.step_index))
        state = step.restart_after_damage(record, damaged[0]) if damaged else None
        if state is None:
            raise exc
        backend, name = self.stores.resolve(damaged[0])
        ctx.note(f"{damaged[0]} is damaged ({exc.reason}); this step rebuilds it from what it holds: "
                 "dropped, and filled again")
        backend.drop_collection(name)
        ctx.state, ctx.rows_done, ctx.resumed = {}, 0, True
        ctx.known_digests.clear()
        ctx.save(**state)

    def _scope(self, ref: str) -> str:
        backend, name = self.stores.resolve(ref)
        return backend.scope(name)

    def _digest(self, ref: str, fresh: bool = False, version: int = DIGEST_VERSION, purpose: str = "digest") -> str:
        """A collection's digest text; one in an older digest version (to compare with what an
        older vecflow recorded) is computed afresh and not kept. Shown as progress, and timed."""
        if fresh or ref not in self._digests or version != DIGEST_VERSION:
            backend, name = self.stores.resolve(ref)
            started = time.monotonic()
            with self.progress.task(f"{purpose} {ref}", lambda: _count(backend, name), reads=True):
                text = collection_digests(backend, name, self.config.batch_size, on_page=self._heartbeat,
                                          version=version).to_text()
            self._digest_seconds += time.monotonic() - started
            if version != DIGEST_VERSION:
                return text
            self._digests[ref] = text
        return self._digests[ref]

    def _heartbeat(self) -> None:
        if self._owner is not None:
            self.ledger.heartbeat(self._owner, self.config.lock_lease_seconds)

    def _verify_restored(self, item: PlannedRevision) -> None:
        what = "rollback of the upgrade" if item.direction == ROLLBACK else "downgrade"
        if not item.expected_digests:
            self.out(f"  (no digests recorded for {item.revision.revision}'s upgrade; nothing to verify)")
            return
        mismatched = []
        with self.progress.task(f"{item.direction} {item.revision.revision}"):
            for ref, expected in sorted(item.expected_digests.items()):
                actual = self._digest(ref, fresh=True, version=digest_version(expected), purpose="verify")
                if not DigestPair.same(expected, actual):
                    mismatched.append(f"{ref} is {actual}, was {expected}")
        if mismatched:
            parents = item.revision.down_revision
            raise DigestMismatchError(
                f"{what} of {item.revision.revision} did not restore the data exactly: " + "; ".join(mismatched)
                + f"; its snapshots are kept. To accept the data as it is, run 'vecflow stamp "
                f"{parents[0] if parents else 'base'}'")
        self.out(f"  verified: {', '.join(sorted(item.expected_digests))} restored exactly "
                 f"(native records as the application reads them, and logical digest)")


def _count(backend: Backend, name: str) -> int | None:
    """The records of a collection, or None when it does not exist."""
    return backend.count(name) if backend.has_collection(name) else None
