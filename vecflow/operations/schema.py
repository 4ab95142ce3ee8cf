"""Schema operations: apply_schema validates every record of a collection against a schema, and
moves the records that fail into a quarantine collection.

The schema is a pydantic model class (Python revisions), a `"module:Model"` path, or a YAML field
map that is turned into a pydantic model. Metadata is validated in pydantic's lax mode: a valid
record's metadata becomes the validated output (defaults filled, coercions such as "3" -> 3
applied); extra fields are kept unless a model class says otherwise in its own config.

The step snapshots whole records (every record it rewrites or moves) before writing, so its
inverse, unapply_schema, puts them back exactly and removes what it added to the quarantine.
"""

from __future__ import annotations

import base64
import json
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from vecflow.backends import Backend
from vecflow.batch import Batch
from vecflow.errors import InvalidDataError, OperationError
from vecflow.operations.base import Op, StepRecord, register_op
from vecflow.operations.fields import CALLABLE_PATH, function_name, project_folders, resolve_function, wrote_nothing
from vecflow.operations.user_code import USER_ERRORS, failure
from vecflow.runtime.context import StepContext
from vecflow.runtime.estimate import sample
from vecflow.runtime.stores import Stores, sibling_ref

# Reserved metadata keys of quarantined records.
QUARANTINE_REASON = "_quarantine_reason"
# The snapshot name of the step that quarantined the record: its inverse removes only those.
QUARANTINE_STEP = "_quarantine_step"
# Base64 of the original float32 (little-endian) vector when no store could hold it (NaN,
# infinity, another dimension); the quarantined record then has a zero vector.
QUARANTINE_VECTOR = "_quarantine_vector"
EXAMPLES = 5

FieldType = Literal["str", "int", "float", "bool", "list", "dict"]
PYTHON_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool,
                                "list": list[Any], "dict": dict[str, Any]}


class FieldSpec(BaseModel):
    """One entry of a YAML field map: `{type, required, default, min, max, enum, pattern, strict}`."""

    model_config = ConfigDict(extra="forbid")
    type: FieldType
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    enum: list[Any] | None = None
    pattern: str | None = None
    strict: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.required and self.has_default:
            raise ValueError("a required field cannot have a default")
        if self.pattern is not None:
            if self.type != "str":
                raise ValueError(f"pattern applies to type str, not {self.type}")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression: {exc}") from None
        if (self.min is not None or self.max is not None) and self.type == "bool":
            raise ValueError("min and max do not apply to type bool")
        if self.type in ("str", "list", "dict"):
            for bound in (self.min, self.max):
                if bound is not None and (bound < 0 or bound != int(bound)):
                    raise ValueError(f"min and max of a {self.type} are lengths: whole numbers >= 0")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is greater than max {self.max:g}")
        if self.enum is not None and not self.enum:
            raise ValueError("enum is empty")
        return self

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set

    def annotation(self) -> Any:
        """The pydantic type of one value: the base type with its constraints and enum check."""
        constraints: dict[str, Any] = {"strict": True} if self.strict else {}
        if self.type in ("int", "float"):
            constraints.update(ge=self.min, le=self.max)
        elif self.type in ("str", "list", "dict"):
            constraints.update(min_length=None if self.min is None else int(self.min),
                               max_length=None if self.max is None else int(self.max))
        if self.pattern is not None:
            constraints["pattern"] = self.pattern
        metadata: list[Any] = [Field(**{k: v for k, v in constraints.items() if v is not None})]
        if self.enum is not None:
            base = TypeAdapter(PYTHON_TYPES[self.type])
            try:
                allowed = [base.validate_python(value) for value in self.enum]
            except ValidationError as exc:
                raise ValueError(f"enum values must be of type {self.type}: {_first_error(exc)}") from None
            metadata.append(AfterValidator(_one_of(allowed)))
        return Annotated[(PYTHON_TYPES[self.type], *metadata)]


def _one_of(allowed: list[Any]) -> Any:
    expected = ", ".join(repr(value) for value in allowed)

    def check(value: Any) -> Any:
        if value not in allowed:
            raise PydanticCustomError("enum", "Input should be one of {expected}", {"expected": expected})
        return value
    return check


def _first_error(exc: ValidationError) -> str:
    return exc.errors()[0]["msg"]


