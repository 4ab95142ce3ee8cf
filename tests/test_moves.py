"""copy_collection and move_collection between real stores: verified, resumable, reversible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.project import Project
from vecflow.backends.faiss import FaissBackend
from vecflow.batch import Batch
from vecflow.errors import DryRunFailedError, OperationError, VerificationError
from vecflow.runtime.stores import Stores


def clustered_batch(n: int, dim: int, seed: int = 0, prefix: str = "chunk") -> Batch:
    """Embedding-like data: points around 40 centres, with rich metadata and text."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    labels = rng.integers(0, 40, n)
    vectors = centres[labels] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    metadatas = [{"source": f"file-{i % 97}.pdf", "page": int(i % 31), "score": float(i % 13) / 13,
                  "lang": ["en", "de", "日本語"][i % 3], "reviewed": i % 5 == 0,
                  "tags": ["a", f"t{i % 7}"] if i % 4 == 0 else [],
                  "extra": {"nested": {"k": i % 3}} if i % 6 == 0 else None} for i in range(n)]
    documents = [f"chunk {i} of the corpus — text ✓" if i % 50 else None for i in range(n)]
    return Batch([f"{prefix}-{i:06d}" for i in range(n)], vectors, documents, metadatas)


def seed(project: Project, ref: str, batch: Batch, metric: str = "cosine") -> str:
    return project.seed(ref, batch, metric, page=2000)


@pytest.fixture
def four_stores(fast_tmp_path, redis_url):
    tmp_path = fast_tmp_path

    def make(batch_size: int = 500) -> Project:
        return Project(tmp_path / "project", {"path": str(tmp_path / "chroma")}, batch_size=batch_size,
                       extra_stores={"faiss": ("faiss", {"path": str(tmp_path / "faiss")}),
                                     "redis": ("redis", {"url": redis_url, "key_prefix": f"{tmp_path.name}:"}),
                                     "qdrant": ("qdrant", {"path": str(tmp_path / "qdrant")})})
    return make


def test_cycle_through_every_backend_and_back(four_stores):
    """Chroma -> FAISS -> Redis -> Qdrant -> Chroma, 20k x 384, then downgrade all the way back."""
    project = four_stores(batch_size=1000)
    original = seed(project, "main:corpus", clustered_batch(20_000, 384))
    hops = [("main:corpus", "faiss:corpus"), ("faiss:corpus", "redis:corpus"),
            ("redis:corpus", "qdrant:corpus"), ("qdrant:corpus", "main:corpus_final")]
    previous = None
    for number, (source, target) in enumerate(hops, start=1):
        project.write_python(f"hop{number}", previous, f"op.move_collection({source!r}, {target!r})")
        previous = f"hop{number}"

    dry = "\n".join(project.run("upgrade", "head", dry_run=True))
    assert "main:corpus: 20000 records" in dry and "qdrant:corpus: does not exist yet" in dry

    lines = project.run("upgrade", "head")
    assert sum("verified" in line for line in lines) == 4, lines
    assert all("parity" in line for line in lines if "verified" in line)
    assert project.digest("main:corpus_final") == original
    for ref in ("main:corpus", "faiss:corpus", "redis:corpus", "qdrant:corpus"):
        assert project.digest(ref) == "absent"
    final = project.records("main:corpus_final")
    assert final["chunk-000006"].metadata["extra"] == {"nested": {"k": 0}}
    assert final["chunk-000050"].document is None and final["chunk-000001"].document.endswith("✓")

    lines = project.run("downgrade", "base")
    assert sum("verified corpus" in line or "verified main:corpus" in line or "verified" in line
               for line in lines) >= 8
    assert project.digest("main:corpus") == original
    assert project.digest("main:corpus_final") == "absent"


def test_dry_run_reports_metadata_a_target_stores_encoded(four_stores):
    project = four_stores()
    seed(project, "redis:docs", clustered_batch(300, 16))
    project.write_python("m1", None, 'op.move_collection("redis:docs", "main:docs")')
    lines = project.run("upgrade", "head", dry_run=True)
    coercions = [line.strip() for line in lines if "coercion" in line]
    assert any(line.startswith("coercion: metadata field 'extra'") for line in coercions), lines
    assert any(line.startswith("coercion: metadata field 'tags'") for line in coercions), lines
    assert project.digest("main:docs") == "absent"
    project.run("upgrade", "head")
    assert project.records("main:docs")["chunk-000006"].metadata["extra"] == {"nested": {"k": 0}}


