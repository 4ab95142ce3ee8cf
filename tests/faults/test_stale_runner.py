"""A runner paused past its lease, then continued, writes nothing (fencing).

Runner A runs `vecflow upgrade head` with a 2 s lease and a slow embedder; it is SIGSTOPped while
it embeds a page of r4's reembed (the page is in its memory, not yet written). Once its lease has
expired, runner B runs the same command: it takes the lease over, resumes the interrupted attempt
and finishes the chain. Then A gets SIGCONT. A must stop with one line saying it lost the lease,
before writing anything: the store, as the application reads it, is exactly what B left; the
ledger, the snapshots and vecflow's state hold exactly what B left (A neither overwrites B's
checkpoints nor marks the shared attempt failed); every other file is byte for byte B's; and on
Redis the server counts zero write commands from the moment A continues.

Qdrant local mode is not here: its folder lock keeps a second client out while A is paused, so
runner B cannot open the store at all (that is fencing by the client library, not by vecflow).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import running_redis
from tests.faults.chain import BATCH, REVISIONS, build_chain, scratch_folder
from tests.faults.native import compare, files_fingerprint, native_contents
from tests.faults.runs import applied, position, start, unfinished
from tests.project import step_progress

LEASE = 2.0
SLOW_EMBEDDER = {"VECFLOW_TEST_EMBED_DELAY": "0.4"}
COMMAND = ["-x", f"lock_lease_seconds={LEASE}", "upgrade", "head"]


@pytest.fixture
def fault_folder() -> Iterator[Path]:
    with scratch_folder("vecflow-stale-") as folder:
        yield folder


@contextlib.contextmanager
def redis_for(backend: str, folder: Path) -> Iterator[str | None]:
    if backend != "redis":
        yield None
        return
    with running_redis(folder) as url:
        yield url


def redis_writes(url: str) -> dict[str, int]:
    """Calls of write commands since the last CONFIG RESETSTAT, by command (the server's own counts)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        flags = {name: info["flags"] for name, info in client.command().items()}
        return {key.removeprefix("cmdstat_"): int(value["calls"])
                for key, value in client.info("commandstats").items()
                if "write" in flags.get(key.removeprefix("cmdstat_").split("|")[0], [])}
    finally:
        client.close()


def reset_redis_stats(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.config_resetstat()
    finally:
        client.close()


def pause_while_embedding(project, log: Path):
    """Start runner A and SIGSTOP it inside the embedder call of r4's third page."""
    ledger = project.root / ".vecflow" / "ledger.db"
    runner = start(project.root, COMMAND, log, env=SLOW_EMBEDDER)
    deadline = time.monotonic() + 120
    while True:
        progress = step_progress(ledger, "r4", 0)
        if progress and progress[0] >= 2 * BATCH:
            break
        if runner.process.poll() is not None or time.monotonic() > deadline:
            runner.kill()
            raise AssertionError(f"runner A never reached r4's third page: {position(ledger)}\n{runner.tail(10)}")
        time.sleep(0.005)
    time.sleep(0.15)  # well inside the 0.4 s embedder call of the next page
    runner.signal(signal.SIGSTOP)
    return runner, position(ledger)


def take_over(project, log: Path, deadline_seconds: float = 60):
    """Runner B: retried while A's lease has not run out yet; must then finish the chain."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        runner = start(project.root, COMMAND, log)
        code = runner.wait()
        output = runner.output()
        if code == 0 or "holds the lock" not in output or time.monotonic() > deadline:
            return code, output
        time.sleep(0.5)


@pytest.mark.parametrize("backend", ["chroma", "faiss", "redis"])
def test_runner_paused_past_its_lease_writes_nothing_after_it_continues(backend, fault_folder):
    with redis_for(backend, fault_folder) as url:
        project = build_chain(fault_folder / f"paused-{backend}", backend, redis_url=url)
        logs = project.root / "logs"
        logs.mkdir()
        ledger = project.root / ".vecflow" / "ledger.db"
        stale, paused_at = pause_while_embedding(project, logs / "a.log")
        try:
            time.sleep(LEASE + 0.5)
            code, output = take_over(project, logs / "b.log")
            assert code == 0, f"runner B could not take over from the paused runner ({paused_at}):\n{output}"
            assert "Resuming upgrade r4" in output, output
            assert applied(ledger) == REVISIONS and unfinished(ledger) == []
            files = files_fingerprint(project.root / ".vecflow")
            store_files = files_fingerprint(project.root / "stores") if url is None else None
            contents = native_contents(project.root)
            if url is not None:
                reset_redis_stats(url)
            printed_before = len(stale.output())
            stale.signal(signal.SIGCONT)
            stale_code = stale.wait(120)
        finally:
            stale.kill()
        writes = redis_writes(url) if url is not None else {}
        stale_output = stale.output()[printed_before:].strip().splitlines()
        files_after = files_fingerprint(project.root / ".vecflow")
        store_files_after = files_fingerprint(project.root / "stores") if url is None else None
        after = native_contents(project.root)
        comparison = compare(contents, after)
        problems = []
        # Before its one error line it may only say where its step stopped (and that step's notes).
        said = [line for line in stale_output[:-1] if ": stopped at " not in line and not line.startswith("      ")]
        if stale_code != 1 or not stale_output or said or not stale_output[-1].startswith("vecflow: error:") \
                or "lease" not in stale_output[-1].lower():
            problems.append(f"runner A did not stop with a one-line lease-lost error (exit {stale_code}); after "
                            "SIGCONT it printed:\n" + "\n".join(f"  | {line}" for line in stale_output[-8:]))
        if not comparison.equal:
            problems.append(f"the store changed after runner A continued ({comparison.summary()}):\n"
                            + "\n".join(f"  {line}" for line in comparison.lines))
        if writes:
            problems.append(f"redis counted write commands after runner A continued: {writes}")
        problems += [f"vecflow's {name} changed after runner A continued: {what}"
                     for name, what in _changes(files, files_after)]
        if store_files is not None:
            problems += [f"store file {name} changed after runner A continued: {what}"
                         for name, what in _changes(store_files, store_files_after)]
        if applied(ledger) != REVISIONS or unfinished(ledger):
            problems.append(f"ledger after runner A: applied {applied(ledger)}, unfinished {unfinished(ledger)}")
        assert not problems, (f"runner A was paused at: {paused_at}\n" + "\n".join(problems))


def _changes(before: dict, after: dict) -> list[tuple[str, str]]:
    """(file, what changed) for every file whose content differs; tables named for SQLite files."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            tables = [t for t in sorted(set(old) | set(new)) if old.get(t) != new.get(t)]
            changes.append((name, "rows of " + ", ".join(tables)))
        else:
            changes.append((name, "created" if old is None else "deleted" if new is None else "bytes"))
    return changes
