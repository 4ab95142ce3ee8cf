"""Copy and move collections between any two stores, streamed in checkpointed batches.

A copy writes into a new collection (or an existing empty one with the same dimension and
metric), then verifies it: counts, id sets, digests and search parity (the target's recall
against the exact top-k of the source, see runtime/verify.py). A move is a verified copy followed
by dropping the source; the source is only read until the copy is verified. The inverse of a move
is the move back (recreating the source with its original parameters); the inverse of a copy
removes what it wrote.

A store that was away (retried calls, or a resumed step) may have come back without records it
had acknowledged (a Redis without persistence restarts empty): before going on, the copy checks
that the target still holds what its checkpoint says was written, and otherwise starts over on
the next run and says why (see `ensure_target_kept`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from vecflow.backends import Backend
from vecflow.backends.base import NativePage, gathered
from vecflow.batch import Batch
from vecflow.errors import BackendError, CollectionNotFoundError, OperationError, VecflowError, VerificationError
from vecflow.layouts import LAYOUT_NAMES
from vecflow.operations.base import CollectionOp, Op, StepRecord, register_op
from vecflow.operations.collections import (
    DiscardCollectionOp,
    DropCollectionOp,
    drop_unless_whole,
    records_before,
)
from vecflow.operations.target_shape import TargetShape, choose_target_shape
from vecflow.runtime.context import StepContext
from vecflow.runtime.digest import collection_digests
from vecflow.runtime.stores import Stores
from vecflow.runtime.verify import GroundTruth, SideDigest, copy_normalises, parity_truth, verify_copy

COERCION_SAMPLE = 1000
# The step-state key of the search-parity ground truth the copy loop accumulates.
PARITY_TRUTH = "parity_truth"
# The step-state key of the target's digest, as the store read back what the copy wrote.
WRITTEN_SIDE = "target_side"


class CopyCollectionOp(Op):
    """Copy every record of `source` into `target` (both `store:collection` or a bare name)."""

    op_name: ClassVar[str] = "copy_collection"
    source: str
    target: str
    verify: bool = True
    parity_queries: int = Field(20, ge=0)
    parity_threshold: float | None = Field(None, ge=0, le=1)
    # Index parameters for a newly created target; by default the source's when both stores use
    # the same backend, none otherwise.
    target_params: dict[str, Any] | None = None
    # The framework layout of a new target (raw, langchain, llamaindex): by default the source's.
    target_layout: str | None = None
    # The metric of a new target: by default the source's (see docs/layouts.md, "Target shape").
    target_metric: Literal["cosine", "l2", "ip"] | None = None
    # Read the source in this layout instead of the detected one.
    layout: str | None = None
    # The ground truth this run's copy loop fed, for its verification (None: restore it from the
    # step state, drawing the queries from the source again).
    _fed_truth: GroundTruth | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _distinct(self) -> CopyCollectionOp:
        if self.source == self.target:
            raise ValueError("source and target are the same collection")
        if self.target_params and "metric" in self.target_params:
            raise ValueError("set the target's metric with target_metric, not inside target_params")
        for name, value in (("target_layout", self.target_layout), ("layout", self.layout)):
            if value is not None and value not in LAYOUT_NAMES:
                raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(LAYOUT_NAMES)}")
        return self

    def collections(self) -> list[str]:
        return [self.source, self.target]

    def read_only_collections(self) -> list[str]:
        return [self.source] if getattr(self, "keep_source", True) else []

    def describe(self) -> str:
        return f"{self.op_name} {self.source} -> {self.target}"

    def reverse(self, record: StepRecord) -> Op | None:
        return UncopyCollectionOp(collection=self.target, drop=record.state.get("created_target", True))

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        # Nothing is written before the source and the target are checked; a target that held
        # records made the step refuse.
        if not record.existed_before(self.source) or (
                record.existed_before(self.target) and records_before(record, self.target)):
            return []
        if not record.existed_before(self.target):
            return [DiscardCollectionOp(collection=self.target)]
        return [UncopyCollectionOp(collection=self.target, drop=False)]

    def restart_after_damage(self, record: StepRecord, ref: str) -> dict[str, Any] | None:
        # A target this step created is copied again from the source, which it only reads.
        return {} if ref == self.target and not record.existed_before(self.target) else None

    def preview(self, stores: Stores) -> list[str]:
        source, source_name = stores.resolve(self.source)
        target, target_name = stores.resolve(self.target)
        if not source.has_collection(source_name):
            return []  # the simulated run says it does not exist
        self._read_source_as(source, source_name)
        lines = []
        try:
            exists = self._preflight(source, source_name, target, target_name)
        except VecflowError as exc:
            lines.append(f"refused: {exc}")
            exists = False
        sample, _ = source.scan(source_name, COERCION_SAMPLE)
        if not exists:
            shape = self.target_shape(source, source_name, target, sample)
            lines.append(f"target layout: {shape.layout} ({shape.layout_reason}); source layout: "
                         f"{source.layout_of(source_name).layout.name} ({source.layout_of(source_name).reason})")
            lines.append(f"target metric: {shape.metric} ({shape.metric_reason})")
            lines.extend(f"lossy: {line}" for line in shape.losses)
        for field, how in sorted(target.encoded_fields(sample.metadatas).items()):
            lines.append(f"coercion: metadata field {field!r} {how} (reversible)")
        if not any(line.startswith("coercion") for line in lines):
            lines.append(f"coercion: none needed (sampled {len(sample)} records)")
        return lines

    def target_shape(self, source: Backend, source_name: str, target: Backend, sample: Batch) -> TargetShape:
        """The layout and metric a new target gets, and why."""
        return choose_target_shape(source, source_name, target, sample, self.target_layout, self.target_metric)

    def _preflight(self, source: Backend, source_name: str, target: Backend, target_name: str) -> bool:
        """Refuse an incompatible or non-empty existing target; True when the target exists."""
        info = source.describe(source_name)
        if not target.has_collection(target_name):
            return False
        existing = target.describe(target_name)
        metric = self.target_metric or info.metric
        if (existing.dim, existing.metric) != (info.dim, metric):
            raise OperationError(
                f"{self.op_name}: target {self.target} exists with dim {existing.dim}, metric {existing.metric}; "
                f"the copy needs dim {info.dim}, metric {metric}")
        count = target.count(target_name)
        if count:
            raise OperationError(f"{self.op_name}: target {self.target} already holds {count} records; "
                                 "copy into a new or empty collection")
        return True

    def run(self, ctx: StepContext) -> None:
        self.copy(ctx)
        if self.verify and ctx.verify:
            self.check(ctx)

    def _read_source_as(self, source: Backend, source_name: str) -> None:
        if self.layout is not None:
            source.override_layout(source_name, self.layout, "set by the step's layout=")

    def copy(self, ctx: StepContext) -> None:
        source, source_name = ctx.resolve(self.source)
        target, target_name = ctx.resolve(self.target)
        if not ctx.state.get("prepared"):
            if not source.has_collection(source_name):
                raise CollectionNotFoundError(f"{self.op_name}: source {self.source} does not exist")
        if source.has_collection(source_name):
            self._read_source_as(source, source_name)
        if not ctx.state.get("prepared"):
            existed = self._preflight(source, source_name, target, target_name) and not ctx.resumed
            info = source.describe(source_name)
            if not target.has_collection(target_name):
                self._create_target(ctx, source, source_name, target, target_name)
            ctx.save(prepared=True, created_target=not existed,
                     source_info={"dim": info.dim, "metric": info.metric, "params": info.params,
                                  "backend": type(source).name,
                                  "layout": source.layout_of(source_name).layout.name})
        if ctx.state.get("copied"):
            return
        if not ctx.state.get("copy_cursor") and not target.has_collection(target_name):
            # Nothing copied yet, or starting over after the store lost the target: create it again.
            self._create_target(ctx, source, source_name, target, target_name)
        normalise = copy_normalises(source, source_name, target)
        side = SideDigest.from_dict(ctx.state["source_side"]) if "source_side" in ctx.state else SideDigest.empty()
        if ctx.resumed:
            self.ensure_target_kept(ctx, target, target_name, side.records.count or 0)
        written = self._written_side(ctx)
        truth = self._parity_truth(ctx, source, source_name)
        retried = before = target.retried_calls
        pages = self._source_pages(source, source_name, target, target_name, ctx)
        with contextlib.closing(pages):  # stops a read-ahead thread when a write fails
            # Pages are gathered to the target's write size: one write and one checkpoint each.
            for natives, cursor in gathered(pages, target.write_batch_size(target_name, ctx.batch_size)):
                batch = Batch.concat([native.batch for native in natives])
                if len(batch):
                    batch.check_finite(f"{self.op_name} {self.source}")
                    if written is None:
                        target.upsert(target_name, batch)
                    elif (stored := target.upsert_read_back(target_name, batch)) is None:
                        written = None  # not read back: verification reads the target
                    else:
                        written = written.add(stored, normalise)
                    for native in natives:
                        side = side.add(native, normalise)
                        if truth is not None:
                            truth.add(native.batch)
                # Checked when the target was away while this page was written, and at the end of a
                # copy during which it was away (it may have lost pages it took before it went).
                if target.retried_calls != retried or (cursor is None and target.retried_calls != before):
                    self.ensure_target_kept(ctx, target, target_name, side.records.count or 0)
                    retried = target.retried_calls
                if cursor is None:
                    self._record_source_digest(ctx, source, source_name, side)
                ctx.save(len(batch), copy_cursor=cursor, copied=cursor is None, source_side=side.to_dict(),
                         **({PARITY_TRUTH: truth.to_state()} if truth is not None else {}),
                         **{WRITTEN_SIDE: written.to_dict() if written is not None else None})
        self._fed_truth = truth

    @staticmethod
    def _source_pages(source: Backend, source_name: str, target: Backend, target_name: str,
                      ctx: StepContext) -> Iterator[tuple[NativePage, str | None]]:
        """The source's pages from the checkpoint on: read ahead of the writes when the target is
        another store (its writes cannot change what is being read)."""
        cursor = ctx.state.get("copy_cursor")
        size = source.copy_batch_size(source_name, target.write_batch_size(target_name, ctx.batch_size), ctx.batch_size)
        if source is target:
            return source.native_pages(source_name, size, cursor)
        return source.native_pages_ahead(source_name, size, cursor)

    def _written_side(self, ctx: StepContext) -> SideDigest | None:
        """The target's digest as the store read back what the copy wrote, so far (restored from
        the checkpoint on resume); None when it is not taken: no verification, or a page was not
        read back (then verification reads the target whole)."""
        if not (self.verify and ctx.verify):
            return None
        if not ctx.state.get("copy_cursor"):
            return SideDigest.empty()
        kept = ctx.state.get(WRITTEN_SIDE)
        return SideDigest.from_dict(kept) if kept else None

    def _parity_truth(self, ctx: StepContext, source: Backend, source_name: str) -> GroundTruth | None:
        """The search-parity ground truth the copy loop feeds (so verification does not read the
        source again), restored from the checkpoint on resume; None when no parity will be
        measured, or when a resumed copy began without one (verification then reads the source)."""
        if not (self.verify and ctx.verify) or (ctx.state.get("copy_cursor") and PARITY_TRUTH not in ctx.state):
            return None
        truth = parity_truth(source, source_name, self.parity_queries)
        if truth is not None and ctx.state.get("copy_cursor"):
            truth.restore(ctx.state[PARITY_TRUTH])
        return truth

    def _verified_truth(self, ctx: StepContext, source: Backend, source_name: str) -> GroundTruth | None:
        """The ground truth the copy loop fed: as this run's loop left it, or restored from the step
        state (the queries drawn again) when the copy ran in an earlier run."""
        if PARITY_TRUTH not in ctx.state:
            return None
        if self._fed_truth is not None:
            return self._fed_truth
        truth = parity_truth(source, source_name, self.parity_queries)
        return truth.restore(ctx.state[PARITY_TRUTH]) if truth is not None else None

    def digested_while_running(self) -> list[str]:
        # Read through another layout (layout=), the copy's digest is not the runner's.
        return [self.source] if self.layout is None else []

    def _record_source_digest(self, ctx: StepContext, source: Backend, source_name: str, side: SideDigest) -> None:
        """The source's digest before the step, from the copy loop's pass (the runner did not read
        it first); read afresh only when the loop's pair was lost (resumed from an older state)."""
        if self.layout is not None:
            return
        pair = side.pair or collection_digests(source, source_name, ctx.batch_size)
        ctx.record_digest_before(self.source, pair.to_text())

    def _create_target(self, ctx: StepContext, source: Backend, source_name: str, target: Backend,
                       target_name: str) -> None:
        info = source.describe(source_name)
        params = self.target_params
        if params is None:
            params = info.params if type(source) is type(target) else {}
        sample, _ = source.scan(source_name, COERCION_SAMPLE)
        shape = self.target_shape(source, source_name, target, sample)
        ctx.note(f"target {self.target}: layout {shape.layout}, metric {shape.metric} ({shape.metric_reason})")
        target.create_collection(target_name, info.dim, shape.metric, layout=shape.layout, **params)

    def ensure_target_kept(self, ctx: StepContext, target: Backend, target_name: str, written: int) -> None:
        """Stop when the target holds fewer records than the checkpoint says were written into it
        (or is gone): the store lost data it had acknowledged. The step's copy progress is reset
        first, so the rerun the message asks for copies everything again (the source is only
        read until the copy is verified)."""
        if not written:
            return
        held = target.count(target_name) if target.has_collection(target_name) else None
        if held is not None and held >= written:
            return
        ctx.rows_done = 0
        ctx.save(copy_cursor=None, copied=False, source_side=SideDigest.empty().to_dict(), **{WRITTEN_SIDE: None})
        now = "is gone" if held is None else f"holds {held}"
        raise BackendError(
            f"{self.describe()}: {self.target} {now} but {written} records had been written into it: the "
            f"{type(target).name} store lost data it had acknowledged (e.g. a Redis without persistence that "
            "restarted). The source is untouched and the copy starts over on the next run; make the store "
            "durable (Redis: appendonly yes) and rerun the same command")

    def check(self, ctx: StepContext) -> None:
        source, source_name = ctx.resolve(self.source)
        target, target_name = ctx.resolve(self.target)
        side = ctx.state.get("source_side")
        written = (SideDigest.from_dict(side).records.count or 0) if side else 0
        if ctx.resumed:
            self.ensure_target_kept(ctx, target, target_name, written)
        retried = target.retried_calls
        truth = self._verified_truth(ctx, source, source_name)
        kept = ctx.state.get(WRITTEN_SIDE)
        report = verify_copy(source, source_name, target, target_name, batch_size=ctx.batch_size,
                             queries=self.parity_queries, threshold=self.parity_threshold,
                             source_side=SideDigest.from_dict(side) if side else None, truth=truth,
                             target_side=SideDigest.from_dict(kept) if kept else None, track=ctx.track)
        ctx.save(verification=report.to_dict())
        if report.problems and target.retried_calls != retried:
            self.ensure_target_kept(ctx, target, target_name, written)
        if report.problems:
            raise VerificationError(f"{self.describe()} did not verify (the source is untouched): "
                                    + "; ".join(report.problems))
        layouts = f"{source.layout_of(source_name).layout.name} and {target.layout_of(target_name).layout.name}"
        ctx.note(f"verified {self.target}: {report.summary()} (logical records, read through {layouts} layouts)")
        if report.target_pair is not None:
            ctx.know_digest(self.target, report.target_pair)  # the runner need not read the target again
        elif not report.normalised:
            ctx.know_digest(self.target, report.target_digest)


