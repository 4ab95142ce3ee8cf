"""Editing an applied script is reported by check and by upgrade; check --repair accepts it."""

from __future__ import annotations

import pytest

from tests.project import Project
from vecflow.errors import LedgerError, VecflowError


@pytest.fixture
def applied(tmp_path):
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")})
    project.write_python("r1", None, 'op.create_collection("docs", dim=4)')
    project.write_python("r2", "r1", 'op.add_field("docs", "source", "x")')
    project.run("upgrade", "head")
    return project


def test_check_passes_on_an_untouched_project(applied):
    assert applied.run("check")[-1].startswith("OK: 2 revisions, head r2")


def test_edited_applied_script_fails_check_and_upgrade(applied):
    path = applied.versions / "r1_test.py"
    path.write_text(path.read_text().replace("dim=4", "dim=8"))
    with pytest.raises(VecflowError, match="check failed"):
        applied.run("check")
    assert any(f"{path} was edited after it was applied (revision r1)" in line for line in applied.output)
    with pytest.raises(LedgerError, match=f"{path} was edited after it was applied"):
        applied.run("upgrade", "head")
    cli = applied.cli("upgrade", "head", check=False)
    assert cli.returncode == 1 and "r1_test.py was edited" in cli.stderr
    applied.run("check", repair=True)
    assert any("Accepted the edit" in line for line in applied.output)
    applied.run("check")


def test_check_reports_multiple_heads_and_unmarked_irreversible_steps(applied):
    applied.write_python("r3", "r1", 'op.drop_collection("docs", snapshot=False)')
    with pytest.raises(VecflowError, match="check failed"):
        applied.run("check")
    text = "\n".join(applied.output)
    assert "multiple heads are present (r2, r3)" in text
    assert "r3_test.py: no downgrade() and step(s) drop_collection docs (no snapshot) cannot be reversed" in text


def test_irreversible_mark_or_explicit_downgrade_satisfies_check(applied):
    def problems() -> list[str]:
        applied.output.clear()
        with pytest.raises(VecflowError, match="check failed: 1 problem"):
            applied.run("check")
        return [line for line in applied.output if line.startswith("error: ")]

    # r3 is not applied yet, which is the only problem check reports.
    applied.write_python("r3", "r2", 'op.drop_collection("docs", snapshot=False)', extra="irreversible = True")
    assert problems() == ["error: the ledger is at r2, not at the head(s) r3; run 'vecflow upgrade heads'"]
    applied.write_python("r3", "r2", 'op.drop_collection("docs", snapshot=False)',
                         downgrade='op.create_collection("docs", dim=4)')
    assert problems() == ["error: the ledger is at r2, not at the head(s) r3; run 'vecflow upgrade heads'"]