_FIELD_MAP = TypeAdapter(dict[str, FieldSpec])
# Patterns run on Python's re engine, the one they were checked with (lookarounds allowed).
_PATTERNS = ConfigDict(regex_engine="python-re")


def model_from_field_map(fields: dict[str, FieldSpec]) -> tuple[type[BaseModel], frozenset[str]]:
    """A pydantic model validating the map, and the keys to leave out of the output when absent
    from a record (optional fields without a default are not added as null)."""
    definitions: dict[str, Any] = {}
    omit = set()
    for position, (key, spec) in enumerate(fields.items()):
        try:
            annotation = spec.annotation()
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        # Internal names with an alias: any key works, even "_x", "model_config" or "a b".
        name = f"f{position}"
        if spec.required:
            definitions[name] = (annotation, Field(alias=key))
            continue
        default = None
        if spec.has_default and spec.default is not None:
            try:
                default = TypeAdapter(annotation, config=_PATTERNS).validate_python(spec.default)
            except ValidationError as exc:
                raise ValueError(f"{key}: default {spec.default!r} is not valid: {_first_error(exc)}") from None
        if not spec.has_default:
            omit.add(key)
        definitions[name] = (annotation | None, Field(default, alias=key))
    model = create_model("FieldMap", __config__=ConfigDict(extra="allow", **_PATTERNS), **definitions)
    return model, frozenset(omit)


def describe_field_map_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            msg = f"unknown key (known: {', '.join(FieldSpec.model_fields)})"
        else:
            msg = err["msg"].removeprefix("Value error, ").replace(" or instance of FieldSpec", " {type: ...}")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _schema_error(message: str) -> PydanticCustomError:
    """A validation error whose message pydantic shows as is (no "Value error, " prefix)."""
    return PydanticCustomError("invalid_schema", "{message}", {"message": message})


def import_model(path: str, owner: str, search: Sequence[Path] = ()) -> type[BaseModel]:
    """The pydantic model class named by `"package.module:Model"`, imported like map functions
    are (from sys.path, else from the folders in `search`)."""
    target = resolve_function(path, owner, search)
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        raise OperationError(f"{owner}: schema {path!r} is not a pydantic model class")
    return target


@dataclass
class Verdict:
    """One record's result: the validated metadata (None when it fails), and why it fails as
    (kind, detail) pairs; kind has no record values, for counting in --dry-run."""

    metadata: dict[str, Any] | None
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(detail for _, detail in self.problems)


class RecordValidator:
    """Validates records (metadata and vector) against a schema. Usable on any Batch, including
    records that never were in a store (e.g. produced by a map function)."""

    def __init__(self, model: type[BaseModel], omit_unset: frozenset[str] = frozenset(),
                 dim: int | None = None, allow_zero_vectors: bool = False) -> None:
        self.model = model
        self.omit_unset = omit_unset
        self.dim = dim
        self.allow_zero_vectors = allow_zero_vectors
        # Pydantic's own default (no `extra` in the model's config) would drop unknown keys:
        # vecflow keeps them, unless the model chose a policy itself.
        self.keep_extra = model.model_config.get("extra") is None
        self.known = {key for name, info in model.model_fields.items() for key in (name, info.alias) if key}

    def metadata(self, metadata: dict[str, Any]) -> Verdict:
        try:
            validated = self.model.model_validate(metadata)
        except ValidationError as exc:
            return Verdict(None, [_problem(err) for err in exc.errors()])
        out = validated.model_dump(mode="json", by_alias=True)
        given = set(metadata)
        out = {k: v for k, v in out.items() if k in given or k not in self.omit_unset}
        if self.keep_extra:
            out.update({k: v for k, v in metadata.items() if k not in self.known and k not in out})
        return Verdict(out)

    def vector(self, vector: np.ndarray, dim: int) -> tuple[str, str] | None:
        """Why a vector fails (dimension against `dim`, NaN or infinity, all zeros), or None."""
        expected = self.dim or dim
        if vector.shape != (expected,):
            return "vector: wrong dimension", f"vector: dimension {vector.size}, expected {expected}"
        if not np.isfinite(vector).all():
            return "vector: NaN or infinite values", "vector: NaN or infinite values"
        if not self.allow_zero_vectors and not vector.any():
            return "vector: all zeros", "vector: all zeros (allow_zero_vectors is false)"
        return None

    def check(self, page: Batch, dim: int | None = None) -> list[Verdict]:
        """One verdict per record of the page; dim is the collection's (default: the page's)."""
        verdicts = []
        for i, rid in enumerate(page.ids):
            try:
                verdict = self.metadata(page.metadatas[i])
            except USER_ERRORS as exc:
                raise InvalidDataError(f"the schema {self.model.__name__} {failure(exc)} while validating "
                                       f"record {rid!r}; fix the model's validators") from exc
            problem = self.vector(page.vectors[i], dim or page.dim)
            if problem is not None:
                verdict = Verdict(None, verdict.problems + [problem])
            verdicts.append(verdict)
        return verdicts


