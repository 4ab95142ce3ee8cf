"""Runner behaviour: dry-run, derived downgrades, irreversibility, stamp, failures and mismatches."""

from __future__ import annotations

import json

import pytest

from tests.project import Project
from vecflow.errors import DigestMismatchError, InvalidDataError, IrreversibleError, LedgerError
from vecflow.runtime.ledger import Ledger
from vecflow.runtime.runner import recorded_before


@pytest.fixture
def project(tmp_path):
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")}, batch_size=50)
    project.write_records("docs.jsonl", 120, dim=6)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.rename_field("docs", "author", "writer")\nop.drop_field("docs", "rank")')
    return project


def test_dry_run_prints_the_plan_and_changes_nothing(project):
    lines = project.run("upgrade", "head", dry_run=True)
    assert lines[0].startswith("upgrade r1")
    assert "create_collection docs (dim of the data, cosine) from data/docs.jsonl" in lines[1]
    assert "rename_field docs: author -> writer" in "\n".join(lines)
    assert lines[-1] == "  main:docs: does not exist yet; after the plan: 120 records"
    assert project.digest("docs") == "absent"
    project.run("upgrade", "r1")
    lines = project.run("upgrade", "head", dry_run=True)
    assert lines[-1] == "  main:docs: 120 records; after the plan: 120 records"
    project.run("upgrade", "head")
    lines = project.run("downgrade", "base", dry_run=True)
    assert [line.split()[:2] for line in lines if not line.startswith(" ")][:2] == [["downgrade", "r2"],
                                                                                    ["downgrade", "r1"]]
    assert "restore_field docs: rank from snapshot" in "\n".join(lines)
    assert project.run("current") == ["r2 (head)"]


def test_dry_run_counts_affected_records_and_estimates_time_from_history(project):
    project.run("upgrade", "r1")
    text = "\n".join(project.run("upgrade", "head", dry_run=True))
    assert "fields renamed: author -> writer; records affected: 120 of 120 records" in text
    assert "fields dropped: rank; records affected: 120 of 120 records" in text
    assert "rows/s measured on the sample; writes not measured yet" in text
    project.run("upgrade", "head")
    project.run("downgrade", "r1")
    text = "\n".join(project.run("upgrade", "head", dry_run=True))
    assert "rows/s in earlier rename_field runs" in text and "rows/s in earlier drop_field runs" in text


def test_already_at_target_is_a_no_op(project):
    project.run("upgrade", "head")
    assert project.run("upgrade", "head") == ["Nothing to do: already at the target."]


def test_relative_targets_move_one_revision(project):
    project.run("upgrade", "+1")
    assert project.run("current") == ["r1"]
    project.run("upgrade", "+1")
    project.run("downgrade", "-1")
    assert project.run("current") == ["r1"]
    assert project.records("docs")["id-000003"].metadata["author"] == "ada"


def test_irreversible_revision_refuses_downgrade_before_anything_runs(project):
    project.write_python("r3", "r2", 'op.drop_collection("docs", snapshot=False)', extra="irreversible = True")
    project.run("upgrade", "head")
    project.write_python("r0", None, "pass")  # unrelated
    with pytest.raises(IrreversibleError, match="r3 .* is marked irreversible"):
        project.run("downgrade", "base")
    assert project.run("current")[0].startswith("r3")


def test_unmarked_irreversible_chain_is_refused_before_anything_runs(project):
    project.write_python("r3", "r2", 'op.add_field("docs", "x", 1)\nop.drop_collection("docs", snapshot=False)')
    with pytest.raises(IrreversibleError, match=r"revision r3 .*drop_collection docs \(no snapshot\) cannot be reversed.*"  # noqa: E501
                                                r"Nothing was run"):
        project.run("upgrade", "head")
    assert project.run("current") == ["<base> (nothing applied)"]
    assert project.digest("docs") == "absent"


