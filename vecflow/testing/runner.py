"""Run a chain on a DisposableProject: upgrades and downgrades through vecflow.command, the state
of every collection, and the stairway walk.

The stairway upgrades one revision at a time from base to the heads, then downgrades one at a
time back to base; after every downgrade each collection of every store must be what it was when
the way up stood at the same revisions (digest, dimension, metric, index parameters), and at base
what the sample data made it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vecflow import command
from vecflow.batch import Record
from vecflow.errors import DigestMismatchError, VecflowError
from vecflow.runtime.digest import canonical_metadata, collection_digests
from vecflow.script.directory import ScriptDirectory
from vecflow.script.revision import RevisionMap
from vecflow.testing.project import DisposableProject

# Collections up to this size keep their records in each state, so a mismatch names the records
# and fields at fault; larger ones are compared by digest only.
RECORD_LIMIT = 10_000
SHOWN_RECORDS = 3


class StairwayError(AssertionError):
    """A step of the chain failed, or a downgrade did not give back what the application read."""


@dataclass(frozen=True)
class CollectionState:
    """One collection as the application can read it: its digest (`logical|native`, as the
    ledger writes it), shape and, for small collections, its records."""

    digest: str
    count: int
    dim: int
    metric: str
    params: dict[str, Any]
    records: dict[str, Record] | None

    def differences(self, actual: CollectionState) -> list[str]:
        """What `actual` has that this state had not, one line each; [] when they agree."""
        lines = [f"{what} {after!r}, was {before!r}" for what, before, after in (
            ("dimension", self.dim, actual.dim), ("metric", self.metric, actual.metric),
            ("index parameters", self.params, actual.params)) if before != after]
        if self.digest == actual.digest:
            return lines
        if self.records is None or actual.records is None:
            return [*lines, f"{actual.count} records with digest {actual.digest}, was {self.count} with {self.digest}"]
        changes = record_changes(self.records, actual.records)
        if not changes:
            changes = [f"the records read the same through vecflow, but the store holds other bytes than it did "
                       f"(what the application reads): digest {actual.digest}, was {self.digest}"]
        elif len(changes) > SHOWN_RECORDS:
            changes = [*changes[:SHOWN_RECORDS], f"... and {len(changes) - SHOWN_RECORDS} more records differ"]
        return [*lines, *changes]


def record_changes(before: dict[str, Record], after: dict[str, Record]) -> list[str]:
    """One line per record that is missing, new, or different, in id order."""
    lines = []
    for rid in sorted(before.keys() | after.keys()):
        old, new = before.get(rid), after.get(rid)
        if new is None:
            lines.append(f"record {rid!r} is missing")
        elif old is None:
            lines.append(f"record {rid!r} is new")
        else:
            parts = _part_changes(old, new)
            if parts:
                lines.append(f"record {rid!r}: {'; '.join(parts)}")
    return lines


def _part_changes(old: Record, new: Record) -> list[str]:
    parts = []
    if old.document != new.document:
        parts.append(f"document {_short(new.document)}, was {_short(old.document)}")
    if np.asarray(old.vector, "<f4").tobytes() != np.asarray(new.vector, "<f4").tobytes():
        parts.append("vector changed")
    for key in sorted(old.metadata.keys() | new.metadata.keys()):
        if key not in new.metadata:
            parts.append(f"metadata {key!r} is missing, was {_short(old.metadata[key])}")
        elif key not in old.metadata:
            parts.append(f"metadata {key!r} = {_short(new.metadata[key])} is new")
        elif canonical_metadata({key: old.metadata[key]}) != canonical_metadata({key: new.metadata[key]}):
            parts.append(f"metadata {key!r} is {_short(new.metadata[key])}, was {_short(old.metadata[key])}")
    return parts


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def stairway_plan(graph: RevisionMap) -> tuple[list[str], list[tuple[str, tuple[str, ...]]]]:
    """The stairway's steps: the revisions to upgrade to, one at a time from base, then the
    downgrade targets back to base, each with the revisions it removes.

    A downgrade removes the last revision applied; in a linear chain it removes nothing else. On
    parallel branches `vecflow downgrade <rev>` may have to remove revisions of several branches at
    once (the target that removes fewest is taken), and the way up is ordered so that it passes
    through every state the way down comes back to."""
    applied = {rev.revision for rev in graph}
    down: list[tuple[str, tuple[str, ...]]] = []
    while applied:
        order = graph.topological(applied)
        last, best = order[-1], None
        for target in [*reversed(order[:-1]), "base"]:
            removed = tuple(rev.revision for rev in graph.plan_downgrade(applied, target))
            if last in removed and (best is None or len(removed) < len(best[1])):
                best = (target, removed)
                if len(removed) == 1:
                    break
        assert best is not None  # "base" removes everything, `last` included
        down.append(best)
        applied -= set(best[1])
    up = [rev_id for _, removed in reversed(down) for rev_id in graph.topological(removed)]
    return up, down


class ChainRunner:
    """The user's chain on disposable stores, driven through vecflow's API.

    Every command's output is appended to `output`. Commands raise vecflow's own errors; the
    stairway and upgrade_one_at_a_time raise StairwayError naming the revision at fault."""

    def __init__(self, project: DisposableProject) -> None:
        self.project = project
        self.config = project.config
        self.output: list[str] = []

    @functools.cached_property
    def graph(self) -> RevisionMap:
        return ScriptDirectory.of(self.config).revision_map

    @property
    def heads(self) -> tuple[str, ...]:
        return self.graph.heads

    def revisions(self) -> list[str]:
        """Every revision id, parents first."""
        return [rev.revision for rev in self.graph]

    def upgrade(self, target: str = "heads", **options: Any) -> None:
        """`vecflow upgrade TARGET` (options as command.upgrade takes them: dry_run, verify)."""
        command.upgrade(self.config, target, out=self.output.append, **options)

    def downgrade(self, target: str = "base", **options: Any) -> None:
        """`vecflow downgrade TARGET`."""
        command.downgrade(self.config, target, out=self.output.append, **options)

    def current(self) -> tuple[str, ...]:
        """The heads the ledger is at; () at base."""
        return tuple(command.current(self.config, out=lambda line: None))

    def records(self, ref: str) -> dict[str, Record]:
        """The records of a collection (`docs` or `store:docs`) by id."""
        with self.project.stores() as stores:
            backend, name = stores.resolve(ref)
            return {record.id: record for batch, _ in backend.pages(name, self.config.batch_size)
                    for record in batch.records()}

    def digests(self) -> dict[str, str]:
        """`store:collection` -> digest (`logical|native`) of every collection of every store."""
        return {ref: state.digest for ref, state in self.states().items()}

    def states(self) -> dict[str, CollectionState]:
        """`store:collection` -> CollectionState of every collection of every store."""
        result = {}
        with self.project.stores() as stores:
            for store in sorted(self.config.stores):
                backend = stores.backend(store)
                for name in backend.list_collections():
                    info, count = backend.describe(name), backend.count(name)
                    records = None
                    if count <= RECORD_LIMIT:
                        records = {record.id: record for batch, _ in backend.pages(name, self.config.batch_size)
                                   for record in batch.records()}
                    digest = collection_digests(backend, name, self.config.batch_size).to_text()
                    result[f"{store}:{name}"] = CollectionState(digest, count, info.dim, info.metric,
                                                                dict(info.params), records)
        return result

    def upgrade_one_at_a_time(self) -> list[str]:
        """Upgrade from where the ledger is to the heads, one revision per command; the ids."""
        applied = set(self.graph.ancestors(self.current()))
        steps = [rev_id for rev_id in self.revisions() if rev_id not in applied]
        for rev_id in steps:
            self._step(self.upgrade, rev_id, f"upgrading to {self.describe(rev_id)}")
            applied.add(rev_id)
            self._expect_at(applied, f"vecflow upgrade {rev_id}")
        return steps

    def stairway(self) -> None:
        """Upgrade one revision at a time to the heads, then downgrade one at a time to base,
        comparing every collection after each downgrade with the way up (see the module)."""
        current = self.current()
        if current:
            raise StairwayError(f"stairway: the ledger is at {', '.join(current)}; the stairway starts at base")
        up, down = stairway_plan(self.graph)
        applied: set[str] = set()
        seen = {frozenset(): self.states()}
        for rev_id in up:
            self._step(self.upgrade, rev_id, f"upgrading to {self.describe(rev_id)}")
            applied.add(rev_id)
            self._expect_at(applied, f"vecflow upgrade {rev_id}")
            seen[frozenset(applied)] = self.states()
        for target, removed in down:
            undone = ", ".join(self.describe(rev_id) for rev_id in removed)
            applied -= set(removed)
            at = ", ".join(self.graph.heads_of(applied)) or "base"
            try:
                self._step(self.downgrade, target, f"undoing {undone}")
            except StairwayError as exc:
                if not isinstance(exc.__cause__, DigestMismatchError):
                    raise
                # vecflow's verification found the data wrong: show where.
                problems = _compare(seen[frozenset(applied)], self.states())
                raise StairwayError(f"{exc}\n  the stores differ from {at}:\n"
                                    + "\n".join(f"    {line}" for line in problems)) from exc.__cause__
            self._expect_at(applied, f"vecflow downgrade {target}")
            problems = _compare(seen[frozenset(applied)], self.states())
            if problems:
                raise StairwayError(
                    f"stairway: `vecflow downgrade {target}` undid {undone} but did not restore the stores as they "
                    f"were at {at}:\n" + "\n".join(f"  {line}" for line in problems))

    def describe(self, rev_id: str) -> str:
        """'<id> (<message>, <script file>)': how failures name a revision."""
        rev = self.graph.get(rev_id)
        where = Path(rev.path).name if rev.path else ""
        return f"{rev_id} ({', '.join(part for part in (rev.message, where) if part)})"

    def _step(self, run: Callable[[str], None], target: str, what: str) -> None:
        start = len(self.output)
        try:
            run(target)
        except VecflowError as exc:
            printed = self.output[start:][-12:]
            tail = "\n  vecflow printed:\n" + "\n".join(f"    {line}" for line in printed) if printed else ""
            raise StairwayError(f"stairway: `vecflow {run.__name__} {target}` ({what}) failed: {exc}{tail}") from exc

    def _expect_at(self, applied: set[str], ran: str) -> None:
        expected, actual = self.graph.heads_of(applied), self.current()
        if set(actual) != set(expected):
            raise StairwayError(f"stairway: after `{ran}` the ledger is at {', '.join(actual) or 'base'}, expected "
                                f"{', '.join(expected) or 'base'}")


def _compare(expected: dict[str, CollectionState], actual: dict[str, CollectionState]) -> list[str]:
    lines = []
    for ref in sorted(expected.keys() | actual.keys()):
        before, after = expected.get(ref), actual.get(ref)
        if after is None:
            lines.append(f"{ref}: missing; it held {before.count} records")
        elif before is None:
            lines.append(f"{ref}: exists ({after.count} records); it did not")
        else:
            lines += [f"{ref}: {line}" for line in before.differences(after)]
    return lines
