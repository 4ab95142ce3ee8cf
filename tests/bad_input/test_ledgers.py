"""vecflow's own files gone wrong: the ledger, snapshots.db and state.db corrupt, foreign, from another
vecflow version, unwritable or on a full disk; a ledger locked by another runner or naming
revisions no script defines. One line each, exit 1, the files left as they were; an older
unversioned ledger is upgraded in place without a word."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bad_input.conftest import BadInputProject, record_line
from vecflow.runtime.ledger import Ledger
from vecflow.runtime.snapshots import SnapshotStore

# The ledger and snapshot tables as vecflow wrote them before the files carried a format version.
UNVERSIONED_SCHEMA = {
    "applied": 'CREATE TABLE "applied" ("revision" TEXT PRIMARY KEY, "checksum" TEXT, "path" TEXT, "applied_at" TEXT)',
    "attempts": 'CREATE TABLE "attempts" ("id" INTEGER PRIMARY KEY, "revision" TEXT, "direction" TEXT, "user" TEXT, '
                '"host" TEXT, "pid" INTEGER, "started_at" TEXT, "finished_at" TEXT, "outcome" TEXT, "error" TEXT, '
                '"checksum" TEXT, "resumes" INTEGER)',
    "steps": 'CREATE TABLE "steps" ("attempt_id" INTEGER, "step_index" INTEGER, "op" TEXT, "description" TEXT, '
             '"status" TEXT, "cursor" TEXT, "rows_done" INTEGER, "digest_before" TEXT, "digest_after" TEXT, '
             '"snapshot" TEXT, "started_at" TEXT, "finished_at" TEXT, PRIMARY KEY ("attempt_id", "step_index"))',
    "lease": 'CREATE TABLE "lease" ("name" TEXT PRIMARY KEY, "user" TEXT, "host" TEXT, "pid" INTEGER, "token" TEXT, '
             '"acquired_at" TEXT, "heartbeat_at" TEXT, "expires_at" REAL)',
    "snapshots": "CREATE TABLE snapshots (name TEXT PRIMARY KEY, kind TEXT, info TEXT)",
}


def format_version(make, tmp_path: Path) -> int:
    """The format version this vecflow writes: the user_version of a file it just created."""
    path = tmp_path / f"fresh-{make.__name__}.db"
    make(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def set_user_version(path: Path, version: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {version}")


def make_unversioned(path: Path) -> None:
    """Rewrite a vecflow database as an unversioned one: the old tables, the columns they share
    with the new ones, user_version 0. Other tables (the snapshots themselves) stay as they are."""
    old = path.with_name("old-" + path.name)
    with contextlib.closing(sqlite3.connect(old)) as conn:
        conn.execute(f"ATTACH DATABASE '{path}' AS current")
        tables = [row[0] for row in conn.execute("SELECT name FROM current.sqlite_master WHERE type = 'table'")]
        for table in tables:
            if table in UNVERSIONED_SCHEMA:
                conn.execute(UNVERSIONED_SCHEMA[table])
                new_columns = {row[1] for row in conn.execute(f'PRAGMA current.table_info("{table}")')}
                shared = [row[1] for row in conn.execute(f'PRAGMA main.table_info("{table}")') if row[1] in new_columns]
                names = ", ".join(f'"{c}"' for c in shared)
                conn.execute(f'INSERT INTO main."{table}" ({names}) SELECT {names} FROM current."{table}"')
            elif not table.startswith("sqlite_"):
                sql = conn.execute("SELECT sql FROM current.sqlite_master WHERE name = ?", [table]).fetchone()[0]
                conn.execute(sql)
                conn.execute(f'INSERT INTO main."{table}" SELECT * FROM current."{table}"')
        conn.commit()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    old.rename(path)
    assert user_version(path) == 0


def with_drop_field(project: BadInputProject) -> None:
    """a1 applied: drop_field docs.tag, whose undo needs its values snapshot."""
    project.revision("a1", 'op.drop_field("docs", "tag")')
    project.succeeds("upgrade", "head")


def test_an_unversioned_ledger_and_snapshots_are_upgraded_in_place_silently(project, tmp_path):
    with_drop_field(project)
    make_unversioned(project.ledger)
    make_unversioned(project.snapshots)
    assert project.succeeds("current").startswith("a1")
    project.succeeds("downgrade", "a0")
    assert project.applied() == {"a0"} and "tag" in project.data_records()["r3"]
    assert user_version(project.ledger) == format_version(Ledger, tmp_path) > 0
    assert user_version(project.snapshots) == format_version(SnapshotStore, tmp_path) > 0


@pytest.mark.parametrize("make, file", [(Ledger, "ledger"), (SnapshotStore, "snapshots")])
def test_a_file_from_a_newer_vecflow_is_refused_naming_both_versions(project, tmp_path, make, file):
    with_drop_field(project)
    supported = format_version(make, tmp_path)
    path = project.ledger if file == "ledger" else project.snapshots
    set_user_version(path, supported + 7)
    before = path.read_bytes()
    project.fails("downgrade", "a0", expect=(path.name, str(supported + 7), str(supported)))
    assert path.read_bytes() == before


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 50)


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1024])


def foreign(path: Path) -> None:
    path.unlink()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('ae1027a6acf')")
        conn.commit()


def other_schema(path: Path) -> None:
    path.unlink()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE applied (id INTEGER PRIMARY KEY, name TEXT, version INTEGER)")
        conn.execute("CREATE TABLE snapshots (id INTEGER PRIMARY KEY, blob BLOB)")
        conn.commit()


def directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGE = {"garbage": garbage, "truncated": truncated, "another program's database": foreign,
          "another schema": other_schema, "a directory": directory}


def _checkpointed(project: BadInputProject) -> None:
    """Fold the WAL into the database files, so damaging a file damages all of it."""
    for path in (project.ledger, project.snapshots):
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        Path(f"{path}-wal").unlink(missing_ok=True)
        Path(f"{path}-shm").unlink(missing_ok=True)


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
@pytest.mark.parametrize("file", ["ledger.db", "snapshots.db"])
def test_a_damaged_ledger_or_snapshot_file_is_refused_in_one_line(project, file, damage):
    with_drop_field(project)
    _checkpointed(project)
    path = project.root / ".vecflow" / file
    damage(path)
    before = path.read_bytes() if path.is_file() else None
    project.fails("downgrade", "a0", expect=file)
    assert (path.read_bytes() if path.is_file() else None) == before


def test_a_missing_snapshot_table_is_refused_before_anything_is_restored(project):
    with_drop_field(project)
    with contextlib.closing(sqlite3.connect(project.snapshots)) as conn:
        (table,) = conn.execute("SELECT name FROM snapshots").fetchone()
        conn.execute(f'DROP TABLE "{table}"')
        conn.commit()
    project.fails("downgrade", "a0", expect=(table, "snapshots.db"))
    assert project.applied() == {"a0", "a1"}


def test_a_dropped_collection_whose_snapshot_table_is_gone_is_not_recreated_empty(project):
    project.revision("a1", 'op.drop_collection("docs")')
    project.succeeds("upgrade", "head")
    with contextlib.closing(sqlite3.connect(project.snapshots)) as conn:
        (table,) = conn.execute("SELECT name FROM snapshots").fetchone()
        conn.execute(f'DROP TABLE "{table}"')
        conn.commit()
    project.fails("downgrade", "a0", expect=table)
    assert not (project.store / "docs").exists()


def test_a_damaged_state_file_is_refused_in_one_line(project):
    project.revision("a1", 'op.add_field("docs", "x", default=1)')
    garbage(project.root / ".vecflow" / "state.db")
    project.fails("upgrade", "head", expect="state")


def test_an_emptied_ledger_is_another_ledger_which_the_store_marker_refuses_before_any_write(project):
    project.ledger.write_bytes(b"")
    project.fails("upgrade", "head", expect=("store 'main' is migrated by another ledger", "vecflow stamp"),
                  unchanged=False)
    assert project.applied() == set() and project.attempts("a0") == []
    assert project.data_records()["r3"] == {"n": 3, "tag": "x"}


def test_a_ledger_in_a_folder_that_is_a_file_is_refused_in_one_line(project):
    with project.ini.open("a", encoding="utf-8") as ini:
        ini.write("")
    project.set_ini(project.ini.read_text().replace("%(here)s/.vecflow/ledger.db", "%(here)s/vecflow.ini/ledger.db"))
    project.fails("upgrade", "head", expect="vecflow.ini")


def test_applied_revisions_that_no_script_defines_are_refused(project):
    (project.versions / "a0_base.py").rename(project.versions / "a0_base.py.bak")
    project.revision("a1", 'op.add_field("docs", "x", default=1)', down=None)
    project.fails("upgrade", "head", expect="revision a0 is applied but no script")


def test_a_ledger_held_by_another_runner_is_refused_in_one_line(project):
    release = project.root / "release"
    project.revision("a1", 'op.add_field("docs", "x", function=wait)', extra=(
        "import pathlib, time\n\n"
        "def wait(meta):\n"
        f"    while not pathlib.Path({str(release)!r}).exists():\n"
        "        time.sleep(0.01)\n"
        "    return 1\n"))
    runner = subprocess.Popen([sys.executable, "-m", "vecflow", "-c", str(project.ini), "upgrade", "head"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "running" not in project.attempts("a1"):
            assert runner.poll() is None and time.monotonic() < deadline, runner.stderr.read()
            time.sleep(0.02)
        project.fails("upgrade", "head", expect="another vecflow runner holds the lock")
        project.fails("downgrade", "base", expect="another vecflow runner holds the lock")
    finally:
        release.touch()
        assert runner.wait(60) == 0, runner.stderr.read()
    assert project.applied() == {"a0", "a1"}


def _without_root_powers() -> None:
    """preexec_fn: as root, drop the capabilities that ignore file permissions (CI runs as root)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed: the test needs CAP_SETPCAP")


