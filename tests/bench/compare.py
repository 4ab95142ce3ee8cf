"""Hand-written native loop against `vecflow upgrade head`, pair by pair, interleaved, in one run.

    python -m tests.bench.compare --n 20000 --dim 768 --rounds 3 --pairs all --out bench.json

For every pair (Chroma → FAISS, FAISS → Chroma, Redis → Chroma, Chroma → Qdrant local,
Redis → Qdrant local, and rename_field + set_field in place on Chroma) and every round, both sides
run in their own child process on a fresh copy of the same source: (a) tests/bench/native.py, the
fastest loop over the native clients we could write, and (b) `python -m vecflow upgrade head` in a
project whose one revision does the same with vecflow's defaults (checkpoints, digests,
verification and search parity on). The order alternates per round (native first in even rounds),
so drift in the machine's load hits both sides alike.

Printed and written to --out: records/s of both sides per round (whole child process: start-up,
imports and, for vecflow, ledger and lock included), vecflow time ÷ native time per round and its
median, peak RSS of each child (ru_maxrss from wait4), the vecflow step timings from its ledger;
then one instrumented vecflow run per pair (tests/bench/counted.py: how many full reads of each
side, seconds in copy / verification / digests; per step its seconds, verification seconds,
runner digest seconds and the full reads it made and why, as a second table), and the digest
throughput (tests/bench/digests.py) on every source collection. Each timed vecflow run's JSON
also keeps the runner's `full reads:` note of every step.

Stores live under a temporary folder on /dev/shm when there is one (fsync is free there, as on the
issue's measurements); a redis-server of our own runs on a free loopback port. Data: tests/bench/data.py
(seeded). Source templates are seeded once per invocation (reused with --workdir).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from tests.bench import harness, stores
from tests.conftest import running_redis


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return {"nproc": os.cpu_count(), "cpu": model, "ram_mb": memory, "python": platform.python_version(),
            "loadavg_start": os.getloadavg()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("vecflow", "chromadb", "faiss-cpu", "qdrant-client", "redis", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def scratch(workdir: str | None) -> Path:
    if workdir:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    shm = Path("/dev/shm")
    fast = shm.is_dir() and os.access(shm, os.W_OK)
    return Path(tempfile.mkdtemp(prefix="vecflow-bench-", dir=shm if fast else None))


def run_native(base: Path, pair: str, tag: str, templates: dict, n: int, dim: int, keep: bool) -> dict:
    run = harness.prepare_run(base, pair, tag, templates)
    try:
        return harness.run_native_loop(run, pair, n, dim)
    finally:
        harness.finish_run(run, keep)


def run_vecflow(base: Path, pair: str, tag: str, templates: dict, n: int, keep: bool) -> dict:
    run = harness.prepare_run(base, pair, tag, templates)
    try:
        result = harness.measure(harness.vecflow_command(), run.project)
        timings = harness.ledger_timings(run.project)
        if result.returncode != 0:
            raise SystemExit(f"vecflow {pair} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        rows = [step["rows"] for step in timings.get("steps", [])]
        if not rows or any(r != n for r in rows):
            raise SystemExit(f"vecflow {pair}: steps did {rows} rows, expected {n} each\n{result.stdout}")
        return {**result.to_dict(), "ledger": timings, "full_reads": full_reads_notes(result.stdout)}
    finally:
        harness.finish_run(run, keep)


def full_reads_notes(stdout: str) -> list[str]:
    """The runner's `full reads: ...` note of each step, as it printed them."""
    prefix = "full reads: "
    return [line.strip()[len(prefix):] for line in stdout.splitlines() if line.strip().startswith(prefix)]


def run_instrumented(base: Path, pair: str, templates: dict, n: int, keep: bool) -> dict:
    run = harness.prepare_run(base, pair, "counted", templates)
    report = run.folder / "counted.json"
    try:
        result = harness.measure([sys.executable, "-m", "tests.bench.counted", str(report), "upgrade", "head"],
                                 run.project, harness.repo_env())
        if result.returncode != 0:
            raise SystemExit(f"instrumented vecflow {pair} failed:\n{result.stdout}\n{result.stderr}")
        counted = json.loads(report.read_text())
        counted["full_reads"] = full_reads(counted["counts"], n)
        counted["wall_seconds"] = result.wall_seconds
        counted["ledger"] = harness.ledger_timings(run.project)
        return counted
    finally:
        harness.finish_run(run, keep)


