"""`vecflow ledger copy`: an existing project moves its history from SQLite to PostgreSQL.

The copy is interrupted part-way, resumed by the same command, verified; the project then
points `ledger =` at PostgreSQL and carries on without re-running anything: it is at its head,
its store's marker still matches (the identity moved with the history), and it can downgrade
to base exactly from the snapshots and state that moved along.
"""

from __future__ import annotations

import pytest

from tests.project import Project
from vecflow import command
from vecflow.errors import LedgerError
from vecflow.runtime import ledger_copy
from vecflow.runtime.ledger import Ledger


@pytest.fixture
def project(tmp_path):
    project = Project(tmp_path, {"path": "%(here)s/chroma"}, batch_size=50)
    project.write_records("docs.jsonl", 200, dim=8)
    project.write_records("old.jsonl", 60, dim=8, seed=3)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")\n'
                                     'op.create_collection("old", data="data/old.jsonl")')
    project.write_python("r2", "r1", 'op.drop_field("docs", "author")\nop.set_field("docs", "rank", "rank * 3")')
    project.write_python("r3", "r2", 'op.drop_collection("old")')
    return project


def test_a_copy_killed_part_way_resumes_verifies_and_the_project_carries_on_from_postgresql(
        project, postgres_url, monkeypatch):
    before = {name: project.digest(name) for name in ("docs", "old")}
    project.run("upgrade", "head")
    source = project.root / ".vecflow" / "ledger.db"
    identity = Ledger(source).identity

    monkeypatch.setattr(ledger_copy, "PAGE_ROWS", 7)
    copied = 0
    plain = ledger_copy._plain

    def killed_after_some_pages(value):
        nonlocal copied
        copied += 1
        if copied == 900:
            raise KeyboardInterrupt  # the copy is stopped between two pages
        return plain(value)

    monkeypatch.setattr(ledger_copy, "_plain", killed_after_some_pages)
    with pytest.raises(KeyboardInterrupt):
        command.ledger("copy", str(source), postgres_url, out=lambda line: None)
    monkeypatch.setattr(ledger_copy, "_plain", plain)
    lines = []
    counts = command.ledger("copy", str(source), postgres_url, out=lines.append)
    assert lines[0].startswith(f"Resuming the copy of ledger {identity} from {source}")
    assert lines[1].startswith("Copied and verified: 3 applied, 3 attempts, 5 steps, 3 snapshots (")
    assert counts["snapshots"] == 3 and counts["record_state"] > 0
    assert Ledger(postgres_url).identity == identity

    # The old ledger refuses; the project points at the shared one and goes on.
    with pytest.raises(LedgerError, match=f"was copied to {postgres_url.split('?')[0]}.*point `ledger =`"):
        project.run("current")
    ini = project.root / "vecflow.ini"
    ini.write_text(ini.read_text().replace("ledger = %(here)s/.vecflow/ledger.db", f"ledger = {postgres_url}"))
    assert project.run("current") == ["r3 (head)"]
    assert project.run("upgrade", "head") == ["Nothing to do: already at the target."]
    project.run("downgrade", "base")
    assert {name: project.digest(name) for name in ("docs", "old")} == before

    # The same command again says so and changes nothing.
    attempts = Ledger(postgres_url).attempts()
    assert command.ledger("copy", str(source), postgres_url, out=lines.append) == {}
    assert lines[-1] == f"Ledger {source} was already copied to {postgres_url}: nothing to do"
    assert Ledger(postgres_url).attempts() == attempts


def test_a_target_holding_another_history_and_a_missing_source_are_refused(project, postgres_url, tmp_path):
    other = Ledger(postgres_url)
    other.mark_applied("x1", "sum", "x1.py")
    project.run("upgrade", "r1")
    with pytest.raises(LedgerError, match="already holds another project's history"):
        command.ledger("copy", str(project.root / ".vecflow" / "ledger.db"), postgres_url)
    with pytest.raises(LedgerError, match="there is no ledger at"):
        command.ledger("copy", str(tmp_path / "nope.db"), postgres_url)