def test_copy_keeps_the_source_and_its_downgrade_drops_the_copy(four_stores):
    project = four_stores()
    original = seed(project, "main:docs", clustered_batch(1500, 32), metric="l2")
    project.write_python("c1", None, 'op.copy_collection("main:docs", "faiss:docs_copy")')
    lines = project.run("upgrade", "head")
    assert any("verified faiss:docs_copy: 1500 records" in line for line in lines)
    assert project.digest("faiss:docs_copy") == original == project.digest("main:docs")
    project.run("downgrade", "base")
    assert project.digest("faiss:docs_copy") == "absent" and project.digest("main:docs") == original


def test_a_move_into_an_existing_empty_collection_is_undone_leaving_it_empty(four_stores):
    project = four_stores()
    original = seed(project, "main:docs", clustered_batch(300, 16), metric="l2")
    empty = seed(project, "faiss:docs", Batch.empty(16), metric="l2")
    project.write_python("m1", None, 'op.move_collection("main:docs", "faiss:docs")')
    project.run("upgrade", "head")
    assert project.digest("main:docs") == "absent" and project.digest("faiss:docs") == original
    assert any("restored exactly" in line for line in project.run("downgrade", "base"))
    assert project.digest("main:docs") == original and project.digest("faiss:docs") == empty


def test_target_with_another_dimension_or_metric_is_refused_before_writing(four_stores):
    project = four_stores()
    seed(project, "main:docs", clustered_batch(300, 16))
    seed(project, "redis:docs", clustered_batch(5, 8))
    project.write_python("m1", None, 'op.move_collection("main:docs", "redis:docs")')
    with pytest.raises(DryRunFailedError, match=r"upgrade m1, step 1 \(move_collection main:docs -> redis:docs\)"):
        project.run("upgrade", "head", dry_run=True)
    assert "refused: move_collection: target redis:docs exists with dim 8" in "\n".join(project.output)
    with pytest.raises(OperationError, match="target redis:docs exists with dim 8, metric cosine"):
        project.run("upgrade", "head")
    assert project.digest("main:docs").startswith("300:")
    assert project.digest("redis:docs").startswith("5:")


def test_non_empty_target_is_refused(four_stores):
    project = four_stores()
    seed(project, "main:docs", clustered_batch(300, 16))
    seed(project, "faiss:docs", clustered_batch(5, 16))
    project.write_python("m1", None, 'op.copy_collection("main:docs", "faiss:docs")')
    with pytest.raises(OperationError, match="already holds 5 records"):
        project.run("upgrade", "head")


def test_existing_empty_target_is_filled_and_emptied_again_on_downgrade(four_stores):
    project = four_stores()
    original = seed(project, "main:docs", clustered_batch(400, 16))
    seed(project, "qdrant:docs", clustered_batch(0, 16))
    project.write_python("c1", None, 'op.copy_collection("main:docs", "qdrant:docs")')
    project.run("upgrade", "head")
    assert project.digest("qdrant:docs") == original
    project.run("downgrade", "base")
    assert project.digest("qdrant:docs") == "0:" + "0" * 32


def test_a_lossy_target_fails_verification_and_the_source_is_untouched(four_stores, monkeypatch):
    from vecflow.backends.faiss import FaissBackend

    project = four_stores(batch_size=100)
    original = seed(project, "main:docs", clustered_batch(400, 16))
    real_upsert = FaissBackend.upsert

    def lossy_upsert(self, name, batch):  # fault injection: a store that silently loses a record
        real_upsert(self, name, batch.take(list(range(len(batch) - 1))))

    monkeypatch.setattr(FaissBackend, "upsert", lossy_upsert)
    project.write_python("m1", None, 'op.move_collection("main:docs", "faiss:docs")')
    with pytest.raises(VerificationError, match=r"counts differ: source 400, target 396; 4 ids missing"):
        project.run("upgrade", "head")
    assert project.digest("main:docs") == original
    lines = project.run("current")
    assert lines[0] == "<base> (nothing applied)" and lines[1].startswith("unfinished: upgrade of m1 (failed)")


