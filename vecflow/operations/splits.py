"""Collection splits and merges: split_collection, merge_collections, and their inverses.

All four ops are one engine, a verified re-partition: stream every record of some source
collections into target collections chosen record by record, checkpointing after every page;
verify each target (count, id set and digest equal to those of the records routed to it; digests
are sums, so the targets' digests add up to the sources'); only then drop or trim the sources.

Before anything is written, a read-only pass routes every record: records no target takes, ids
that would collide in a merge, and unusable targets are refused there, so a refused step has
written nothing. The same pass gives --dry-run its per-target counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import Field, field_validator, model_validator

from vecflow.backends import CollectionInfo
from vecflow.batch import Batch
from vecflow.errors import (
    CollectionNotFoundError,
    InvalidDataError,
    OperationError,
    VecflowError,
    VerificationError,
)
from vecflow.operations.base import Op, StepRecord, register_op
from vecflow.operations.collections import drop_unless_whole, records_before
from vecflow.runtime.context import StepContext
from vecflow.runtime.digest import Digest
from vecflow.runtime.estimate import total_records
from vecflow.runtime.stores import Stores
from vecflow.runtime.verify import SideDigest, read_side

_JINJA = SandboxedEnvironment()
EXAMPLES = 10
EMPTY = Digest.empty().to_text()

# (source ref, page) -> canonical target ref of each record, or None (routed nowhere).
Route = Callable[[str, Batch], list[str | None]]


def _info_dict(info: CollectionInfo) -> dict[str, Any]:
    return {"dim": info.dim, "metric": info.metric, "params": info.params}


@dataclass
class Plan:
    """What the read-only pass found: canonical refs, per-target counts, and refusals."""

    sources: list[str]
    targets: list[str]
    infos: dict[str, CollectionInfo] = field(default_factory=dict)
    existing: list[str] = field(default_factory=list)
    before: dict[str, SideDigest] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    read: dict[str, int] = field(default_factory=dict)
    problems: list[VecflowError] = field(default_factory=list)

    def refuse(self) -> None:
        if self.problems:
            raise type(self.problems[0])("; ".join(str(p) for p in self.problems) + ". Nothing was written")


class Repartition(Op):
    """Engine shared by the split and merge ops (not an op itself)."""

    # Targets may already hold records (a merge into an existing collection).
    fills_nonempty_targets: ClassVar[bool] = False

    def source_refs(self) -> list[str]:
        raise NotImplementedError

    def target_refs(self) -> list[str]:
        raise NotImplementedError

    def router(self, stores: Stores, ctx: StepContext | None) -> Route:
        raise NotImplementedError

    def target_spec(self, stores: Stores, target: str, infos: dict[str, CollectionInfo]) -> CollectionInfo:
        """Dimension, metric and params of a target the step creates."""
        first = next(iter(infos.values()))
        same_backend = type(stores.resolve(target)[0]) is type(stores.resolve(next(iter(infos)))[0])
        return CollectionInfo(target, first.dim, first.metric, first.params if same_backend else {})

    def unrouted_problem(self, examples: list[str], total: int) -> VecflowError | None:
        """The refusal of records routed nowhere; None when such records stay in their source."""
        return None

    def describe_record(self, page: Batch, i: int) -> str:
        return repr(page.ids[i])

    def copies(self) -> bool:
        return True

    def plan_state(self, plan: Plan) -> dict[str, Any]:
        """What the inverse needs to know, saved in the step state once the plan is made."""
        return {}

    def before_write(self, ctx: StepContext, index: int, page: Batch) -> None:
        """Called with each source page before any of it is written to a target."""

    def finish(self, ctx: StepContext) -> None:
        """After verification: drop or trim the sources."""

    def collections(self) -> list[str]:
        return list(dict.fromkeys(self.source_refs() + self.target_refs()))

    # the pass before writing ---------------------------------------------------------------------

    def plan(self, stores: Stores, ctx: StepContext | None = None, scan_refused: bool = False) -> Plan:
        """Check sources and targets and route every record, reading only. Problems are collected
        in the plan; with scan_refused the routing pass runs even when targets were refused."""
        plan = Plan(*self._refs(stores))
        if len(set(plan.sources)) != len(plan.sources):
            raise OperationError(f"{self.op_name}: a source is listed twice ({', '.join(plan.sources)})")
        if overlap := sorted(set(plan.sources) & set(plan.targets)):
            raise OperationError(f"{self.op_name}: {', '.join(overlap)} is both a source and a target")
        for ref in plan.sources:
            backend, name = stores.resolve(ref)
            if not backend.has_collection(name):
                raise CollectionNotFoundError(f"{self.op_name}: source {ref} does not exist")
            plan.infos[ref] = backend.describe(name)
        shapes = {(i.dim, i.metric) for i in plan.infos.values()}
        if len(shapes) > 1:
            raise OperationError(f"{self.op_name}: the sources differ in dimension or metric ("
                                 + ", ".join(f"{r}: dim {i.dim}, {i.metric}" for r, i in plan.infos.items()) + ")")
        batch_size = stores.config.batch_size
        for ref in plan.targets:
            self._check_target(stores, plan, ref, batch_size)
        if plan.problems and not scan_refused:
            return plan
        self._route_all(stores, ctx, plan, batch_size)
        return plan

    def _check_target(self, stores: Stores, plan: Plan, ref: str, batch_size: int) -> None:
        backend, name = stores.resolve(ref)
        if not backend.has_collection(name):
            return
        plan.existing.append(ref)
        spec, info = self.target_spec(stores, ref, plan.infos), backend.describe(name)
        if (info.dim, info.metric) != (spec.dim, spec.metric):
            plan.problems.append(OperationError(
                f"{self.op_name}: target {ref} exists with dim {info.dim}, metric {info.metric}; "
                f"the records have dim {spec.dim}, metric {spec.metric}"))
        elif count := backend.count(name):
            if not self.fills_nonempty_targets:
                plan.problems.append(OperationError(
                    f"{self.op_name}: target {ref} already holds {count} records; use a new or empty collection"))
            else:
                plan.before[ref] = read_side(backend, name, batch_size, self._normalises(stores, plan.infos, ref))

    def _route_all(self, stores: Stores, ctx: StepContext | None, plan: Plan, batch_size: int) -> None:
        route = self.router(stores, ctx)
        plan.counts = {ref: 0 for ref in plan.targets}
        unrouted, unrouted_total = [], 0
        # Ids can only collide when several collections pour into one.
        owners: dict[str, str] | None = {} if len(plan.sources) > 1 or plan.before else None
        collisions: list[str] = []
        if owners is not None:
            for ref in plan.before:
                backend, name = stores.resolve(ref)
                for page, _ in backend.pages(name, batch_size):
                    owners.update(dict.fromkeys(page.ids, ref))
        for ref in plan.sources:
            backend, name = stores.resolve(ref)
            plan.read[ref] = 0
            for page, _ in backend.pages(name, batch_size):
                plan.read[ref] += len(page)
                for i, target in enumerate(route(ref, page)):
                    if target is None:
                        unrouted_total += 1
                        unrouted.append((page.ids[i], self.describe_record(page, i)))
                        continue
                    plan.counts[target] += 1
                    if owners is not None:
                        rid = page.ids[i]
                        if rid in owners:
                            collisions.append(f"{rid!r} ({owners[rid]}, {ref})")
                        else:
                            owners[rid] = ref
                unrouted = sorted(unrouted)[:EXAMPLES]  # the first ids, whatever the scan order
        examples = [text for _, text in unrouted]
        if unrouted_total and (problem := self.unrouted_problem(examples, unrouted_total)):
            plan.problems.append(problem)
        if collisions:
            shown = ", ".join(sorted(collisions)[:EXAMPLES]) + (", ..." if len(collisions) > EXAMPLES else "")
            plan.problems.append(InvalidDataError(
                f"{self.op_name}: {len(collisions)} ids occur in more than one collection: {shown}; "
                "delete or re-id the duplicates first"))

    def preview(self, stores: Stores) -> list[str]:
        if not self.copies():
            return []
        for ref in self.source_refs():
            backend, name = stores.resolve(ref)
            if not backend.has_collection(name):
                return []  # the simulated run says it does not exist
        try:
            plan = self.plan(stores, scan_refused=True)
        except VecflowError as exc:
            return [f"refused: {exc}"]
        # Counted on the sample of each source (a dry run's), extrapolated to what it stands for.
        read = sum(plan.read.values())
        totals = sum(total_records(*stores.resolve(ref)) for ref in plan.sources)
        scale = totals / read if read else 1.0

        def records(count: int) -> str:
            return f"{count} records" if read >= totals else f"~{round(count * scale)} records (sampled {count})"

        lines = [f"{ref}: {records(plan.read.get(ref, 0))} read" for ref in plan.sources]
        for ref in plan.targets:
            there = plan.before[ref].records.count if ref in plan.before else 0
            state = f"exists, {there} records already" if ref in plan.existing else "new"
            lines.append(f"-> {ref}: {records(plan.counts.get(ref, 0))} ({state})")
        return lines + [f"refused: {problem}" for problem in plan.problems]

    # running -------------------------------------------------------------------------------------

    def run(self, ctx: StepContext) -> None:
        if ctx.state.get("finished"):
            return
        if self.copies():
            if not ctx.state.get("planned"):
                plan = self.plan(ctx.stores, ctx)
                plan.refuse()
                ctx.save(planned=True, existing=plan.existing, counts=plan.counts,
                         before={ref: side.to_dict() for ref, side in plan.before.items()},
                         **self.plan_state(plan))
            self._copy(ctx)
            self._check(ctx)
        self.finish(ctx)
        ctx.save(finished=True)

    def _refs(self, stores: Stores) -> tuple[list[str], list[str]]:
        return ([stores.canonical(r) for r in self.source_refs()],
                list(dict.fromkeys(stores.canonical(r) for r in self.target_refs())))

    def _normalises(self, stores: Stores, infos: dict[str, CollectionInfo], target: str) -> bool:
        """Whether this target's digests must compare unit-length vectors (see verify.copy_normalises)."""
        if next(iter(infos.values())).metric != "cosine":
            return False
        return any(stores.resolve(ref)[0].normalises_cosine for ref in [*infos, target])

    def _copy(self, ctx: StepContext) -> None:
        if ctx.state.get("copied"):
            return
        sources, targets = self._refs(ctx.stores)
        infos = _describe_all(ctx, sources)
        for ref in targets:
            backend, name = ctx.resolve(ref)
            if not backend.has_collection(name):
                spec = self.target_spec(ctx.stores, ref, infos)
                source, source_name = ctx.resolve(sources[0])
                layout = source.layout_of(source_name).layout.name
                backend.create_collection(name, spec.dim, spec.metric,
                                          layout=layout if layout in backend.layouts else None, **spec.params)
        normalise = {ref: self._normalises(ctx.stores, infos, ref) for ref in targets}
        sides = {ref: SideDigest.from_dict(ctx.state["sides"][ref]) if ref in ctx.state.get("sides", {})
                 else SideDigest.empty() for ref in targets}
        read = dict(ctx.state.get("read", {}))
        start = ctx.state.get("source_index", 0)
        route = self.router(ctx.stores, ctx)
        if not read:
            ctx.expect(lambda: sum(backend.count(name) for backend, name in map(ctx.resolve, sources)))
        for index in range(start, len(sources)):
            backend, name = ctx.resolve(sources[index])
            # The saved cursor belongs to the source the interrupted run was reading.
            resume = ctx.state.get("cursor") if index == start else None
            # Read ahead of the writes unless a target is in the source's store.
            ahead = all(ctx.resolve(ref)[0] is not backend for ref in targets)
            paging = backend.pages_ahead if ahead else backend.pages
            for page, cursor in paging(name, ctx.batch_size, resume):
                if len(page):
                    page.check_finite(f"{self.op_name} {sources[index]}")
                    groups: dict[str | None, list[int]] = {}
                    for i, target in enumerate(route(sources[index], page)):
                        groups.setdefault(target, []).append(i)
                    if None in groups and self.unrouted_problem([], 0) is not None:
                        example = self.describe_record(page, groups[None][0])
                        raise InvalidDataError(f"{self.op_name}: {sources[index]} changed since it was checked: "
                                               f"{len(groups[None])} records match no target (e.g. {example})")
                    self.before_write(ctx, index, page)
                    for target, positions in groups.items():
                        if target is None:
                            continue
                        part = page.take(positions)
                        target_backend, target_name = ctx.resolve(target)
                        target_backend.upsert(target_name, part)
                        sides[target] = sides[target].add(part, normalise[target])
                read[sources[index]] = read.get(sources[index], 0) + len(page)
                # Past a source's last page the checkpoint points at the start of the next one.
                done = index + 1 if cursor is None else index
                ctx.save(len(page), source_index=done, cursor=cursor, read=read, copied=done == len(sources),
                         sides={ref: side.to_dict() for ref, side in sides.items()})

    def _check(self, ctx: StepContext) -> None:
        """Counts always; with verification on, id sets and digests of every target too."""
        if ctx.state.get("verified"):
            return
        sources, targets = self._refs(ctx.stores)
        problems = []
        for ref in sources:
            backend, name = ctx.resolve(ref)
            now, read = backend.count(name), ctx.state["read"].get(ref, 0)
            if now != read:
                problems.append(f"{ref} changed during the step: {read} records read, {now} now")
        infos = _describe_all(ctx, sources)
        summary, known = [], {}
        for ref in targets:
            backend, name = ctx.resolve(ref)
            expected = SideDigest.from_dict(ctx.state["sides"][ref])
            if ref in ctx.state.get("before", {}):
                expected = SideDigest.from_dict(ctx.state["before"][ref]) + expected
            want = expected.records.count or 0
            if not ctx.verify:
                if (count := backend.count(name)) != want:
                    problems.append(f"{ref} holds {count} records, {want} expected")
                continue
            normalise = self._normalises(ctx.stores, infos, ref)
            with ctx.track(f"verify {ref}", want):
                actual = read_side(backend, name, ctx.batch_size, normalise)
            if actual.records.count != want:
                problems.append(f"{ref} holds {actual.records.count} records, {want} expected")
            elif actual.ids != expected.ids:
                problems.append(f"{ref} holds other ids than the records routed to it")
            elif actual.records != expected.records:
                problems.append(f"{ref} digest is {actual.records}, {expected.records} expected")
            if actual.pair is not None:
                known[ref] = actual.pair.to_text()  # read natively: the runner need not read it again
            elif not normalise:
                known[ref] = actual.records.to_text()
            summary.append(f"{ref} {want}")
        if problems:
            raise VerificationError(f"{self.describe()} did not verify (the sources are untouched): "
                                    + "; ".join(problems))
        ctx.save(verified=True)
        for ref, digest in known.items():
            ctx.know_digest(ref, digest)
        if ctx.verify:
            ctx.note(f"verified {', '.join(summary)}: counts, ids and digests equal "
                     f"(the targets' digests sum to the source digests)")

    # finishing helpers ---------------------------------------------------------------------------

    def _drop(self, ctx: StepContext, ref: str) -> None:
        backend, name = ctx.resolve(ref)
        if backend.has_collection(name):
            backend.drop_collection(name)
        ctx.know_digest(ref, "absent")

    def _empty(self, ctx: StepContext, ref: str) -> None:
        backend, name = ctx.resolve(ref)
        if not backend.has_collection(name):
            return
        # Deleting behind the cursor does not shift the pages after it (see delete_records).
        for page, _ in backend.pages(name, ctx.batch_size):
            if len(page):
                backend.delete(name, page.ids)
                ctx.save(len(page))
        ctx.know_digest(ref, EMPTY)


