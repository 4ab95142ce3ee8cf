"""Field operations: change one metadata field across every record of a collection.

Ops that destroy or overwrite values (add_field, drop_field, set_field) first record each touched
record's prior value in a snapshot; their inverse, restore_field, puts those values back exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import Field, field_validator, model_validator

from vecflow.batch import Batch
from vecflow.errors import InvalidDataError, OperationError
from vecflow.operations.base import Op, StepRecord, register_op
from vecflow.runtime.context import StepContext
from vecflow.runtime.snapshots import ABSENT

_JINJA = SandboxedEnvironment()
# Returned by a value function to leave a record untouched.
SKIP = object()


class FieldOp(Op):
    collection: str
    field: str

    def collections(self) -> list[str]:
        return [self.collection]

    def reverse(self, record: StepRecord) -> Op | None:
        if record.snapshot is None:
            return None
        return RestoreFieldOp(collection=self.collection, field=self.field, snapshot=record.snapshot)

    def rewrite_with_snapshot(self, ctx: StepContext, new_value: Any) -> None:
        """Give the field new_value(id, metadata, document) on every record where that differs,
        snapshotting prior values first. new_value returns a value, ABSENT (remove the field) or
        SKIP (leave the record alone).

        A record already in the snapshot was rewritten before a crash: new_value sees its
        original metadata again, so the result is the same as if the page ran once."""
        ctx.snapshots.begin_values(ctx.snapshot, self.field)

        def transform(page: Batch) -> Batch | None:
            originals = ctx.snapshots.lookup_values(ctx.snapshot, page.ids)
            positions, priors, metadatas = [], [], []
            for i, (rid, meta) in enumerate(zip(page.ids, page.metadatas)):
                current = meta.get(self.field, ABSENT)
                original = originals.get(rid, current)
                value = new_value(rid, _with_field(meta, self.field, original), page.documents[i])
                if value is SKIP or _same(value, current):
                    continue
                positions.append(i)
                priors.append((rid, current))
                metadatas.append(_with_field(meta, self.field, value))
            if not positions:
                return None
            ctx.snapshots.add_values(ctx.snapshot, priors)
            return page.take(positions).with_metadatas(metadatas)

        ctx.rewrite_records(self.collection, transform, metadata_only=True)


def _with_field(meta: dict, field: str, value: Any) -> dict:
    """A copy of meta with field set to value, or removed when value is ABSENT."""
    updated = {k: v for k, v in meta.items() if k != field}
    if value is not ABSENT:
        updated[field] = value
    return updated


def _same(value: Any, current: Any) -> bool:
    return value is current or (current is not ABSENT and value is not ABSENT
                                and type(value) is type(current) and value == current)


@register_op
class AddFieldOp(FieldOp):
    """Add a metadata field with a constant default to every record that lacks it.

    Records that already have the field keep their value. Inverse: remove the field again from
    exactly the records that lacked it (restore_field)."""

    op_name: ClassVar[str] = "add_field"
    captures_snapshot: ClassVar[bool] = True
    default: Any = None

    def describe(self) -> str:
        return f"add_field {self.collection}: +{self.field} (default {self.default!r})"

    def run(self, ctx: StepContext) -> None:
        self.rewrite_with_snapshot(ctx, lambda rid, meta, doc: SKIP if self.field in meta else self.default)


@register_op
class DropFieldOp(FieldOp):
    """Remove a metadata field from every record. Inverse: restore the dropped values (snapshot)."""

    op_name: ClassVar[str] = "drop_field"
    captures_snapshot: ClassVar[bool] = True

    def describe(self) -> str:
        return f"drop_field {self.collection}: -{self.field}"

    def run(self, ctx: StepContext) -> None:
        self.rewrite_with_snapshot(ctx, lambda rid, meta, doc: ABSENT if self.field in meta else SKIP)


@register_op
class SetFieldOp(FieldOp):
    """Set a field to a jinja2 expression evaluated over each record's metadata.

    The expression sees every metadata field by name, plus `id`, `document` and `metadata`
    (e.g. `"title | upper"`, `"(score * 100) | round"`, `"'long' if words > 500 else 'short'"`).
    An optional `where` expression limits the records changed. Inverse: restore prior values.
    On a replayed batch the expression is evaluated against the snapshotted prior value, so
    self-referencing expressions (`count + 1`) are applied exactly once."""

    op_name: ClassVar[str] = "set_field"
    captures_snapshot: ClassVar[bool] = True
    expression: str
    where: str | None = None

    @field_validator("expression", "where")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _JINJA.compile_expression(value)
            except TemplateSyntaxError as exc:
                raise ValueError(f"invalid jinja2 expression {value!r}: {exc.message}") from exc
        return value

    def describe(self) -> str:
        where = f" where {self.where}" if self.where else ""
        return f"set_field {self.collection}: {self.field} = {{{{ {self.expression} }}}}{where}"

    def run(self, ctx: StepContext) -> None:
        expression = _JINJA.compile_expression(self.expression)
        condition = _JINJA.compile_expression(self.where) if self.where else None

        def new_value(rid: str, meta: dict, document: str | None) -> Any:
            scope = {**meta, "id": rid, "document": document, "metadata": meta}
            try:
                if condition is not None and not condition(**scope):
                    return SKIP
                return expression(**scope)
            except Exception as exc:
                raise InvalidDataError(
                    f"set_field {self.field}: expression failed on record {rid!r}: {exc}") from exc

        self.rewrite_with_snapshot(ctx, new_value)


@register_op
class RenameFieldOp(Op):
    """Rename a metadata field on every record that has it. Inverse: rename it back on exactly
    the records this step renamed (their ids are snapshotted), so records that already had only
    the new name are left alone. A record holding both names is refused (InvalidDataError naming
    it) before its page is written."""

    op_name: ClassVar[str] = "rename_field"
    captures_snapshot: ClassVar[bool] = True
    collection: str
    old: str
    new: str

    @model_validator(mode="after")
    def _different_names(self) -> "RenameFieldOp":
        if self.old == self.new:
            raise ValueError(f"old and new names are both {self.old!r}")
        return self

    def collections(self) -> list[str]:
        return [self.collection]

    def describe(self) -> str:
        return f"rename_field {self.collection}: {self.old} -> {self.new}"

    def reverse(self, record: StepRecord) -> Op | None:
        if record.snapshot is None:
            return None
        return UnrenameFieldOp(collection=self.collection, old=self.old, new=self.new, snapshot=record.snapshot)

    def run(self, ctx: StepContext) -> None:
        ctx.snapshots.begin_values(ctx.snapshot, self.old)

        def transform(page: Batch) -> Batch | None:
            positions, metadatas = [], []
            for i, meta in enumerate(page.metadatas):
                if self.old not in meta:
                    continue
                if self.new in meta:
                    raise InvalidDataError(
                        f"rename_field {self.collection}: record {page.ids[i]!r} has both {self.old!r} "
                        f"and {self.new!r}; resolve the collision first (e.g. drop_field)")
                positions.append(i)
                metadatas.append({(self.new if k == self.old else k): v for k, v in meta.items()})
            if not positions:
                return None
            ctx.snapshots.add_values(ctx.snapshot, [(page.ids[i], page.metadatas[i][self.old]) for i in positions])
            return page.take(positions).with_metadatas(metadatas)

        ctx.rewrite_records(self.collection, transform, metadata_only=True)


@register_op
class UnrenameFieldOp(Op):
    """Internal inverse of rename_field: on the renamed records, move `new` back to `old`."""

    op_name: ClassVar[str] = "unrename_field"
    internal: ClassVar[bool] = True
    collection: str
    old: str
    new: str
    snapshot: str

    def collections(self) -> list[str]:
        return [self.collection]

    def describe(self) -> str:
        return f"rename_field {self.collection}: {self.new} -> {self.old} (records renamed by {self.snapshot})"

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.require(self.collection)
        after = ctx.state.get("after", 0)
        while after is not None:
            renamed, after = ctx.snapshots.read_values(self.snapshot, after, ctx.batch_size)
            page = backend.get(name, [rid for rid, _ in renamed])
            metadatas = [{(self.old if k == self.new else k): v for k, v in meta.items()} for meta in page.metadatas]
            if len(page):
                backend.update_metadata(name, page.ids, metadatas)
            ctx.save(len(page), after=after)


@register_op
class RestoreFieldOp(FieldOp):
    """Internal inverse of the snapshotting field ops: put back each record's prior value."""

    op_name: ClassVar[str] = "restore_field"
    internal: ClassVar[bool] = True
    snapshot: str = Field(...)

    def describe(self) -> str:
        return f"restore_field {self.collection}: {self.field} from snapshot {self.snapshot}"

    def reverse(self, record: StepRecord) -> Op | None:
        return None

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.require(self.collection)
        after = ctx.state.get("after", 0)
        while after is not None:
            priors, after = ctx.snapshots.read_values(self.snapshot, after, ctx.batch_size)
            page = backend.get(name, [rid for rid, _ in priors])
            prior_of = dict(priors)
            metadatas = [_with_field(meta, self.field, prior_of[rid])
                         for rid, meta in zip(page.ids, page.metadatas)]
            if len(page):
                backend.update_metadata(name, page.ids, metadatas)
            ctx.save(len(page), after=after)