def _problem(err: Any) -> tuple[str, str]:
    loc = ".".join(str(part) for part in err["loc"]) or "metadata"
    kind = f"{loc}: {err['msg']}"
    if err["type"] == "missing":
        return kind, kind
    shown = repr(err.get("input"))
    return kind, f"{kind} (got {shown if len(shown) <= 40 else shown[:37] + '...'})"


def quarantine_batch(page: Batch, reasons: list[str], step: str, dim: int) -> Batch:
    """The records as they go into a quarantine collection of dimension dim: metadata plus the
    reason and the step; a vector no store accepts (NaN, infinity, other dimension) is replaced by
    zeros, its original float32 bytes kept in base64 under QUARANTINE_VECTOR."""
    fits = page.dim == dim
    vectors = page.vectors.copy() if fits else np.zeros((len(page), dim), np.float32)
    metadatas = []
    for i, meta in enumerate(page.metadatas):
        meta = {**meta, QUARANTINE_REASON: reasons[i], QUARANTINE_STEP: step}
        if not fits or not np.isfinite(page.vectors[i]).all():
            meta[QUARANTINE_VECTOR] = base64.b64encode(page.vectors[i].astype("<f4").tobytes()).decode()
            vectors[i] = 0
        metadatas.append(meta)
    return Batch(page.ids, vectors, page.documents, metadatas, page.extras)


def _canonical(metadata: dict[str, Any]) -> str:
    """Equal for equal values of equal types (1, 1.0 and true differ)."""
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False)