def _describe_all(ctx: StepContext, refs: list[str]) -> dict[str, CollectionInfo]:
    infos = {}
    for ref in refs:
        backend, name = ctx.require(ref)
        infos[ref] = backend.describe(name)
    return infos


def _value_key(value: Any) -> tuple[str, Any] | None:
    """A lookup key that tells True from 1 (Python's dicts do not); None for unhashable values."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("str", value)
    return None


def _compile(value: str) -> Any:
    try:
        return _JINJA.compile_expression(value)
    except TemplateSyntaxError as exc:
        raise ValueError(f"invalid jinja2 expression {value!r}: {exc.message}") from exc


@register_op
class SplitCollectionOp(Repartition):
    """Route each record of `source` into one of several new collections: by the value of the
    metadata field `by` (looked up in `into`), or by the first of the `where` conditions (jinja2)
    that holds. `default` takes every other record; without it such records are refused before
    anything is written. Then the source is dropped (unless keep_source).
    Inverse: unsplit_collection (merge the targets back into the recreated source)."""

    op_name: ClassVar[str] = "split_collection"
    source: str
    by: str | None = None
    into: dict[str | bool | int | float, str] = Field(default_factory=dict)
    default: str | None = None
    where: dict[str, str] = Field(default_factory=dict)
    keep_source: bool = False

    @field_validator("where")
    @classmethod
    def _conditions_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for condition in value.values():
            _compile(condition)
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> SplitCollectionOp:
        if (self.by is None) == (not self.where):
            raise ValueError("give exactly one of by (with into) or where")
        if self.by is not None and not self.into:
            raise ValueError("by needs into: a mapping of field values to target collections")
        if self.by is None and self.into:
            raise ValueError("into needs by: the metadata field whose value picks the target")
        if self.source in self.target_refs():
            raise ValueError(f"the source {self.source!r} cannot also be a target")
        return self

    def source_refs(self) -> list[str]:
        return [self.source]

    def target_refs(self) -> list[str]:
        return list(dict.fromkeys([*self.into.values(), *self.where, *([self.default] if self.default else [])]))

    def describe(self) -> str:
        rule = (f"by {self.by}: " + ", ".join(f"{v!r} -> {t}" for v, t in self.into.items()) if self.by
                else "where " + ", ".join(f"{c} -> {t}" for t, c in self.where.items()))
        rest = f", otherwise -> {self.default}" if self.default else ""
        return f"split_collection {self.source} {rule}{rest}" + (" (source kept)" if self.keep_source else "")

    def router(self, stores: Stores, ctx: StepContext | None) -> Route:
        default = stores.canonical(self.default) if self.default else None
        if self.by is not None:
            lookup = {_value_key(k): stores.canonical(t) for k, t in self.into.items()}
            by = self.by

            def by_value(source: str, page: Batch) -> list[str | None]:
                return [lookup.get(_value_key(meta.get(by)), default) for meta in page.metadatas]
            return by_value
        conditions = [(stores.canonical(t), _compile(c), c) for t, c in self.where.items()]

        def by_condition(source: str, page: Batch) -> list[str | None]:
            routes = []
            for rid, document, meta in zip(page.ids, page.documents, page.metadatas):
                scope = {**meta, "id": rid, "document": document, "metadata": meta}
                chosen = default
                for target, condition, text in conditions:
                    try:
                        holds = condition(**scope)
                    except Exception as exc:
                        raise InvalidDataError(f"split_collection {self.source}: condition {text!r} failed on "
                                               f"record {rid!r}: {exc}") from exc
                    if holds:
                        chosen = target
                        break
                routes.append(chosen)
            return routes
        return by_condition

    def describe_record(self, page: Batch, i: int) -> str:
        if self.by is None:
            return repr(page.ids[i])
        meta = page.metadatas[i]
        value = f"{self.by}={meta[self.by]!r}" if self.by in meta else f"no {self.by}"
        return f"{page.ids[i]!r} ({value})"

    def unrouted_problem(self, examples: list[str], total: int) -> VecflowError | None:
        if self.default is not None:
            return None
        more = ", ..." if total > len(examples) else ""
        rule = "into" if self.by else "where"
        return InvalidDataError(f"split_collection {self.source}: {total} records match no target and there is "
                                f"no default: {', '.join(examples)}{more}; extend {rule} or give default")

    def plan_state(self, plan: Plan) -> dict[str, Any]:
        return {"source_info": _info_dict(plan.infos[plan.sources[0]]), "targets": plan.targets,
                "created": [ref for ref in plan.targets if ref not in plan.existing]}

    def finish(self, ctx: StepContext) -> None:
        if not self.keep_source:
            self._drop(ctx, self.source)

    def reverse(self, record: StepRecord) -> Op | None:
        return UnsplitCollectionOp(source=self.source, targets=record.state.get("targets", self.target_refs()),
                                   source_info=record.state.get("source_info"),
                                   created=record.state.get("created", self.target_refs()),
                                   keep_source=self.keep_source)

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        # The read-only pass refuses before anything is written; writing begins once its plan is
        # checkpointed. Targets are the step's own when they did not exist before it (it may have
        # created some and stopped before checkpointing).
        if not record.state.get("planned"):
            return []
        undo = UnsplitCollectionOp(source=self.source, targets=record.state.get("targets", self.target_refs()),
                                   source_info=record.state.get("source_info"), keep_source=True,
                                   created=[ref for ref in self.target_refs() if not record.existed_before(ref)])
        # The source is only read until every target is verified.
        if self.keep_source or not record.state.get("verified"):
            return [undo]
        return [undo.model_copy(update={"keep_source": False,
                                        "source_records": records_before(record, self.source)})]


@register_op
class MergeCollectionsOp(Repartition):
    """Stream every record of `sources` into `target` (new, or existing with the same dimension
    and metric). Ids that collide across the sources or with the target's records are refused
    before anything is written. Each record's source is snapshotted, so the inverse
    (unmerge_collections) puts every record back where it came from."""

    op_name: ClassVar[str] = "merge_collections"
    captures_snapshot: ClassVar[bool] = True
    fills_nonempty_targets: ClassVar[bool] = True
    sources: list[str] = Field(min_length=1)
    target: str
    keep_sources: bool = False

    @model_validator(mode="after")
    def _distinct(self) -> MergeCollectionsOp:
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("a source is listed twice")
        if self.target in self.sources:
            raise ValueError(f"the target {self.target!r} cannot also be a source")
        return self

    def source_refs(self) -> list[str]:
        return list(self.sources)

    def target_refs(self) -> list[str]:
        return [self.target]

    def describe(self) -> str:
        kept = " (sources kept)" if self.keep_sources else ""
        return f"merge_collections {', '.join(self.sources)} -> {self.target}{kept}"

    def router(self, stores: Stores, ctx: StepContext | None) -> Route:
        target = stores.canonical(self.target)
        return lambda source, page: [target] * len(page)

    def plan_state(self, plan: Plan) -> dict[str, Any]:
        return {"source_infos": [_info_dict(plan.infos[ref]) for ref in plan.sources],
                "created_target": plan.targets[0] not in plan.existing}

    def run(self, ctx: StepContext) -> None:
        if ctx.snapshot is not None:
            ctx.snapshots.begin_values(ctx.snapshot, "(index of the record's source)")
        super().run(ctx)

    def before_write(self, ctx: StepContext, index: int, page: Batch) -> None:
        if ctx.snapshot is not None:
            ctx.snapshots.add_values(ctx.snapshot, [(rid, index) for rid in page.ids])

    def finish(self, ctx: StepContext) -> None:
        if not self.keep_sources:
            for ref in self.sources:
                self._drop(ctx, ref)

    def reverse(self, record: StepRecord) -> Op | None:
        if record.snapshot is None:
            return None
        return UnmergeCollectionsOp(target=self.target, sources=self.sources, snapshot=record.snapshot,
                                    source_infos=record.state.get("source_infos", []),
                                    drop_target=record.state.get("created_target", True),
                                    restore_sources=not self.keep_sources)

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        if record.snapshot is None:
            return super().reverse_interrupted(record)
        if not record.state.get("planned"):
            return []  # refused, or stopped, before writing
        undo = UnmergeCollectionsOp(target=self.target, sources=self.sources, snapshot=record.snapshot,
                                    source_infos=record.state.get("source_infos", []), restore_sources=False,
                                    drop_target=not record.existed_before(self.target))
        # The sources are only read until the target is verified.
        if self.keep_sources or not record.state.get("verified"):
            return [undo]
        return [undo.model_copy(update={"restore_sources": True,
                                        "source_records": [records_before(record, ref) for ref in self.sources]})]


@register_op
class UnsplitCollectionOp(Repartition):
    """Internal inverse of split_collection: merge the targets back into the source (recreated
    with its recorded dimension, metric and params), then drop the targets the split created and
    empty those that existed (empty) before it."""

    op_name: ClassVar[str] = "unsplit_collection"
    internal: ClassVar[bool] = True
    source: str
    targets: list[str]
    source_info: dict[str, Any] | None = None
    created: list[str] = Field(default_factory=list)
    keep_source: bool = False
    # Undoing a split that stopped after verifying its targets: how many records the source held
    # before it. A source still holding them was not dropped, and only the targets are removed.
    source_records: int | None = None

    def source_refs(self) -> list[str]:
        return list(self.targets)

    def target_refs(self) -> list[str]:
        return [self.source]

    def describe(self) -> str:
        if self.keep_source:
            return f"unsplit_collection: drop the split targets {', '.join(self.targets)} ({self.source} was kept)"
        return f"unsplit_collection {', '.join(self.targets)} -> {self.source}, then drop the split targets"

    def run(self, ctx: StepContext) -> None:
        if self.source_records is not None and drop_unless_whole(ctx, self.source, self.source_records):
            self.model_copy(update={"keep_source": True, "source_records": None}).run(ctx)
            return
        super().run(ctx)

    def copies(self) -> bool:
        return not self.keep_source

    def router(self, stores: Stores, ctx: StepContext | None) -> Route:
        source = stores.canonical(self.source)
        return lambda ref, page: [source] * len(page)

    def target_spec(self, stores: Stores, target: str, infos: dict[str, CollectionInfo]) -> CollectionInfo:
        if self.source_info is None:
            raise OperationError(f"unsplit_collection: the split of {self.source} recorded no dimension and metric; "
                                 "write an explicit downgrade()")
        return CollectionInfo(target, self.source_info["dim"], self.source_info["metric"], self.source_info["params"])

    def finish(self, ctx: StepContext) -> None:
        created = {ctx.stores.canonical(ref) for ref in self.created}
        for ref in dict.fromkeys(ctx.stores.canonical(t) for t in self.targets):
            if ref in created:
                self._drop(ctx, ref)
            else:
                self._empty(ctx, ref)


@register_op
class UnmergeCollectionsOp(Repartition):
    """Internal inverse of merge_collections: route each record the merge wrote (listed in its
    snapshot) back to its source (recreated with its recorded dimension, metric and params), then
    remove those records from the target, dropping it if the merge created it."""

    op_name: ClassVar[str] = "unmerge_collections"
    internal: ClassVar[bool] = True
    target: str
    sources: list[str]
    snapshot: str
    source_infos: list[dict[str, Any]] = Field(default_factory=list)
    drop_target: bool = True
    restore_sources: bool = True
    # Undoing a merge that stopped after verifying its target: how many records each source held
    # before it. Sources still holding them were not dropped: their records are not routed back.
    source_records: list[int] | None = None
    # The sources found whole when such an undo runs (set by run()).
    whole_sources: list[str] = Field(default_factory=list)

    def source_refs(self) -> list[str]:
        return [self.target]

    def target_refs(self) -> list[str]:
        return [ref for ref in self.sources if ref not in self.whole_sources]

    def run(self, ctx: StepContext) -> None:
        if self.source_records is None:
            super().run(ctx)
            return
        whole = [ref for index, (ref, count) in enumerate(zip(self.sources, self.source_records))
                 if drop_unless_whole(ctx, ref, count, key=f"source_{index}_whole")]
        self.model_copy(update={"source_records": None, "whole_sources": whole,
                                "restore_sources": len(whole) < len(self.sources)}).run(ctx)

    def describe(self) -> str:
        back = f" back into {', '.join(self.sources)}" if self.restore_sources else ""
        return f"unmerge_collections {self.target}{back} (records listed in snapshot {self.snapshot})"

    def copies(self) -> bool:
        return self.restore_sources

    def preview(self, stores: Stores) -> list[str]:
        return []

    def router(self, stores: Stores, ctx: StepContext | None) -> Route:
        if ctx is None:
            raise OperationError("unmerge_collections routes by its snapshot, which only a run opens")
        sources = [stores.canonical(ref) for ref in self.sources]

        def by_origin(ref: str, page: Batch) -> list[str | None]:
            origin = ctx.snapshots.lookup_values(self.snapshot, page.ids)
            return [sources[origin[rid]] if rid in origin and self.sources[origin[rid]] not in self.whole_sources
                    else None for rid in page.ids]
        return by_origin

    def target_spec(self, stores: Stores, target: str, infos: dict[str, CollectionInfo]) -> CollectionInfo:
        index = [stores.canonical(ref) for ref in self.sources].index(target)
        if index >= len(self.source_infos):
            raise OperationError(f"unmerge_collections: the merge recorded no dimension and metric for "
                                 f"{self.sources[index]}; write an explicit downgrade()")
        info = self.source_infos[index]
        return CollectionInfo(target, info["dim"], info["metric"], info["params"])

    def finish(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.target)
        if not backend.has_collection(name):
            ctx.know_digest(self.target, "absent")
            return
        routed = sum(SideDigest.from_dict(side).records.count or 0 for side in ctx.state.get("sides", {}).values())
        if self.drop_target and self.restore_sources and backend.count(name) == routed:
            self._drop(ctx, self.target)  # every record it holds is back in a verified source
            return
        after = ctx.state.get("delete_after", 0)
        while after is not None:
            values, after = ctx.snapshots.read_values(self.snapshot, after, ctx.page_size(self.target))
            if values:
                backend.delete(name, [rid for rid, _, _ in values])
            ctx.save(len(values), delete_after=after)
        if self.drop_target and (left := backend.count(name)):
            ctx.note(f"kept {self.target}: it holds {left} records the merge did not write")
        elif self.drop_target:
            self._drop(ctx, self.target)
