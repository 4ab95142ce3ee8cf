"""Field operations: change one metadata field across every record of a collection.

Ops that destroy or overwrite values (add_field, drop_field, set_field) first record each touched
record's prior value in a snapshot; their inverse, restore_field, puts those values back exactly.

Also the helpers shared with the record ops: jinja2 expressions over a record, and user functions
given as a Python callable or a dotted path "package.module:function".
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from jinja2 import TemplateSyntaxError
from jinja2 import meta as jinja_meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import Field, field_validator, model_validator

from vecflow.batch import Batch
from vecflow.errors import InvalidDataError, IrreversibleError, OperationError
from vecflow.operations.base import CollectionOp, FieldAccess, Op, StepRecord, register_op
from vecflow.operations.user_code import USER_ERRORS, failure, import_user_module
from vecflow.runtime.context import StepContext
from vecflow.runtime.estimate import count_matching, sample
from vecflow.runtime.snapshots import ABSENT
from vecflow.runtime.stores import Stores

_JINJA = SandboxedEnvironment()
# Returned by a value function to leave a record untouched.
SKIP = object()
# A user function: a Python callable, or a dotted path "package.module:function" resolved at run time.
UserFunction = Callable[..., Any] | str
CALLABLE_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def check_expression(value: str | None) -> str | None:
    """Validator: a jinja2 expression (no {{ }}) that compiles, or None."""
    if value is not None:
        try:
            _JINJA.compile_expression(value)
        except TemplateSyntaxError as exc:
            raise ValueError(f"invalid jinja2 expression {value!r}: {exc.message}") from exc
    return value


def compile_expression(value: str) -> Callable[..., Any]:
    return _JINJA.compile_expression(value)


def record_scope(rid: str, meta: dict, document: str | None) -> dict[str, Any]:
    """The names an expression sees: every metadata key, then id, document and metadata."""
    return {**meta, "id": rid, "document": document, "metadata": meta}


def expression_fields(*expressions: str | None) -> frozenset[str] | None:
    """The metadata fields these expressions can read (the names of record_scope they use); None
    when one uses the whole `metadata`."""
    names: set[str] = set()
    for expression in expressions:
        if expression is not None:
            names |= jinja_meta.find_undeclared_variables(_JINJA.parse(f"{{{{ {expression} }}}}"))
    return None if "metadata" in names else frozenset(names - {"id", "document"})


def check_function(value: UserFunction | None) -> UserFunction | None:
    """Validator: a callable, or a string of the form "package.module:function"."""
    if isinstance(value, str) and not CALLABLE_PATH.match(value):
        raise ValueError(f"expected a callable or a dotted path 'package.module:function', got {value!r}")
    return value


def function_name(value: UserFunction) -> str:
    """How a user function is shown in plans and errors."""
    if isinstance(value, str):
        return value
    name = getattr(value, "__qualname__", None) or repr(value)
    module = getattr(value, "__module__", None) or ""
    # Functions defined in a revision script live in a throwaway module: the name is enough.
    return f"{module}:{name}" if module and not module.startswith("vecflow_revision_") else name


def project_folders(stores: Stores) -> list[Path]:
    """Where dotted paths are also looked up: the project folder, then the script directory."""
    return [stores.config.here, stores.config.script_location]


def resolve_function(value: UserFunction, owner: str, search: Sequence[Path] = ()) -> Callable[..., Any]:
    """The callable behind a user function. A dotted path is imported from sys.path, else from the
    folders in `search`; errors name the path."""
    if not isinstance(value, str):
        return value
    module_name, _, attribute = value.partition(":")
    try:
        module = import_user_module(module_name, search)
    except ModuleNotFoundError as exc:
        raise OperationError(f"{owner}: cannot import {value!r}: {exc}") from exc
    except USER_ERRORS as exc:
        raise OperationError(f"{owner}: importing {value!r} {failure(exc)}") from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise OperationError(f"{owner}: cannot import {value!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise OperationError(f"{owner}: {value!r} is a {type(target).__name__}, not a function")
    return target


def check_json_value(value: Any, where: str) -> Any:
    """Refuse a computed value that is not a JSON value (metadata round-trips through JSON)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"{where} {value!r}, not a JSON value ({exc})") from exc
    return value


def wrote_nothing(ctx: StepContext, interrupted: bool, snapshot: str) -> bool:
    """Whether an inverse undoes a step that stopped before it began its snapshot: such a step
    wrote nothing (every op begins its snapshot before its first write)."""
    return interrupted and not ctx.snapshots.exists(snapshot)


