"""Collection operations: create (optionally loading records from a JSONL file), drop, rename."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from vecflow.backends.base import METRICS, Backend
from vecflow.batch import Batch
from vecflow.errors import (
    CollectionExistsError,
    InvalidDataError,
    IrreversibleError,
    OperationError,
    VerificationError,
)
from vecflow.operations.base import CollectionOp, Op, StepRecord, register_op
from vecflow.runtime.context import StepContext
from vecflow.runtime.digest import Digest
from vecflow.runtime.stores import sibling_ref


def _check_metric(value: str) -> str:
    if value not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    return value


RECORD_KEYS = ("id", "vector", "document", "metadata")
# Longer ids are refused: no application looks records up by a key of kilobytes, and some stores
# (Redis keys, Qdrant payload indexes) get slow or refuse them.
MAX_ID_LENGTH = 1024
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def read_jsonl_records(path: Path, start: int, batch_size: int, dim: int | None = None,
                       seen: dict[str, int] | None = None) -> Iterator[tuple[Batch, int]]:
    """Pages of records from a JSONL file ({"id", "vector", "document", "metadata"} per line),
    starting after `start` lines; yields (page, lines consumed so far).

    Every line is validated (InvalidDataError naming file:line): ids are non-empty strings (an
    integer is taken as its decimal text), vectors non-empty lists of finite numbers of dimension
    `dim` (by default the first record's), documents text or null, metadata an object of JSON
    values (null means {}). `seen` (id -> line) also refuses ids repeated across pages."""
    seen = {} if seen is None else seen
    try:
        with path.open("rb") as handle:
            lines = islice(handle, start, None)
            consumed = start
            while True:
                chunk = list(islice(lines, batch_size))
                if not chunk:
                    return
                ids, vectors, documents, metadatas = [], [], [], []
                for number, line in enumerate(chunk, start=consumed + 1):
                    rid, vector, document, metadata = _record(path, number, line)
                    if dim is None:
                        dim = len(vector)
                    if len(vector) != dim:
                        raise InvalidDataError(f"{path}:{number}: record {rid!r} has a vector of {len(vector)} "
                                               f"numbers; the collection's dimension is {dim}")
                    if rid in seen:
                        raise InvalidDataError(f"{path}:{number}: id {rid!r} repeats the record on line "
                                               f"{seen[rid]}; ids must be unique")
                    seen[rid] = number
                    ids.append(rid)
                    vectors.append(vector)
                    documents.append(document)
                    metadatas.append(metadata)
                consumed += len(chunk)
                yield Batch(ids, np.asarray(vectors, dtype=np.float32), documents, metadatas), consumed
    except OSError as exc:
        raise InvalidDataError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def check_jsonl_file(path: Path, dim: int | None) -> int:
    """Validate a whole JSONL file before anything is written; its dimension (`dim`, or the first
    record's)."""
    found = dim
    for page, _ in read_jsonl_records(path, 0, 1000, dim, seen={}):
        found = found or page.dim
    if found is None:
        raise OperationError(f"{path} holds no records to infer the dimension from; give dim")
    return found


def count_lines(path: Path) -> int:
    """The lines of a file (one record each in a JSONL data file), read in 1 MB blocks."""
    lines, last = 0, b"\n"
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines, last = lines + block.count(b"\n"), block[-1:]
    return lines + (last != b"\n")


def _record(path: Path, number: int, line: bytes) -> tuple[str, list[float], str | None, dict[str, Any]]:
    """One validated record line: (id, vector, document, metadata)."""
    where = f"{path}:{number}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDataError(f"{where}: not UTF-8 text (byte {line[exc.start]:#04x}); save the file as "
                               "UTF-8") from exc
    if number == 1:
        text = text.removeprefix("\ufeff")  # a byte order mark, as Windows editors write
    try:
        row = json.loads(text)
    except ValueError as exc:
        problem = "an empty line" if not text.strip() else f"not JSON ({exc})"
        raise InvalidDataError(f"{where}: {problem}; each line is one record object") from exc
    if not isinstance(row, dict):
        raise InvalidDataError(f"{where}: a record line is a JSON object with id and vector, got "
                               f"{_json_type(row)}")
    unknown = sorted(set(row) - set(RECORD_KEYS))
    if unknown:
        raise InvalidDataError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a record line has "
                               f"{', '.join(RECORD_KEYS)}")
    for key in ("id", "vector"):
        if key not in row:
            raise InvalidDataError(f"{where}: the record has no {key!r}")
    rid = _record_id(where, row["id"])
    document = row.get("document")
    if document is not None and not isinstance(document, str):
        raise InvalidDataError(f"{where}: record {rid!r}: document must be text or null, got {_json_type(document)}")
    metadata = row.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidDataError(f"{where}: record {rid!r}: metadata must be an object or null, got "
                               f"{_json_type(metadata)}")
    for key, value in metadata.items():
        try:
            json.dumps(value, allow_nan=False)
        except ValueError as exc:
            raise InvalidDataError(f"{where}: record {rid!r}: metadata field {key!r} holds NaN or Infinity, "
                                   "which JSON metadata cannot keep") from exc
    return rid, _vector(where, rid, row["vector"]), document, metadata


def _record_id(where: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        shown = "an empty string" if value == "" else _json_type(value)
        raise InvalidDataError(f"{where}: id must be a non-empty string (or an integer), got {shown}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidDataError(f"{where}: id of {len(value)} characters ({value[:20]!r}...); ids are at most "
                               f"{MAX_ID_LENGTH} characters")
    return value


def _vector(where: str, rid: str, value: Any) -> list[float]:
    if not isinstance(value, list) or not value:
        shown = "an empty list" if value == [] else _json_type(value)
        raise InvalidDataError(f"{where}: record {rid!r}: vector must be a non-empty list of numbers, got {shown}")
    for position, number in enumerate(value):
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise InvalidDataError(f"{where}: record {rid!r}: vector[{position}] is {_json_type(number)}, "
                                   "not a number")
        if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
            raise InvalidDataError(f"{where}: record {rid!r}: vector[{position}] is {number!r}; vectors are "
                                   "finite float32 numbers (NaN, infinity and |x| > 3.4e38 are refused)")
    return value


def _json_type(value: Any) -> str:
    """A JSON value's kind, with its article, for messages: 'null', 'a string', 'an object'."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a number"),
                       (list, "a list"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


@register_op
class CreateCollectionOp(CollectionOp):
    """Create a collection, optionally filled from a JSONL file shipped beside the revision.

    `data` is relative to the revision script's folder; `dim` may be omitted when `data` is given.
    Inverse: drop the collection, snapshotting it first (records added since are not lost)."""

    op_name: ClassVar[str] = "create_collection"
    dim: int | None = Field(None, gt=0)
    metric: str = "cosine"
    data: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        return _check_metric(value)

    def describe(self) -> str:
        source = f" from {self.data}" if self.data else ""
        dim = self.dim if self.dim else "of the data"
        return f"create_collection {self.collection} (dim {dim}, {self.metric}){source}"

    def reverse(self, record: StepRecord) -> Op | None:
        return DropCollectionOp(collection=self.collection)

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        # A collection that existed before made the step refuse before writing.
        return [] if record.existed_before(self.collection) else [DiscardCollectionOp(collection=self.collection)]

    def restart_after_damage(self, record: StepRecord, ref: str) -> dict[str, Any] | None:
        # Loaded again from the data file (or created empty again).
        return None if record.existed_before(self.collection) else {}

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.collection)
        data = (ctx.script_dir / self.data) if self.data else None
        if data is not None and not data.is_file():
            raise OperationError(f"create_collection {self.collection}: data file {data} not found")
        if not ctx.state.get("created"):
            # The whole file is checked before anything is written: a bad line 10,000 must not
            # leave a collection holding the first 9,999.
            dim = check_jsonl_file(data, self.dim) if data else self.dim
            if dim is None:
                raise OperationError(f"create_collection {self.collection}: give dim, or data to infer it from")
            if backend.has_collection(name):
                # Adopt it only if this very step created it before a crash.
                if not (ctx.resumed and backend.count(name) == 0):
                    raise CollectionExistsError(f"create_collection: collection {self.collection!r} already exists")
            else:
                backend.create_collection(name, dim, self.metric, **self.params)
            ctx.save(created=True, lines=0)
        if data is not None:
            dim = backend.describe(name).dim
            ctx.expect(lambda: count_lines(data) - ctx.state["lines"])
            for page, consumed in read_jsonl_records(data, ctx.state["lines"], ctx.page_size(self.collection), dim):
                backend.upsert(name, page)
                ctx.save(len(page), lines=consumed)


@register_op
class DropCollectionOp(CollectionOp):
    """Drop a collection. By default every record is snapshotted first, so the inverse
    (restore_collection) recreates it exactly; with snapshot=False the drop is irreversible."""

    op_name: ClassVar[str] = "drop_collection"
    snapshot: bool = True

    @property
    def captures_snapshot(self) -> bool:  # type: ignore[override]
        return self.snapshot

    def describe(self) -> str:
        return f"drop_collection {self.collection}" + ("" if self.snapshot else " (no snapshot)")

    def reverse(self, record: StepRecord) -> Op | None:
        if not self.snapshot or record.snapshot is None:
            return None
        return RestoreCollectionOp(collection=self.collection, snapshot=record.snapshot)

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        # The drop begins once the whole collection is in the snapshot, checkpointed.
        if not record.existed_before(self.collection) or (self.snapshot and not record.state.get("snapshot_scan_done")):
            return []
        inverse = self.reverse(record)
        if inverse is None:
            return super().reverse_interrupted(record)
        return [inverse.model_copy(update={"records_before": records_before(record, self.collection)})]

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.collection)
        if not ctx.state.get("dropped"):
            if self.snapshot and not (ctx.resumed and not backend.has_collection(name)):
                ctx.copy_into_snapshot(self.collection)
            if backend.has_collection(name):
                backend.drop_collection(name)
            elif not ctx.resumed:
                ctx.require(self.collection)
            ctx.save(dropped=True)


@register_op
class RenameCollectionOp(Op):
    """Rename a collection within its store. Inverse: rename it back."""

    op_name: ClassVar[str] = "rename_collection"
    collection: str
    new_name: str

    def collections(self) -> list[str]:
        return [self.collection, sibling_ref(self.collection, self.new_name)]

    def describe(self) -> str:
        return f"rename_collection {self.collection} -> {self.new_name}"

    def reverse(self, record: StepRecord) -> Op | None:
        return RenameCollectionOp(collection=sibling_ref(self.collection, self.new_name),
                                  new_name=self.collection.rpartition(":")[2])

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        # `started` is checkpointed before the store renames anything (refusals come before it).
        if not record.state.get("started"):
            return []
        return [UnrenameCollectionOp(collection=self.collection, new_name=self.new_name,
                                     records_before=records_before(record, self.collection))]

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.collection)
        if ctx.resumed and not backend.has_collection(name) and backend.has_collection(self.new_name):
            return
        ctx.require(self.collection)
        if backend.has_collection(self.new_name) and not ctx.state.get("started"):
            raise CollectionExistsError(f"rename_collection: target {self.new_name!r} already exists")
        # From here on a `new_name` collection is our own partial rename; adapters continue it.
        if "records" not in ctx.state:
            ctx.save(started=True, records=backend.count(name))
        finish_rename(backend, name, self.new_name, ctx.state["records"], ctx.batch_size)
        ctx.save(renamed=True)


@register_op
class RestoreCollectionOp(CollectionOp):
    """Internal inverse of drop_collection: recreate the collection from its snapshot."""

    op_name: ClassVar[str] = "restore_collection"
    internal: ClassVar[bool] = True
    snapshot: str
    # Undoing a drop that stopped part-way: the number of records before it (see drop_unless_whole).
    records_before: int | None = None

    def describe(self) -> str:
        return f"restore_collection {self.collection} from snapshot {self.snapshot}"

    def restart_after_damage(self, record: StepRecord, ref: str) -> dict[str, Any] | None:
        # Recreated from the snapshot; a partial drop it found was dropped already.
        if record.state.get("left_whole") is False:
            return {"left_whole": False}
        return None if record.existed_before(self.collection) else {}

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.collection)
        if self.records_before is not None and drop_unless_whole(ctx, self.collection, self.records_before):
            return
        if not ctx.state.get("created"):
            info = ctx.snapshots.records_info(self.snapshot)
            if backend.has_collection(name) and not ctx.resumed:
                raise CollectionExistsError(f"cannot restore {self.collection!r}: a collection of that name exists")
            if not backend.has_collection(name):
                layout = ctx.snapshots.records_layout(self.snapshot)
                backend.create_collection(name, info.dim, info.metric,
                                          layout=layout if layout in backend.layouts else None, **info.params)
            ctx.save(created=True)
        ctx.restore_from_snapshot(self.collection, self.snapshot)


# undoing steps that stopped part-way ----------------------------------------------------------


def records_before(record: StepRecord, ref: str) -> int:
    """How many records collection `ref` of a step held before the step ran (from its digest)."""
    text = record.before.get(ref) or ""
    if not text or text == "absent":
        raise IrreversibleError(f"the ledger recorded no digest of {ref} before the step")
    return int(Digest.from_text(text.partition("|")[0]).count or 0)


def drop_unless_whole(ctx: StepContext, ref: str, count: int, key: str = "left_whole") -> bool:
    """Undoing a step that stopped while it may have been dropping `ref`, a collection it only
    ever deletes from: True when `ref` still holds the `count` records it held before the step
    (the drop had not begun); otherwise what the drop left of it is dropped, and False. The answer
    is checkpointed under `key`, so a resumed undo keeps it."""
    if key not in ctx.state:
        backend, name = ctx.resolve(ref)
        whole = backend.has_collection(name) and backend.count(name) == count
        if backend.has_collection(name) and not whole:
            backend.drop_collection(name)
        ctx.save(**{key: whole})
    return bool(ctx.state[key])


@register_op
class DiscardCollectionOp(CollectionOp):
    """Internal inverse of a step that stopped part-way after it may have created a collection
    (create_collection, or the target of a copy or move): drop it if it exists."""

    op_name: ClassVar[str] = "discard_collection"
    internal: ClassVar[bool] = True

    def describe(self) -> str:
        return f"discard_collection {self.collection} (created by the stopped step, if it got that far)"

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.collection)
        if backend.has_collection(name):
            backend.drop_collection(name)
        ctx.know_digest(self.collection, "absent")


@register_op
class UnrenameCollectionOp(Op):
    """Internal inverse of a rename_collection that stopped part-way (a copying rename, or a
    native one of many keys): when every record is still under the old name, drop what the rename
    began under the new one; otherwise finish the rename, then rename back."""

    op_name: ClassVar[str] = "unrename_collection"
    internal: ClassVar[bool] = True
    collection: str
    new_name: str
    records_before: int

    def collections(self) -> list[str]:
        return [self.collection, sibling_ref(self.collection, self.new_name)]

    def describe(self) -> str:
        return f"unrename_collection: undo the stopped rename {self.collection} -> {self.new_name}"

    def run(self, ctx: StepContext) -> None:
        backend, old = ctx.resolve(self.collection)
        new = self.new_name
        if not ctx.state.get("renaming_back"):
            if not backend.has_collection(new):
                return  # nothing was renamed
            if backend.has_collection(old) and backend.count(old) == self.records_before:
                backend.drop_collection(new)
                return
            finish_rename(backend, old, new, self.records_before, ctx.batch_size)
            ctx.save(renaming_back=True)
        finish_rename(backend, new, old, self.records_before, ctx.batch_size)


def finish_rename(backend: Backend, old: str, new: str, count: int, batch_size: int | None) -> None:
    """Rename old to new, or finish such a rename that stopped part-way (adapters resume theirs)."""
    if not backend.has_collection(old):
        return
    try:
        backend.rename_collection(old, new, batch_size)
    except VerificationError:
        # A copying rename stopped while dropping `old`: the copy is whole, `old` the drop's leftover.
        if not (backend.has_collection(new) and backend.count(new) == count and backend.count(old) < count):
            raise
        backend.drop_collection(old)
