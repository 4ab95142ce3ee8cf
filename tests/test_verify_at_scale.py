"""Verification at 100,000 x 768 (cosine, random vectors) through the real CLI, with vecflow's
default thresholds: FAISS -> Chroma and Chroma -> FAISS copies pass, and a damaged copy (1% of
the vectors perturbed, or 0.1% of the records missing) fails with a line naming what differs and
leaves its source as it was.

Each source is built once: the FAISS source is written in vecflow's own format, and the Chroma
collection the FAISS -> Chroma copy produces is the source of every Chroma -> FAISS run. The
damage is a fault injected in the FAISS target's write path (tests/faulty_writes.py), inside the
real `vecflow upgrade head` process."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tmpfs_folder
from tests.project import REPO, Project
from vecflow.backends.faiss import FaissBackend
from vecflow.batch import Batch
from vecflow.runtime.digest import Digest, batch_digest

pytestmark = pytest.mark.slow

N, DIM = 100_000, 768
WRITE_PAGE = 5000
BATCH_SIZE = 1000
# Damage: every 100th record's vector perturbed (1%), every 1000th record left out (0.1%).
PERTURB_EVERY, DROP_EVERY = 100, 1000
# A Chroma write of N records is minutes on a loaded machine (HNSW inserts at dim 768).
TIMEOUT = 3600


def record_id(i: int) -> str:
    return f"r{i:06d}"


@pytest.fixture(scope="module")
def scale_tmp(tmp_path_factory) -> Iterator[Path]:
    """Module-wide scratch on tmpfs when the machine has one (as fast_tmp_path, for the module)."""
    with tmpfs_folder(tmp_path_factory.mktemp("scale"), prefix="vecflow-scale-") as folder:
        yield folder


@dataclass
class Source:
    path: Path
    digest: str  # the logical digest of the N records, as written


@pytest.fixture(scope="module")
def faiss_source(scale_tmp) -> Source:
    """N random records (a document and one metadata field each) in vecflow's own FAISS format."""
    path = scale_tmp / "faiss-source"
    rng = np.random.default_rng(13)
    store = FaissBackend(path=str(path))
    digest = Digest.empty()
    try:
        store.create_collection("docs", DIM, "cosine")
        for start in range(0, N, WRITE_PAGE):
            numbers = range(start, start + WRITE_PAGE)
            batch = Batch([record_id(i) for i in numbers], rng.standard_normal((WRITE_PAGE, DIM), dtype=np.float32),
                          [f"text {i}" for i in numbers], [{"i": i} for i in numbers])
            store.upsert("docs", batch)
            digest = digest + batch_digest(batch)
    finally:
        store.close()
    return Source(path, digest.to_text())


STORES = {"chroma": "chroma", "perturbed": "faiss", "dropped": "faiss", "copied": "faiss"}
REVISIONS = {  # all on m1, each reached alone (upgrade <rev>)
    # A lighter HNSW graph than Chroma's default (ef_construction 100, max_neighbors 16) builds
    # about 4x faster; the verification thresholds stay the defaults, and no bar depends on it.
    "m1": (None, 'op.copy_collection("main:docs", "chroma:docs", '
                 'target_params={"hnsw": {"ef_construction": 16, "max_neighbors": 8}})'),
    "perturbed": ("m1", 'op.move_collection("chroma:docs", "perturbed:docs")'),
    "dropped": ("m1", 'op.move_collection("chroma:docs", "dropped:docs")'),
    "copied": ("m1", 'op.copy_collection("chroma:docs", "copied:docs")'),
}


def last_step(project: Project, revision: str) -> dict:
    """The outcome and one-line error of the revision's last attempt, and the state its step
    keeps in the ledger (its verification report)."""
    with sqlite3.connect(project.root / ".vecflow" / "ledger.db") as conn:
        outcome, error, state, before = conn.execute(
            "SELECT a.outcome, a.error, s.cursor, s.digest_before FROM steps s JOIN attempts a ON a.id = s.attempt_id "
            "WHERE a.revision = ? ORDER BY a.id DESC", [revision]).fetchone()
    return {"outcome": outcome, "error": error, "before": json.loads(before or "{}"), **json.loads(state)}


def verified_line(stdout: str, target: str) -> str:
    lines = [line.strip() for line in stdout.splitlines() if line.strip().startswith(f"verified {target}:")]
    assert len(lines) == 1, stdout
    return lines[0]


@dataclass
class Copied:
    project: Project
    stdout: str


@pytest.fixture(scope="module")
def chroma_copy(scale_tmp, faiss_source) -> Copied:
    """One project (one ledger, one vecflow state: the exact bits Chroma changed on write) for
    every run: FAISS -> Chroma first, through `vecflow upgrade m1` in a subprocess."""
    project = Project(scale_tmp / "project", {"path": str(faiss_source.path)}, backend="faiss",
                      batch_size=BATCH_SIZE,
                      extra_stores={name: (kind, {"path": str(scale_tmp / name)}) for name, kind in STORES.items()})
    for revision, (down, body) in REVISIONS.items():
        project.write_python(revision, down, body)
    return Copied(project, project.cli("upgrade", "m1", timeout=TIMEOUT).stdout)