with warnings.catch_warnings():
    # The argument is called `schema`, as users write it; it shadows pydantic's deprecated
    # BaseModel.schema(), which vecflow never calls.
    warnings.filterwarnings("ignore", message='Field name "schema"')

    @register_op
    class ApplySchemaOp(Op):
        """Validate every record against a schema: valid records get the validated metadata,
        invalid ones move into a quarantine collection with the reason. Refused before any write
        when more than max_invalid_fraction of the records fail. Inverse: unapply_schema."""

        op_name: ClassVar[str] = "apply_schema"
        captures_snapshot: ClassVar[bool] = True
        collection: str
        schema: Any
        quarantine: str | None = None
        max_invalid_fraction: float = Field(0.05, ge=0, le=1)
        dim: int | None = Field(None, gt=0)
        allow_zero_vectors: bool = False
        _validator: RecordValidator | None = PrivateAttr(None)

        @field_validator("schema")
        @classmethod
        def _known_schema(cls, value: Any) -> Any:
            if isinstance(value, type) and issubclass(value, BaseModel):
                return value
            if isinstance(value, str):
                # Imported when the step runs (or is previewed), as map functions are.
                if not CALLABLE_PATH.match(value):
                    raise _schema_error(f"{value!r} is not a 'package.module:Model' path")
                return value
            if isinstance(value, dict):
                try:
                    fields = _FIELD_MAP.validate_python(value)
                except ValidationError as exc:
                    raise _schema_error(f"invalid field map: {describe_field_map_error(exc)}") from None
                try:
                    model_from_field_map(fields)
                except ValueError as exc:
                    raise _schema_error(f"invalid field map: {exc}") from None
                return fields
            raise _schema_error("must be a pydantic model class, a 'package.module:Model' path or a field map "
                                "{field: {type: ..., required: ..., default: ...}}")

        @model_validator(mode="after")
        def _distinct(self) -> ApplySchemaOp:
            if self.quarantine_ref == self.collection:
                raise ValueError("quarantine must be another collection than collection")
            return self

        @property
        def quarantine_ref(self) -> str:
            if self.quarantine is None:
                return sibling_ref(self.collection, f"{self.collection.rpartition(':')[2]}_quarantine")
            return self.quarantine if ":" in self.quarantine else sibling_ref(self.collection, self.quarantine)

        def collections(self) -> list[str]:
            return [self.collection, self.quarantine_ref]

        def schema_label(self) -> str:
            if isinstance(self.schema, dict):
                return "fields " + ", ".join(self.schema) if self.schema else "no fields"
            if isinstance(self.schema, str):
                return self.schema
            return function_name(self.schema)

        def describe(self) -> str:
            vectors = f", dim {self.dim}" if self.dim else ""
            zeros = ", zero vectors allowed" if self.allow_zero_vectors else ""
            return (f"apply_schema {self.collection}: {self.schema_label()}{vectors}{zeros} "
                    f"(invalid -> {self.quarantine_ref}, at most {self.max_invalid_fraction:.0%})")

        def reverse(self, record: StepRecord) -> Op | None:
            if record.snapshot is None:
                return None
            return UnapplySchemaOp(collection=self.collection, quarantine=self.quarantine_ref,
                                   snapshot=record.snapshot,
                                   drop_quarantine=bool(record.state.get("created_quarantine")))

        def reverse_interrupted(self, record: StepRecord) -> list[Op]:
            # Nothing is written before the quarantine decision is checkpointed (the validation
            # pass only reads; a refusal raises before it).
            if record.snapshot is None:
                return super().reverse_interrupted(record)
            if "quarantine_existed" not in record.state:
                return []
            # Whether the quarantine is the step's own: from the digests taken before the step,
            # since the step may have created it and stopped before saving that it did.
            return [UnapplySchemaOp(collection=self.collection, quarantine=self.quarantine_ref,
                                    snapshot=record.snapshot, interrupted=True,
                                    drop_quarantine=not record.existed_before(self.quarantine_ref))]

        def validator(self, search: Sequence[Path] = ()) -> RecordValidator:
            """The schema's validator; a dotted path is imported on first use (see import_model)."""
            if self._validator is None:
                omit: frozenset[str] = frozenset()
                if isinstance(self.schema, dict):
                    model, omit = model_from_field_map(self.schema)
                elif isinstance(self.schema, str):
                    model = import_model(self.schema, f"apply_schema {self.collection}", search)
                else:
                    model = self.schema
                self._validator = RecordValidator(model, omit, self.dim, self.allow_zero_vectors)
            return self._validator

        # dry run ---------------------------------------------------------------------------------

        def preview(self, stores: Stores) -> list[str]:
            backend, name = stores.resolve(self.collection)
            sampled = sample(backend, name)
            if sampled is None:
                return []  # the simulated run says it does not exist
            page, validator = sampled.page, self.validator(project_folders(stores))
            kinds: Counter[str] = Counter()
            filled: Counter[str] = Counter()
            invalid, changed = 0, 0
            for meta, verdict in zip(page.metadatas, validator.check(page, backend.describe(name).dim)):
                if verdict.metadata is None:
                    invalid += 1
                    kinds.update(kind for kind, _ in verdict.problems)
                else:
                    filled.update(k for k in verdict.metadata if k not in meta)
                    changed += _canonical(verdict.metadata) != _canonical(meta)
            fraction = invalid / len(page) if len(page) else 0.0
            fails = ": the step would FAIL before writing anything" if fraction > self.max_invalid_fraction else ""
            lines = [f"quarantine: {sampled.extrapolate(invalid)} into {self.quarantine_ref} ({fraction:.1%}, "
                     f"limit {self.max_invalid_fraction:.1%}){fails}"]
            lines += [f"  {count} x {kind}" for kind, count in kinds.most_common(EXAMPLES)]
            if len(kinds) > EXAMPLES:
                lines.append(f"  ... and {len(kinds) - EXAMPLES} other reasons")
            lines += [f"default fills {key!r}: {sampled.extrapolate(count)}" for key, count in sorted(filled.items())]
            lines.append(f"metadata rewritten (defaults, coercions): {sampled.extrapolate(changed)}")
            return lines

        # run -------------------------------------------------------------------------------------

        def run(self, ctx: StepContext) -> None:
            if ctx.stores.canonical(self.quarantine_ref) == ctx.stores.canonical(self.collection):
                raise OperationError(f"apply_schema {self.collection}: the quarantine is the collection itself")
            backend, name = ctx.require(self.collection)
            info = backend.describe(name)
            self.validator(project_folders(ctx.stores))
            if not ctx.state.get("checked"):
                self._check_threshold(ctx, backend, name, info.dim)
            quarantine, qname = ctx.resolve(self.quarantine_ref)
            if "quarantine_existed" not in ctx.state:
                existed = quarantine.has_collection(qname)
                if existed and ctx.state["invalid"] and quarantine.describe(qname).dim != info.dim:
                    raise OperationError(
                        f"apply_schema {self.collection}: quarantine {self.quarantine_ref} has dimension "
                        f"{quarantine.describe(qname).dim}, the collection {info.dim}; name another quarantine")
                # Saved before creating it, so a resumed step knows the quarantine is its own.
                ctx.save(quarantine_existed=existed, created_quarantine=not existed and ctx.state["invalid"] > 0)
            if ctx.state["created_quarantine"] and not quarantine.has_collection(qname):
                quarantine.create_collection(qname, info.dim, info.metric)
            ctx.snapshots.begin_records(ctx.snapshot, info)
            if ctx.state["quarantine_existed"]:
                ctx.snapshots.begin_records(prior_quarantine_snapshot(ctx.snapshot), quarantine.describe(qname))
            if not ctx.state.get("written"):
                for page, cursor in backend.pages(name, ctx.batch_size, ctx.state.get("write")):
                    counts = self._write_page(ctx, page, info.dim) if len(page) else (0, 0)
                    ctx.save(len(page), write=cursor, written=cursor is None,
                             updated=ctx.state.get("updated", 0) + counts[0],
                             quarantined=ctx.state.get("quarantined", 0) + counts[1])
            ctx.note(f"{ctx.state['updated']} records rewritten, {ctx.state['quarantined']} quarantined "
                     f"into {self.quarantine_ref}")

        def _check_threshold(self, ctx: StepContext, backend: Backend, name: str, dim: int) -> None:
            """The read-only first pass: count failures; refuse before any write above the limit."""
            validator = self.validator()
            if not ctx.state.get("check_done"):
                with ctx.track("check the schema", lambda: backend.count(name)):
                    self._check_pages(ctx, backend, name, dim, validator)
            total, invalid, examples = ctx.state["total"], ctx.state["invalid"], ctx.state["examples"]
            if total and invalid / total > self.max_invalid_fraction:
                # A rerun (after fixing the data, the schema or the limit) validates from the start.
                ctx.save(check=None, check_done=False, total=0, invalid=0, examples=[])
                raise InvalidDataError(
                    f"apply_schema {self.collection}: {invalid} of {total} records ({invalid / total:.1%}) fail "
                    f"the schema, more than max_invalid_fraction {self.max_invalid_fraction:.1%}; nothing was "
                    f"written. First failures: {' | '.join(examples)}. "
                    "Fix the data, the schema or the limit, then rerun")
            ctx.save(checked=True)

        def _check_pages(self, ctx: StepContext, backend: Backend, name: str, dim: int,
                         validator: RecordValidator) -> None:
            """Validate the pages from the checkpointed cursor on, counting the failures."""
            for page, cursor in backend.pages(name, ctx.batch_size, ctx.state.get("check")):
                examples = ctx.state.get("examples", [])
                invalid = ctx.state.get("invalid", 0)
                for rid, verdict in zip(page.ids, validator.check(page, dim)):
                    if verdict.metadata is None:
                        invalid += 1
                        if len(examples) < EXAMPLES:
                            examples.append(f"{rid!r}: {verdict.reason}")
                ctx.save(check=cursor, check_done=cursor is None, total=ctx.state.get("total", 0) + len(page),
                         invalid=invalid, examples=examples)

        def _write_page(self, ctx: StepContext, page: Batch, dim: int) -> tuple[int, int]:
            """Snapshot, rewrite and move one page; returns (records rewritten, records quarantined).
            Every write is idempotent, and a page replayed after a crash is validated from the
            snapshotted original metadata, so the result is the same as if it ran once."""
            current = {rid: _canonical(meta) for rid, meta in zip(page.ids, page.metadatas)}
            originals = ctx.snapshots.lookup_records(ctx.snapshot, page.ids)
            page = page.with_metadatas([originals[rid][1] if rid in originals else meta
                                        for rid, meta in zip(page.ids, page.metadatas)])
            touched, updates, moves, reasons = [], {}, [], []
            for i, verdict in enumerate(self.validator().check(page, dim)):
                if verdict.metadata is None:
                    moves.append(i)
                    reasons.append(verdict.reason)
                elif _canonical(verdict.metadata) != _canonical(page.metadatas[i]):
                    updates[page.ids[i]] = verdict.metadata
                else:
                    continue
                touched.append(i)
            if not touched:
                return 0, 0
            ctx.snapshots.add_records(ctx.snapshot, page.take(touched))
            backend, name = ctx.resolve(self.collection)
            # Records already rewritten before a crash are not written again.
            pending = {rid: meta for rid, meta in updates.items() if current[rid] != _canonical(meta)}
            if pending:
                backend.update_metadata(name, list(pending), list(pending.values()))
            if moves:
                self._quarantine(ctx, quarantine_batch(page.take(moves), reasons, ctx.snapshot, dim))
                backend.delete(name, [page.ids[i] for i in moves])
            return len(updates), len(moves)

        def _quarantine(self, ctx: StepContext, records: Batch) -> None:
            quarantine, qname = ctx.resolve(self.quarantine_ref)
            if ctx.state["quarantine_existed"]:
                prior = quarantine.get(qname, records.ids)
                keep = [i for i, meta in enumerate(prior.metadatas) if meta.get(QUARANTINE_STEP) != ctx.snapshot]
                if keep:
                    ctx.snapshots.add_records(prior_quarantine_snapshot(ctx.snapshot), prior.take(keep))
            quarantine.upsert(qname, records)


