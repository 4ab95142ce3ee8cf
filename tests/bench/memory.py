"""Peak memory of a verified move, vecflow against the hand-written loop, at growing N, in one run.

    python -m tests.bench.memory --n 100000,300000,1000000 --dim 384 --out memory.json

For FAISS → Redis and Redis → FAISS (the pairs of issue 10's memory target) and each N, both sides
run in their own child process on a fresh copy of the same source, the order alternating per
round: (a) tests/bench/native.py, the hand-written loop over the native clients, and (b)
`python -m vecflow upgrade head` moving the collection with every safety on (checkpoints,
digests, verification, search parity). Peak RSS is each child's ru_maxrss (from wait4). The bound
checked: vecflow ≤ native + 150 MB at every N; the excess (vecflow − native) should not grow with
N beyond what the stores' own clients hold.

With --phases the vecflow side runs the same CLI in-process under tests/bench/counted.py, which
samples its RSS every 20 ms and reports the peak while each phase ran (copy loop, verification,
search parity, the FAISS index brought up to date, the runner's digests, the source's drop):
where the memory goes. The headline figures come from the plain runs.

Stores: FAISS folders and the redis-server's data live on /dev/shm when there is room (a 1M × 384
collection is ~2 GB in FAISS's sidecar, ~3 GB in Redis); a redis-server of our own runs on a free
loopback port. Everything is removed at the end (and each N's sources before the next N).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from tests.bench import harness, stores
from tests.bench.compare import machine, scratch, versions
from tests.conftest import running_redis

BOUND_MB = 150
PAIRS = ("faiss-redis", "redis-faiss")


def run_side(side: str, base: Path, pair: str, tag: str, templates: dict, redis_url: str, n: int, dim: int,
             phases: bool) -> dict:
    run = harness.prepare_run(base, pair, tag, templates, redis_url)
    try:
        if side == "native":
            return harness.run_native_loop(run, pair, n, dim)
        report = run.folder / "counted.json"
        command = ([sys.executable, "-m", "tests.bench.counted", str(report), "upgrade", "head"] if phases
                   else harness.vecflow_command())
        result = harness.measure(command, run.project, harness.repo_env())
        timings = harness.ledger_timings(run.project)
        if result.returncode != 0:
            raise SystemExit(f"vecflow {pair} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        rows = [step["rows"] for step in timings.get("steps", [])]
        if rows != [n]:
            raise SystemExit(f"vecflow {pair}: steps did {rows} rows, expected [{n}]\n{result.stdout}")
        measured = {**result.to_dict(), "ledger": timings,
                    "notes": [line.strip() for line in result.stdout.splitlines() if line.startswith("      ")]}
        if phases:
            counted = json.loads(report.read_text())
            measured["phase_peak_rss_mb"] = counted["phase_peak_rss_mb"]
            measured["phases"] = counted["phases"]
            measured["steps"] = counted["steps"]
        return measured
    finally:
        harness.finish_run(run)


def line(pair: str, n: int, number: int, native: dict, vecflow: dict) -> str:
    excess = vecflow["peak_rss_mb"] - native["peak_rss_mb"]
    return (f"{harness.LABELS[pair]:<14} N={n:>9,} round {number + 1}: peak RSS native {native['peak_rss_mb']:7,.0f} MB"
            f" ({native['wall_seconds']:6.1f} s), vecflow {vecflow['peak_rss_mb']:7,.0f} MB"
            f" ({vecflow['wall_seconds']:6.1f} s): vecflow − native {excess:+,.0f} MB"
            f" ({'within' if excess <= BOUND_MB else 'OVER'} the {BOUND_MB} MB bound)")


def table(rows: list[dict]) -> str:
    out = ["| pair | N | peak RSS native (MB) | peak RSS vecflow (MB) | vecflow − native (MB) | within +150 MB "
           "| wall native / vecflow (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['label']} | {r['n']:,} | {r['native_peak_rss_mb']:,.0f} | {r['vecflow_peak_rss_mb']:,.0f} | "
                   f"{r['excess_mb']:+,.0f} | {'yes' if r['within_bound'] else 'no'} | "
                   f"{r['native_wall_seconds']:,.0f} / {r['vecflow_wall_seconds']:,.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="1000000", help="records per collection: one number or a comma list")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"a comma list of {', '.join(PAIRS)}")
    parser.add_argument("--phases", action="store_true",
                        help="run vecflow under tests/bench/counted.py: peak RSS per phase")
    parser.add_argument("--out", default="memory.json")
    parser.add_argument("--workdir", help="stores and templates here (default: a temporary folder on /dev/shm)")
    args = parser.parse_args(argv)
    sizes = [int(text.replace("_", "")) for text in args.n.split(",")]
    pairs = harness.pairs_from(args.pairs, PAIRS)
    base = scratch(args.workdir)
    result: dict = {"dim": args.dim, "rounds": args.rounds, "bound_mb": BOUND_MB, "machine": machine(),
                    "versions": versions(), "command": " ".join(["python -m tests.bench.memory", *sys.argv[1:]]),
                    "runs": [], "summary": []}
    print(f"N = {', '.join(f'{n:,}' for n in sizes)} × {args.dim} dims; stores under {base}", flush=True)
    try:
        with running_redis(base) as redis_url:
            for n in sizes:
                templates: dict = {}
                for position, pair in enumerate(pairs):
                    source = harness.PAIRS[pair][0]
                    if source not in templates:
                        print(f"seeding the {source} source template, N={n:,} ...", flush=True)
                        templates[source] = stores.ensure_template(base, source, n, args.dim, redis_url)
                    rounds = []
                    for number in range(args.rounds):
                        sides = ["native", "vecflow"] if number % 2 == 0 else ["vecflow", "native"]
                        measured = {side: run_side(side, base, pair, f"n{n}-r{number}-{side}", templates, redis_url,
                                                   n, args.dim, args.phases and side == "vecflow")
                                    for side in sides}
                        measured["order"] = sides
                        print(line(pair, n, number, measured["native"], measured["vecflow"]), flush=True)
                        for note in measured["vecflow"]["notes"]:
                            print(f"{'':<16}{note}", flush=True)
                        for phase, peak in measured["vecflow"].get("phase_peak_rss_mb", {}).items():
                            print(f"{'':<16}peak RSS {peak:7,.0f} MB while {phase}", flush=True)
                        rounds.append(measured)
                    native = max(r["native"]["peak_rss_mb"] for r in rounds)
                    vecflow = max(r["vecflow"]["peak_rss_mb"] for r in rounds)
                    summary = {"pair": pair, "label": harness.LABELS[pair], "n": n, "native_peak_rss_mb": native,
                               "vecflow_peak_rss_mb": vecflow, "excess_mb": vecflow - native,
                               "within_bound": vecflow - native <= BOUND_MB,
                               "native_wall_seconds": max(r["native"]["wall_seconds"] for r in rounds),
                               "vecflow_wall_seconds": max(r["vecflow"]["wall_seconds"] for r in rounds),
                               "loadavg": os.getloadavg()}
                    result["runs"].append({"pair": pair, "n": n, "rounds": rounds})
                    result["summary"].append(summary)
                    if source == "faiss" and "redis-faiss" in pairs[position + 1:]:
                        print(f"seeding the redis source template from the faiss one, N={n:,} ...", flush=True)
                        templates["redis"] = stores.seed_redis_from(templates["faiss"], n, args.dim, redis_url)
                    _forget_template(base, source, n, args.dim, templates.pop(source))
                    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    finally:
        harness.write_result(result, args.out, base, args.workdir)
    print()
    print(table(result["summary"]))
    print(f"\nwritten to {args.out}")


def _forget_template(base: Path, backend: str, n: int, dim: int, template: Path | str) -> None:
    """Free the template's memory before the next pair (tmpfs and Redis both hold it in RAM)."""
    if backend == "redis":
        stores.forget_redis_prefix(str(template), stores.TEMPLATE_PREFIX)
    else:
        shutil.rmtree(stores.template_dir(base, backend, n, dim), ignore_errors=True)


if __name__ == "__main__":
    main()
