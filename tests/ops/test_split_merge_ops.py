"""split_collection and merge_collections on every backend: routed, verified, exactly reversible."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.project import Project
from vecflow.errors import DryRunFailedError, InvalidDataError, OperationError
from vecflow.operations import Operations
from vecflow.runtime.stores import Stores

N = 150
CATEGORIES = ["faq", "manual", "howto", "blog", None]  # None: the record has no category


def write_data(project: Project, name: str, n: int = N, seed: int = 0, prefix: str = "id") -> None:
    """A JSONL file of n records: category cycles through CATEGORIES, words grows with i."""
    rng = np.random.default_rng(seed)
    path = project.versions / "data" / name
    path.parent.mkdir(exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            metadata = {"words": i * 3, "draft": i % 2 == 0, "score": i / 7, "tags": ["x"] if i % 4 == 0 else []}
            if CATEGORIES[i % 5] is not None:
                metadata["category"] = CATEGORIES[i % 5]
            handle.write(json.dumps({"id": f"{prefix}-{i:04d}", "vector": rng.standard_normal(8).tolist(),
                                     "document": None if i % 9 == 0 else f"text {i} ✓", "metadata": metadata}) + "\n")


@pytest.fixture
def project(fast_tmp_path, backend, store_options):
    if "path" in store_options:  # on tmpfs: spares Qdrant local mode its fsync per point
        store_options = {"path": str(fast_tmp_path / backend)}
    project = Project(fast_tmp_path / "project", store_options, backend=backend, batch_size=50)
    write_data(project, "docs.jsonl")
    project.write_python("base0", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.run("upgrade", "base0")
    return project


def upgrade_then_downgrade(project: Project, body: str, collections: list[str], check) -> None:
    """Upgrade a step1 revision, check the data, downgrade: the digests equal those before."""
    before = {name: project.digest(name) for name in collections}
    project.write_python("step1", "base0", body)
    project.run("upgrade", "head")
    check(project)
    lines = project.run("downgrade", "base0")
    assert any(line.startswith("  verified") for line in lines), lines
    assert {name: project.digest(name) for name in collections} == before


def assert_same_records(part: dict, whole: dict) -> None:
    for rid, record in part.items():
        original = whole[rid]
        assert np.array_equal(record.vector, original.vector), rid
        assert (record.document, record.metadata) == (original.document, original.metadata), rid


def test_split_by_field_into_three_targets_and_a_default_and_back(project):
    original = project.records("docs")

    def check(p):
        assert p.digest("docs") == "absent"
        parts = {name: p.records(name) for name in ("docs_faq", "docs_manual", "docs_howto", "docs_other")}
        assert {name: len(records) for name, records in parts.items()} == {
            "docs_faq": 30, "docs_manual": 30, "docs_howto": 30, "docs_other": 60}
        assert all(r.metadata["category"] == "faq" for r in parts["docs_faq"].values())
        assert {r.metadata.get("category") for r in parts["docs_other"].values()} == {"blog", None}
        for records in parts.values():
            assert_same_records(records, original)
        assert sorted(rid for records in parts.values() for rid in records) == sorted(original)

    upgrade_then_downgrade(project, """\
        op.split_collection("docs", by="category", default="docs_other",
                            into={"faq": "docs_faq", "manual": "docs_manual", "howto": "docs_howto"})
        """, ["docs", "docs_faq", "docs_manual", "docs_howto", "docs_other"], check)
    assert project.digest("docs_faq") == project.digest("docs_other") == "absent"


def test_split_by_conditions_takes_the_first_that_holds(project):
    def check(p):
        long, drafts, rest = p.records("long"), p.records("drafts"), p.records("rest")
        assert len(long) == 49 and all(r.metadata["words"] > 300 for r in long.values())
        assert "id-0102" in long, "a long draft goes to the first matching target"
        assert len(drafts) == 51 and all(r.metadata["draft"] and r.metadata["words"] <= 300 for r in drafts.values())
        assert len(rest) == 50 and not any(r.metadata["draft"] for r in rest.values())

    upgrade_then_downgrade(project, """\
        op.split_collection("docs", where={"long": "words > 300", "drafts": "draft and id.startswith('id-')"},
                            default="rest")
        """, ["docs", "long", "drafts", "rest"], check)
    assert project.digest("long") == "absent"


def test_merge_then_downgrade_restores_every_source_exactly(project):
    write_data(project, "more.jsonl", n=80, seed=1, prefix="more")
    write_data(project, "few.jsonl", n=30, seed=2, prefix="few")
    project.write_python("base1", "base0", 'op.create_collection("more", data="data/more.jsonl")\n'
                                           'op.create_collection("few", data="data/few.jsonl")')
    project.run("upgrade", "base1")
    parts = {name: project.records(name) for name in ("docs", "more", "few")}
    before = {name: project.digest(name) for name in ("docs", "more", "few", "all")}
    project.write_python("step1", "base1", 'op.merge_collections(["docs", "more", "few"], "all")')
    lines = project.run("upgrade", "head")
    assert any("verified main:all 260" in line for line in lines), lines
    merged = project.records("all")
    assert len(merged) == 260
    for records in parts.values():
        assert_same_records(records, merged)
    assert project.digest("docs") == project.digest("more") == "absent"

    project.run("downgrade", "base1")
    assert {name: project.digest(name) for name in before} == before


def test_merge_with_colliding_ids_is_refused_naming_them_and_writes_nothing(project):
    write_data(project, "twins.jsonl", n=60, seed=5)  # ids id-0000 .. id-0059 also exist in docs
    project.write_python("base1", "base0", 'op.create_collection("twins", data="data/twins.jsonl")')
    project.run("upgrade", "base1")
    before = {name: project.digest(name) for name in ("docs", "twins", "both")}
    project.write_python("step1", "base1", 'op.merge_collections(["docs", "twins"], "both")')
    with pytest.raises(InvalidDataError, match=r"60 ids occur in more than one collection: "
                                               r"'id-0000' \(main:docs, main:twins\), 'id-0001'"):
        project.run("upgrade", "head")
    assert {name: project.digest(name) for name in before} == before


# one backend suffices below: what they check does not depend on the store ------------------------


def two_store_project(tmp_path, main: str = "faiss") -> Project:
    """A `main` store and a `faiss` store, with docs (l2) in main."""
    project = Project(tmp_path / "project", {"path": str(tmp_path / main)}, backend=main, batch_size=50,
                      extra_stores={"faiss": ("faiss", {"path": str(tmp_path / "faiss")})})
    write_data(project, "docs.jsonl")
    project.write_python("base0", None, 'op.create_collection("docs", data="data/docs.jsonl", metric="l2")')
    project.run("upgrade", "base0")
    return project


def test_split_without_default_refuses_unrouted_records_before_writing(fast_tmp_path):
    project = two_store_project(fast_tmp_path)
    project.write_python("step1", "base0", 'op.split_collection("docs", "category", '
                                           '{"faq": "docs_faq", "manual": "docs_manual", "howto": "docs_howto"})')
    with pytest.raises(InvalidDataError, match=r"60 records match no target and there is no default: "
                                               r"'id-0003' \(category='blog'\), 'id-0004' \(no category\)"):
        project.run("upgrade", "head")
    assert project.digest("docs").startswith(f"{N}:")
    assert project.digest("docs_faq") == "absent"


def test_a_condition_that_fails_on_a_record_stops_the_split_before_writing(fast_tmp_path):
    project = two_store_project(fast_tmp_path)
    project.write_python("step1", "base0", 'op.split_collection("docs", where={"old": "year < 2015"}, '
                                           'default="new")')
    with pytest.raises(InvalidDataError, match=r"condition 'year < 2015' failed on record 'id-\d+': "
                                               r"'year' is undefined"):
        project.run("upgrade", "head")
    assert project.digest("old") == project.digest("new") == "absent"


def test_dry_run_previews_counts_per_target_and_refusals_on_what_earlier_steps_wrote(fast_tmp_path):
    project = two_store_project(fast_tmp_path)
    project.write_python("step1", "base0", """\
        op.split_collection("docs", by="draft", into={True: "drafts", False: "final"}, keep_source=True)
        op.split_collection("docs", by="category", into={"faq": "drafts"})
        """)
    with pytest.raises(DryRunFailedError, match=r"upgrade step1, step 2 \(split_collection docs by category: "
                                                r"'faq' -> drafts\): split_collection: target main:drafts already "
                                                r"holds 75 records"):
        project.run("upgrade", "head", dry_run=True)
    text = "\n".join(project.output)
    assert "-> main:drafts: 75 records (new)" in text and "-> main:final: 75 records (new)" in text
    assert "refused: split_collection docs: 120 records match no target" in text
    assert "main:drafts: does not exist yet; after the plan: 75 records" in text
    assert project.digest("drafts") == "absent"


def test_cross_store_split_from_chroma_into_faiss_and_back(fast_tmp_path):
    project = two_store_project(fast_tmp_path, main="chroma")
    original = project.records("docs")

    def check(p):
        faq, rest = p.records("faiss:faq"), p.records("main:rest")
        assert len(faq) == 30 and len(rest) == 120
        assert_same_records(faq, original)
        assert_same_records(rest, original)
        stores = Stores(p.config)
        try:
            backend, name = stores.resolve("faiss:faq")
            assert backend.describe(name).metric == "l2"
        finally:
            stores.close()

    upgrade_then_downgrade(project, 'op.split_collection("docs", by="category", into={"faq": "faiss:faq"}, '
                                    'default="main:rest")', ["main:docs", "faiss:faq", "main:rest"], check)


def test_split_into_an_existing_empty_target_leaves_it_empty_on_downgrade(fast_tmp_path):
    project = two_store_project(fast_tmp_path)
    project.write_python("base1", "base0", 'op.create_collection("faiss:faq", dim=8, metric="l2")')
    project.run("upgrade", "base1")

    def check(p):
        assert p.digest("faiss:faq").startswith("30:")

    project.write_python("step1", "base1", 'op.split_collection("docs", "category", {"faq": "faiss:faq"}, "rest")')
    before = {name: project.digest(name) for name in ("docs", "faiss:faq", "rest")}
    project.run("upgrade", "head")
    check(project)
    project.run("downgrade", "base1")
    assert {name: project.digest(name) for name in before} == before
    assert before["faiss:faq"] == "0:" + "0" * 32


def test_split_into_a_target_of_another_dimension_or_with_records_is_refused(fast_tmp_path):
    project = two_store_project(fast_tmp_path)
    project.write_python("base1", "base0", 'op.create_collection("faiss:narrow", dim=4, metric="l2")\n'
                                           'op.create_collection("faiss:full", data="data/docs.jsonl", metric="l2")')
    project.run("upgrade", "base1")
    project.write_python("step1", "base1", 'op.split_collection("docs", "category", {"faq": "faiss:narrow"}, '
                                           '"main:docs")')
    with pytest.raises(OperationError, match="main:docs is both a source and a target"):
        project.run("upgrade", "head")
    project.write_python("step1", "base1", 'op.split_collection("docs", "category", {"faq": "faiss:narrow", '
                                           '"blog": "faiss:full"}, "rest")')
    with pytest.raises(OperationError, match="target faiss:narrow exists with dim 4, metric l2; the records have "
                                             "dim 8, metric l2; split_collection: target faiss:full already holds "
                                             "150 records"):
        project.run("upgrade", "head")
    assert project.digest("rest") == "absent" and project.digest("docs").startswith(f"{N}:")


def test_keep_source_split_is_undone_by_dropping_the_targets(fast_tmp_path):
    project = two_store_project(fast_tmp_path)
    before = {name: project.digest(name) for name in ("docs", "odd", "even")}
    project.write_python("step1", "base0", 'op.split_collection("docs", where={"odd": "words % 2 == 1"}, '
                                           'default="even", keep_source=True)')
    project.run("upgrade", "head")
    assert project.digest("docs") == before["docs"]
    assert project.digest("odd").startswith("75:") and project.digest("even").startswith("75:")
    project.run("downgrade", "base0")
    assert {name: project.digest(name) for name in before} == before


@pytest.mark.parametrize("keep_sources", [False, True])
def test_merge_into_an_existing_collection_keeps_its_records_on_downgrade(fast_tmp_path, keep_sources):
    project = two_store_project(fast_tmp_path)
    write_data(project, "more.jsonl", n=70, seed=1, prefix="more")
    project.write_python("base1", "base0", 'op.create_collection("faiss:more", data="data/more.jsonl", metric="l2")')
    project.run("upgrade", "base1")
    before = {name: project.digest(name) for name in ("docs", "faiss:more")}
    project.write_python("step1", "base1", f'op.merge_collections(["faiss:more"], "docs", keep_sources={keep_sources})')
    project.run("upgrade", "head")
    assert project.digest("docs").startswith("220:")
    assert project.digest("faiss:more") == (before["faiss:more"] if keep_sources else "absent")
    project.run("downgrade", "base1")
    assert {name: project.digest(name) for name in before} == before


def test_a_split_interrupted_mid_copy_resumes_without_loss(fast_tmp_path, monkeypatch):
    from vecflow.backends.faiss import FaissBackend

    project = two_store_project(fast_tmp_path)
    original = project.digest("docs")
    real_upsert, calls = FaissBackend.upsert, []

    def failing_upsert(self, name, batch):  # fault injection: page 2 is written to one target only
        calls.append(name)
        if len(calls) == 4:
            raise RuntimeError("connection lost")
        real_upsert(self, name, batch)

    monkeypatch.setattr(FaissBackend, "upsert", failing_upsert)
    project.write_python("step1", "base0", 'op.split_collection("docs", by="draft", '
                                           'into={True: "faiss:drafts", False: "faiss:final"})')
    with pytest.raises(RuntimeError, match="connection lost"):
        project.run("upgrade", "head")
    assert project.digest("docs") == original, "the source is untouched until the split is verified"
    lines = project.run("upgrade", "head")
    assert any("resuming at 50 rows" in line for line in lines), lines  # page 2 is replayed
    assert project.digest("faiss:drafts").startswith("75:") and project.digest("faiss:final").startswith("75:")
    project.run("downgrade", "base0")
    assert project.digest("docs") == original
    assert project.digest("faiss:drafts") == project.digest("faiss:final") == "absent"


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "docs"}, "exactly one of by"),
    ({"source": "docs", "by": "k", "into": {"a": "x"}, "where": {"y": "k"}}, "exactly one of by"),
    ({"source": "docs", "by": "k"}, "by needs into"),
    ({"source": "docs", "into": {"a": "x"}, "default": "y"}, "exactly one of by"),
    ({"source": "docs", "where": {"x": "k >"}}, "invalid jinja2 expression"),
    ({"source": "docs", "where": {"docs": "k"}}, "cannot also be a target"),
])
def test_split_arguments_are_checked_when_the_step_is_recorded(kwargs, message):
    with pytest.raises(OperationError, match=message):
        Operations().split_collection(**kwargs)


def test_merge_arguments_are_checked_when_the_step_is_recorded():
    with pytest.raises(OperationError, match="cannot also be a source"):
        Operations().merge_collections(["a", "b"], "a")
    with pytest.raises(OperationError, match="listed twice"):
        Operations().merge_collections(["a", "a"], "c")
    assert Operations().merge_collections(["a", "b"], "c").reversible
    assert Operations().split_collection("a", where={"b": "x"}).reversible
