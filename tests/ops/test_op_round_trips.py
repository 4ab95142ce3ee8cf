"""Every op on every backend: upgrade, check the data, downgrade, and the digest equals the original."""

from __future__ import annotations

from tests.plain_view import assert_store_has_no_vecflow_trace
from tests.project import Project
from vecflow.runtime.stores import Stores


def round_trip(project: Project, body: str, check) -> None:
    """Upgrade, check, assert the store holds nothing of vecflow's, downgrade, compare digests."""
    before = {name: project.digest(name) for name in ("docs", "renamed")}
    project.write_python("step1", "base0", body)
    project.run("upgrade", "head")
    check(project)
    stores = Stores(project.config)
    try:
        assert_store_has_no_vecflow_trace(stores.backend())
    finally:
        stores.close()
    lines = project.run("downgrade", "base0")
    assert any(line.startswith("  verified") for line in lines), lines
    assert {name: project.digest(name) for name in before} == before


def test_create_collection_loads_every_record_and_downgrade_drops_it(project):
    def check(p):
        records = p.records("extra")
        assert len(records) == 150
        assert records["id-000004"].document == "text 4 ünïcødé"
        assert records["id-000004"].metadata["tags"] == ["a", "b"]
    project.write_records("extra.jsonl", 150, dim=8, seed=3)
    round_trip(project, 'op.create_collection("extra", data="data/extra.jsonl", metric="l2")', check)
    assert project.digest("extra") == "absent"


def test_drop_collection_restores_it_exactly(project):
    def check(p):
        assert p.digest("docs") == "absent"
    round_trip(project, 'op.drop_collection("docs")', check)


def test_rename_collection_and_back(project):
    def check(p):
        assert p.digest("docs") == "absent" and p.digest("renamed").startswith("150:")
    round_trip(project, 'op.rename_collection("docs", "renamed")', check)


def test_add_field_keeps_existing_values_and_downgrade_removes_only_added(project):
    def check(p):
        records = p.records("docs")
        assert records["id-000001"].metadata["source"] == "legacy"
        assert records["id-000002"].metadata["author"] == "linus"
        assert all("source" in r.metadata for r in records.values())
    round_trip(project, 'op.add_field("docs", "source", "legacy")\nop.add_field("docs", "author", "nobody")', check)


def test_rename_field_and_back(project):
    def check(p):
        meta = p.records("docs")["id-000002"].metadata
        assert meta["writer"] == "linus" and "author" not in meta
    round_trip(project, 'op.rename_field("docs", "author", "writer")', check)


def test_rename_field_leaves_records_that_already_had_the_new_name(project):
    from vecflow.runtime.stores import Stores

    stores = Stores(project.config)
    backend, name = stores.resolve("docs")
    page = backend.get(name, ["id-000010"])
    backend.update_metadata(name, page.ids, [{"writer": "already migrated"}])
    stores.close()

    def check(p):
        assert p.records("docs")["id-000010"].metadata == {"writer": "already migrated"}
    round_trip(project, 'op.rename_field("docs", "author", "writer")', check)


def test_drop_field_restores_every_value_with_its_type(project):
    def check(p):
        assert not any("score" in r.metadata or "draft" in r.metadata for r in p.records("docs").values())
    round_trip(project, 'op.drop_field("docs", "score")\nop.drop_field("docs", "draft")', check)


def test_set_field_from_an_expression_with_a_condition(project):
    def check(p):
        records = p.records("docs")
        assert records["id-000004"].metadata["label"] == "GRACE/4"
        assert records["id-000002"].metadata["rank"] == 200
        assert records["id-000001"].metadata["rank"] == 1
    round_trip(project, 'op.set_field("docs", "label", "author | upper ~ \'/\' ~ rank")\n'
                        'op.set_field("docs", "rank", "rank * 100", where="draft")', check)


def test_yaml_revision_round_trip(project):
    project.write_yaml("step1", """\
        revision: step1
        down_revision: base0
        upgrade:
          - rename_field: {collection: docs, old: author, new: writer}
          - add_field: {collection: docs, field: reviewed, default: false}
          - drop_field: {collection: docs, field: tags}
        """)
    before = project.digest("docs")
    project.run("upgrade", "head")
    meta = project.records("docs")["id-000000"].metadata
    assert meta["reviewed"] is False and "tags" not in meta and meta["writer"] == "ada"
    project.run("downgrade", "base0")
    assert project.digest("docs") == before


def test_copy_collection_within_the_store_and_downgrade_drops_the_copy(project):
    def check(p):
        assert p.digest("docs_copy") == p.digest("docs")
    round_trip(project, 'op.copy_collection("docs", "docs_copy")', check)
    assert project.digest("docs_copy") == "absent"


def test_move_collection_within_the_store_and_back(project):
    original = project.digest("docs")

    def check(p):
        assert p.digest("docs") == "absent" and p.digest("docs_moved") == original
    round_trip(project, 'op.move_collection("docs", "docs_moved")', check)
    assert project.digest("docs_moved") == "absent"
