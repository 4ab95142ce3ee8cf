"""Kills in the bookkeeping windows, rollbacks of failed upgrades, and every piece of advice vecflow
prints being followed literally (the command it names is run, and it works)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.damaged_chroma import damaged_chroma_folder
from tests.project import Project
from vecflow.runtime.ledger import Ledger

# Runs the CLI with one function replaced by a SIGKILL of the process on its Nth call: a
# deterministic crash in exactly that window.
KILLER = """
import os, signal, sys
from importlib import import_module
module, _, attr = sys.argv[1].partition(":")
owner_name, _, method = attr.rpartition(".")
owner = getattr(import_module(module), owner_name)
original, calls = getattr(owner, method), [int(sys.argv[2])]
def die(*args, **kwargs):
    calls[0] -= 1
    if calls[0] == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(owner, method, die)
from vecflow.cli import main
sys.exit(main(sys.argv[3:]))
"""


# Runs the CLI with Backend.drop_collection deleting half the collection's records, then a SIGKILL:
# a drop killed part-way, as Chroma and Redis drop (records first, then the collection).
HALF_DROP_KILLER = """
import os, signal, sys
from vecflow.backends.base import Backend
def drop(backend, name):
    page, _ = backend.scan(name, max(1, backend.count(name) // 2))
    backend.delete(name, page.ids)
    os.kill(os.getpid(), signal.SIGKILL)
Backend.drop_collection = drop
from vecflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


def killed_in(project: Project, function: str, *args: str, call: int = 1) -> subprocess.CompletedProcess:
    return _killed(project, KILLER, function, str(call), *args)


def _killed(project: Project, killer: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", killer, *args], cwd=project.root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, (result.returncode, result.stdout, result.stderr)
    return result


def advice(stderr: str) -> list[list[str]]:
    """The vecflow commands a one-line error tells the user to run, in order."""
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    return [shlex.split(command)[1:] for command in re.findall(r"'(vecflow [^']+)'", stderr)]


@pytest.fixture
def project(tmp_path):
    project = Project(tmp_path, {"path": "%(here)s/chroma"}, batch_size=40)
    project.write_records("docs.jsonl", 200, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.set_field("docs", "rank", "rank + 1")\n'
                                     'op.rename_field("docs", "author", "writer")')
    project.write_python("r3", "r2", 'op.drop_field("docs", "writer")')
    return project


def test_a_kill_before_an_upgrade_is_closed_is_finished_by_the_rerun(project):
    project.cli("upgrade", "r1")
    killed_in(project, "vecflow.runtime.ledger:Ledger.close_revision", "upgrade", "head")
    lines = project.run("current")  # the steps ran, the revision is not recorded yet
    assert lines[0] == "r1" and lines[1].startswith("unfinished: upgrade of r2 (running)")
    out = project.cli("upgrade", "head").stdout
    assert "Resuming upgrade r2" in out and "already done" in out
    assert project.run("current") == ["r3 (head)"]


def test_a_kill_while_a_downgrade_verifies_is_finished_by_the_rerun(project):
    project.cli("upgrade", "r1")
    initial = project.digest("docs")
    project.cli("upgrade", "head")
    killed_in(project, "vecflow.runtime.runner:Runner._verify_restored", "downgrade", "r1")
    lines = project.run("current")
    assert lines[0] == "r3 (head)" and lines[1].startswith("unfinished: downgrade of r3 (running)")
    out = project.cli("downgrade", "r1").stdout  # the same command again: no stamp, no advice needed
    assert "Resuming downgrade r3" in out and out.count("restored exactly") == 2
    assert project.run("current") == ["r1"] and project.digest("docs") == initial


def test_an_upgrade_after_an_interrupted_downgrade_finishes_the_downgrade_first(project):
    project.cli("upgrade", "head")
    at_head = project.digest("docs")
    killed_in(project, "vecflow.runtime.runner:Runner._verify_restored", "downgrade", "base")
    out = project.cli("upgrade", "head").stdout
    assert out.startswith("Finishing the interrupted downgrade of r3 first") and "Upgrade r3" in out
    assert project.run("current") == ["r3 (head)"] and project.digest("docs") == at_head


def test_going_to_a_target_that_keeps_a_half_downgraded_revision_says_what_to_run(project):
    project.cli("upgrade", "head")
    at_head = project.digest("docs")
    killed_in(project, "vecflow.runtime.runner:Runner._verify_restored", "downgrade", "base")
    refused = project.cli("downgrade", "r3", check=False)
    assert refused.returncode == 1
    commands = advice(refused.stderr)
    assert commands == [["downgrade", "r2"], ["upgrade", "r3"]]
    for command in commands:
        project.cli(*command)
    assert project.run("current") == ["r3 (head)"] and project.digest("docs") == at_head


def test_a_killed_upgrade_is_rolled_back_by_a_downgrade(project, monkeypatch):
    project.cli("upgrade", "r1")
    initial = project.digest("docs")
    killed_in(project, "vecflow.runtime.context:StepContext.save", "upgrade", "head", call=3)
    assert project.digest("docs") != initial  # r2's first step wrote a page (save 3: page 2's pending digest)
    out = project.cli("downgrade", "current").stdout  # back to where it was: r1
    assert out.startswith("Rolling back the unfinished upgrade of r2") and "restored exactly" in out
    assert project.digest("docs") == initial and project.run("current") == ["r1"]
    assert "Upgrade r2" in project.cli("upgrade", "head").stdout
    assert project.run("current") == ["r3 (head)"]


@pytest.mark.parametrize("backend", ["chroma", "faiss"])
def test_a_reembed_killed_half_way_through_dropping_the_old_collection_finishes_on_a_rerun(tmp_path, backend):
    project = Project(tmp_path, {"path": f"%(here)s/{backend}"}, backend=backend, batch_size=40)
    project.write_records("docs.jsonl", 100, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.reembed("docs", "tests.ops.sample_embedders:hash12()")')
    project.cli("upgrade", "r1")
    initial = project.digest("docs")
    _killed(project, HALF_DROP_KILLER, "upgrade", "head")
    with project.opened("docs") as (store, name):
        assert store.describe(name).dim == 8 and store.count(name) == 50  # the old collection, half gone
    project.cli("upgrade", "head")  # the same command again
    with project.opened("docs") as (store, name):
        assert store.describe(name).dim == 12 and store.count(name) == 100
    assert project.run("current") == ["r2 (head)"]
    assert "restored exactly" in project.cli("downgrade", "r1").stdout and project.digest("docs") == initial


# A step that fills a Chroma collection from what it still holds, killed part-way, then that
# collection damaged as a kill inside chromadb's own index save leaves it (chroma-core/chroma#7678):
# (the step, the checkpoint the kill lands on). The move copies it again from its source; the
# reembed rebuilds it from its snapshot.
REBUILT_AFTER_DAMAGE = {
    "move": ('op.move_collection("main:docs", "chroma:docs")', 3),
    "reembed": ('op.reembed("chroma:docs", "tests.ops.sample_embedders:hash12()")', 9),
}


@pytest.mark.parametrize("case", list(REBUILT_AFTER_DAMAGE))
def test_a_collection_a_kill_damaged_is_rebuilt_by_the_rerun_from_what_the_step_holds(tmp_path, case):
    body, checkpoint = REBUILT_AFTER_DAMAGE[case]
    damaged = "chroma:docs"
    project = Project(tmp_path, {"path": "%(here)s/faiss"}, backend="faiss", batch_size=40,
                      extra_stores={"chroma": ("chroma", {"path": "%(here)s/chroma"})})
    project.write_records("docs.jsonl", 100, dim=8)
    where = "main:docs" if case == "move" else "chroma:docs"
    project.write_python("r1", None, f'op.create_collection("{where}", data="data/docs.jsonl")')
    project.write_python("r2", "r1", body)
    project.cli("upgrade", "r1")
    initial = project.digest(where)
    killed_in(project, "vecflow.runtime.context:StepContext.save", "upgrade", "head", call=checkpoint)
    damaged_chroma_folder(tmp_path / "scratch", tmp_path / "chroma")
    out = project.cli("upgrade", "head").stdout  # the same command again
    assert f"{damaged} is damaged (chromadb cannot read its index" in out and "filled again" in out
    with project.opened(damaged) as (store, name):
        assert store.count(name) == 100 and store.describe(name).dim == (8 if case == "move" else 12)
    assert project.run("current") == ["r2 (head)"]
    assert "restored exactly" in project.cli("downgrade", "r1").stdout and project.digest(where) == initial


def test_a_damaged_collection_the_step_cannot_rebuild_stops_in_one_line_naming_the_way_out(project, tmp_path):
    project.cli("upgrade", "r1")
    damaged_chroma_folder(tmp_path / "scratch", tmp_path / "chroma")
    refused = project.cli("upgrade", "head", check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "is damaged" in refused.stderr and "Restore the folder from a backup" in refused.stderr
    assert "Traceback" not in refused.stderr and project.run("current")[0] == "r1"


def test_a_killed_rollback_resumes(project):
    project.cli("upgrade", "r1")
    initial = project.digest("docs")
    project.write_python("r2", "r1", 'op.set_field("docs", "rank", "rank + 1")\n'
                                     'op.set_field("docs", "rank", "1 / 0")')
    failed = project.cli("upgrade", "head", check=False)
    assert failed.returncode == 1 and "division by zero" in failed.stderr
    killed_in(project, "vecflow.runtime.runner:Runner._verify_restored", "downgrade", "r1")
    out = project.cli("downgrade", "r1").stdout
    assert out.startswith("Resuming the rollback of r2") and "restored exactly" in out
    assert project.digest("docs") == initial
    attempts = [(a["direction"], a["outcome"]) for a in Ledger(project.config.ledger).attempts("r2")]
    assert attempts == [("upgrade", "rolled-back"), ("rollback", "done")]


def test_a_failed_upgrade_that_cannot_be_undone_says_how_to_finish_it(project):
    project.cli("upgrade", "r1")
    project.write_python("r2", "r1", 'op.create_collection("scratch", dim=8)\n'
                                     'op.drop_collection("scratch", snapshot=False)\n'
                                     'op.rename_field("docs", "author", "writer")', extra="irreversible = True")
    with project.opened("docs") as (backend, name):
        page = backend.get(name, ["id-000100"])
        backend.update_metadata(name, page.ids, [{**page.metadatas[0], "writer": "clash"}])
    assert project.cli("upgrade", "r2", check=False).returncode == 1
    refused = project.cli("downgrade", "r1", check=False)
    assert refused.returncode == 1 and "cannot roll back the unfinished upgrade of r2: step 2" in refused.stderr
    [command] = advice(refused.stderr)
    with project.opened("docs") as (backend, name):
        backend.update_metadata(name, page.ids, page.metadatas)  # fix the cause
    project.cli(*command)
    assert project.run("current") == ["r2"]


def test_an_unfinished_attempt_whose_script_is_gone_can_be_abandoned_as_advised(project):
    project.cli("upgrade", "r2")
    killed_in(project, "vecflow.runtime.ledger:Ledger.close_revision", "upgrade", "head")
    (project.versions / "r3_test.py").unlink()
    refused = project.cli("upgrade", "head", check=False)
    assert refused.returncode == 1 and "has no script" in refused.stderr
    [command] = advice(refused.stderr)
    assert command == ["stamp", "current"]
    project.cli(*command)
    assert project.run("current") == ["r2 (head)"]


def test_an_export_while_an_upgrade_is_unfinished_names_the_command_that_resumes_it(project, tmp_path):
    project.cli("upgrade", "r1")
    killed_in(project, "vecflow.runtime.ledger:Ledger.close_revision", "upgrade", "head")
    refused = project.cli("export", "docs", str(tmp_path / "out"), check=False)
    assert refused.returncode == 1
    resume, abandon = advice(refused.stderr)
    assert resume == ["upgrade", "r2"] and abandon == ["stamp", "current"]
    project.cli(*resume)
    assert project.run("current") == ["r2"]
    assert "Exported main:docs" in project.cli("export", "docs", str(tmp_path / "out")).stdout


def test_an_upgrade_while_an_export_is_unfinished_names_the_export(project, tmp_path):
    project.cli("upgrade", "r1")
    killed_in(project, "vecflow.operations.moves:CopyCollectionOp.check", "export", "docs", str(tmp_path / "out"))
    refused = project.cli("upgrade", "head", check=False)
    assert refused.returncode == 1
    [command] = advice(refused.stderr)
    assert command[0] == "export"
    assert "Exported main:docs" in project.cli(*command).stdout
    project.cli("upgrade", "head")
    assert project.run("current") == ["r3 (head)"]


def test_stamp_after_abandoning_an_upgrade_keeps_its_snapshots_for_the_downgrade(project):
    project.cli("upgrade", "r2")
    before_r3 = project.digest("docs")
    killed_in(project, "vecflow.runtime.ledger:Ledger.close_revision", "upgrade", "head")
    project.cli("stamp", "r3")  # accept the data as it is (all of r3's steps ran)
    assert project.run("current") == ["r3 (head)"]
    out = project.cli("downgrade", "r2").stdout
    assert "restored exactly" in out and project.digest("docs") == before_r3


def test_a_folder_without_a_project_is_told_to_init_and_init_makes_one(tmp_path):
    folder = tmp_path / "fresh"
    folder.mkdir()
    refused = subprocess.run([sys.executable, "-m", "vecflow", "current"], cwd=folder, capture_output=True,
                             text=True)
    assert refused.returncode == 1
    [command] = advice(refused.stderr)
    assert command == ["init"]
    subprocess.run([sys.executable, "-m", "vecflow", *command], cwd=folder, check=True, capture_output=True)
    done = subprocess.run([sys.executable, "-m", "vecflow", "current"], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0 and "nothing applied" in done.stdout


def test_multiple_heads_are_told_to_merge_and_merge_joins_them(project):
    project.write_python("r2b", "r1", 'op.add_field("docs", "flag", True)')
    refused = project.cli("revision", "-m", "next", check=False)
    assert refused.returncode == 1
    commands = advice(refused.stderr)
    assert ["merge"] in commands
    project.cli("merge")
    assert len(project.run("heads")) == 1