register_op(CopyCollectionOp)


@register_op
class MoveCollectionOp(CopyCollectionOp):
    """Copy, verify, then drop the source (unless keep_source). Inverse: the move back."""

    op_name: ClassVar[str] = "move_collection"
    keep_source: bool = False

    def reverse(self, record: StepRecord) -> Op | None:
        if self.keep_source:
            return super().reverse(record)
        back = self._move_back(record)
        if self.target in record.before and record.existed_before(self.target):
            # The target existed (empty) before: the records go back and it stays, emptied.
            return UnmoveCollectionOp(back=back, source_records=records_before(record, self.source),
                                      target_created=False)
        return back

    def _move_back(self, record: StepRecord) -> MoveCollectionOp:
        info = record.state.get("source_info", {})
        return MoveCollectionOp(source=self.target, target=self.source, verify=self.verify,
                                parity_queries=self.parity_queries, parity_threshold=self.parity_threshold,
                                target_params=info.get("params"), target_layout=info.get("layout"),
                                target_metric=info.get("metric"))

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        undo_copy = super().reverse_interrupted(record)
        # The source is dropped only after the whole copy is checkpointed.
        if self.keep_source or not undo_copy or not record.state.get("copied"):
            return undo_copy
        return [UnmoveCollectionOp(back=self._move_back(record), source_records=records_before(record, self.source),
                                   target_created=not record.existed_before(self.target))]

    def restart_after_damage(self, record: StepRecord, ref: str) -> dict[str, Any] | None:
        # Once the source is being dropped, the damaged target holds records found nowhere else.
        return None if record.state.get("dropping_source") else super().restart_after_damage(record, ref)

    def run(self, ctx: StepContext) -> None:
        source, source_name = ctx.resolve(self.source)
        if ctx.state.get("source_dropped"):
            return
        if not ctx.state.get("dropping_source"):
            super().run(ctx)
        if not self.keep_source:
            # Checkpointed first: a run resumed once the drop began finishes it (the copy was
            # verified; the source is not whole any more).
            ctx.save(dropping_source=True)
            if source.has_collection(source_name):
                source.drop_collection(source_name)
            ctx.save(source_dropped=True)
            ctx.know_digest(self.source, "absent")