class FieldOp(CollectionOp):
    """An op that gives one field a new value on every record where that differs, snapshotting
    prior values first (subclasses say which value: `new_value`)."""

    field: str

    def new_value(self, ctx: StepContext) -> Callable[[str, dict, str | None], Any]:
        """new_value(id, metadata, document): the field's value, ABSENT (remove the field) or SKIP
        (leave the record alone)."""
        raise NotImplementedError

    def run(self, ctx: StepContext) -> None:
        ctx.rewrite_records(self.collection, self.metadata_pass(ctx), metadata_only=True, digest=True)

    def metadata_pass(self, ctx: StepContext) -> Callable[[Batch], Batch | None]:
        return self.snapshot_values_pass(ctx, self.new_value(ctx))

    def digested_while_running(self) -> list[str]:
        # The rewrite pass takes the digests before and after (StepContext.rewrite_records).
        return [self.collection]

    def reverse(self, record: StepRecord) -> Op | None:
        if record.snapshot is None:
            return None
        return RestoreFieldOp(collection=self.collection, field=self.field, snapshot=record.snapshot)

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        if not record.existed_before(self.collection):
            return []  # the step requires its collection before it writes anything
        if record.snapshot is None:
            return super().reverse_interrupted(record)
        return [RestoreFieldOp(collection=self.collection, field=self.field, snapshot=record.snapshot,
                               interrupted=True)]

    def preview_changes(self, stores: Stores, new_value: Any, what: str) -> list[str]:
        """--dry-run: how many records new_value would change (on a sample), and the field change."""
        backend, name = stores.resolve(self.collection)
        sampled = sample(backend, name)
        if sampled is None:
            return []  # the simulated run says it does not exist

        def changes(rid: str, meta: dict, document: str | None) -> bool:
            value = new_value(rid, meta, document)
            return value is not SKIP and not _same(value, meta.get(self.field, ABSENT))

        return [f"{what}; records affected: {sampled.extrapolate(count_matching(sampled, changes))}"]

    def snapshot_values_pass(self, ctx: StepContext, new_value: Any) -> Callable[[Batch], Batch | None]:
        """Begin the values snapshot; the page transform giving the field new_value(id, metadata,
        document) on every record where that differs, adding prior values to the snapshot first.

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
                priors.append((rid, current, _position(meta, self.field)))
                metadatas.append(_with_field(meta, self.field, value))
            if not positions:
                return None
            ctx.snapshots.add_values(ctx.snapshot, priors)
            return page.take(positions).with_metadatas(metadatas)

        return transform


def _with_field(meta: dict, field: str, value: Any, position: int | None = None) -> dict:
    """A copy of meta with field set to value (in its place when present, else at `position`, else
    last), or removed when value is ABSENT. Key order is kept: applications that store metadata as
    JSON text (LlamaIndex's node JSON) read it byte for byte."""
    if value is ABSENT:
        return {k: v for k, v in meta.items() if k != field}
    if field in meta:
        return {k: (value if k == field else v) for k, v in meta.items()}
    items = list(meta.items())
    items.insert(len(items) if position is None else min(position, len(items)), (field, value))
    return dict(items)


def _position(meta: dict, field: str) -> int | None:
    """The index of field among meta's keys, None when absent."""
    for index, key in enumerate(meta):
        if key == field:
            return index
    return None


def _same(value: Any, current: Any) -> bool:
    return value is current or (current is not ABSENT and value is not ABSENT
                                and type(value) is type(current) and value == current)


@register_op
class AddFieldOp(FieldOp):
    """Add a metadata field to every record that lacks it: a constant `default`, or a value computed
    per record from a jinja2 `expression` or a Python `function(metadata) -> value`.

    Records that already have the field keep their value. Inverse: remove the field again from
    exactly the records that lacked it (restore_field)."""

    op_name: ClassVar[str] = "add_field"
    captures_snapshot: ClassVar[bool] = True
    default: Any = None
    expression: str | None = None
    function: UserFunction | None = None

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return check_expression(value)

    @field_validator("function")
    @classmethod
    def _function_path(cls, value: UserFunction | None) -> UserFunction | None:
        return check_function(value)

    @model_validator(mode="after")
    def _one_source(self) -> AddFieldOp:
        given = ["default"] if "default" in self.model_fields_set else []
        given += [name for name in ("expression", "function") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of default, expression or function, not {' and '.join(given)}")
        return self

    def describe(self) -> str:
        if self.expression is not None:
            source = f"= {{{{ {self.expression} }}}}"
        elif self.function is not None:
            source = f"= {function_name(self.function)}(metadata)"
        else:
            source = f"default {self.default!r}"
        return f"add_field {self.collection}: +{self.field} ({source})"

    def preview(self, stores: Stores) -> list[str]:
        if self.function is not None:
            try:
                resolve_function(self.function, f"add_field {self.collection}", project_folders(stores))
            except OperationError as exc:
                return [f"refused: {exc}"]
        # Every record lacking the field changes; computed values are not evaluated for the count.
        return self.preview_changes(stores, lambda rid, meta, doc: SKIP if self.field in meta else self.default,
                                    f"field added: {self.field}")

    def field_access(self) -> FieldAccess:
        if self.function is not None:
            return FieldAccess(None, frozenset({self.field}))
        reads = expression_fields(self.expression)
        return FieldAccess(None if reads is None else reads | {self.field}, frozenset({self.field}))

    def new_value(self, ctx: StepContext) -> Callable[[str, dict, str | None], Any]:
        value_of = self._value_function(ctx)
        return lambda rid, meta, doc: SKIP if self.field in meta else value_of(rid, meta, doc)

    def _value_function(self, ctx: StepContext) -> Callable[[str, dict, str | None], Any]:
        where = f"add_field {self.collection}.{self.field}"
        if self.expression is not None:
            expression = compile_expression(self.expression)

            def evaluate(rid: str, meta: dict, document: str | None) -> Any:
                try:
                    value = expression(**record_scope(rid, meta, document))
                except Exception as exc:
                    raise InvalidDataError(f"{where}: expression failed on record {rid!r}: {exc}") from exc
                return check_json_value(value, f"{where}: expression on record {rid!r} gave")
            return evaluate
        if self.function is not None:
            function = resolve_function(self.function, where, project_folders(ctx.stores))
            name = function_name(self.function)

            def call(rid: str, meta: dict, document: str | None) -> Any:
                try:
                    value = function(copy.deepcopy(meta))
                except USER_ERRORS as exc:
                    raise InvalidDataError(f"{where}: {name} {failure(exc)} (record {rid!r})") from exc
                return check_json_value(value, f"{where}: {name} on record {rid!r} returned")
            return call
        return lambda rid, meta, document: self.default


@register_op
class DropFieldOp(FieldOp):
    """Remove a metadata field from every record. Inverse: restore the dropped values (snapshot)."""

    op_name: ClassVar[str] = "drop_field"
    captures_snapshot: ClassVar[bool] = True

    def describe(self) -> str:
        return f"drop_field {self.collection}: -{self.field}"

    def preview(self, stores: Stores) -> list[str]:
        return self.preview_changes(stores, lambda rid, meta, doc: ABSENT if self.field in meta else SKIP,
                                    f"fields dropped: {self.field}")

    def field_access(self) -> FieldAccess:
        return FieldAccess(frozenset({self.field}), frozenset({self.field}))

    def new_value(self, ctx: StepContext) -> Callable[[str, dict, str | None], Any]:
        return lambda rid, meta, doc: ABSENT if self.field in meta else SKIP


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
        return check_expression(value)

    def describe(self) -> str:
        where = f" where {self.where}" if self.where else ""
        return f"set_field {self.collection}: {self.field} = {{{{ {self.expression} }}}}{where}"

    def value_function(self) -> Any:
        """new_value(id, metadata, document) for snapshot_values_pass; an expression that fails
        raises InvalidDataError naming the record (the dry run's preview reports it as a refusal)."""
        expression = compile_expression(self.expression)
        condition = compile_expression(self.where) if self.where else None

        def new_value(rid: str, meta: dict, document: str | None) -> Any:
            scope = record_scope(rid, meta, document)
            try:
                if condition is not None and not condition(**scope):
                    return SKIP
                return expression(**scope)
            except Exception as exc:
                raise InvalidDataError(
                    f"set_field {self.field}: expression failed on record {rid!r}: {exc}") from exc

        return new_value

    def preview(self, stores: Stores) -> list[str]:
        try:
            return self.preview_changes(stores, self.value_function(), f"field set: {self.field}")
        except InvalidDataError as exc:
            return [f"refused: {exc}"]

    def field_access(self) -> FieldAccess:
        reads = expression_fields(self.expression, self.where)
        return FieldAccess(None if reads is None else reads | {self.field}, frozenset({self.field}))

    def new_value(self, ctx: StepContext) -> Callable[[str, dict, str | None], Any]:
        return self.value_function()


@register_op
class RenameFieldOp(CollectionOp):
    """Rename a metadata field on every record that has it. Inverse: rename it back on exactly
    the records this step renamed (their ids are snapshotted), so records that already had only
    the new name are left alone. A record holding both names is refused (InvalidDataError naming
    it) before its page is written."""

    op_name: ClassVar[str] = "rename_field"
    captures_snapshot: ClassVar[bool] = True
    old: str
    new: str

    @model_validator(mode="after")
    def _different_names(self) -> RenameFieldOp:
        if self.old == self.new:
            raise ValueError(f"old and new names are both {self.old!r}")
        return self

    def describe(self) -> str:
        return f"rename_field {self.collection}: {self.old} -> {self.new}"

    def preview(self, stores: Stores) -> list[str]:
        backend, name = stores.resolve(self.collection)
        sampled = sample(backend, name)
        if sampled is None:
            return []  # the simulated run says it does not exist
        renamed = count_matching(sampled, lambda rid, meta, doc: self.old in meta)
        clashes = count_matching(sampled, lambda rid, meta, doc: self.old in meta and self.new in meta)
        line = f"fields renamed: {self.old} -> {self.new}; records affected: {sampled.extrapolate(renamed)}"
        return [line] + ([f"refused: {sampled.extrapolate(clashes)} hold both names"] if clashes else [])

    def digested_while_running(self) -> list[str]:
        # The rewrite pass takes the digests before and after (StepContext.rewrite_records).
        return [self.collection]

    def reverse(self, record: StepRecord) -> Op | None:
        if record.snapshot is None:
            return None
        return UnrenameFieldOp(collection=self.collection, old=self.old, new=self.new, snapshot=record.snapshot)

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        if not record.existed_before(self.collection):
            return []
        if record.snapshot is None:
            return super().reverse_interrupted(record)
        return [UnrenameFieldOp(collection=self.collection, old=self.old, new=self.new, snapshot=record.snapshot,
                                interrupted=True)]

    def field_access(self) -> FieldAccess:
        names = frozenset({self.old, self.new})
        return FieldAccess(names, names)

    def run(self, ctx: StepContext) -> None:
        ctx.rewrite_records(self.collection, self.metadata_pass(ctx), metadata_only=True, digest=True)

    def metadata_pass(self, ctx: StepContext) -> Callable[[Batch], Batch | None]:
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

        return transform


@register_op
class UnrenameFieldOp(CollectionOp):
    """Internal inverse of rename_field: on the renamed records, move `new` back to `old`."""

    op_name: ClassVar[str] = "unrename_field"
    internal: ClassVar[bool] = True
    old: str
    new: str
    snapshot: str
    # Undoing a rename_field that stopped part-way (it may have stopped before its snapshot).
    interrupted: bool = False

    def describe(self) -> str:
        return f"rename_field {self.collection}: {self.new} -> {self.old} (records renamed by {self.snapshot})"

    def run(self, ctx: StepContext) -> None:
        if wrote_nothing(ctx, self.interrupted, self.snapshot):
            return
        ctx.rewrite_from_values(self.collection, self.snapshot,
                                lambda meta, _value, _position: {(self.old if k == self.new else k): v
                                                                 for k, v in meta.items()})


@register_op
class RestoreFieldOp(FieldOp):
    """Internal inverse of the snapshotting field ops: put back each record's prior value."""

    op_name: ClassVar[str] = "restore_field"
    internal: ClassVar[bool] = True
    snapshot: str = Field(...)
    # Undoing a field step that stopped part-way (it may have stopped before its snapshot).
    interrupted: bool = False

    def describe(self) -> str:
        return f"restore_field {self.collection}: {self.field} from snapshot {self.snapshot}"

    def reverse(self, record: StepRecord) -> Op | None:
        return None

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        raise IrreversibleError(f"{self.describe()} cannot be reversed")

    def digested_while_running(self) -> list[str]:
        return []  # it reads only the snapshotted records: the runner digests the collection

    def run(self, ctx: StepContext) -> None:
        if wrote_nothing(ctx, self.interrupted, self.snapshot):
            return
        ctx.rewrite_from_values(self.collection, self.snapshot,
                                lambda meta, prior, position: _with_field(meta, self.field, prior, position))
