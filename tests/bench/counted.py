"""Run the vecflow CLI in this process with counters around the store calls and timers around the
phases of a step, then write what they saw as JSON. In the project folder:

    python -m tests.bench.counted [--profile OUT.prof] REPORT.json upgrade head

With --profile, every adapter and op module (and so chromadb, faiss, qdrant_client, redis) is
imported first and cProfile covers the CLI call only: the profile shows the run, not the imports.

Counters: records returned by scan / scan_native / get and records sent to upsert /
update_metadata / rewrite_metadata, per (backend, collection); scan passes started (cursor None)
and whole (reached the end; a pass that stops early is a sample); query and count calls. Phase timers (seconds, wall
clock): the copy loop, the copy's verification (and inside it search parity and the FAISS index
brought up to date for a query), the runner's digests before and after a step, dropping
collections, and the field ops' steps. Per step (`steps`): its seconds, the seconds of each phase
inside it, the runner's digest seconds, and the full reads it made and why (what the runner's
`full reads:` note says). Peak RSS: the process's resident set sampled every 20 ms, its peak
overall and while each phase and each step ran (`phase_peak_rss_mb`, `steps[].peak_rss_mb`).
Wrappers are looked up by name and skipped when the code they wrap is gone, so the script keeps
working while the engine changes.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections import defaultdict
from typing import Any

COUNTS: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
PHASES: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
STEPS: list[dict[str, Any]] = []
VERIFICATION = "verification (verify_copy)"
# Peak RSS (MB) per phase and overall, sampled by a thread while the phases in ACTIVE run.
PEAK_RSS: dict[str, float] = defaultdict(float)
ACTIVE: list[str] = []
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * _PAGE_MB


def _sample_rss(interval: float = 0.02) -> None:
    while True:
        rss = _rss_mb()
        for phase in ["(process)", *ACTIVE]:
            PEAK_RSS[phase] = max(PEAK_RSS[phase], rss)
        time.sleep(interval)


def _records(result: Any) -> int:
    batch = result[0] if isinstance(result, tuple) else result
    batch = getattr(batch, "batch", batch)  # a NativePage
    try:
        return len(batch)
    except TypeError:
        return 0


def _count_reads(method: str):
    def wrap(function):
        @functools.wraps(function)
        def counted(self, name, *args, **kwargs):
            result = function(self, name, *args, **kwargs)
            counts = COUNTS[f"{self.name}:{name}"]
            counts[f"{method}_records"] += _records(result)
            counts[f"{method}_calls"] += 1
            if method != "get":
                # A pass starts at cursor None; it is whole when it reaches the end (a sample
                # of the first page is a pass that stops early).
                cursor = args[1] if len(args) > 1 else kwargs.get("cursor")
                if cursor is None:
                    counts[f"{method}_passes_started"] += 1
                if result[1] is None:
                    counts[f"{method}_passes_whole"] += 1
            return result
        return counted
    return wrap


def _count_writes(method: str, position: int):
    def wrap(function):
        @functools.wraps(function)
        def counted(self, name, *args, **kwargs):
            sent = args[position] if len(args) > position else None
            COUNTS[f"{self.name}:{name}"][f"{method}_records"] += len(sent) if sent is not None else 0
            COUNTS[f"{self.name}:{name}"][f"{method}_calls"] += 1
            return function(self, name, *args, **kwargs)
        return counted
    return wrap


def _count_calls(method: str):
    def wrap(function):
        @functools.wraps(function)
        def counted(self, name, *args, **kwargs):
            COUNTS[f"{self.name}:{name}"][f"{method}_calls"] += 1
            return function(self, name, *args, **kwargs)
        return counted
    return wrap


def _timed(phase: str):
    def wrap(function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            ACTIVE.append(phase)
            try:
                return function(*args, **kwargs)
            finally:
                ACTIVE.remove(phase)
                PHASES[phase] += time.perf_counter() - started
                CALLS[phase] += 1
        return timed
    return wrap


def _step_recorded(function):
    """Runner.run_step, recording the step: seconds, phases inside it, full reads and why."""
    @functools.wraps(function)
    def recorded(self, step, index, total, *args, **kwargs):
        carried = kwargs.get("carried") or []  # steps run in this step's pass (runtime/fused_pass.py)
        numbers = f"{index + 1}-{index + 1 + len(carried)}" if carried else f"{index + 1}"
        label = f"[{numbers}/{total}] {'; '.join(s.describe() for s in [step, *carried])}"
        entry: dict[str, Any] = {"step": label, "op": "+".join(s.op_name for s in [step, *carried])}
        phases_before = dict(PHASES)
        phase = f"step {label}"
        ACTIVE.append(phase)
        started = time.perf_counter()
        try:
            return function(self, step, index, total, *args, **kwargs)
        finally:
            ACTIVE.remove(phase)
            entry["seconds"] = time.perf_counter() - started
            entry["phases"] = {k: v - phases_before.get(k, 0.0) for k, v in PHASES.items()
                               if v - phases_before.get(k, 0.0) > 0}
            entry["verification_seconds"] = entry["phases"].get(VERIFICATION, 0.0)
            entry["runner_digest_seconds"] = getattr(self, "_digest_seconds", None)
            reads = list(getattr(self, "_reads", []))
            full: dict[str, list[str]] = {}
            for ref, purpose in reads:
                full.setdefault(ref, []).append(purpose or step.op_name)
            entry["full_reads"] = [{"collection": ref, "reads": len(why), "why": why} for ref, why in full.items()]
            note = getattr(self, "_full_reads_note", None)
            entry["full_reads_note"] = "; ".join(note(step)) if note else ""
            entry["peak_rss_mb"] = PEAK_RSS.pop(phase, None)
            STEPS.append(entry)
    return recorded


def _patch(owner: Any, attribute: str, wrapper) -> None:
    function = getattr(owner, attribute, None)
    if function is not None:
        setattr(owner, attribute, wrapper(function))


def install() -> None:
    from vecflow.backends.base import Backend

    for method in ("scan", "scan_native", "get"):
        _patch(Backend, method, _count_reads(method))
    # Every upsert and upsert_read_back (which writes through it), counted once.
    _patch(Backend, "_upsert_in_requests", _count_writes("upsert", 0))
    _patch(Backend, "update_metadata", _count_writes("update_metadata", 0))
    _patch(Backend, "rewrite_metadata", _count_writes("rewrite_metadata", 1))
    for method in ("query", "count"):
        _patch(Backend, method, _count_calls(method))
    _patch(Backend, "drop_collection", _timed("drop_collection"))
    try:
        from vecflow.operations import moves
        from vecflow.runtime import runner
    except ImportError:
        return
    _patch(moves.CopyCollectionOp, "copy", _timed("copy (read + write pages)"))
    _patch(moves.CopyCollectionOp, "check", _timed(VERIFICATION))
    _patch(runner.Runner, "_digest", _timed("runner digests (before/after steps)"))
    _patch(runner.Runner, "run_step", _step_recorded)
    try:
        from vecflow.runtime import verify
    except ImportError:
        verify = None
    if verify is not None:
        _patch(verify, "search_parity", _timed("verification: search parity"))
        _patch(verify, "read_side", _timed("verification: reading a side whole"))
    try:
        from vecflow.backends import faiss_index
    except ImportError:
        faiss_index = None
    if faiss_index is not None:
        _patch(faiss_index, "synced_index", _timed("faiss index brought up to date (load, build, save)"))
    try:
        from vecflow.operations import fields
    except ImportError:
        return
    for name in dir(fields):
        cls = getattr(fields, name)
        if isinstance(cls, type) and getattr(cls, "op_name", None) in ("rename_field", "set_field"):
            _patch(cls, "run", _timed(f"{cls.op_name} step"))
    _patch(runner, "run_in_one_pass", _timed("field steps in one pass"))  # the runner's own name for it


def preload() -> None:
    """Import every adapter and op family (and so their clients) now: a profile then shows the
    run, not Python importing chromadb."""
    import importlib
    import pkgutil

    import vecflow.backends
    import vecflow.operations

    for package in (vecflow.backends, vecflow.operations):
        for module in pkgutil.iter_modules(package.__path__):
            try:
                importlib.import_module(f"{package.__name__}.{module.name}")
            except ImportError:
                pass


def main(argv: list[str]) -> int:
    profile_path = None
    if argv[0] == "--profile":
        profile_path, argv = argv[1], argv[2:]
    report, args = argv[0], argv[1:]
    started = time.perf_counter()
    threading.Thread(target=_sample_rss, daemon=True).start()
    install()
    from vecflow.cli import main as cli_main

    profiler = None
    if profile_path:
        import cProfile

        preload()
        profiler = cProfile.Profile()
    imported = time.perf_counter() - started
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        code = cli_main(args)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
    with open(report, "w", encoding="utf-8") as handle:
        json.dump({"exit": code, "seconds": time.perf_counter() - started, "import_seconds": imported,
                   "counts": {k: dict(v) for k, v in COUNTS.items()},
                   "phases": dict(PHASES), "phase_calls": dict(CALLS), "steps": STEPS,
                   "peak_rss_mb": PEAK_RSS.get("(process)"),
                   "phase_peak_rss_mb": {k: v for k, v in PEAK_RSS.items() if k != "(process)"}}, handle, indent=1)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
