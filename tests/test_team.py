"""A team on one store: two checkouts (a laptop and CI) against one `chroma run` server.

With a ledger each, the store's marker makes the second checkout refuse, naming the first one's
ledger; with one shared PostgreSQL ledger, the second sees the migration applied. Two runners
sharing that ledger never migrate at once, and one paused past its lease writes nothing after it
continues (fencing through the database). Each test gets a Chroma database of its own on the
session's server (the marker is per database) and a PostgreSQL schema of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.project import Project
from vecflow.errors import LedgerError
from vecflow.runtime.ledger import Ledger

RECORDS = 120


def chroma_database(url: str) -> str:
    """A new, empty database on the Chroma server (each test's own, so markers never meet)."""
    import chromadb

    client = chromadb.HttpClient(host=url)
    name = f"t{uuid.uuid4().hex[:12]}"
    chromadb.AdminClient(client.get_settings()).create_database(name)
    return name


def checkout(root: Path, chroma_url: str, database: str, ledger: str | None = None, batch_size: int = 100) -> Project:
    """One checkout of the team's repository: the same revisions, its own folder and ledger."""
    project = Project(root, {"url": chroma_url, "database": database}, batch_size=batch_size)
    if ledger is not None:
        ini = root / "vecflow.ini"
        ini.write_text(ini.read_text().replace("ledger = %(here)s/.vecflow/ledger.db", f"ledger = {ledger}"))
    project.write_records("docs.jsonl", RECORDS, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.add_field("docs", "team", default="search")')
    return project


@pytest.fixture
def database(chroma_url) -> str:
    return chroma_database(chroma_url)


def test_two_ledgers_on_one_store_the_second_refuses_naming_the_first(tmp_path, chroma_url, database):
    ci = checkout(tmp_path / "ci", chroma_url, database)
    laptop = checkout(tmp_path / "laptop", chroma_url, database)
    ci.run("upgrade", "head")
    before = ci.digest("docs")
    refused = laptop.cli("upgrade", "head", check=False)
    lines = refused.stderr.strip().splitlines()
    ci_ledger = Ledger(tmp_path / "ci" / ".vecflow" / "ledger.db")
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr
    assert lines[0].startswith("vecflow: error: store 'main' is migrated by another ledger: ")
    assert f"{tmp_path / 'ci' / '.vecflow' / 'ledger.db'}" in lines[0] and ci_ledger.identity in lines[0]
    assert "at r2" in lines[0] and "vecflow stamp" in lines[0] and "ledger =" in lines[0]
    assert ci.digest("docs") == before and Ledger(laptop.config.ledger).attempts() == []
    shown = laptop.run("inspect")
    assert f"marker: ledger {ci_ledger.identity} ({ci_ledger.describe()}), at r2" in shown
    report = json.loads(laptop.run("inspect", as_json=True)[0])
    assert report["marker"]["ledger"] == ci_ledger.identity and report["marker"]["heads"] == ["r2"]

    # The laptop adopts the store: its stamp rewrites the marker, and now CI is the one refused
    # before its next write.
    stamped = laptop.run("stamp", "head")
    assert any(line.startswith("Adopted store 'main' into this ledger") for line in stamped), stamped
    assert laptop.run("upgrade", "head") == ["Nothing to do: already at the target."]
    ci.write_python("r3", "r2", 'op.add_field("docs", "more", default=1)')
    with pytest.raises(LedgerError, match=f"is migrated by another ledger: {tmp_path / 'laptop'}"):
        ci.run("upgrade", "head")
    assert ci.digest("docs") == before


def test_with_one_shared_postgresql_ledger_the_second_checkout_sees_the_migration_applied(
        tmp_path, chroma_url, database, postgres_url):
    ci = checkout(tmp_path / "ci", chroma_url, database, ledger=postgres_url)
    laptop = checkout(tmp_path / "laptop", chroma_url, database, ledger=postgres_url)
    assert sum(line.startswith("Upgrade ") for line in ci.run("upgrade", "head")) == 2
    before = ci.digest("docs")
    assert laptop.run("upgrade", "head") == ["Nothing to do: already at the target."]
    assert laptop.run("current") == ["r2 (head)"] and laptop.digest("docs") == before
    ledger = Ledger(postgres_url)
    assert [(a["revision"], a["outcome"]) for a in ledger.attempts()] == [("r1", "done"), ("r2", "done")]
    # The laptop can undo what CI did: the snapshots and state are in the shared database.
    laptop.run("downgrade", "base")
    assert ci.digest("docs") == "absent" and ci.run("current") == ["<base> (nothing applied)"]


SLOW = '''
import time


def slow(meta):
    time.sleep(0.02)
    return meta["rank"] * 10
'''


def slow_checkout(root: Path, chroma_url: str, database: str, ledger: str) -> Project:
    project = checkout(root, chroma_url, database, ledger=ledger, batch_size=20)
    project.write_python("r2", "r1", 'op.add_field("docs", "rank10", function=slow)', extra=SLOW)
    return project


def start(project: Project, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vecflow", *args], cwd=project.root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_two_runners_sharing_the_ledger_start_together_and_exactly_one_migrates(
        tmp_path, chroma_url, database, postgres_url):
    first = slow_checkout(tmp_path / "ci", chroma_url, database, postgres_url)
    second = slow_checkout(tmp_path / "laptop", chroma_url, database, postgres_url)
    runners = [start(first, "upgrade", "head"), start(second, "upgrade", "head")]
    results = [(runner.wait(300), *runner.communicate()) for runner in runners]
    migrated = [out for code, out, _ in results if code == 0 and "Upgrade r1" in out]
    assert len(migrated) == 1, results
    # The other was refused by the lease (or, started late on a busy machine, found nothing to do).
    [(code, out, err)] = [result for result in results if result[1] not in migrated]
    assert (code == 1 and "another vecflow runner holds the lock" in err and len(err.strip().splitlines()) == 1
            or code == 0 and out.strip() == "Nothing to do: already at the target."), (code, out, err)
    ledger = Ledger(postgres_url)
    assert [(a["revision"], a["outcome"]) for a in ledger.attempts()] == [("r1", "done"), ("r2", "done")]
    assert first.records("docs")["id-000004"].metadata["rank10"] == 40


def schema_rows(url: str) -> dict[str, list]:
    """Every row of every table in the ledger's schema: the ledger, snapshots and state."""
    ledger = Ledger(url)
    try:
        return {table: sorted(map(repr, ledger.db.execute(f'SELECT * FROM "{table}"').fetchall()))
                for table in sorted(ledger.db.tables())}
    finally:
        ledger.close()


def store_contents(url: str, database: str) -> dict:
    """The Chroma database as the application reads it, and vecflow's marker database."""
    import chromadb

    out = {}
    for name in (database, "vecflow"):
        client = chromadb.HttpClient(host=url, database=name)
        for collection in client.list_collections():
            got = collection.get(include=["embeddings", "documents", "metadatas"])
            out[f"{name}/{collection.name}"] = (collection.metadata, got["ids"], got["documents"], got["metadatas"],
                                                [list(map(float, e)) for e in got["embeddings"]])
    return out


def test_a_runner_paused_past_its_lease_writes_nothing_after_another_machine_took_over(
        tmp_path, chroma_url, database, postgres_url):
    first = slow_checkout(tmp_path / "ci", chroma_url, database, postgres_url)
    second = slow_checkout(tmp_path / "laptop", chroma_url, database, postgres_url)
    lease = ["-x", "lock_lease_seconds=2"]
    first.run("upgrade", "r1")
    stale = start(first, *lease, "upgrade", "head")
    ledger = Ledger(postgres_url)
    deadline = time.monotonic() + 120
    try:
        while True:
            steps = [step for attempt in ledger.attempts("r2") for step in ledger.steps(attempt["id"])]
            if steps and steps[0]["rows_done"] >= 40:
                break
            assert stale.poll() is None and time.monotonic() < deadline, stale.communicate()
            time.sleep(0.01)
        time.sleep(0.15)  # inside the user function of the next page
        stale.send_signal(signal.SIGSTOP)
        time.sleep(2.5)  # past its lease
        took_over = second.cli(*lease, "upgrade", "head")
        assert "Resuming upgrade r2" in took_over.stdout, took_over.stdout
        rows, contents = schema_rows(postgres_url), store_contents(chroma_url, database)
        stale.send_signal(signal.SIGCONT)
        code = stale.wait(120)
        _, err = stale.communicate()
    finally:
        if stale.poll() is None:
            stale.kill()
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("vecflow: error: lost the migration lease"), err
    assert schema_rows(postgres_url) == rows, "the paused runner wrote to the shared ledger"
    assert store_contents(chroma_url, database) == contents, "the paused runner wrote to the store"
    assert first.records("docs")["id-000119"].metadata["rank10"] == 40
    assert [(a["revision"], a["outcome"]) for a in ledger.attempts()] == [("r1", "done"), ("r2", "done")]
