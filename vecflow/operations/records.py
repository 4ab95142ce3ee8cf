"""Record operations: cast_field, map_records, delete_records, and their inverse restore_records.

cast_field changes the type of one metadata field; like the other field ops it snapshots each
prior value and is undone by restore_field. map_records and delete_records change or remove
whole records: before a page is written, the prior state of every record it changes is copied
into a records snapshot (insert-or-ignore, so on a page replayed after a crash the first, true
prior state wins), and restore_records puts those records back.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from vecflow.backends import Backend
from vecflow.batch import Batch
from vecflow.errors import InvalidDataError, IrreversibleError, OperationError, VecflowError
from vecflow.operations.base import CollectionOp, FieldAccess, Op, StepRecord, register_op
from vecflow.operations.fields import (
    SKIP,
    FieldOp,
    UserFunction,
    check_expression,
    check_function,
    check_json_value,
    compile_expression,
    function_name,
    project_folders,
    record_scope,
    resolve_function,
    wrote_nothing,
)
from vecflow.operations.user_code import USER_ERRORS, failure
from vecflow.runtime.context import StepContext
from vecflow.runtime.estimate import sample
from vecflow.runtime.stores import Stores

# cast_field ------------------------------------------------------------------------------------

CastType = Literal["str", "int", "float", "bool", "list"]
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class CastError(ValueError):
    """A value that cannot become the asked type; the message says why."""


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def cast_value(value: Any, to: str) -> Any:
    """value as type `to` (str, int, float, bool or list); CastError when it cannot be converted
    without guessing. A value already of that type is returned unchanged."""
    if kind_of(value) == to:
        return value
    return _CASTS[to](value)


def _to_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _wrong_kind(value: Any) -> CastError:
    return CastError("is an object" if isinstance(value, dict) else f"is a {kind_of(value)}")


def _number(text: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise CastError("is not a number")
    number = float(text)
    if not math.isfinite(number):
        raise CastError("is out of range")
    return number


def _to_int(value: Any) -> int:
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, str):
        value = _number(value.strip())
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise CastError("has a fractional part")
        return int(value)
    raise _wrong_kind(value)


def _to_float(value: Any) -> float:
    if isinstance(value, str):
        return _number(value.strip())
    if isinstance(value, (bool, int)):
        try:
            return float(value)
        except OverflowError:
            raise CastError("is out of range") from None
    raise _wrong_kind(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise CastError("is not one of true/false, yes/no, on/off, 1/0")
    if isinstance(value, (int, float)):
        if value in (0, 1):
            return bool(value)
        raise CastError("is neither 0 nor 1")
    raise _wrong_kind(value)


def _to_list(value: Any) -> list:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    if isinstance(value, dict):
        raise CastError("is an object")
    return [value]


_CASTS: dict[str, Callable[[Any], Any]] = {
    "str": _to_str, "int": _to_int, "float": _to_float, "bool": _to_bool, "list": _to_list,
}


@register_op
class CastFieldOp(FieldOp):
    """Convert a metadata field to str, int, float, bool or list on every record that has it.

    Missing fields and null values are left alone. A value that cannot be converted fails the step
    naming the record (on_error="fail", before its page is written), is left unchanged ("skip"),
    or becomes null ("null"). Inverse: restore_field puts every prior value back, type included."""

    op_name: ClassVar[str] = "cast_field"
    captures_snapshot: ClassVar[bool] = True
    to: CastType
    on_error: Literal["fail", "skip", "null"] = "fail"

    def describe(self) -> str:
        return f"cast_field {self.collection}: {self.field} -> {self.to} (on_error {self.on_error})"

    def value_function(self) -> Callable[[str, dict, str | None], Any]:
        def new_value(rid: str, meta: dict, document: str | None) -> Any:
            value = meta.get(self.field)
            if value is None:
                return SKIP
            try:
                return cast_value(value, self.to)
            except CastError as exc:
                if self.on_error == "skip":
                    return SKIP
                if self.on_error == "null":
                    return None
                raise InvalidDataError(
                    f"cast_field {self.collection}: record {rid!r}: {self.field} = {value!r} {exc}, cannot become "
                    f"{self.to}; its page was not written (fix the value, or use on_error 'skip' or 'null')"
                ) from None
        return new_value

    def preview(self, stores: Stores) -> list[str]:
        """Casts the sample's values (read-only)."""
        what = f"field cast: {self.field} -> {self.to}"
        backend, name = stores.resolve(self.collection)
        sampled = sample(backend, name)
        if sampled is None:
            return []  # the simulated run says it does not exist
        changed = failed = 0
        first = ""
        for rid, meta in zip(sampled.page.ids, sampled.page.metadatas):
            value = meta.get(self.field)
            if value is None:
                continue
            try:
                changed += kind_of(cast_value(value, self.to)) != kind_of(value)
            except CastError as exc:
                failed += 1
                first = first or f"record {rid!r}: {value!r} {exc}"
        if self.on_error == "null":
            changed += failed
        lines = [f"{what}; records affected: {sampled.extrapolate(changed)}"]
        if failed:
            outcome = {"fail": "the step would fail at the first of them",
                       "skip": "they would be left unchanged", "null": "they would be set to null"}[self.on_error]
            lines.append(f"{sampled.extrapolate(failed).partition(' of ')[0]} values cannot become {self.to} "
                         f"(first: {first}); {outcome}")
        return lines

    def field_access(self) -> FieldAccess:
        return FieldAccess(frozenset({self.field}), frozenset({self.field}))

    def new_value(self, ctx: StepContext) -> Callable[[str, dict, str | None], Any]:
        return self.value_function()