def test_verify_copy_reports_every_kind_of_difference(four_stores):
    from vecflow.runtime.verify import verify_copy

    project = four_stores()
    batch = clustered_batch(300, 16)
    seed(project, "main:docs", batch, metric="l2")
    changed = batch.take(list(range(1, 300)))
    changed.vectors = np.ascontiguousarray(changed.vectors[::-1])
    seed(project, "faiss:docs", changed, metric="l2")
    stores = Stores(project.config)
    try:
        (source, _), (target, _) = stores.resolve("main:docs"), stores.resolve("faiss:docs")
        report = verify_copy(source, "docs", target, "docs", batch_size=64, queries=30)
    finally:
        stores.close()
    problems = "; ".join(report.problems)
    assert "counts differ: source 300, target 299" in problems
    assert "1 ids missing from the target (e.g. ['chunk-000000'])" in problems
    assert "digests differ" in problems and "search parity" in problems
    assert report.parity < 0.5 and report.parity_threshold == 0.99


def test_no_verify_skips_the_checks(four_stores):
    project = four_stores()
    seed(project, "main:docs", clustered_batch(200, 16))
    project.write_python("m1", None, 'op.move_collection("main:docs", "redis:docs")')
    lines = project.run("upgrade", "head", verify=False)
    assert not any("verified" in line for line in lines)
    assert project.digest("redis:docs").startswith("200:")


def test_killed_redis_to_chroma_move_resumes_without_loss_or_duplicates(four_stores):
    """SIGKILL a 50k-record Redis -> Chroma move at a random batch, then rerun the upgrade."""
    import random

    from tests.project import kill_upgrade_at, step_progress

    project = four_stores(batch_size=500)
    original = seed(project, "redis:docs", clustered_batch(50_000, 64))
    project.write_python("m1", None, 'op.move_collection("redis:docs", "main:docs")')
    kill_batch = random.Random().randint(5, 90)
    print(f"killing at batch {kill_batch} of 100")
    killed_at = kill_upgrade_at(project, "m1", kill_batch * 500)
    rows, status = step_progress(project.root / ".vecflow" / "ledger.db", "m1")
    assert status == "running" and killed_at <= rows < 50_000
    assert project.digest("redis:docs") == original, "the source must be untouched"

    lines = project.cli("upgrade", "head").stdout
    assert f"resuming at {rows} rows" in lines and "verified main:docs: 50000 records" in lines
    assert project.digest("main:docs") == original
    assert project.digest("redis:docs") == "absent"


class NormalisingFaissBackend(FaissBackend):
    """Test double of a store that normalises cosine vectors on write (as Qdrant does natively)."""

    name = "faiss_normalising"
    normalises_cosine = True
    nudge: str | None = None  # an id whose stored vector is also perturbed (a lossy store)

    def upsert(self, collection, batch):
        if self.describe(collection).metric == "cosine" and len(batch):
            vectors = batch.vectors / np.linalg.norm(batch.vectors, axis=1, keepdims=True)
            if self.nudge in batch.ids:
                vectors[batch.ids.index(self.nudge), 0] += 1e-3
            batch = Batch(batch.ids, vectors.astype(np.float32), batch.documents, batch.metadatas)
        super().upsert(collection, batch)


@pytest.fixture
def normalising_store(tmp_path, monkeypatch):
    from vecflow import backends

    monkeypatch.setitem(backends._REGISTRY, "faiss_normalising", ("tests.test_moves:NormalisingFaissBackend", ""))
    monkeypatch.setattr(NormalisingFaissBackend, "nudge", None)
    project = Project(tmp_path / "project", {"path": str(tmp_path / "chroma")}, batch_size=100,
                      extra_stores={"norm": ("faiss_normalising", {"path": str(tmp_path / "norm")})})
    return project, NormalisingFaissBackend


def test_a_normalising_target_is_verified_within_the_documented_tolerance(normalising_store):
    project, _ = normalising_store
    seed(project, "main:docs", clustered_batch(300, 16))
    project.write_python("c1", None, 'op.copy_collection("main:docs", "norm:docs")')
    lines = project.run("upgrade", "head")
    assert any("vectors within 1e-06 after normalising" in line for line in lines), lines


def test_a_normalising_target_that_alters_a_vector_fails_verification(normalising_store):
    project, cls = normalising_store
    seed(project, "main:docs", clustered_batch(300, 16))
    cls.nudge = "chunk-000042"  # reset by the fixture's monkeypatch
    project.write_python("c1", None, 'op.copy_collection("main:docs", "norm:docs")')
    expected = r"1 vectors differ beyond 1e-06 after normalising \(e.g. \['chunk-000042'\]\)"
    with pytest.raises(VerificationError, match=expected):
        project.run("upgrade", "head")