def full_reads(counts: dict, n: int) -> dict:
    """Per side: whole scan passes (copy, verification, ground truth), whole scan_native passes
    (the runner's digests), and all records read (samples included) as a multiple of n."""
    return {side: {"scan_passes": c.get("scan_passes_whole", 0),
                   "scan_native_passes": c.get("scan_native_passes_whole", 0),
                   "records_read_x_n": round((c.get("scan_records", 0) + c.get("scan_native_records", 0)
                                              + c.get("get_records", 0)) / n, 2)}
            for side, c in counts.items()}


def digest_rates(base: Path, templates: dict, dim: int) -> list[dict]:
    rates = []
    for backend, template in templates.items():
        run_folder = base / "runs" / f"digest-{backend}"
        shutil.rmtree(run_folder, ignore_errors=True)
        run_folder.mkdir(parents=True)
        prefix = f"digest-{os.getpid()}:"
        options = stores.clone(template, backend, run_folder / "store", prefix)
        try:
            result = harness.measure([sys.executable, "-m", "tests.bench.digests", backend, json.dumps(options)],
                                     run_folder, harness.repo_env())
            if result.returncode != 0:
                raise SystemExit(f"digest on {backend} failed:\n{result.stderr}")
            rates.append({**json.loads(result.stdout.strip().splitlines()[-1]), "dim": dim})
        finally:
            if backend == "redis":
                stores.forget_redis_prefix(options["url"], prefix)
            shutil.rmtree(run_folder, ignore_errors=True)
    return rates


def summarise(pair: str, n: int, rounds: list[dict]) -> dict:
    native_rate = [n / r["native"]["wall_seconds"] for r in rounds]
    vecflow_rate = [n / r["vecflow"]["wall_seconds"] for r in rounds]
    ratios = [r["vecflow"]["wall_seconds"] / r["native"]["wall_seconds"] for r in rounds]
    return {
        "pair": pair, "label": harness.LABELS[pair], "n": n,
        "native_rec_s": native_rate, "vecflow_rec_s": vecflow_rate, "ratio": ratios,
        "ratio_median": statistics.median(ratios),
        "native_peak_rss_mb": max(r["native"]["peak_rss_mb"] for r in rounds),
        "vecflow_peak_rss_mb": max(r["vecflow"]["peak_rss_mb"] for r in rounds),
    }


def round_line(pair: str, number: int, n: int, native: dict, vecflow: dict) -> str:
    return (f"{harness.LABELS[pair]:<32} round {number + 1}: "
            f"native {n / native['wall_seconds']:8,.0f} rec/s ({native['peak_rss_mb']:,.0f} MB), "
            f"vecflow {n / vecflow['wall_seconds']:8,.0f} rec/s ({vecflow['peak_rss_mb']:,.0f} MB), "
            f"ratio {vecflow['wall_seconds'] / native['wall_seconds']:.2f}")


def digest_line(rate: dict) -> str:
    return (f"digest on {rate['backend']}: collection_digests {rate['collection_digests_rec_s']:,.0f} rec/s "
            f"(scan_native alone {rate['scan_native_only_rec_s']:,.0f}; hashing alone {rate['hash_both_rec_s']:,.0f}"
            f" rec/s: logical {rate['hash_logical_rec_s']:,.0f}, native {rate['hash_native_rec_s']:,.0f})")


def step_lines(counted: dict) -> list[str]:
    """Per vecflow step of an instrumented run: seconds, verification, digests, full reads."""
    return [f"{step['step']}: {step['seconds']:.1f} s, verification {step['verification_seconds']:.1f} s, "
            f"runner digests {step['runner_digest_seconds'] or 0:.1f} s; {step['full_reads_note'] or 'no full reads'}"
            for step in counted.get("steps", [])]


def step_table(entries: dict) -> str:
    """The steps of each pair's instrumented run: their verification time and full reads."""
    lines = ["| pair | step | step s | verification (verify_copy) s | runner digests s "
             "| full reads (collection, count, why) |",
             "|---|---|---|---|---|---|"]
    for pair, entry in entries.items():
        for step in entry.get("instrumented", {}).get("steps", []):
            reads = "; ".join(f"{r['collection']} {r['reads']} ({', '.join(dict.fromkeys(r['why']))})"
                              for r in step["full_reads"]) or "none"
            lines.append(f"| {harness.LABELS[pair]} | {step['step']} | {step['seconds']:.1f} | "
                         f"{step['verification_seconds']:.1f} | {step['runner_digest_seconds'] or 0:.1f} | {reads} |")
    return "\n".join(lines)