@register_op
class UncopyCollectionOp(CollectionOp):
    """Internal inverse of copy_collection: drop the target it created, or empty the one it filled."""

    op_name: ClassVar[str] = "uncopy_collection"
    internal: ClassVar[bool] = True
    drop: bool = True

    def describe(self) -> str:
        return f"{'drop' if self.drop else 'empty'} the copy {self.collection}"

    def run(self, ctx: StepContext) -> None:
        if self.drop:
            DropCollectionOp(collection=self.collection, snapshot=False).run(ctx)
            return
        backend, name = ctx.require(self.collection)
        # Deleting behind the cursor does not shift the pages after it (see delete_records).
        for page, _ in backend.pages(name, ctx.batch_size):
            if len(page):
                backend.delete(name, page.ids)
                ctx.save(len(page))


@register_op
class UnmoveCollectionOp(Op):
    """Internal inverse of a move_collection that stopped after its copy: while the source still
    holds all its records the move had not begun dropping it, and the target is removed (dropped,
    or emptied when it existed before); otherwise what is left of the source is dropped and the
    target moved back."""

    op_name: ClassVar[str] = "unmove_collection"
    internal: ClassVar[bool] = True
    back: MoveCollectionOp
    source_records: int
    target_created: bool = True

    def collections(self) -> list[str]:
        return [self.back.target, self.back.source]

    def describe(self) -> str:
        return f"unmove_collection: undo the stopped move {self.back.target} -> {self.back.source}"

    def run(self, ctx: StepContext) -> None:
        if drop_unless_whole(ctx, self.back.target, self.source_records):
            undo: Op = (DiscardCollectionOp(collection=self.back.source) if self.target_created
                        else UncopyCollectionOp(collection=self.back.source, drop=False))
            undo.run(ctx)
            return
        if self.target_created:
            self.back.run(ctx)
            return
        # The target existed (empty) before the move: move the records back, then empty it.
        self.back.model_copy(update={"keep_source": True}).run(ctx)
        UncopyCollectionOp(collection=self.back.source, drop=False).run(ctx)