def _folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_verifying_a_copy_writes_nothing_into_an_approximate_faiss_source(four_stores):
    """Search parity queries an approximate source for its own recall: FAISS would rebuild its
    HNSW index for that and save it into the source's folder."""
    project = four_stores(batch_size=200)
    with project.opened("faiss:docs") as (backend, name):
        backend.create_collection(name, 16, "cosine", index_type="hnsw")
        backend.upsert(name, clustered_batch(600, 16))
    root = Path(project.config.stores["faiss"].options["path"])
    before = _folder_bytes(root)
    project.write_python("c1", None, 'op.copy_collection("faiss:docs", "main:docs")')
    lines = project.run("upgrade", "head")
    assert any("verified main:docs" in line for line in lines), lines
    assert _folder_bytes(root) == before


@pytest.mark.parametrize("source", ["main:docs", "qdrant:docs"])
def test_verifying_a_move_leaves_a_chroma_or_qdrant_source_as_the_application_reads_it(four_stores, source):
    """keep_source keeps the source after the verified move: its records, as the application
    reads them natively (every byte of every record), are what they were before."""
    project = four_stores(batch_size=200)
    with project.opened(source) as (backend, name):
        backend.create_collection(name, 16, "cosine")
        backend.upsert(name, clustered_batch(600, 16))
    before = project.digest_pair(source)
    project.write_python("m1", None, f'op.move_collection("{source}", "faiss:docs", keep_source=True)')
    lines = project.run("upgrade", "head")
    assert any("verified faiss:docs" in line and "search parity: recall@10" in line for line in lines), lines
    assert project.digest_pair(source) == before


def test_a_store_held_read_only_refuses_writes(four_stores):
    project = four_stores()
    with project.opened("faiss:docs") as (backend, name):
        backend.create_collection(name, 4, "l2")
        with backend.read_only(), pytest.raises(OperationError, match="is read-only here"):
            backend.upsert(name, Batch(["a"], np.ones((1, 4), np.float32), [None], [{}]))
        backend.upsert(name, Batch(["a"], np.ones((1, 4), np.float32), [None], [{}]))
        assert backend.count(name) == 1


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_a_chroma_target_is_verified_from_the_read_back_of_its_writes(four_stores, metric):
    # Chroma reads every write back anyway (exact bits of cosine vectors, float values it changes):
    # fetched whole, that read-back is the target's digest, and verification does not read the
    # target again. What it records is what a full read gives afterwards.
    from tests.test_field_digests import step_row

    project = four_stores(batch_size=200)
    rng = np.random.default_rng(5)
    batch = clustered_batch(900, 16)
    # 16-17 digit floats: about one in ten comes back from Chroma 1 ulp off unless vecflow sends it again.
    batch = batch.with_metadatas([{**m, "ratio": float(rng.random()) * 3.3 + 0.1} for m in batch.metadatas])
    seed(project, "faiss:docs", batch, metric)
    before = project.digest_pair("faiss:docs")
    project.write_python("m1", None, 'op.move_collection("faiss:docs", "main:docs")')
    output = project.run("upgrade", "head")
    assert "      full reads: faiss:docs 1 (move_collection)" in output, output
    row = step_row(project, "m1")
    assert json.loads(row["digest_after"])["main:docs"] == project.digest_pair("main:docs")
    # Moved back (a Chroma source, a FAISS target: read whole by verification), restored exactly.
    output = project.run("downgrade", "base")
    assert "      full reads: main:docs 1 (move_collection); faiss:docs 1 (verify (target records))" in output, output
    assert project.digest_pair("faiss:docs") == before


def test_a_record_the_chroma_target_loses_after_its_read_back_fails_the_move(four_stores, monkeypatch):
    # The read-back stands for the target only while the target holds as many records: one lost
    # later makes verification read the target whole, which names it; the source is kept.
    from vecflow.backends.chroma import ChromaBackend

    project = four_stores(batch_size=200)
    seed(project, "faiss:docs", clustered_batch(600, 16))
    read_back = ChromaBackend._upsert_read_back

    def losing(self, name, batch):
        page = read_back(self, name, batch)
        if "chunk-000007" in batch.ids:
            self.client.get_collection(name).delete(ids=["chunk-000007"])
        return page

    monkeypatch.setattr(ChromaBackend, "_upsert_read_back", losing)
    project.write_python("m1", None, 'op.move_collection("faiss:docs", "main:docs")')
    with pytest.raises(VerificationError, match=r"1 ids missing from the target \(e.g. \['chunk-000007'\]\)"):
        project.run("upgrade", "head")
    stores = Stores(project.config)
    try:
        faiss, name = stores.resolve("faiss:docs")
        assert faiss.count(name) == 600
    finally:
        stores.close()
