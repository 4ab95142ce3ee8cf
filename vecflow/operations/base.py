"""Op: one recorded step of a revision, with its arguments validated by pydantic.

Calling `op.rename_field(...)` inside `upgrade(op)` builds a RenameFieldOp and appends it to a
plan; nothing touches a store until the runner executes the plan. The same op classes back the
YAML form (`- rename_field: {...}`), so both forms validate identically.

An op knows its inverse: `reverse(record)` returns the op that undoes it, given what the op left
in the ledger when it ran (the name of the snapshot it captured, and its final step state), or
None when it cannot be undone.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from vecflow.errors import IrreversibleError, OperationError

if TYPE_CHECKING:
    from vecflow.batch import Batch
    from vecflow.runtime.context import StepContext
    from vecflow.runtime.stores import Stores

OP_REGISTRY: dict[str, type[Op]] = {}


@dataclass(frozen=True)
class FieldAccess:
    """The metadata fields a one-pass metadata step (`Op.metadata_pass`) reads and writes. reads
    None: any field (a user function, an expression that uses `metadata`)."""

    reads: frozenset[str] | None
    writes: frozenset[str]

    @property
    def touched(self) -> frozenset[str] | None:
        return None if self.reads is None else self.reads | self.writes

    def independent_of(self, other: FieldAccess) -> bool:
        """Neither step writes a field the other reads or writes: their order does not matter, and
        each gives the same result on a page the other already rewrote."""
        return _disjoint(self.writes, other.touched) and _disjoint(other.writes, self.touched)


def _disjoint(writes: frozenset[str], touched: frozenset[str] | None) -> bool:
    return not writes if touched is None else not writes & touched


@dataclass(frozen=True)
class StepRecord:
    """What a step left in the ledger, from which its inverse is built.

    before: for each of the op's own collection references (as in `collections()`), the digest
    text recorded before the step ran; "absent" when the collection did not exist.
    finished: False when the step stopped part-way (killed, or failed with an error).
    """

    snapshot: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    before: dict[str, str] = field(default_factory=dict)
    finished: bool = True

    def existed_before(self, ref: str) -> bool:
        """Whether the collection `ref` existed before the step (True when nothing was recorded)."""
        return self.before.get(ref) != "absent"

    @classmethod
    def hypothetical(cls) -> StepRecord:
        """Stands in for a run that has not happened yet (to ask whether an op is reversible)."""
        return cls(snapshot="(snapshot)")


class Op(BaseModel):
    """Base of all operations. Subclasses declare fields (in positional order) and implement run()."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    op_name: ClassVar[str] = ""
    # Captures a snapshot while running, so its inverse can restore destroyed data exactly.
    captures_snapshot: ClassVar[bool] = False
    # Internal ops (inverses built by vecflow) are not offered to scripts.
    internal: ClassVar[bool] = False

    def collections(self) -> list[str]:
        """Collection references (`store:collection` or `collection`) this step reads or writes."""
        return []

    def read_only_collections(self) -> list[str]:
        """Those of `collections()` the step only reads (a copy's source): the runner takes their
        digest after the step to be the one before, instead of reading them again."""
        return []

    def digested_while_running(self) -> list[str]:
        """Those of `collections()` whose digest before the step the op computes itself while it
        reads them anyway (a copy's source, in its copy loop; StepContext.record_digest_before):
        the runner does not read them a first time before the step."""
        return []

    def field_access(self) -> FieldAccess | None:
        """For an op whose whole work is one metadata-only rewrite pass over its one collection
        (`metadata_pass`): the fields it reads and writes. The runner runs consecutive such steps
        on the same collection that do not touch each other's fields in one pass
        (runtime/fused_pass.py). None: the step runs alone."""
        return None

    def metadata_pass(self, ctx: StepContext) -> Callable[[Batch], Batch | None]:
        """For an op with a `field_access`: begin what it keeps (its snapshot) and return its page
        transform for `StepContext.rewrite_records` (metadata_only, digest): its run() is that
        pass over its collection."""
        raise NotImplementedError

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.model_dump(exclude_defaults=True).items())
        return f"{self.op_name}({args})"

    def reverse(self, record: StepRecord) -> Op | None:
        """The op undoing this one, or None when it cannot be undone."""
        return None

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        """The ops undoing a run of this op that stopped part-way (record.finished is False), in
        order; empty when the interrupted run cannot have changed anything. Afterwards every
        collection of the step must be as it was before it (the runner checks the digests).

        Raises IrreversibleError when the op has no inverse."""
        inverse = self.reverse(record)
        if inverse is None:
            raise IrreversibleError(f"{self.describe()} cannot be reversed")
        return [inverse]

    def restart_after_damage(self, record: StepRecord, ref: str) -> dict[str, Any] | None:
        """The step state to go on from once collection `ref`, found damaged part-way through
        this step (DamagedStoreError), has been dropped; None when the step cannot rebuild it
        (it held records only the store had). Ops that fill a collection from a source or a
        snapshot they still hold return one; the runner drops `ref` and runs the step again."""
        return None

    @property
    def reversible(self) -> bool:
        return self.reverse(StepRecord.hypothetical()) is not None

    def preview(self, stores: Stores) -> list[str]:
        """Extra --dry-run lines about what this step would do (read-only). `stores` are the dry
        run's simulated stores: collections as the earlier steps of the plan leave them. A line
        starting with "refused: " says the step would not run."""
        return []

    def simulate(self, ctx: StepContext) -> None:
        """Run on a dry run's simulated stores and in-memory snapshots (runtime/simulate.py):
        what run() does, there. Ops whose run acts outside the stores (loading a model) override
        it with what they can do without that."""
        self.run(ctx)

    def run(self, ctx: StepContext) -> None:
        raise NotImplementedError

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Op:
        """Validate positional and keyword arguments (positionals follow the field order)."""
        names = list(cls.model_fields)
        if len(args) > len(names):
            raise OperationError(f"{cls.op_name}: takes at most {len(names)} positional arguments, got {len(args)}")
        for name, value in zip(names, args):
            if name in kwargs:
                raise OperationError(f"{cls.op_name}: argument {name!r} given twice")
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            raise OperationError(f"{cls.op_name}: {describe_validation_error(exc)}") from exc