def test_stamped_revision_has_no_snapshot_to_restore(project):
    project.run("stamp", "r2")
    assert project.run("current") == ["r2 (head)"]
    with pytest.raises(IrreversibleError, match="was the revision stamped"):
        project.run("downgrade", "r1")
    project.run("stamp", "base")
    assert project.run("current") == ["<base> (nothing applied)"]


def test_stamp_after_a_real_upgrade_invalidates_its_snapshots(project):
    project.run("upgrade", "head")
    project.run("stamp", "r1")
    project.run("stamp", "r2")
    with pytest.raises(IrreversibleError, match="was the revision stamped"):
        project.run("downgrade", "r1")


def test_history_and_current_survive_a_deleted_applied_script(project):
    project.run("upgrade", "r1")
    Ledger(project.config.ledger).mark_applied("gone", "x", "gone.py")
    assert any(line.endswith("revision r1") for line in project.run("history"))
    assert any("revision gone is applied but no script" in line for line in project.run("current"))


def test_stamp_purge_forgets_unknown_revisions(project):
    project.run("upgrade", "r1")
    Ledger(project.config.ledger).mark_applied("gone", "x", "gone.py")
    with pytest.raises(LedgerError, match="revision gone is applied but no script"):
        project.run("upgrade", "head")
    project.run("stamp", "r1", purge=True)
    assert project.run("current") == ["r1"]


def test_downgrade_reports_data_changed_since_upgrade_loudly(project):
    from vecflow.runtime.stores import Stores

    project.run("upgrade", "head")
    stores = Stores(project.config)
    backend, name = stores.resolve("docs")
    backend.delete(name, ["id-000007"])
    stores.close()
    with pytest.raises(DigestMismatchError, match=r"main:docs is 119:.*was 120:.*run 'vecflow stamp r1'"):
        project.run("downgrade", "r1")
    # Not restored exactly, so not recorded as undone: a rerun verifies again and says so again.
    assert project.run("current")[0] == "r2 (head)"
    assert project.run("current")[1].startswith("unfinished: downgrade of r2 (failed)")
    with pytest.raises(DigestMismatchError, match=r"main:docs is 119:"):
        project.run("downgrade", "r1")
    # The advice works: accept the data as it is, and go on down.
    assert project.cli("stamp", "r1").returncode == 0
    assert project.run("current") == ["r1"]
    assert project.cli("downgrade", "base", "--no-verify").returncode == 0


def test_a_failed_step_keeps_its_progress_and_resumes_after_the_fix(project):
    from vecflow.runtime.stores import Stores

    project.run("upgrade", "r1")
    original = project.digest("docs")
    stores = Stores(project.config)
    backend, name = stores.resolve("docs")
    page = backend.get(name, ["id-000100"])
    backend.update_metadata(name, page.ids, [{**page.metadatas[0], "writer": "clash"}])
    with pytest.raises(InvalidDataError, match="record 'id-000100' has both 'author' and 'writer'"):
        project.run("upgrade", "head")
    backend.update_metadata(name, page.ids, page.metadatas)
    stores.close()
    lines = project.run("upgrade", "head")
    assert lines[0].startswith("Resuming upgrade r2") and "resuming at 100 rows" in lines[1]
    assert "writer" in project.records("docs")["id-000000"].metadata
    # The digest before r2 was taken while the clash was in the data, so verifying would
    # (rightly) report the out-of-band fix; compare with the state before the clash instead.
    with pytest.raises(DigestMismatchError):
        project.run("downgrade", "r1")
    assert project.digest("docs") == original