def test_a_read_only_vecflow_folder_is_refused_in_one_line(project):
    project.revision("a1", 'op.add_field("docs", "x", default=1)')
    folder = project.root / ".vecflow"
    modes = {path: path.stat().st_mode for path in [folder, *folder.iterdir()]}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        project.fails("upgrade", "head", preexec_fn=_without_root_powers)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert project.applied() == {"a0"}


@pytest.mark.parametrize("limit_kib", [0, 48])
def test_a_full_disk_stops_in_one_line_and_the_rerun_finishes(project, limit_kib):
    """RLIMIT_FSIZE makes every write past `limit_kib` fail with EFBIG, as a full disk fails them
    (a tmpfs of that size would need privileges CI need not have): at 0 nothing can be written,
    at 48 KiB the ledger opens and the collection's files outgrow the limit while loading."""
    project.data("more.jsonl", [record_line(i, dim=128) for i in range(120)])
    project.revision("a1", 'op.create_collection("more", data="data/more.jsonl")')

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib * 1024, limit_kib * 1024))

    project.fails("-x", "batch_size=40", "upgrade", "head", preexec_fn=full_disk, unchanged=False)
    assert project.applied() == {"a0"} and project.attempts("a1") == ([] if limit_kib == 0 else ["failed"])
    project.succeeds("-x", "batch_size=40", "upgrade", "head")
    assert project.applied() == {"a0", "a1"} and len(project.data_records("more")) == 120