# records snapshots -----------------------------------------------------------------------------


@register_op
class RestoreRecordsOp(CollectionOp):
    """Internal inverse of map_records and delete_records: put the snapshotted records back whole.

    A record that is gone is re-inserted (id, vector bits, document, metadata); one that exists
    gets its document and metadata back, and keeps its vector."""

    op_name: ClassVar[str] = "restore_records"
    internal: ClassVar[bool] = True
    snapshot: str
    # Undoing a step that stopped part-way (it may have stopped before its snapshot).
    interrupted: bool = False

    def describe(self) -> str:
        return f"restore_records {self.collection} from snapshot {self.snapshot}"

    def run(self, ctx: StepContext) -> None:
        if wrote_nothing(ctx, self.interrupted, self.snapshot):
            return
        backend, name = ctx.require(self.collection)
        after = ctx.state.get("after", 0)
        while after is not None:
            prior, after = ctx.snapshots.read_records(self.snapshot, after, ctx.page_size(self.collection))
            if len(prior):
                _put_back(backend, name, prior)
            ctx.save(len(prior), after=after)


def restore_interrupted(op: CollectionOp, record: StepRecord) -> list[Op]:
    """Undo a records-snapshotting step that stopped part-way: every record it changed was
    snapshotted before its page was written, so restoring the snapshot undoes it."""
    if not record.existed_before(op.collection):
        return []  # the step requires its collection before it writes anything
    if record.snapshot is None:
        raise IrreversibleError(f"{op.describe()} took no snapshot and cannot be reversed")
    return [RestoreRecordsOp(collection=op.collection, snapshot=record.snapshot, interrupted=True)]


def _put_back(backend: Backend, name: str, prior: Batch) -> None:
    current = backend.get(name, prior.ids)
    position = {rid: j for j, rid in enumerate(current.ids)}
    upserts, metadata_only = [], []
    vectors = prior.vectors.copy()
    for i, rid in enumerate(prior.ids):
        j = position.get(rid)
        if j is None:
            upserts.append(i)
        elif current.documents[j] != prior.documents[i]:
            vectors[i] = current.vectors[j]
            upserts.append(i)
        elif current.metadatas[j] != prior.metadatas[i]:
            metadata_only.append(i)
    if upserts:
        backend.upsert(name, Batch(prior.ids, vectors, prior.documents, prior.metadatas, prior.extras).take(upserts))
    if metadata_only:
        backend.update_metadata(name, [prior.ids[i] for i in metadata_only],
                                [prior.metadatas[i] for i in metadata_only])


# map_records -----------------------------------------------------------------------------------


