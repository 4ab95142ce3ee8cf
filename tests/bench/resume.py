"""A move SIGKILLed half way, then rerun: how many records the rerun writes again.

    python -m tests.bench.resume --n 100000 --dim 384 --pairs faiss-redis,redis-faiss,chroma-faiss

For each pair, `python -m vecflow upgrade head` moves a fresh copy of the source (vecflow's
defaults but `batch_size = 500`: a checkpoint per batch, verification on) and is SIGKILLed once its step
has checkpointed half the records: between writing a batch and checkpointing it when the target
can be read from outside (a FAISS target's sidecar holds more records than the checkpoint, a
Redis target holds the next batch's last record), else half a batch's time after a checkpoint.
The rerun runs under tests/bench/counted.py, which counts the records sent to the target.
Printed and written to --out: rows checkpointed at the kill, records the target held then,
records the rerun wrote, and of those the ones it wrote again (`rerun wrote − (N − held)`); the
target is one batch at most (issue 10).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tests.bench import harness, stores
from tests.bench.compare import machine, scratch
from tests.bench.data import record_id
from tests.conftest import running_redis
from tests.project import faiss_rows, kill_mid_batch, step_progress
from vecflow.backends import open_backend

BATCH = 500  # the batch_size this benchmark's projects set (the kill is placed by batches of it)
REVISION = "bench0001"
MOVES = tuple(pair for pair, (_, target) in harness.PAIRS.items() if target)


def held(backend: str, options: dict) -> int:
    store = open_backend(backend, options)
    try:
        return store.count(stores.COLLECTION) if store.has_collection(stores.COLLECTION) else 0
    finally:
        store.close()


def ahead_of_checkpoint(run: harness.Run, target_backend: str):
    """Whether the target, read from outside, holds records beyond `done` checkpointed ones (a
    batch written, not yet checkpointed); None where it cannot be seen. Redis: whether the last
    record of the next batch is there (the sources give records in id order, as data.py made them)."""
    if target_backend == "faiss":
        rows = faiss_rows(Path(run.target["path"]) / stores.COLLECTION)
        return lambda done: rows() > done
    if target_backend == "redis":
        import redis

        client = redis.Redis.from_url(run.target["url"])
        key = f"{run.target['key_prefix']}{stores.COLLECTION}:"
        return lambda done: bool(client.exists(key + record_id(done + BATCH - 1)))
    return None


def run_pair(base: Path, pair: str, templates: dict, redis_url: str, n: int, at: float) -> dict:
    source_backend, target_backend = harness.PAIRS[pair]
    run = harness.prepare_run(base, pair, "resume", templates, redis_url)
    ini = run.project / "vecflow.ini"
    ini.write_text(ini.read_text(encoding="utf-8").replace("[vecflow]\n", f"[vecflow]\nbatch_size = {BATCH}\n", 1),
                   encoding="utf-8")
    try:
        kill_mid_batch(run.project, REVISION, int(n * at), BATCH, ahead_of_checkpoint(run, target_backend))
        checkpointed, status = step_progress(run.project / ".vecflow" / "ledger.db", REVISION)
        in_target = held(target_backend, run.target)
        report = run.folder / "counted.json"
        result = harness.measure([sys.executable, "-m", "tests.bench.counted", str(report), "upgrade", "head"],
                                 run.project, harness.repo_env())
        if result.returncode != 0:
            raise SystemExit(f"the rerun of {pair} failed:\n{result.stdout}\n{result.stderr}")
        counts = json.loads(report.read_text())["counts"]
        rerun_wrote = counts.get(f"{target_backend}:{stores.COLLECTION}", {}).get("upsert_records", 0)
        return {"pair": pair, "label": harness.LABELS[pair], "n": n, "batch_size": BATCH,
                "checkpointed_at_kill": checkpointed, "status_at_kill": status, "target_held_at_kill": in_target,
                "rerun_wrote": rerun_wrote, "reprocessed": rerun_wrote - (n - in_target),
                "resumed": f"resuming at {checkpointed} rows" in result.stdout,
                "rerun_seconds": result.wall_seconds, "rerun_stdout": result.stdout[-2000:]}
    finally:
        harness.finish_run(run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--pairs", default="faiss-redis,redis-faiss,chroma-faiss",
                        help=f"a comma list of {', '.join(MOVES)}")
    parser.add_argument("--at", type=float, default=0.5, help="kill once this share of the rows is checkpointed")
    parser.add_argument("--out", default="resume.json")
    parser.add_argument("--workdir", help="stores and templates here (default: a temporary folder on /dev/shm)")
    args = parser.parse_args(argv)
    pairs = harness.pairs_from(args.pairs, MOVES)
    base = scratch(args.workdir)
    result: dict = {"n": args.n, "dim": args.dim, "machine": machine(),
                    "command": " ".join(["python -m tests.bench.resume", *sys.argv[1:]]), "runs": []}
    try:
        with running_redis(base) as redis_url:
            templates: dict = {}
            for pair in pairs:
                source = harness.PAIRS[pair][0]
                if source not in templates:
                    print(f"seeding the {source} source template, N={args.n:,} ...", flush=True)
                    templates[source] = stores.ensure_template(base, source, args.n, args.dim, redis_url)
                entry = run_pair(base, pair, templates, redis_url, args.n, args.at)
                result["runs"].append(entry)
                print(f"{entry['label']:<22} N={args.n:,}: killed with {entry['checkpointed_at_kill']:,} rows "
                      f"checkpointed, the target holding {entry['target_held_at_kill']:,}; the rerun "
                      f"{'resumed and ' if entry['resumed'] else 'did NOT resume, '}wrote {entry['rerun_wrote']:,}, of "
                      f"which {entry['reprocessed']:,} again (batch {BATCH}; load {os.getloadavg()[0]:.1f})",
                      flush=True)
                Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    finally:
        harness.write_result(result, args.out, base, args.workdir)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
