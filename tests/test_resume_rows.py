"""A move killed half way and rerun writes again at most one batch (issue 10's resume target).

The upgrade runs as `python -m vecflow upgrade head` in a child process and is SIGKILLed once its
step has checkpointed half of the records, between writing a batch and checkpointing it where the
test can see that moment (a FAISS target's sidecar holds more records than the checkpoint says),
else half a batch's time after a checkpoint. The rerun runs in this process with every write into
the target counted. What the rerun re-processed is what it wrote that the target already held:
the records of the batch that was written but not yet checkpointed when the kill came.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest

from tests.project import Project, faiss_rows, kill_mid_batch, step_progress
from tests.test_moves import clustered_batch, seed
from vecflow.backends.base import Backend

N, BATCH = 3000, 200


@pytest.fixture
def project(fast_tmp_path, redis_url) -> Project:
    return Project(fast_tmp_path / "project", {"path": str(fast_tmp_path / "chroma")}, batch_size=BATCH,
                   extra_stores={"faiss": ("faiss", {"path": str(fast_tmp_path / "faiss")}),
                                 "redis": ("redis", {"url": redis_url, "key_prefix": f"{fast_tmp_path.name}:"})})


def count_writes(monkeypatch) -> Counter:
    """Records sent to Backend.upsert or upsert_read_back from now on, per (backend name, collection)."""
    written: Counter = Counter()
    upsert = Backend._upsert_in_requests  # the one path of both

    @functools.wraps(upsert)
    def counted(self, name, batch, write):
        written[(self.name, name)] += len(batch)
        return upsert(self, name, batch, write)

    monkeypatch.setattr(Backend, "_upsert_in_requests", counted)
    return written


def held(project: Project, ref: str) -> int:
    with project.opened(ref) as (backend, name):
        return backend.count(name) if backend.has_collection(name) else 0


@pytest.mark.parametrize("source, target", [("main:docs", "faiss:docs"), ("redis:docs", "main:docs")],
                         ids=["chroma-to-faiss", "redis-to-chroma"])
def test_a_move_killed_half_way_rewrites_at_most_one_batch_when_rerun(project, monkeypatch, source, target):
    original = seed(project, source, clustered_batch(N, 32))
    project.write_python("m1", None, f"op.move_collection({source!r}, {target!r})")
    faiss_folder = Path(project.config.stores["faiss"].options["path"]) / "docs"
    rows = faiss_rows(faiss_folder)
    ahead = (lambda done: rows() > done) if target.startswith("faiss:") else None
    kill_mid_batch(project.root, "m1", N // 2, BATCH, ahead)
    checkpointed, status = step_progress(project.root / ".vecflow" / "ledger.db", "m1")
    assert status == "running" and N // 2 <= checkpointed < N
    in_target = held(project, target)

    written = count_writes(monkeypatch)
    lines = project.run("upgrade", "head")
    backend_name = {"main": "chroma", "faiss": "faiss", "redis": "redis"}[target.split(":")[0]]
    rerun_wrote = written[(backend_name, "docs")]
    reprocessed = rerun_wrote - (N - in_target)
    print(f"{source} -> {target}: killed with {checkpointed} of {N} rows checkpointed and {in_target} records in "
          f"the target; the rerun wrote {rerun_wrote}, of which {reprocessed} again (batch {BATCH})")

    assert f"resuming at {checkpointed} rows" in "\n".join(lines)
    assert rerun_wrote == N - checkpointed, "the rerun starts at the last checkpoint, not before it"
    assert 0 <= reprocessed <= BATCH
    assert project.digest(target) == original
    assert project.digest(source) == "absent"
