"""Undoing a step that stopped part-way: `reverse_interrupted` from every interruption point.

Each test runs one op as a step through the real runner and stops it at a checkpoint (the batch
before it written, the checkpoint not: what a SIGKILL there leaves), after the op returned, inside a
backend or snapshot call, or by a failure the op raises itself. The ops `reverse_interrupted`
returns then run as the steps of a new attempt, on new connections as after a restart, and every
collection of the step must have the digest (logical and native) recorded before it ran. For the
checkpoint kills the test walks every checkpoint of the step in turn, on the same store: each undo
must leave it exactly as it was, or the next round starts from other data and fails."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from tests.conftest import running_redis
from tests.project import Project
from vecflow.backends import redis as redis_module
from vecflow.backends.base import Backend
from vecflow.backends.redis import RedisBackend
from vecflow.batch import Batch
from vecflow.command import open_runner
from vecflow.errors import VecflowError
from vecflow.operations.base import Op, StepRecord
from vecflow.runtime.context import StepContext
from vecflow.runtime.digest import DigestPair, collection_digests
from vecflow.runtime.ledger import Owner
from vecflow.runtime.runner import recorded_before
from vecflow.runtime.snapshots import SnapshotStore
from vecflow.runtime.stores import Stores

RECORDS, BATCH = 30, 20


class Killed(BaseException):
    """Stands in for a SIGKILL: not an Exception, so nothing in vecflow catches it."""


class KilledAtTheEnd(Killed):
    """Killed after the op returned, before the runner recorded the step as done."""


def records(n: int = RECORDS, dim: int = 8, seed: int = 0, prefix: str = "id") -> Batch:
    rng = np.random.default_rng(seed)
    return Batch([f"{prefix}-{i:04d}" for i in range(n)], rng.standard_normal((n, dim)).astype(np.float32),
                 [f"text {i} ünïcødé" for i in range(n)],
                 [{"author": ["ada", "grace", "linus"][i % 3], "rank": i % 5, "score": i / 9, "draft": i % 2 == 0,
                   "tags": ["a", "b"] if i % 4 == 0 else []} for i in range(n)])


def new_project(tmp_path, backend: str, options: dict[str, str]) -> Project:
    project = Project(tmp_path / "project", options, backend=backend, batch_size=BATCH)
    project.seed("docs", records())
    return project


def kill_at_save(patch: pytest.MonkeyPatch, saves: int) -> None:
    """Kill the step at its checkpoint number `saves` (0: the first), before it is recorded."""
    original, calls = StepContext.save, [0]

    def save(ctx: StepContext, rows: int = 0, **changes) -> None:
        if calls[0] == saves:
            raise Killed
        calls[0] += 1
        original(ctx, rows, **changes)
    patch.setattr(StepContext, "save", save)


@dataclass
class Stopped:
    """What an interrupted step left: the op, its ledger record, and how it stopped."""

    step: Op
    record: StepRecord
    expected: dict[str, str]  # canonical ref -> digest before the step
    how: str


def run_step(project: Project, body: str, saves: int | None = None,
             fault: Callable[[pytest.MonkeyPatch], None] | None = None, extra: str = "") -> Stopped | None:
    """Run the single step of revision `body` in a new attempt; stop it at its checkpoint number
    `saves` (0: the first; past the last one, once the op has returned), or with `fault`
    installed. None when the step finished."""
    project.write_python("step1", None, body, extra=extra)
    with open_runner(project.config, out=lambda line: None) as runner, pytest.MonkeyPatch.context() as patch:
        owner = Owner.current()
        runner.ledger.acquire_lease(owner, runner.config.lock_lease_seconds)
        rev = runner.scripts.revision_map.get("step1")
        step = rev.script.upgrade_ops()[0]
        # Taken here too: the runner leaves those the op digests as it reads (a copy's source) to the op.
        independent = digests(project, [runner.stores.canonical(ref) for ref in step.collections()])
        attempt = runner.ledger.begin_attempt("step1", "upgrade", owner, rev.script.checksum)
        if saves is not None:
            def finish_step(*args) -> None:
                raise KilledAtTheEnd
            kill_at_save(patch, saves)
            patch.setattr(runner.ledger, "finish_step", finish_step)
        if fault is not None:
            fault(patch)
        how = "finished"
        try:
            runner.run_step(step, 0, 1, attempt, owner, rev, True)
        except KilledAtTheEnd:
            how = "killed at the end"
        except Killed:
            how = "killed"
        except VecflowError as exc:
            how = f"failed: {exc}"
        patch.undo()
        row = runner.ledger.step(attempt, 0)
        runner.ledger.finish_attempt(attempt, "failed" if how != "finished" else "done")
        runner.ledger.release_lease(owner)
        recorded = recorded_before(row)
        assert all(DigestPair.same(text, independent[ref]) for ref, text in recorded.items()), (recorded, independent)
        before = {**independent, **recorded}
        record = StepRecord(snapshot=row["snapshot"], state=json.loads(row["cursor"] or "{}"),
                            before={ref: before[runner.stores.canonical(ref)] for ref in step.collections()},
                            finished=how == "finished")
        stopped = Stopped(step, record, before, how)
    return None if how == "finished" else stopped


def undo(project: Project, stopped: Stopped, saves: int | None = None) -> bool:
    """Run what undoes the stopped step, as a new attempt on new connections, and check the
    digests. With `saves`, the undo is first killed at its checkpoint number `saves`, then resumed
    on new connections; returns whether it was killed."""
    ops = stopped.step.reverse_interrupted(stopped.record)
    attempt, killed = None, False
    for kill in ([saves, None] if saves is not None else [None]):
        with open_runner(project.config, out=lambda line: None) as runner, pytest.MonkeyPatch.context() as patch:
            owner = Owner.current()
            runner.ledger.acquire_lease(owner, runner.config.lock_lease_seconds)
            rev = runner.scripts.revision_map.get("step1")
            attempt = attempt or runner.ledger.begin_attempt("step1", "downgrade", owner, rev.script.checksum)
            if kill is not None:
                kill_at_save(patch, kill)
            try:
                for index, op in enumerate(ops):
                    runner.run_step(op, index, len(ops), attempt, owner, rev, True)
            except Killed:
                killed = True
            else:
                runner.ledger.finish_attempt(attempt, "done")
            runner.ledger.release_lease(owner)
    assert_restored(project, stopped)
    return killed


def digests(project: Project, refs) -> dict[str, str]:
    stores = Stores(project.config)
    try:
        out = {}
        for ref in refs:
            backend, name = stores.resolve(ref)
            out[ref] = collection_digests(backend, name, BATCH).to_text()
        return out
    finally:
        stores.close()


def assert_restored(project: Project, stopped: Stopped) -> None:
    actual = digests(project, stopped.expected)
    wrong = {ref: (actual[ref], want) for ref, want in stopped.expected.items()
             if not DigestPair.same(want, actual[ref])}
    assert not wrong, f"{stopped.step.describe()} ({stopped.how}, state {stopped.record.state}): " \
                      f"not restored (now, before): {wrong}"


def walk_checkpoints(project: Project, body: str, limit: int = 40) -> None:
    """Kill the step at each of its checkpoints in turn, and once after its last one (the op
    done, the step not recorded as done), undoing it each time. Asserts some of them had written."""
    changed = 0
    for saves in range(limit):
        stopped = run_step(project, body, saves)
        assert stopped is not None and stopped.how.startswith("killed"), stopped
        now = digests(project, stopped.expected)
        changed += any(not DigestPair.same(want, now[ref]) for ref, want in stopped.expected.items())
        undo(project, stopped)
        if stopped.how == "killed at the end":
            break
    else:
        raise AssertionError(f"{body} did not finish within {limit} checkpoints")
    assert changed, f"{body}: no interruption point had changed anything; the test proves nothing"


# every op, killed at every checkpoint ------------------------------------------------------------

MORE = 'op.merge_collections(["docs", "more"], "merged")'
OPS = {
    "add_field": 'op.add_field("docs", "source", expression="author ~ \'/\' ~ rank")',
    "drop_field": 'op.drop_field("docs", "score")',
    "set_field": 'op.set_field("docs", "rank", "rank * 100", where="draft")',
    "rename_field": 'op.rename_field("docs", "author", "writer")',
    "cast_field": 'op.cast_field("docs", "rank", "str")',
    "map_records": 'op.map_records("docs", "tests.ops.sample_functions:bump_rank")',
    "map_records_with_inverse": 'op.map_records("docs", "tests.ops.sample_functions:bump_rank", '
                                'inverse="tests.ops.sample_functions:unbump_rank")',
    "delete_records": 'op.delete_records("docs", "rank == 2 or rank == 3")',
    "apply_schema": 'op.apply_schema("docs", "tests.ops.sample_schemas:Article", max_invalid_fraction=0.3)',
    "normalize_vectors": 'op.normalize_vectors("docs")',
    "reembed": 'op.reembed("docs", "tests.ops.sample_embedders:HashEmbedder")',
    "reembed_new_dim": 'op.reembed("docs", "tests.ops.sample_embedders:hash12()")',
    "create_collection": 'op.create_collection("extra", data="data/extra.jsonl")',
    "drop_collection": 'op.drop_collection("docs")',
    "rename_collection": 'op.rename_collection("docs", "renamed")',
    "copy_collection": 'op.copy_collection("docs", "docs_copy")',
    "move_collection": 'op.move_collection("docs", "docs_moved")',
    "split_collection": 'op.split_collection("docs", by="author", into={"ada": "docs_ada", "grace": "docs_grace"}, '
                        'default="docs_rest")',
    "merge_collections": MORE,
}


def prepare(project: Project, name: str) -> None:
    if name == "create_collection":
        project.write_records("extra.jsonl", RECORDS, dim=8, seed=3)
    if name == "merge_collections":
        project.seed("more", records(10, seed=1, prefix="more"))


# On Chroma, one op of each family of ops that share their write loop.
SAME_LOOP = {"drop_field", "set_field", "cast_field", "map_records", "reembed"}
WALKS = [(name, backend) for name in sorted(OPS) for backend in ["chroma", "faiss"]
         if backend == "faiss" or name not in SAME_LOOP]


@pytest.mark.parametrize(("name", "backend"), WALKS)
def test_step_killed_at_any_checkpoint_is_undone_exactly(tmp_path, backend, name):
    project = new_project(tmp_path, backend, {"path": str(tmp_path / backend)})
    prepare(project, name)
    walk_checkpoints(project, OPS[name])


def empty(ref: str, dim: int = 8) -> Callable[[Project], None]:
    def create(project: Project) -> None:
        with project.opened(ref) as (backend, name):
            backend.create_collection(name, dim, "cosine")
    return create


INTO_EXISTING = {
    "copy_collection": (empty("docs_copy"), OPS["copy_collection"]),
    "move_collection": (empty("docs_moved"), OPS["move_collection"]),
    "split_collection": (empty("docs_ada"), OPS["split_collection"]),
    "merge_collections": (lambda p: p.seed("merged", records(10, seed=2, prefix="old")),
                          'op.merge_collections(["docs"], "merged")'),
    "apply_schema": (lambda p: p.seed("docs_quarantine", records(10, seed=2)), OPS["apply_schema"]),
}


@pytest.mark.parametrize("name", sorted(INTO_EXISTING))
def test_step_into_existing_collections_killed_at_any_checkpoint_is_undone_exactly(tmp_path, name):
    """The collections that existed before the step are emptied or given back their records,
    never dropped; apply_schema's quarantine shares ids with the collection (each replaced)."""
    project = new_project(tmp_path, "faiss", {"path": str(tmp_path / "faiss")})
    setup, body = INTO_EXISTING[name]
    setup(project)
    walk_checkpoints(project, body)


