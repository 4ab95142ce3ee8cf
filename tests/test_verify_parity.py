"""Search parity of a copy: recall against the exact top-k of the source, not one index against another."""

from __future__ import annotations

import numpy as np
import pytest

from tests.project import Project
from vecflow.backends.chroma import ChromaBackend
from vecflow.backends.faiss import FaissBackend
from vecflow.batch import Batch
from vecflow.runtime.verify import GroundTruth, SideDigest, verify_copy

N, DIM = 3000, 64


def random_batch(n: int = N, dim: int = DIM, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return Batch([f"r{i:05d}" for i in range(n)], vectors, [f"text {i}" for i in range(n)],
                 [{"i": i} for i in range(n)])


def fill(backend, name: str, batch: Batch, metric: str = "cosine") -> None:
    backend.create_collection(name, batch.dim, metric)
    for start in range(0, len(batch), 1000):
        backend.upsert(name, batch.take(list(range(start, min(start + 1000, len(batch))))))


def copy(source, target, name: str = "docs") -> None:
    info = source.describe(name)
    target.create_collection(name, info.dim, info.metric, **(info.params if type(source) is type(target) else {}))
    for page, _ in source.pages(name, 500):
        target.upsert(name, page)


@pytest.fixture
def stores(fast_tmp_path):
    chroma = ChromaBackend(path=str(fast_tmp_path / "chroma"))
    faiss = FaissBackend(path=str(fast_tmp_path / "faiss"))
    other_faiss = FaissBackend(path=str(fast_tmp_path / "faiss2"))
    yield chroma, faiss, other_faiss
    for backend in (chroma, faiss, other_faiss):
        backend.close()


def test_ground_truth_keeps_the_exact_top_k_with_ties_broken_by_id():
    vectors = np.array([[1, 0], [0, 1], [1, 0], [2, 0], [-1, 0]], dtype=np.float32)
    pages = [Batch(["e", "b"], vectors[:2], [None] * 2, [{}] * 2),
             Batch(["a", "c", "d"], vectors[2:], [None] * 3, [{}] * 3)]
    for metric, expected in (("cosine", ["a", "c", "e"]), ("l2", ["a", "e", "c"]), ("ip", ["c", "a", "e"])):
        truth = GroundTruth(np.array([[1.0, 0.0]]), 3, metric)
        for page in pages:
            truth.add(page)
        assert [rid for _, rid in truth.best[0]] == expected, metric


@pytest.mark.parametrize("direction", ["chroma_to_faiss", "faiss_to_chroma"])
def test_copy_between_hnsw_and_flat_passes_and_reports_both_recalls(stores, direction):
    chroma, faiss, _ = stores
    source, target = (chroma, faiss) if direction == "chroma_to_faiss" else (faiss, chroma)
    fill(source, "docs", random_batch())
    copy(source, target)
    report = verify_copy(source, "docs", target, "docs", batch_size=500)
    assert report.problems == [], report.problems
    search = report.search
    assert search.queries == 20 and search.record_queries == 10 and search.skipped is None
    if direction == "chroma_to_faiss":
        assert search.target_recall == 1.0 and search.source_recall is not None and search.required == 0.99
        assert f"source {search.source_recall:.3f}" in report.summary()
    else:
        assert search.source_recall is None and 0.5 < search.target_recall <= 1.0
        assert "no recall to compare with" in report.summary()
    assert f"recall@10 target {search.target_recall:.3f}" in report.summary()
    saved = report.to_dict()
    assert saved["parity"] == search.target_recall and saved["search"]["source_recall"] == search.source_recall


def test_perturbed_vectors_in_the_target_fail_search_parity_naming_them(stores):
    chroma, faiss, _ = stores
    batch = random_batch()
    fill(chroma, "docs", batch, metric="l2")
    copy(chroma, faiss)
    damaged = faiss.get("docs", batch.ids[::10])  # 10% of the records
    noise = np.random.default_rng(1).standard_normal(damaged.vectors.shape).astype(np.float32)
    damaged.vectors = np.ascontiguousarray(damaged.vectors + noise)
    faiss.upsert("docs", damaged)
    report = verify_copy(chroma, "docs", faiss, "docs", batch_size=500, queries=40)
    problems = "; ".join(report.problems)
    assert "digests differ" in problems
    assert "search parity: the target's recall@10 is" in problems and "below the required 0.990" in problems
    assert report.search.target_recall < 0.99
    missed = report.search.missed
    assert missed and sum(rid in set(damaged.ids) for rid in missed) >= 0.8 * len(missed)


def test_records_deleted_from_the_target_fail_with_the_missing_ids(stores):
    chroma, faiss, _ = stores
    batch = random_batch()
    fill(faiss, "docs", batch)
    copy(faiss, chroma)
    chroma.delete("docs", batch.ids[:300])
    report = verify_copy(faiss, "docs", chroma, "docs", batch_size=500, threshold=0.99)
    problems = "; ".join(report.problems)
    assert "counts differ: source 3000, target 2700" in problems and "300 ids missing" in problems
    assert "search parity: the target's recall@10" in problems and "the floor 0.99" in problems


def test_same_kind_of_index_with_equal_digests_skips_the_queries(stores):
    _, faiss, other_faiss = stores
    fill(faiss, "docs", random_batch())
    copy(faiss, other_faiss)
    side = SideDigest.empty()
    for page, _ in faiss.pages("docs", 500):
        side = side.add(page, normalise=False)
    report = verify_copy(faiss, "docs", other_faiss, "docs", batch_size=500, source_side=side)
    assert report.problems == []
    assert report.search.skipped and report.search.target_recall is None
    assert "search parity not measured: the digests prove the data identical and both are faiss cosine" \
        in report.summary()


def chroma_to_faiss_copy(tmp_path) -> Project:
    """A project whose one revision copies 1,000 records from Chroma to FAISS, 10 parity queries."""
    project = Project(tmp_path / "project", {"path": str(tmp_path / "chroma")},
                      extra_stores={"faiss": ("faiss", {"path": str(tmp_path / "faiss")})})
    backend = ChromaBackend(path=str(tmp_path / "chroma"))
    try:
        fill(backend, "docs", random_batch(1000))
    finally:
        backend.close()
    project.write_python("m1", None, 'op.copy_collection("main:docs", "faiss:docs", parity_queries=10)')
    return project


def verified_note(project: Project) -> str:
    """The `verified faiss:docs: ...` note of `upgrade head`."""
    verified = [line for line in project.run("upgrade", "head") if "verified faiss:docs" in line]
    assert verified
    return verified[0]


def test_copy_collection_op_notes_the_recalls_and_saves_them(fast_tmp_path):
    note = verified_note(chroma_to_faiss_copy(fast_tmp_path))
    assert "recall@10 target 1.000, source" in note and "over 10 queries" in note


def test_digests_that_differ_come_with_the_records_and_parts_that_differ(stores):
    _, faiss, other_faiss = stores
    batch = random_batch(1000)
    fill(faiss, "docs", batch)
    copy(faiss, other_faiss)
    changed = other_faiss.get("docs", ["r00007", "r00500"])
    changed.documents = ["edited", changed.documents[1]]
    changed.metadatas = [changed.metadatas[0], {"i": -1}]
    other_faiss.upsert("docs", changed)
    report = verify_copy(faiss, "docs", other_faiss, "docs", batch_size=300)
    problems = "; ".join(report.problems)
    assert "digests differ" in problems and "vectors differ" not in problems
    assert "1 documents differ from the source's (e.g. ['r00007'])" in problems
    assert "1 records' metadata differ from the source's (e.g. ['r00500'])" in problems


def test_a_copy_verified_in_the_run_that_copied_it_draws_its_queries_once(fast_tmp_path, monkeypatch):
    """The ground truth the copy loop fed is the one verification uses: the queries are not drawn
    from the source a second time (a sample read and a get by id)."""
    from vecflow.operations import moves

    project = chroma_to_faiss_copy(fast_tmp_path)
    drawn, original = [], moves.parity_truth
    monkeypatch.setattr(moves, "parity_truth", lambda *args: drawn.append(args) or original(*args))
    note = verified_note(project)
    assert len(drawn) == 1
    assert "recall@10 target 1.000" in note and "over 10 queries" in note


def test_ranking_keys_match_the_textbook_formulas_on_hard_vectors():
    # The cosine key divides by the vector's norm instead of normalising a copy of the page: the
    # same keys within an ulp, including a zero vector and components near float32's limit.
    from vecflow.runtime.verify import _ranking_keys

    rng = np.random.default_rng(3)
    queries = rng.standard_normal((5, 16))
    vectors = np.vstack([rng.standard_normal((40, 16)), np.zeros((1, 16)), np.full((1, 16), 3e38),
                         rng.standard_normal((1, 16)) * 1e-30]).astype(np.float32).astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    units = vectors / np.where(norms > 0, norms, 1)
    query_units = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = {"cosine": 1 - query_units @ units.T,
                "l2": ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(-1),
                "ip": -(queries @ vectors.T)}
    for metric, keys in expected.items():
        got = _ranking_keys(queries, vectors, metric)
        assert np.allclose(got, keys, rtol=1e-12, atol=1e-12 * np.abs(keys).max()), metric
        assert (np.argsort(got, axis=1, kind="stable")[:, :10] == np.argsort(keys, axis=1, kind="stable")[:, :10]).all()
