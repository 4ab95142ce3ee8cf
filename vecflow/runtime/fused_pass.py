"""Consecutive metadata steps on one collection, run as one pass over it.

A revision that renames one field and then sets another (`rename_field` + `set_field`) would
read, write and read back every record once per step. Steps whose whole work is one
metadata-only rewrite pass over one collection (`Op.field_access`, `Op.metadata_pass`) run as
one pass instead when they are consecutive, on the same collection, and none writes a field
another reads or writes (`FieldAccess.independent_of`): each page is read once, given to every
step's transform in order, and written once with all their changes.

Independence is what makes this the same as running them one by one. Each step changes exactly
what it would have changed alone, whatever the other steps did to the page. On a page written
before a kill and read again, each step still recognises its own work: every rewrite transform
has that property (StepContext.rewrite_records), and the others did not touch its fields.

Ledger:
- Every step keeps its own row and its own snapshot. All rows are started before the pass writes.
- The pass (cursor, rows, digests) runs in the first step's context. Its state records how many
  steps it carries (FUSED_STEPS) before the first write, so a resumed run carries the same steps.
- The collection's digest before is recorded by the first step, its digest after by the last one.
  The steps between record neither: no page was ever written in the state between them.
- The rows are finished in order. A later step found unfinished after the first one finished (a
  kill in between) runs alone, and finds its work done.

Undoing: each step is undone from its own snapshot, the last step first, as when they ran one by
one (runner._inverse_steps).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from vecflow.batch import Batch
from vecflow.operations.base import Op
from vecflow.runtime.context import StepContext
from vecflow.runtime.ledger import DONE

# The first step's state key: how many steps its pass carries (itself included).
FUSED_STEPS = "fused_steps"

Transform = Callable[[Batch], Batch | None]


def steps_in_one_pass(steps: Sequence[Op], start: int, row_of: Callable[[int], dict | None],
                      canonical: Callable[[str], str]) -> int:
    """How many steps from `start` run as one pass (1: the step runs alone). A step already begun
    carries the steps its state names; one not begun carries the following steps, not begun
    either, that it can run with."""
    first, row = steps[start], row_of(start)
    if first.field_access() is None or (row is not None and row["status"] == DONE):
        return 1
    if row is not None:
        return min(json.loads(row["cursor"] or "{}").get(FUSED_STEPS, 1), len(steps) - start)
    collection = canonical(first.collections()[0])
    carried = [first]
    for index in range(start + 1, len(steps)):
        step, access = steps[index], steps[index].field_access()
        if access is None or canonical(step.collections()[0]) != collection or row_of(index) is not None:
            break
        if not all(access.independent_of(other.field_access()) for other in carried):
            break
        carried.append(step)
    return len(carried)


def run_in_one_pass(steps: Sequence[Op], contexts: Sequence[StepContext]) -> None:
    """Run the steps' metadata passes as one pass, in the first step's context."""
    lead = contexts[0]
    transforms = [step.metadata_pass(ctx) for step, ctx in zip(steps, contexts)]
    if lead.state.get(FUSED_STEPS) != len(steps):
        lead.save(**{FUSED_STEPS: len(steps)})
    lead.rewrite_records(steps[0].collections()[0], chained(transforms), metadata_only=True, digest=True)


def chained(transforms: Sequence[Transform]) -> Transform:
    """One page transform applying each in turn, each to the page as the ones before left it; it
    returns every record any of them changed."""

    def transform(page: Batch) -> Batch | None:
        position = {rid: i for i, rid in enumerate(page.ids)}
        metadatas, changed = list(page.metadatas), set()
        for each in transforms:
            out = each(page.with_metadatas(list(metadatas)) if changed else page)
            if out is None:
                continue
            for rid, meta in zip(out.ids, out.metadatas):
                metadatas[position[rid]] = meta
                changed.add(position[rid])
        if not changed:
            return None
        return page.with_metadatas(metadatas).take(sorted(changed))

    return transform