def table(summaries: list[dict]) -> str:
    lines = ["| pair | N | native rec/s | vecflow rec/s | vecflow time ÷ native, per round | median "
             "| peak RSS native / vecflow (MB) |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(
            f"| {s['label']} | {s['n']:,} | {_span(s['native_rec_s'])} | {_span(s['vecflow_rec_s'])} | "
            f"{', '.join(f'{r:.2f}' for r in s['ratio'])} | {s['ratio_median']:.2f}× | "
            f"{s['native_peak_rss_mb']:,.0f} / {s['vecflow_peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:,.0f}" if round(low) == round(high) else f"{low:,.0f}–{high:,.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="records per collection")
    parser.add_argument("--dim", type=int, default=768, help="vector dimension (384 or 768)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", default="all", help=f"all, or a comma list of {', '.join(harness.COMPARED)}")
    parser.add_argument("--out", default="bench.json", help="JSON result file")
    parser.add_argument("--workdir", help="keep stores and templates here (default: a temporary folder on /dev/shm)")
    parser.add_argument("--keep", action="store_true", help="keep every run's folder")
    parser.add_argument("--no-instrumented", action="store_true", help="skip the counted vecflow run per pair")
    parser.add_argument("--no-digest", action="store_true", help="skip the digest throughput")
    args = parser.parse_args(argv)
    pairs = harness.pairs_from(args.pairs)
    base = scratch(args.workdir)
    result: dict = {"n": args.n, "dim": args.dim, "rounds": args.rounds, "machine": machine(),
                    "versions": versions(), "command": " ".join(["python -m tests.bench.compare", *sys.argv[1:]]),
                    "pairs": {}, "summary": []}
    print(f"{args.n} records × {args.dim} dims, cosine; stores under {base}", flush=True)
    try:
        with running_redis(base) as redis_url:
            needed = sorted({harness.PAIRS[p][0] for p in pairs} | ({"faiss"} if not args.no_digest else set()))
            templates = {}
            for backend in needed:
                print(f"seeding the {backend} source template ...", flush=True)
                templates[backend] = stores.ensure_template(base, backend, args.n, args.dim, redis_url)
            for pair in pairs:
                rounds = []
                for number in range(args.rounds):
                    sides = ["native", "vecflow"] if number % 2 == 0 else ["vecflow", "native"]
                    measured = {}
                    for side in sides:
                        tag = f"r{number}-{side}"
                        measured[side] = (run_native(base, pair, tag, templates, args.n, args.dim, args.keep)
                                          if side == "native" else
                                          run_vecflow(base, pair, tag, templates, args.n, args.keep))
                    measured["order"] = sides
                    rounds.append(measured)
                    print(round_line(pair, number, args.n, measured["native"], measured["vecflow"]), flush=True)
                entry: dict = {"rounds": rounds, "summary": summarise(pair, args.n, rounds)}
                if not args.no_instrumented:
                    entry["instrumented"] = run_instrumented(base, pair, templates, args.n, args.keep)
                    counted = entry["instrumented"]
                    phases = ", ".join(f"{k} {v:.1f} s" for k, v in counted["phases"].items())
                    reads = "; ".join(f"{side}: {r['scan_passes']} scan + {r['scan_native_passes']} digest passes,"
                                      f" {r['records_read_x_n']}× N read" for side, r in counted["full_reads"].items())
                    print(f"{'':<32} {reads}\n{'':<32} {phases}", flush=True)
                    for text in step_lines(counted):
                        print(f"{'':<32} {text}", flush=True)
                result["pairs"][pair] = entry
                result["summary"].append(entry["summary"])
                Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
            if not args.no_digest:
                result["digest"] = digest_rates(base, templates, args.dim)
                for rate in result["digest"]:
                    print(digest_line(rate), flush=True)
    finally:
        result["machine"]["loadavg_end"] = os.getloadavg()
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
        if not args.workdir and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(result["summary"]))
    if any("instrumented" in entry for entry in result["pairs"].values()):
        print()
        print(step_table(result["pairs"]))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