class CollectionOp(Op):
    """An op on one collection (`store:collection` or a bare name in the default store)."""

    collection: str

    def collections(self) -> list[str]:
        return [self.collection]


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        msg = "unknown argument" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def register_op(cls: type[Op]) -> type[Op]:
    """Class decorator: make an op available as op.NAME(...) and `- NAME:` in YAML."""
    if not cls.op_name:
        raise TypeError(f"{cls.__name__} has no op_name")
    OP_REGISTRY[cls.op_name] = cls
    return cls


def get_op(name: str) -> type[Op]:
    _load_builtin_ops()
    cls = OP_REGISTRY.get(name)
    if cls is None or cls.internal:
        public = sorted(n for n, c in OP_REGISTRY.items() if not c.internal)
        close = difflib.get_close_matches(name, public, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known ops: {', '.join(public)}"
        raise OperationError(f"unknown op {name!r}{hint}")
    return cls


def public_ops() -> dict[str, type[Op]]:
    _load_builtin_ops()
    return {n: c for n, c in sorted(OP_REGISTRY.items()) if not c.internal}


BUILTIN_OP_MODULES = ("fields", "collections", "moves", "records", "schema", "splits", "vectors")


def _load_builtin_ops() -> None:
    """Import the built-in op modules once; importing a module registers its ops."""
    import importlib

    for module in BUILTIN_OP_MODULES:
        importlib.import_module(f"vecflow.operations.{module}")


class Operations:
    """The `op` object handed to upgrade(op) / downgrade(op): every call records one step."""

    def __init__(self) -> None:
        self.steps: list[Op] = []

    def __getattr__(self, name: str) -> Callable[..., Op]:
        if name.startswith("_"):
            raise AttributeError(name)
        cls = get_op(name)

        def record(*args: Any, **kwargs: Any) -> Op:
            step = cls.build(*args, **kwargs)
            self.steps.append(step)
            return step

        record.__name__ = name
        record.__doc__ = cls.__doc__
        return record