@register_op
class MapRecordsOp(CollectionOp):
    """Change records with a Python function `function(batch) -> Batch` of the changed records.

    The function may change metadata and documents, never ids or vectors. Inverse: `inverse` (a
    second function) when given, else restore_records from the snapshot of every changed record."""

    op_name: ClassVar[str] = "map_records"
    # The snapshot also makes replays exact: a replayed page is mapped from its snapshotted state.
    captures_snapshot: ClassVar[bool] = True
    function: UserFunction
    inverse: UserFunction | None = None

    @field_validator("function", "inverse")
    @classmethod
    def _function_path(cls, value: UserFunction | None) -> UserFunction | None:
        return check_function(value)

    def describe(self) -> str:
        inverse = f" (inverse {function_name(self.inverse)})" if self.inverse is not None else ""
        return f"map_records {self.collection}: {function_name(self.function)}{inverse}"

    def reverse(self, record: StepRecord) -> Op | None:
        if self.inverse is not None:
            return MapRecordsOp(collection=self.collection, function=self.inverse, inverse=self.function)
        if record.snapshot is None:
            return None
        return RestoreRecordsOp(collection=self.collection, snapshot=record.snapshot)

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        # Not the inverse function: it would also "undo" the records the step never reached.
        return restore_interrupted(self, record)

    @property
    def _owner(self) -> str:
        return f"map_records {self.collection}"

    def preview(self, stores: Stores) -> list[str]:
        """Calls the function on a sample page (the function must not write anywhere itself)."""
        what = f"records mapped by {function_name(self.function)}"
        backend, name = stores.resolve(self.collection)
        try:
            function = resolve_function(self.function, self._owner, project_folders(stores))
            if self.inverse is not None:
                resolve_function(self.inverse, self._owner, project_folders(stores))
            sampled = sample(backend, name)
            if sampled is None:
                return []  # the simulated run says it does not exist
            changed = self.mapped(function, sampled.page) if len(sampled.page) else Batch.empty()
        except VecflowError as exc:
            return [f"refused: {exc}"]
        return [f"{what}; records affected: {sampled.extrapolate(len(changed))}"]

    def mapped(self, function: Callable[[Batch], Any], page: Batch) -> Batch:
        """The records function changes in page, validated: only ids of the page, vectors
        unchanged, JSON metadata, text or None documents; records returned unchanged are dropped."""
        name = function_name(self.function)
        given = Batch(list(page.ids), page.vectors.copy(), list(page.documents), copy.deepcopy(page.metadatas))
        try:
            result = function(given)
        except VecflowError:
            raise
        except USER_ERRORS as exc:
            raise InvalidDataError(f"{self._owner}: {name} {failure(exc)} (the page of records "
                                   f"{page.ids[0]!r}..{page.ids[-1]!r})") from exc
        if result is None:
            return page.take([])
        if not isinstance(result, Batch):
            raise OperationError(f"{self._owner}: {name} returned a {type(result).__name__}; return a Batch of "
                                 "the changed records, or None")
        position = {rid: i for i, rid in enumerate(page.ids)}
        seen: set[str] = set()
        keep = []
        for j, rid in enumerate(result.ids):
            i = position.get(rid)
            if i is None or rid in seen:
                problem = "twice" if rid in seen else "that is not in the page it was given"
                raise OperationError(f"{self._owner}: {name} returned record {rid!r} {problem}; map_records "
                                     "cannot add records or change ids")
            seen.add(rid)
            if result.dim != page.dim or result.vectors[j].tobytes() != page.vectors[i].tobytes():
                raise OperationError(f"{self._owner}: {name} changed the vector of record {rid!r}; map_records "
                                     "changes metadata and documents only")
            document, metadata = result.documents[j], result.metadatas[j]
            if document is not None and not isinstance(document, str):
                raise InvalidDataError(f"{self._owner}: {name} gave record {rid!r} a {type(document).__name__} "
                                       "document; documents are text or None")
            if not isinstance(metadata, dict):
                raise InvalidDataError(f"{self._owner}: {name} gave record {rid!r} metadata of type "
                                       f"{type(metadata).__name__}; metadata is a dict")
            if document != page.documents[i] or metadata != page.metadatas[i]:
                check_json_value(metadata, f"{self._owner}: {name} gave record {rid!r} the metadata")
                keep.append(j)
        return result.take(keep)

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.require(self.collection)
        function = resolve_function(self.function, self._owner, project_folders(ctx.stores))
        ctx.snapshots.begin_records(ctx.snapshot, backend.describe(name))
        if ctx.state.get("scan_done"):
            return
        for page, cursor in backend.pages(name, ctx.batch_size, ctx.state.get("scan")):
            if len(page):
                self._map_page(ctx, backend, name, function, page)
            ctx.save(len(page), scan=cursor, scan_done=cursor is None)

    def _map_page(self, ctx: StepContext, backend: Backend, name: str, function: Callable, page: Batch) -> None:
        # Records of this page already in the snapshot were written before a crash: map their
        # original state again, so a replayed page gives the same result as a single run.
        originals = ctx.snapshots.lookup_records(ctx.snapshot, page.ids)
        given = Batch(page.ids, page.vectors,
                      [originals[rid][0] if rid in originals else page.documents[i] for i, rid in enumerate(page.ids)],
                      [originals[rid][1] if rid in originals else page.metadatas[i] for i, rid in enumerate(page.ids)],
                      page.extras)
        documents, metadatas = list(given.documents), list(given.metadatas)
        position = {rid: i for i, rid in enumerate(page.ids)}
        result = self.mapped(function, given)
        for j, rid in enumerate(result.ids):
            documents[position[rid]], metadatas[position[rid]] = result.documents[j], result.metadatas[j]
        new_documents = [i for i in range(len(page)) if documents[i] != page.documents[i]]
        new_metadata = [i for i in range(len(page))
                        if metadatas[i] != page.metadatas[i] and documents[i] == page.documents[i]]
        if not new_documents and not new_metadata:
            return
        ctx.snapshots.add_records(ctx.snapshot, given.take(sorted(new_documents + new_metadata)))
        if new_documents:
            backend.upsert(name, Batch(page.ids, page.vectors, documents, metadatas, page.extras).take(new_documents))
        if new_metadata:
            backend.update_metadata(name, [page.ids[i] for i in new_metadata], [metadatas[i] for i in new_metadata])


