"""What compare.py and profile.py share: the pairs, one run's folder (source clone, target, vecflow
project), and running a child process with its wall time and peak RSS."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from tests.bench import stores

# pair -> (source backend, target backend or None for the in-place field change)
PAIRS: dict[str, tuple[str, str | None]] = {
    "chroma-faiss": ("chroma", "faiss"),
    "faiss-chroma": ("faiss", "chroma"),
    "redis-chroma": ("redis", "chroma"),
    "chroma-qdrant": ("chroma", "qdrant"),
    "redis-qdrant": ("redis", "qdrant"),
    "chroma-fields": ("chroma", None),
    # The memory benchmark's pairs (tests/bench/memory.py), not in compare.py's `all`.
    "faiss-redis": ("faiss", "redis"),
    "redis-faiss": ("redis", "faiss"),
}
COMPARED = ("chroma-faiss", "faiss-chroma", "redis-chroma", "chroma-qdrant", "redis-qdrant", "chroma-fields")
LABELS = {
    "chroma-faiss": "Chroma → FAISS", "faiss-chroma": "FAISS → Chroma", "redis-chroma": "Redis → Chroma",
    "chroma-qdrant": "Chroma → Qdrant local", "redis-qdrant": "Redis → Qdrant local",
    "chroma-fields": "Chroma rename_field + set_field",
    "faiss-redis": "FAISS → Redis", "redis-faiss": "Redis → FAISS",
}
REVISION = '''"""benchmark: {what}"""

revision = "bench0001"
down_revision = None


def upgrade(op):
{body}
'''
MOVE = '    op.move_collection("src:docs", "dst:docs")\n'
FIELDS = ('    op.rename_field("src:docs", "author", "writer")\n'
          '    op.set_field("src:docs", "decade", "(year // 10) * 10")\n')


def pairs_from(text: str, known: tuple[str, ...] = COMPARED) -> list[str]:
    """The pairs a --pairs value names: `all` (the known ones) or a comma list of known pairs."""
    names = list(known) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown pair(s) {', '.join(unknown)}; known: all, {', '.join(known)}")
    return names


@dataclass
class Run:
    """One run's folder: a fresh source, an empty target, and a vecflow project over both."""

    folder: Path
    pair: str
    source: dict[str, str]
    target: dict[str, str]
    redis_prefix: str | None = None
    target_prefix: str | None = None

    @property
    def project(self) -> Path:
        return self.folder / "project"


def prepare_run(base: Path, pair: str, tag: str, templates: dict[str, Path | str],
                redis_url: str | None = None) -> Run:
    """redis_url: the server a Redis target is written to (under a key prefix of this run's)."""
    source_backend, target_backend = PAIRS[pair]
    folder = base / "runs" / f"{pair}-{tag}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    prefix = f"run-{tag}-{os.getpid()}:" if source_backend == "redis" else None
    source = stores.clone(templates[source_backend], source_backend, folder / "source", prefix or "")
    target = {"path": str(folder / "target")} if target_backend else {}
    target_prefix = None
    if target_backend == "redis":
        target_prefix = f"dst-{tag}-{os.getpid()}:"
        target = {"url": str(redis_url), "key_prefix": target_prefix}
    run = Run(folder, pair, source, target, prefix, target_prefix)
    write_project(run)
    return run


def write_project(run: Run) -> None:
    source_backend, target_backend = PAIRS[run.pair]
    sections = [("src", source_backend, run.source)] + ([("dst", target_backend, run.target)] if target_backend else [])
    text = "[vecflow]\nscript_location = %(here)s/versions\nledger = %(here)s/.vecflow/ledger.db\n"
    for name, backend, options in sections:
        text += f"\n[store:{name}]\nbackend = {backend}\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
    (run.project / "versions").mkdir(parents=True)
    (run.project / "vecflow.ini").write_text(text, encoding="utf-8")
    body = MOVE if target_backend else FIELDS
    (run.project / "versions" / "bench0001_bench.py").write_text(
        REVISION.format(what=LABELS[run.pair], body=body), encoding="utf-8")


def finish_run(run: Run, keep: bool = False) -> None:
    if run.redis_prefix:
        stores.forget_redis_prefix(run.source["url"], run.redis_prefix)
    if run.target_prefix:
        stores.forget_redis_prefix(run.target["url"], run.target_prefix)
    if not keep:
        shutil.rmtree(run.folder, ignore_errors=True)


@dataclass
class Measured:
    command: list[str]
    returncode: int
    wall_seconds: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stdout"] = data["stdout"][-4000:]
        data["stderr"] = data["stderr"][-4000:]
        return data


def measure(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> Measured:
    """Run command to its end; its wall time and peak RSS (ru_maxrss of this very child, from
    wait4: not mixed with earlier children)."""
    out_path, err_path = cwd / ".bench-stdout", cwd / ".bench-stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    result = Measured(command, process.returncode, wall, usage.ru_maxrss / 1024,
                      out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))
    out_path.unlink()
    err_path.unlink()
    return result


def native_command(run: Run, dim: int) -> list[str]:
    return [sys.executable, "-m", "tests.bench.native", run.pair, json.dumps(run.source), json.dumps(run.target),
            str(dim)]


def run_native_loop(run: Run, pair: str, n: int, dim: int) -> dict:
    """tests/bench/native.py over a prepared run: its measurement, the loop's own seconds and the
    records it moved (SystemExit when it failed or moved another number)."""
    result = measure(native_command(run, dim), run.folder, repo_env())
    if result.returncode != 0:
        raise SystemExit(f"native {pair} failed:\n{result.stderr}")
    inner = json.loads(result.stdout.strip().splitlines()[-1])
    if inner["records"] != n:
        raise SystemExit(f"native {pair} moved {inner['records']} records, expected {n}")
    return {**result.to_dict(), "inner_seconds": inner["seconds"], "records": inner["records"]}


def write_result(result: dict, out: str, base: Path, workdir: str | None) -> None:
    """A benchmark's last act, errors or not: the end load, the JSON result, and the scratch
    folder removed unless the user named it (--workdir)."""
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    if not workdir:
        shutil.rmtree(base, ignore_errors=True)


def vecflow_command() -> list[str]:
    return [sys.executable, "-m", "vecflow", "upgrade", "head"]


def repo_env() -> dict[str, str]:
    """PYTHONPATH with the checkout, so `-m tests.bench.*` resolves from a run's folder."""
    root = str(Path(__file__).resolve().parents[2])
    return {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def ledger_timings(project: Path) -> dict:
    """The attempt's and each step's duration (seconds) and rows, from .vecflow/ledger.db."""
    path = project / ".vecflow" / "ledger.db"
    if not path.exists():
        return {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        attempt = conn.execute("SELECT * FROM attempts ORDER BY id DESC LIMIT 1").fetchone()
        if attempt is None:
            return {}  # refused before its first attempt (the caller reports the output)
        steps = conn.execute("SELECT * FROM steps WHERE attempt_id = ? ORDER BY step_index", [attempt["id"]]).fetchall()
    return {
        "attempt_seconds": _seconds(attempt["started_at"], attempt["finished_at"]),
        "outcome": attempt["outcome"],
        "steps": [{"op": s["op"], "rows": s["rows_done"], "status": s["status"],
                   "seconds": _seconds(s["started_at"], s["finished_at"])} for s in steps],
    }


def _seconds(started: str | None, finished: str | None) -> float | None:
    if not started or not finished:
        return None
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
