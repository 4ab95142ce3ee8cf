"""Collection operations: create (optionally loading records from a JSONL file), drop, rename."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from vecflow.backends.base import METRICS
from vecflow.batch import Batch
from vecflow.errors import CollectionExistsError, InvalidDataError, OperationError
from vecflow.operations.base import CollectionOp, Op, StepRecord, register_op
from vecflow.runtime.context import StepContext
from vecflow.runtime.stores import sibling_ref


def _check_metric(value: str) -> str:
    if value not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    return value


def read_jsonl_records(path: Path, start: int, batch_size: int) -> Iterator[tuple[Batch, int]]:
    """Pages of records from a JSONL file ({"id", "vector", "document", "metadata"} per line),
    starting after `start` lines; yields (page, lines consumed so far)."""
    with path.open(encoding="utf-8") as handle:
        lines = islice(handle, start, None)
        consumed = start
        while True:
            chunk = list(islice(lines, batch_size))
            if not chunk:
                return
            ids, vectors, documents, metadatas = [], [], [], []
            for offset, line in enumerate(chunk, start=consumed + 1):
                try:
                    row = json.loads(line)
                    ids.append(str(row["id"]))
                    vectors.append(row["vector"])
                    documents.append(row.get("document"))
                    metadatas.append(row.get("metadata") or {})
                except (ValueError, KeyError, TypeError) as exc:
                    raise InvalidDataError(f"{path}:{offset}: not a record line ({exc})") from exc
            consumed += len(chunk)
            try:
                array = np.asarray(vectors, dtype=np.float32)
            except ValueError as exc:
                raise InvalidDataError(f"{path}: vectors of different lengths near line {consumed}") from exc
            page = Batch(ids, array, documents, metadatas)
            page.check_finite(str(path))
            yield page, consumed


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
        dim = self.dim if self.dim else "?"
        return f"create_collection {self.collection} (dim {dim}, {self.metric}){source}"

    def reverse(self, record: StepRecord) -> Op | None:
        return DropCollectionOp(collection=self.collection)

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.collection)
        data = (ctx.script_dir / self.data) if self.data else None
        if data is not None and not data.is_file():
            raise OperationError(f"create_collection {self.collection}: data file {data} not found")
        if not ctx.state.get("created"):
            dim = self.dim or (_first_dim(data) if data else None)
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
            for page, consumed in read_jsonl_records(data, ctx.state["lines"], ctx.batch_size):
                backend.upsert(name, page)
                ctx.save(len(page), lines=consumed)


def _first_dim(path: Path) -> int:
    for page, _ in read_jsonl_records(path, 0, 1):
        return page.dim
    raise OperationError(f"{path} holds no records to infer the dimension from")


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

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.collection)
        if ctx.resumed and not backend.has_collection(name) and backend.has_collection(self.new_name):
            return
        ctx.require(self.collection)
        if backend.has_collection(self.new_name) and not ctx.state.get("started"):
            raise CollectionExistsError(f"rename_collection: target {self.new_name!r} already exists")
        # From here on a `new_name` collection is our own partial rename; adapters continue it.
        ctx.save(started=True)
        backend.rename_collection(name, self.new_name, ctx.batch_size)
        ctx.save(renamed=True)


@register_op
class RestoreCollectionOp(CollectionOp):
    """Internal inverse of drop_collection: recreate the collection from its snapshot."""

    op_name: ClassVar[str] = "restore_collection"
    internal: ClassVar[bool] = True
    snapshot: str

    def describe(self) -> str:
        return f"restore_collection {self.collection} from snapshot {self.snapshot}"

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.collection)
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
