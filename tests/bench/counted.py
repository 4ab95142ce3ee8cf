"""Run the vecflow CLI in this process with counters around the store calls and timers around the
phases of a step, then write what they saw as JSON. In the project folder:

    python -m tests.bench.counted [--profile OUT.prof] REPORT.json upgrade head

With --profile, every adapter and op module (and so chromadb, faiss, qdrant_client, redis) is
imported first and cProfile covers the CLI call only: the profile shows the run, not the imports.

Counters: records returned by scan / scan_native / get and records sent to upsert /
update_metadata, per (backend, collection); scan passes started (cursor None) and whole (reached
the end; a pass that stops early is a sample); query and count calls. Phase timers (seconds, wall
clock): the copy loop, the copy's verification, the runner's digests before and after a step,
dropping collections, and the field ops' steps. Wrappers are looked up by name and skipped when
the code they wrap is gone, so the script keeps working while the engine changes.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import defaultdict
from typing import Any

COUNTS: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
PHASES: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


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
            try:
                return function(*args, **kwargs)
            finally:
                PHASES[phase] += time.perf_counter() - started
                CALLS[phase] += 1
        return timed
    return wrap


def _patch(owner: Any, attribute: str, wrapper) -> None:
    function = getattr(owner, attribute, None)
    if function is not None:
        setattr(owner, attribute, wrapper(function))


def install() -> None:
    from vecflow.backends.base import Backend

    for method in ("scan", "scan_native", "get"):
        _patch(Backend, method, _count_reads(method))
    _patch(Backend, "upsert", _count_writes("upsert", 0))
    _patch(Backend, "update_metadata", _count_writes("update_metadata", 0))
    for method in ("query", "count"):
        _patch(Backend, method, _count_calls(method))
    _patch(Backend, "drop_collection", _timed("drop_collection"))
    try:
        from vecflow.operations import moves
        from vecflow.runtime import runner
    except ImportError:
        return
    _patch(moves.CopyCollectionOp, "copy", _timed("copy (read + write pages)"))
    _patch(moves.CopyCollectionOp, "check", _timed("verification (verify_copy)"))
    _patch(runner.Runner, "_digest", _timed("runner digests (before/after steps)"))
    try:
        from vecflow.operations import fields
    except ImportError:
        return
    for name in dir(fields):
        cls = getattr(fields, name)
        if isinstance(cls, type) and getattr(cls, "op_name", None) in ("rename_field", "set_field"):
            _patch(cls, "run", _timed(f"{cls.op_name} step"))


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
                   "phases": dict(PHASES), "phase_calls": dict(CALLS)}, handle, indent=1)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