# delete_records --------------------------------------------------------------------------------


@register_op
class DeleteRecordsOp(CollectionOp):
    """Delete the records matching a jinja2 condition over their metadata, id and document.

    Each page's matching records are snapshotted whole before they are deleted. Inverse:
    restore_records re-inserts them exactly."""

    op_name: ClassVar[str] = "delete_records"
    captures_snapshot: ClassVar[bool] = True
    where: str

    @field_validator("where")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return check_expression(value)

    def describe(self) -> str:
        return f"delete_records {self.collection} where {self.where}"

    def reverse(self, record: StepRecord) -> Op | None:
        if record.snapshot is None:
            return None
        return RestoreRecordsOp(collection=self.collection, snapshot=record.snapshot)

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        return restore_interrupted(self, record)

    def matcher(self) -> Callable[[str, dict, str | None], bool]:
        condition = compile_expression(self.where)

        def matches(rid: str, meta: dict, document: str | None) -> bool:
            try:
                return bool(condition(**record_scope(rid, meta, document)))
            except Exception as exc:
                raise InvalidDataError(f"delete_records {self.collection}: condition {self.where!r} failed on "
                                       f"record {rid!r}: {exc}") from exc
        return matches

    def preview(self, stores: Stores) -> list[str]:
        """Counts the matching records of the sample (read-only)."""
        backend, name = stores.resolve(self.collection)
        sampled = sample(backend, name)
        if sampled is None:
            return []  # the simulated run says it does not exist
        matches = self.matcher()
        page = sampled.page
        try:
            matched = [rid for i, rid in enumerate(page.ids) if matches(rid, page.metadatas[i], page.documents[i])]
        except InvalidDataError as exc:
            return [f"refused: {exc}"]
        first = matched[:3]
        examples = f" (e.g. {', '.join(map(repr, first))})" if first else ""
        return [f"records deleted: {sampled.extrapolate(len(matched))}{examples}; snapshotted whole first"]

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.require(self.collection)
        ctx.snapshots.begin_records(ctx.snapshot, backend.describe(name))
        if ctx.state.get("scan_done"):
            return
        matches = self.matcher()
        # Every adapter's cursor is a position in a stable id order (the last id, or the next
        # one), so records deleted behind it do not shift the pages after it.
        for page, cursor in backend.pages(name, ctx.batch_size, ctx.state.get("scan")):
            doomed = [i for i, rid in enumerate(page.ids) if matches(rid, page.metadatas[i], page.documents[i])]
            if doomed:
                ctx.snapshots.add_records(ctx.snapshot, page.take(doomed))
                backend.delete(name, [page.ids[i] for i in doomed])
            ctx.save(len(page), scan=cursor, scan_done=cursor is None,
                     deleted=ctx.state.get("deleted", 0) + len(doomed))
        ctx.note(f"deleted {ctx.state['deleted']} records")