def prior_quarantine_snapshot(snapshot: str) -> str:
    """The records snapshot holding what an existing quarantine had under the ids a step wrote."""
    return f"{snapshot}_quarantine"


@register_op
class UnapplySchemaOp(Op):
    """Internal inverse of apply_schema: put back every snapshotted record, then remove what the
    step added to the quarantine (the whole collection when the step created it)."""

    op_name: ClassVar[str] = "unapply_schema"
    internal: ClassVar[bool] = True
    collection: str
    quarantine: str
    snapshot: str
    drop_quarantine: bool = False
    # Undoing an apply_schema that stopped part-way (it may have stopped before its snapshot).
    interrupted: bool = False

    def collections(self) -> list[str]:
        return [self.collection, self.quarantine]

    def describe(self) -> str:
        undo = f"drop {self.quarantine}" if self.drop_quarantine else f"remove its records from {self.quarantine}"
        return f"unapply_schema {self.collection}: restore records from snapshot {self.snapshot}, {undo}"

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.require(self.collection)
        quarantine, qname = ctx.resolve(self.quarantine)
        # A step stopped before its snapshot wrote no record, but may have created the quarantine.
        after = None if wrote_nothing(ctx, self.interrupted, self.snapshot) else ctx.state.get("after", 0)
        while after is not None:
            page, after = ctx.snapshots.read_records(self.snapshot, after, ctx.page_size(self.collection))
            if len(page):
                present = set(backend.get(name, page.ids).ids)
                kept = [i for i, rid in enumerate(page.ids) if rid in present]
                moved = [i for i, rid in enumerate(page.ids) if rid not in present]
                if kept:
                    # Metadata only: some stores change vector bits on every vector write.
                    backend.update_metadata(name, [page.ids[i] for i in kept], [page.metadatas[i] for i in kept])
                if moved:
                    backend.upsert(name, page.take(moved))
                if not self.drop_quarantine and quarantine.has_collection(qname):
                    # All the page's ids, not only `moved`: a replayed page finds them restored.
                    ours = quarantine.get(qname, page.ids)
                    quarantine.delete(qname, [rid for rid, meta in zip(ours.ids, ours.metadatas)
                                              if meta.get(QUARANTINE_STEP) == self.snapshot])
            ctx.save(len(page), after=after)
        prior = prior_quarantine_snapshot(self.snapshot)
        if not self.drop_quarantine and ctx.snapshots.exists(prior):
            ctx.restore_from_snapshot(self.quarantine, prior, key="prior_after")
        if self.drop_quarantine and quarantine.has_collection(qname):
            quarantine.drop_collection(qname)