# killed inside a store or snapshot call ---------------------------------------------------------


def no_snapshot(patch: pytest.MonkeyPatch) -> None:
    """Killed just before the step begins its snapshot."""
    def kill(*args, **kwargs):
        raise Killed
    patch.setattr(SnapshotStore, "begin_values", kill)
    patch.setattr(SnapshotStore, "begin_records", kill)


def partial_drop(patch: pytest.MonkeyPatch) -> None:
    """Killed half-way through dropping a collection, as Chroma and Redis drop (records first)."""
    def drop(backend: Backend, name: str) -> None:
        page, _ = backend.scan(name, max(1, backend.count(name) // 2))
        backend.delete(name, page.ids)
        raise Killed
    patch.setattr(Backend, "drop_collection", drop)


FAULTS = [
    ("add_field", no_snapshot), ("rename_field", no_snapshot), ("cast_field", no_snapshot),
    ("map_records_with_inverse", no_snapshot), ("delete_records", no_snapshot), ("apply_schema", no_snapshot),
    ("normalize_vectors", no_snapshot), ("reembed_new_dim", no_snapshot), ("merge_collections", no_snapshot),
    ("drop_collection", partial_drop), ("move_collection", partial_drop), ("split_collection", partial_drop),
    ("merge_collections", partial_drop), ("reembed_new_dim", partial_drop),
]


FAULTS = [(backend, name, fault) for name, fault in FAULTS
          for backend in (["chroma", "faiss"] if fault is partial_drop else ["faiss"])]


@pytest.mark.parametrize(("backend", "name", "fault"), FAULTS,
                         ids=[f"{name}-{fault.__name__}-{backend}" for backend, name, fault in FAULTS])
def test_step_killed_inside_a_call_is_undone_exactly(tmp_path, backend, name, fault):
    project = new_project(tmp_path, backend, {"path": str(tmp_path / backend)})
    prepare(project, name)
    stopped = run_step(project, OPS[name], fault=fault)
    assert stopped is not None and stopped.how == "killed"
    if fault is partial_drop:
        now = digests(project, stopped.expected)
        assert any(not DigestPair.same(want, now[ref]) for ref, want in stopped.expected.items())
    undo(project, stopped)


# failures the op raises itself ------------------------------------------------------------------


def change(project: Project, rid: str, **fields) -> None:
    """Give record rid (on the second page of the scan) other metadata or document."""
    with project.opened() as (backend, name):
        page = backend.get(name, [rid])
        document = fields.pop("document", page.documents[0])
        backend.upsert(name, Batch(page.ids, page.vectors, [document], [{**page.metadatas[0], **fields}]))


FAILING = '''
calls = []


def fail_late(batch):
    if batch.ids[0] >= "id-0020":
        raise ValueError("no")
    return Batch(batch.ids, batch.vectors, [d + "!" for d in batch.documents], batch.metadatas)


def embed_then_fail(texts):
    calls.append(len(texts))
    if len(calls) > 2:
        raise RuntimeError("the model server went away")
    return [[float(len(t)), 1.0, 2.0, 3.0] for t in texts]
'''
FAILURES = {
    "cast_field": (lambda p: change(p, "id-0025", rank="x"), 'op.cast_field("docs", "rank", "float")'),
    "rename_field": (lambda p: change(p, "id-0025", writer="x"), OPS["rename_field"]),
    "add_field": (lambda p: change(p, "id-0025", author=None),
                  'op.add_field("docs", "source", expression="author.upper() ~ \'/\'")'),
    "delete_records": (lambda p: change(p, "id-0025", rank="x"), 'op.delete_records("docs", "rank + 1 > 2")'),
    "map_records": (None, "op.map_records('docs', fail_late, inverse=fail_late)"),
    "apply_schema": (None, 'op.apply_schema("docs", "tests.ops.sample_schemas:Article")'),
    "reembed_text": (lambda p: change(p, "id-0025", document=None), OPS["reembed"]),
    "reembed_model": (None, "op.reembed('docs', embed_then_fail)"),
    "split_collection": (None, 'op.split_collection("docs", by="author", into={"ada": "docs_ada", "grace": "g"})'),
    "merge_collections": (lambda p: p.seed("more", records(3)), MORE),
    "rename_collection": (lambda p: p.seed("renamed", records(3)), OPS["rename_collection"]),
    "copy_collection": (lambda p: p.seed("docs_copy", records(3)), OPS["copy_collection"]),
    "move_collection": (lambda p: p.seed("docs_moved", records(3, dim=4)), OPS["move_collection"]),
    "create_collection": (lambda p: prepare(p, "create_collection"), 'op.create_collection("docs", dim=8)'),
}


# Chroma too for the failures that come after some pages were written.
FAILURES_ON = [(name, backend) for name in sorted(FAILURES) for backend in (
    ["chroma", "faiss"] if name in ("cast_field", "rename_field", "delete_records", "map_records", "reembed_model")
    else ["faiss"])]


@pytest.mark.parametrize(("name", "backend"), FAILURES_ON)
def test_step_that_failed_is_undone_exactly(tmp_path, backend, name):
    project = new_project(tmp_path, backend, {"path": str(tmp_path / backend)})
    setup, body = FAILURES[name]
    if setup is not None:
        setup(project)
    stopped = run_step(project, body, extra=f"from vecflow.batch import Batch\n{FAILING}")
    assert stopped is not None and stopped.how.startswith("failed"), stopped
    undo(project, stopped)


# Redis: a subset, and its own non-atomic renames and drops -------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_project(tmp_path, redis_server):
    return new_project(tmp_path, "redis", {"url": redis_server, "key_prefix": f"{tmp_path.name}:"})


@pytest.mark.parametrize("name", ["drop_field", "rename_field", "apply_schema", "rename_collection",
                                  "move_collection", "split_collection", "reembed_new_dim"])
def test_redis_step_killed_at_any_checkpoint_is_undone_exactly(redis_project, name):
    walk_checkpoints(redis_project, OPS[name])


def redis_killed_after_chunks(method: str, chunks: int) -> Callable[[pytest.MonkeyPatch], None]:
    """Killed inside RedisBackend.<method> after it handled `chunks` chunks of 10 keys."""
    def install(patch: pytest.MonkeyPatch) -> None:
        original = getattr(RedisBackend, method)

        def killing(items, size):
            for number, start in enumerate(range(0, len(items), size)):
                if number == chunks:
                    raise Killed
                yield items[start:start + size]
            raise Killed

        def wrapped(self, *args):
            patch.setattr(redis_module, "_chunks", killing)
            return original(self, *args)
        patch.setattr(redis_module, "_PAGE", 10)
        patch.setattr(RedisBackend, method, wrapped)
    return install


@pytest.mark.parametrize(("name", "method", "chunks"), [
    ("rename_collection", "_rename_collection", 1), ("rename_collection", "_rename_collection", 3),
    ("drop_collection", "_drop_collection", 1), ("move_collection", "_drop_collection", 2),
    ("split_collection", "_drop_collection", 1),
])
def test_redis_step_killed_in_a_native_rename_or_drop_is_undone_exactly(redis_project, name, method, chunks):
    stopped = run_step(redis_project, OPS[name], fault=redis_killed_after_chunks(method, chunks))
    assert stopped is not None and stopped.how == "killed"
    now = digests(redis_project, stopped.expected)
    assert any(not DigestPair.same(want, now[ref]) for ref, want in stopped.expected.items())
    undo(redis_project, stopped)


def kill_at_call(cls: type, method: str, call: int) -> Callable[[pytest.MonkeyPatch], None]:
    """Killed at the `call`-th (from 0) call of cls.method."""
    def install(patch: pytest.MonkeyPatch) -> None:
        original, calls = getattr(cls, method), [0]

        def wrapped(self, *args, **kwargs):
            if calls[0] == call:
                raise Killed
            calls[0] += 1
            return original(self, *args, **kwargs)
        patch.setattr(cls, method, wrapped)
    return install


def langchain_project(tmp_path, redis_url: str) -> Project:
    """docs in the langchain layout on Redis, which renames by copy (its records name their index)."""
    project = Project(tmp_path / "project", {"url": redis_url, "key_prefix": f"{tmp_path.name}:"},
                      backend="redis", batch_size=BATCH)
    with project.opened() as (backend, name):
        backend.create_collection(name, 8, "cosine", layout="langchain")
        batch = records()
        for start in range(0, RECORDS, 10):
            backend.upsert(name, batch.take(list(range(start, min(start + 10, RECORDS)))))
    return project


@pytest.mark.parametrize("fault", [kill_at_call(Backend, "upsert", 1), partial_drop],
                         ids=["while-copying", "while-dropping-the-old-name"])
def test_redis_langchain_rename_by_copy_killed_part_way_is_undone_exactly(tmp_path, redis_server, fault):
    project = langchain_project(tmp_path, redis_server)
    stopped = run_step(project, OPS["rename_collection"], fault=fault)
    assert stopped is not None and stopped.how == "killed"
    now = digests(project, stopped.expected)
    assert any(not DigestPair.same(want, now[ref]) for ref, want in stopped.expected.items())
    undo(project, stopped)


# the undo itself killed, then resumed ----------------------------------------------------------

UNDO_KILLED = [("drop_collection", partial_drop), ("move_collection", partial_drop),
               ("split_collection", partial_drop), ("merge_collections", partial_drop),
               ("rename_collection", None), ("apply_schema", None), ("reembed_new_dim", None), ("rename_field", None)]


@pytest.mark.parametrize(("name", "fault"), UNDO_KILLED, ids=[name for name, _ in UNDO_KILLED])
def test_undo_killed_at_any_checkpoint_resumes_to_the_same_result(tmp_path, name, fault):
    """The step is stopped where its undo has the most to do (killed while dropping, or after
    the op returned); its undo is killed at each of its own checkpoints in turn and resumed."""
    project = new_project(tmp_path, "faiss", {"path": str(tmp_path / "faiss")})
    prepare(project, name)
    for saves in range(40):
        stopped = run_step(project, OPS[name], saves=None if fault else 1000, fault=fault)
        assert stopped is not None and stopped.how.startswith("killed")
        if not undo(project, stopped, saves):
            break
    else:
        raise AssertionError(f"the undo of {name} did not finish within 40 checkpoints")
    assert saves > 0


def test_redis_langchain_rename_by_copy_killed_while_dropping_the_old_name_resumes_to_the_end(tmp_path, redis_server):
    project = langchain_project(tmp_path, redis_server)
    before = digests(project, ["docs"])["docs"]
    stopped = run_step(project, OPS["rename_collection"], fault=partial_drop)
    assert stopped is not None and stopped.how == "killed"
    with open_runner(project.config, out=lambda line: None) as runner:
        owner = Owner.current()
        runner.ledger.acquire_lease(owner, runner.config.lock_lease_seconds)
        attempt = runner.ledger.attempts("step1")[-1]["id"]
        runner.run_step(stopped.step, 0, 1, attempt, owner, runner.scripts.revision_map.get("step1"), True)
        runner.ledger.release_lease(owner)
    after = digests(project, ["docs", "renamed"])
    # The same records; natively each names its new index.
    assert after["docs"] == "absent" and DigestPair.same(before.partition("|")[0], after["renamed"])