def test_a_failed_upgrade_is_rolled_back_by_downgrade(project):
    from vecflow.runtime.stores import Stores

    project.run("upgrade", "r1")
    stores = Stores(project.config)
    backend, name = stores.resolve("docs")
    page = backend.get(name, ["id-000100"])
    backend.update_metadata(name, page.ids, [{**page.metadatas[0], "writer": "clash"}])
    stores.close()
    before_r2 = project.digest("docs")
    with pytest.raises(InvalidDataError, match="record 'id-000100' has both"):
        project.run("upgrade", "head")
    assert project.digest("docs") != before_r2  # 100 records were renamed before the clash
    lines = project.run("downgrade", "r1")
    assert lines[0] == "Rolling back the unfinished upgrade of r2 (revision r2) (failed, 0 of 2 steps done)"
    assert any(line.startswith("  verified: main:docs restored exactly") for line in lines)
    assert project.digest("docs") == before_r2
    assert project.run("current") == ["r1"]
    outcomes = [(a["direction"], a["outcome"]) for a in Ledger(project.config.ledger).attempts("r2")]
    assert outcomes == [("upgrade", "rolled-back"), ("rollback", "done")]


def test_show_lists_upgrade_and_derived_downgrade(project):
    lines = project.run("show", "r2")
    assert lines[:2] == ["Revision: r2 (head)", "Parent: r1"]
    assert "Downgrade: (derived from the upgrade steps)" in lines
    assert "  1. undo drop_field docs: -rank" in lines


def test_a_copy_reads_its_source_and_its_target_once_and_no_verify_reads_nothing_after(project, monkeypatch):
    import vecflow.runtime.runner as runner_module

    project.run("upgrade", "head")
    source_digest = project.digest_pair("docs")
    project.write_python("r3", "r2", 'op.copy_collection("docs", "docs_copy")')
    project.write_python("r4", "r3", 'op.set_field("docs_copy", "flag", "1")')
    digested: list[str] = []
    real = runner_module.collection_digests

    def counting(backend, name, *args, **kwargs):
        digested.append(name)
        return real(backend, name, *args, **kwargs)

    monkeypatch.setattr(runner_module, "collection_digests", counting)
    project.run("upgrade", "r3")
    # The runner digests only the (absent) target before the step: the copy loop digests the
    # source as it reads it, and the verification the target as it reads it.
    assert digested == ["docs_copy"]
    [step] = [row for row in Ledger(project.config.ledger).steps(3)]
    before, after = recorded_before(step), json.loads(step["digest_after"])
    assert before == {"main:docs": source_digest, "main:docs_copy": "absent"}
    assert after == {"main:docs": source_digest, "main:docs_copy": project.digest_pair("docs_copy")}
    digested.clear()
    project.run("upgrade", "head", verify=False)
    # None: set_field's rewrite pass takes the digest before (kept for the downgrade); none after.
    assert digested == []
    assert "restored exactly" in "\n".join(project.run("downgrade", "r3"))


def test_a_verified_copy_to_another_backend_reads_its_source_once_and_its_target_once(tmp_path, monkeypatch):
    """The copy loop digests the source and feeds the search parity's ground truth as it copies;
    the verification's read of the target is its digest after the step."""
    from vecflow.backends.base import Backend

    project = Project(tmp_path, {"path": str(tmp_path / "chroma")}, batch_size=50,
                      extra_stores={"flat": ("faiss", {"path": str(tmp_path / "faiss")})})
    # More records than the first page of 1,000 the parity queries are sampled from.
    project.write_records("docs.jsonl", 1200, dim=6)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.copy_collection("docs", "flat:docs")')
    project.run("upgrade", "r1")
    full_reads: list[str] = []
    def counting(real):
        def paged(self, name, batch_size, cursor=None):
            for page, following in real(self, name, batch_size, cursor):
                yield page, following
                if following is None and cursor is None:
                    full_reads.append(f"{self.name}:{name}")
        return paged

    for method in ("pages", "native_pages"):
        monkeypatch.setattr(Backend, method, counting(getattr(Backend, method)))
    output = "\n".join(project.run("upgrade", "head"))
    assert "search parity: recall@10 target" in output  # measured, against the loop's ground truth
    assert sorted(full_reads) == ["chroma:docs", "faiss:docs"]
    # The step says which full reads it made and why.
    assert "      full reads: main:docs 1 (copy_collection); flat:docs 1 (verify (target records))" in output
