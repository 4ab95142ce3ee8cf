"""Profile `vecflow upgrade head` for each pair of compare.py under cProfile, with the counters of
counted.py, and print the top costs.

    python -m tests.bench.profile_pairs --n 20000 --dim 768 --pairs all --out bench-profile

For each pair: a fresh source and project (as compare.py builds them), then
`python -m tests.bench.counted --profile OUT/PAIR.prof OUT/PAIR.counts.json upgrade head` in the
project: cProfile around the CLI call, after the adapters and their clients are imported.
Prints and writes (OUT/profile.json) the top cumulative costs as a share of the profiled run
(frames that pass nearly all their time on to one callee, the entry chain, wrappers and lambdas
are left out, so each row is a place where the time divides) and the top own (self) times.
cProfile slows Python-heavy code more than code in C, so the shares lean towards vecflow's own
Python; the read counts are exact either way.
"""

from __future__ import annotations

import argparse
import json
import pstats
import shutil
import sys
from pathlib import Path

from tests.bench import harness, stores
from tests.bench.compare import full_reads, scratch
from tests.conftest import running_redis

TRUNK_SHARE = 0.98  # frames above this share of the run are the call chain down to the step


def label(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    path = Path(filename)
    parts = path.parts
    for anchor in ("vecflow", "chromadb", "qdrant_client", "redis", "faiss", "numpy", "sqlite3", "json"):
        if anchor in parts:
            index = len(parts) - 1 - parts[::-1].index(anchor)
            return f"{'/'.join(parts[index:])}:{line}({function})"
    return f"{path.name}:{line}({function})"


WRAPPERS = ("vecflow/backends/retry.py", "vecflow/backends/base.py:_retried", "contextlib.py", "functools.py")
PASS_THROUGH = 0.95  # a frame whose time is nearly all in one callee is shown as that callee


def _skipped(key: tuple[str, int, str]) -> bool:
    """Frames that say nothing about cost: the entry chain, our wrappers, retry/context wrappers,
    lambdas, and imports other than their top frame (shown once, as `imports`)."""
    filename, _, function = key
    if "importlib._bootstrap" in filename:
        return function != "_find_and_load"
    where = f"{filename}:{function}"
    return ("tests/bench/" in filename or filename.endswith(("runpy.py", "cProfile.py")) or "runpy" in filename
            or function in ("<module>", "<built-in method builtins.exec>", "<lambda>", "<genexpr>", "<listcomp>")
            or any(w in where for w in WRAPPERS))


def _passes_through(key, rows: dict, children: dict) -> bool:
    cumulative = rows[key][3]
    return bool(cumulative) and max(children.get(key, {0: 0}).values()) >= PASS_THROUGH * cumulative


def top_costs(path: Path, count: int = 8) -> dict:
    stats = pstats.Stats(str(path))
    total = stats.total_tt
    rows = stats.stats  # key -> (primitive calls, calls, tottime, cumtime, callers)
    children: dict = {}
    for callee, row in rows.items():
        for caller, (_, _, _, cum) in row[4].items():
            children.setdefault(caller, {})[callee] = cum
    shown = [(key, v[3]) for key, v in rows.items()
             if not _skipped(key) and v[3] < TRUNK_SHARE * total and not _passes_through(key, rows, children)]
    cumulative = sorted(shown, key=lambda kv: -kv[1])
    own = sorted(((key, v[2]) for key, v in rows.items()), key=lambda kv: -kv[1])

    def name(key) -> str:
        return "imports" if key[2] == "_find_and_load" else label(key)

    return {
        "total_seconds": total,
        "cumulative": [{"function": name(key), "seconds": cum, "share": cum / total}
                       for key, cum in cumulative[:count]],
        "own": [{"function": label(key), "seconds": tt, "share": tt / total} for key, tt in own[:count]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--pairs", default="all")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--out", default="bench-profile", help="folder for the .prof files and profile.json")
    parser.add_argument("--workdir", help="stores and templates here (default: a temporary folder on /dev/shm)")
    args = parser.parse_args(argv)
    pairs = harness.pairs_from(args.pairs)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = scratch(args.workdir)
    report: dict = {"n": args.n, "dim": args.dim, "pairs": {}}
    try:
        with running_redis(base) as redis_url:
            templates = {backend: stores.ensure_template(base, backend, args.n, args.dim, redis_url)
                         for backend in sorted({harness.PAIRS[p][0] for p in pairs})}
            for pair in pairs:
                run = harness.prepare_run(base, pair, "profile", templates)
                prof, counts = out / f"{pair}.prof", out / f"{pair}.counts.json"
                try:
                    result = harness.measure([sys.executable, "-m", "tests.bench.counted", "--profile", str(prof),
                                              str(counts), "upgrade", "head"],
                                             run.project, harness.repo_env())
                    if result.returncode != 0:
                        raise SystemExit(f"profiled vecflow {pair} failed:\n{result.stdout}\n{result.stderr}")
                    counted = json.loads(counts.read_text())
                finally:
                    harness.finish_run(run)
                costs = top_costs(prof, args.top)
                costs["wall_seconds"] = result.wall_seconds
                costs["full_reads"] = full_reads(counted["counts"], args.n)
                costs["phases"] = counted["phases"]
                costs["import_seconds"] = counted["import_seconds"]
                report["pairs"][pair] = costs
                print(f"\n{harness.LABELS[pair]} (N={args.n}, dim {args.dim}): {costs['total_seconds']:.1f} s"
                      f" profiled ({result.wall_seconds:.1f} s wall, {counted['import_seconds']:.1f} s of it"
                      " importing before the profile)")
                print("  top cumulative:")
                for row in costs["cumulative"]:
                    print(f"    {row['share']:6.1%}  {row['seconds']:7.2f} s  {row['function']}")
                print("  top own time:")
                for row in costs["own"]:
                    print(f"    {row['share']:6.1%}  {row['seconds']:7.2f} s  {row['function']}")
                print("  full reads: " + json.dumps(costs["full_reads"]))
                print("  phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in costs["phases"].items()), flush=True)
                (out / "profile.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