def test_faiss_to_chroma_at_100k_passes_verification_with_the_default_thresholds(chroma_copy, faiss_source):
    line = verified_line(chroma_copy.stdout, "chroma:docs")
    report = last_step(chroma_copy.project, "m1")["verification"]
    search = report["search"]
    print(f"FAISS -> Chroma at {N} x {DIM}: {line}")
    assert report["source_count"] == report["target_count"] == report["source_count_now"] == N
    assert report["missing_ids"] == report["extra_ids"] == report["vectors_off"] == []
    assert report["source_digest"] == report["target_digest"] == faiss_source.digest
    # An exact (flat) source and an approximate (HNSW) target: the digests prove the copy, and the
    # target's recall against the exact top-k is reported with no bar to reach.
    assert search["source_recall"] is None and search["required"] is None and search["floor"] is None
    assert 0 < search["target_recall"] <= 1 and search["queries"] == 20 and search["record_queries"] == 10
    assert line.startswith(f"verified chroma:docs: {N} records, ids equal, digest equal (exact), search parity: "
                           f"recall@10 target {search['target_recall']:.3f} over 20 queries (10 records, "
                           "10 random directions; no bar: an exact source and an approximate target")


def damaged_move(project: Project, revision: str, how: str, every: int) -> tuple[str, dict]:
    """Chroma -> FAISS move at N through `vecflow upgrade <revision>`, its FAISS writes damaged:
    the one line it printed on stderr, and its step as the ledger keeps it."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # finds tests.faulty_writes
    result = subprocess.run([sys.executable, "-m", "tests.faulty_writes", how, str(every), "upgrade", revision],
                            cwd=project.root, capture_output=True, text=True, timeout=TIMEOUT,
                            env={**os.environ, "PYTHONPATH": path})
    line, step = error_line(result, f"{revision}:docs"), last_step(project, revision)
    # The failed attempt is abandoned, so the next test can upgrade along another branch.
    project.cli("stamp", "current")
    return line, step


def error_line(result: subprocess.CompletedProcess, target: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vecflow: error: move_collection chroma:docs -> {target} did "
                                                   "not verify (the source is untouched): "), result.stderr
    return lines[0]


def assert_source_kept(step: dict, source_digest: str) -> None:
    """The failed move read its whole source as written (the digest before its step) and did not
    drop it (tests further down read it again)."""
    assert step["outcome"] == "failed" and not step.get("dropping_source") and not step.get("source_dropped")
    assert step["digests_before"]["chroma:docs"].partition("|")[0] == source_digest
    assert step["verification"]["source_count_now"] == N


def examples(line: str, what: str) -> list[str]:
    """The example ids a problem of the error line lists."""
    found = re.search(re.escape(what) + r"[^;]*?\(e\.g\. (\[[^\]]*\])\)", line)
    assert found, f"{what!r} not in {line}"
    return json.loads(found.group(1).replace("'", '"'))


def test_a_copy_with_1_percent_of_vectors_perturbed_fails_naming_them(chroma_copy, faiss_source):
    project = chroma_copy.project
    line, step = damaged_move(project, "perturbed", "perturb", PERTURB_EVERY)
    print(line)
    assert re.search(rf"digests differ: source {N}:\w+:v\d, target {N}:\w+:v\d", line)
    assert f"{N // PERTURB_EVERY} vectors differ from the source's (e.g. " in line
    assert all(int(rid[1:]) % PERTURB_EVERY == 0 for rid in examples(line, "vectors differ"))
    assert "counts differ" not in line and "ids missing" not in line and "documents differ" not in line
    assert step["error"] == line.removeprefix("vecflow: error: ")
    assert len(step["verification"]["vectors_off"]) == 20 and step["verification"]["search"]["required"] == 0.99
    assert_source_kept(step, faiss_source.digest)
    shutil.rmtree(project.root.parent / "perturbed")


def test_a_copy_missing_a_tenth_of_a_percent_of_records_fails_naming_them(chroma_copy, faiss_source):
    project = chroma_copy.project
    line, step = damaged_move(project, "dropped", "drop", DROP_EVERY)
    print(line)
    dropped = N // DROP_EVERY
    assert f"counts differ: source {N}, target {N - dropped}; {dropped} ids missing from the target (e.g. " in line
    assert examples(line, "ids missing") == [record_id(i * DROP_EVERY) for i in range(min(5, dropped))]
    assert "digests differ" in line and "vectors differ" not in line and "unexpected ids" not in line
    assert_source_kept(step, faiss_source.digest)
    shutil.rmtree(project.root.parent / "dropped")


def test_chroma_to_faiss_at_100k_passes_reading_the_source_the_damaged_moves_left(chroma_copy, faiss_source):
    """Runs after the damaged moves: its source's digest is still the one FAISS -> Chroma wrote."""
    project = chroma_copy.project
    line = verified_line(project.cli("upgrade", "copied", timeout=TIMEOUT).stdout, "copied:docs")
    step = last_step(project, "copied")
    report, search = step["verification"], step["verification"]["search"]
    print(f"Chroma -> FAISS at {N} x {DIM}: {line}")
    assert step["digests_before"]["chroma:docs"].partition("|")[0] == faiss_source.digest
    assert report["source_count"] == report["target_count"] == N and report["missing_ids"] == []
    assert report["source_digest"] == report["target_digest"] == faiss_source.digest
    # An approximate (HNSW) source, an exact (flat) target: the target must find the true top-k
    # (the floor 0.99), whatever the source's own recall on the same queries.
    assert search["target_recall"] == 1.0 and search["required"] == 0.99 and search["floor"] == 0.99
    assert 0 < search["source_recall"] <= 1 and search["rule"] == "the floor 0.99"
    assert (f"search parity: recall@10 target 1.000, source {search['source_recall']:.3f} over 20 queries "
            "(10 records, 10 random directions; required 0.990: the floor 0.99)") in line
