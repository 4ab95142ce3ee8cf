"""One contract for every ledger database: a SQLite file and a real PostgreSQL server behave alike.

Each test gets a fresh ledger location (`location`): a new SQLite path, or a new schema on the
session's PostgreSQL server. The ledger, the snapshots and vecflow's state are opened there the
way a project opens them (Config.beside_ledger), and every rule the ledger keeps (the applied
set, attempts, steps, checkpoints, the lease and its fence) must hold on both.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import unavailable
from vecflow.backends.base import CollectionInfo
from vecflow.batch import Batch
from vecflow.errors import LedgerError, LockError
from vecflow.runtime.ledger import LEDGER_FORMAT, Ledger, Owner
from vecflow.runtime.snapshots import ABSENT, SnapshotStore
from vecflow.state import VecflowState

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(params=DATABASES)
def kind(request) -> str:
    return request.param


@pytest.fixture
def location(kind, request, tmp_path) -> str:
    """Where a new, empty ledger goes: a file path, or a PostgreSQL URL with a schema of its own."""
    if kind == "sqlite":
        return str(tmp_path / ".vecflow" / "ledger.db")
    return request.getfixturevalue("postgres_url")


def beside(location: str, name: str) -> str:
    """Where the snapshots and the state go for this ledger (what Config.beside_ledger gives)."""
    return location if location.startswith("postgresql://") else location.replace("ledger.db", name)


def test_a_new_ledger_has_the_format_an_identity_and_nothing_applied(location):
    ledger = Ledger(location)
    identity = ledger.identity
    assert ledger.format_version == LEDGER_FORMAT and ledger.applied() == {} and ledger.attempts() == []
    assert len(identity) == 36 and ledger.lease_holder() is None
    ledger.close()
    again = Ledger(location)
    assert again.identity == identity, "the identity is created once and kept"
    assert again.shared == location.startswith("postgresql://")


def test_the_applied_set_records_checksums_and_forgets_revisions(location):
    ledger = Ledger(location)
    ledger.mark_applied("r1", "sum1", "versions/r1.py")
    ledger.mark_applied("r2", "sum2", "versions/r2.py")
    ledger.mark_applied("r1", "sum1", "versions/r1.py")  # again: still one row
    assert sorted(ledger.applied()) == ["r1", "r2"]
    ledger.accept_checksum("r2", "edited")
    assert ledger.applied()["r2"]["checksum"] == "edited" and ledger.applied()["r2"]["path"] == "versions/r2.py"
    ledger.mark_unapplied("r1")
    assert list(ledger.applied()) == ["r2"]
    ledger.clear_applied()
    assert Ledger(location).applied() == {}


def test_attempts_steps_and_checkpoints_round_trip(location):
    ledger = Ledger(location)
    owner = Owner.current()
    first = ledger.begin_attempt("r1", "upgrade", owner, "sum")
    second = ledger.begin_attempt("r2", "upgrade", owner, "sum2")
    assert second == first + 1
    ledger.start_step(first, 0, "drop_field", "drop_field docs: rank", {"main:docs": "3:ab:v2"}, "snap_1_0")
    ledger.checkpoint(first, 0, '{"scan": "c1"}', 500)
    ledger.checkpoint(first, 0, '{"scan": "c2"}', 1000)
    step = ledger.step(first, 0)
    assert (step["status"], step["cursor"], step["rows_done"], step["snapshot"]) == ("running", '{"scan": "c2"}',
                                                                                      1000, "snap_1_0")
    ledger.finish_step(first, 0, {"main:docs": "3:cd:v2"})
    ledger.start_step(first, 1, "add_field", "add_field docs: x", {}, None)
    assert [s["step_index"] for s in ledger.steps(first)] == [0, 1] and ledger.step(first, 2) is None
    assert [a["id"] for a in ledger.unfinished_attempts()] == [first, second]
    ledger.finish_attempt(second, "failed", "boom")
    ledger.resume_attempt(second, replace(owner, user="bob"))
    row = ledger.attempt(second)
    assert (row["outcome"], row["resumes"], row["user"], row["error"]) == ("running", 1, "bob", "boom")
    ledger.close_revision(first, "upgrade", "r1", "sum", "r1.py")
    assert ledger.attempt(first)["outcome"] == "done" and "r1" in ledger.applied()
    assert ledger.upgrade_to_undo("r1")["id"] == first and ledger.needed_snapshots() == {"snap_1_0"}
    assert [s["op"] for s in ledger.finished_steps("drop_field")] == ["drop_field"]
    with pytest.raises(LedgerError, match="has no attempt 99"):
        ledger.attempt(99)


def test_a_rollback_closes_with_the_upgrade_it_undid_and_stamps_adopt_abandoned_upgrades(location):
    ledger = Ledger(location)
    owner = Owner.current()
    upgrade = ledger.begin_attempt("r1", "upgrade", owner, "sum")
    ledger.start_step(upgrade, 0, "drop_field", "d", {}, "snap_1_0")
    ledger.finish_attempt(upgrade, "failed", "boom")
    rollback = ledger.begin_attempt("r1", "rollback", owner, "sum", undoes=upgrade)
    assert ledger.needed_snapshots() == {"snap_1_0"}
    ledger.close_revision(rollback, "rollback", "r1", "sum", "r1.py")
    assert [(a["direction"], a["outcome"]) for a in ledger.attempts("r1")] == [("upgrade", "rolled-back"),
                                                                                ("rollback", "done")]
    assert ledger.applied() == {} and ledger.upgrade_to_undo("r1") is None
    again = ledger.begin_attempt("r1", "upgrade", owner, "sum")
    ledger.start_step(again, 0, "drop_field", "d", {}, "snap_3_0")
    assert [a["id"] for a in ledger.abandon_unfinished()] == [again]
    ledger.mark_applied("r1", "sum", "r1.py")
    ledger.record_stamp("r1", "upgrade", owner, "sum")
    assert ledger.attempt(again)["outcome"] == "stamped" and ledger.upgrade_to_undo("r1")["id"] == again
    ledger.record_stamp("r2", "upgrade", owner, "sum2")
    assert [a["outcome"] for a in ledger.attempts("r2")] == ["stamped"]


def test_a_live_lease_refuses_an_expired_one_is_taken_over_and_released(location):
    ledger = Ledger(location)
    alice, bob = replace(Owner.current(), user="alice"), replace(Owner.current(), user="bob")
    ledger.acquire_lease(alice, lease_seconds=60)
    with pytest.raises(LockError, match=r"another vecflow runner holds the lock: alice@.* \(pid \d+\)"):
        Ledger(location).acquire_lease(bob, lease_seconds=60)
    ledger.db.execute("UPDATE lease SET expires_at = ?", [time.time() - 1])
    other = Ledger(location)
    other.acquire_lease(bob, lease_seconds=60)
    assert other.lease_holder()["user"] == "bob" and other.lease_holder()["fence"] == 2
    with pytest.raises(LockError, match="lost the migration lease"):
        ledger.heartbeat(alice, 60)
    other.release_lease(bob)
    assert ledger.lease_holder() is None


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(location):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ledger = Ledger(location)
    ledger.acquire_lease(replace(Owner.current(), pid=dead.pid, user="ghost"), lease_seconds=3600)
    Ledger(location).acquire_lease(Owner.current(), lease_seconds=60)
    assert ledger.lease_holder()["user"] != "ghost"


def test_every_takeover_grows_the_fence_and_the_old_holder_writes_nothing(location):
    first, second = Ledger(location), Ledger(location)
    alice, bob = Owner.current(), Owner("bob", "elsewhere", 1, "bob-token")
    first.acquire_lease(alice, lease_seconds=0.2)
    attempt = first.begin_attempt("r1", "upgrade", alice, "sum")
    first.start_step(attempt, 0, "set_field", "set_field docs", {}, None)
    assert first.lease_holder()["fence"] == 1
    time.sleep(0.3)  # alice is paused past her lease...
    second.acquire_lease(bob, lease_seconds=60)  # ...and bob takes it over
    assert second.lease_holder()["fence"] == 2
    second.checkpoint(attempt, 0, '{"scan": "bob"}', 40)
    for write in (lambda: first.checkpoint(attempt, 0, '{"scan": "alice"}', 20),
                  lambda: first.finish_attempt(attempt, "failed", "alice gave up"),
                  lambda: first.mark_applied("r1", "sum", "r1.py"),
                  first.check_lease):
        with pytest.raises(LockError, match="lost the migration lease .*bob@elsewhere"):
            write()
    row = second.step(attempt, 0)
    assert (row["cursor"], row["rows_done"]) == ('{"scan": "bob"}', 40)
    assert second.attempt(attempt)["outcome"] == "running" and second.applied() == {}


def test_a_paused_holder_nobody_replaced_renews_and_goes_on(location):
    ledger = Ledger(location)
    ledger.acquire_lease(Owner.current(), lease_seconds=0.2)
    time.sleep(0.3)
    renewed_at = time.time()
    ledger.check_lease()  # still ours: renewed, not lost
    assert ledger.lease_holder()["expires_at"] >= renewed_at + 0.2 and ledger.lease_holder()["fence"] == 1


def _open_and_take_lease(location: str, start: float, hold: float, results) -> None:
    while time.time() < start:
        time.sleep(0.001)
    try:
        ledger = Ledger(location)  # each also creates the snapshot and state tables, as a runner does
        SnapshotStore(beside(location, "snapshots.db")).close()
        VecflowState(beside(location, "state.db")).close()
        try:
            ledger.acquire_lease(Owner.current(), 60)
            results.put("lease")
            while time.time() < start + hold:  # hold it while the others try (a dead holder is taken over)
                time.sleep(0.05)
        except LockError:
            results.put("refused")
    except Exception as exc:  # noqa: BLE001 (the test reports what escaped)
        results.put(f"{type(exc).__name__}: {exc}")


def test_runners_creating_the_ledger_together_do_not_crash(location):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start = time.time() + 2.0
    workers = [context.Process(target=_open_and_take_lease, args=(location, start, 4.0, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    # Exactly one runner holds the lease; the others are refused by the lock, not by the database.
    assert outcomes == ["lease", "refused", "refused", "refused"], outcomes
    assert len({Ledger(location).identity for _ in range(2)}) == 1


def test_snapshots_keep_the_first_value_page_in_insertion_order_and_are_removed(location):
    snapshots = SnapshotStore(beside(location, "snapshots.db"))
    snapshots.begin_values("snap_1_0", "rank")
    snapshots.add_values("snap_1_0", [(f"id{i:02d}", i, i % 3) for i in range(30, 0, -1)])
    snapshots.add_values("snap_1_0", [("id05", "replayed", None), ("id00", ABSENT)])  # a replayed page
    values, after, seen = [], 0, []
    while after is not None:
        page, after = snapshots.read_values("snap_1_0", after, 7)
        values += page
        seen.append(len(page))
    assert [v[0] for v in values] == [f"id{i:02d}" for i in range(30, 0, -1)] + ["id00"]
    assert dict((v[0], v[1]) for v in values)["id05"] == 5 and values[-1][1] is ABSENT
    assert snapshots.lookup_values("snap_1_0", ["id05", "id00", "nope"]) == {"id05": 5, "id00": ABSENT}
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    batch = Batch(["a", "b\x00c", "d"], vectors, ["text", None, ""], [{"k": 1}, {}, {"f": 0.1}])
    snapshots.begin_records("snap_1_1", CollectionInfo("docs", 4, "cosine", {"m": 8}), layout="langchain")
    snapshots.add_records("snap_1_1", batch)
    got, following = snapshots.read_records("snap_1_1", 0, 10)
    assert following is None and got.ids == batch.ids and got.documents == ["text", None, ""]
    assert got.vectors.tobytes() == vectors.tobytes() and got.metadatas == batch.metadatas
    assert snapshots.records_info("snap_1_1") == CollectionInfo("docs", 4, "cosine", {"m": 8})
    assert snapshots.records_layout("snap_1_1") == "langchain"
    assert snapshots.lookup_records("snap_1_1", ["b\x00c"]) == {"b\x00c": (None, {})}
    assert [(row["name"], row["rows"]) for row in snapshots.listing()] == [("snap_1_0", 31), ("snap_1_1", 3)]
    assert snapshots.file_bytes() > 0
    snapshots.remove(["snap_1_0"])
    assert not snapshots.exists("snap_1_0") and snapshots.exists("snap_1_1")
    with pytest.raises(LedgerError, match="snapshot snap_1_0 is missing"):
        snapshots.read_values("snap_1_0", 0, 10)
    snapshots.close()
    assert SnapshotStore(beside(location, "snapshots.db")).exists("snap_1_1")


def test_vecflow_state_entries_survive_reopening_and_move_with_their_scope(location):
    state = VecflowState(beside(location, "state.db"))
    state.put_records("s|a", "bits", {"r1": b"\x01\x00\xff", "r2": b"\x02", "n\x00ul": b"x"})
    state.put_records("s|a", "bits", {"r2": None})
    state.put_records("s|a", "ids", {str(i): str(i).encode() for i in range(1200)})
    state.put_collection("s|a", "layout", {"name": "llamaindex", "keys": [1, 2]})
    state.close()
    state = VecflowState(beside(location, "state.db"))
    assert state.get_records("s|a", "bits", ["r1", "r2", "n\x00ul", "n"]) == {"r1": b"\x01\x00\xff", "n\x00ul": b"x"}
    assert len(state.get_records("s|a", "ids", [str(i) for i in range(1200)])) == 1200
    assert state.all_records("s|a", "bits") == {"r1": b"\x01\x00\xff", "n\x00ul": b"x"}
    state.copy_scope("s|a", "s|b")
    state.rename_scope("s|a", "s|c")
    assert state.get_collection("s|c", "layout") == {"name": "llamaindex", "keys": [1, 2]}
    assert state.has_records("s|b", "bits") and state.get_collection("s|a", "layout") is None
    state.forget_records("s|c", ["r1", "n\x00ul"])
    assert not state.has_records("s|c", "bits") and state.has_records("s|c", "ids")
    state.drop_scope("s|c")
    state.put_collection("s|b", "layout", None)
    assert not state.has_records("s|c", "ids") and state.get_collection("s|b", "layout") is None


def test_an_unreachable_or_malformed_postgresql_ledger_is_one_line_without_the_password():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install 'vecflow[postgres]')")
    unreachable = r"^cannot reach the ledger database postgresql://bob:\*\*\*@127.0.0.1:1/db: "
    with pytest.raises(LedgerError, match=unreachable):
        Ledger("postgresql://bob:secret@127.0.0.1:1/db")
    with pytest.raises(LedgerError, match=r"^cannot use the ledger database URL .*invalid URI query parameter"):
        Ledger("postgresql://bob@127.0.0.1:1/db?nonsense=1")
