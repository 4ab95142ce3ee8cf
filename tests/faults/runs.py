"""Real `vecflow` processes for the fault suite: start one, know when it holds the lease, kill it,
and say from the ledger what it was doing.

The ledger is only read (a read-only SQLite connection, WAL mode lets it run beside the writer),
and every query tolerates a ledger that does not exist yet or has other columns than today's.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Children print as they go, so a killed run's last lines are in its log.
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("VECFLOW_")}, "PYTHONUNBUFFERED": "1"}
RUN_TIMEOUT = 180.0
POLL = 0.004


def _query(ledger: Path, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    if not ledger.exists():
        return []
    try:
        conn = sqlite3.connect(f"{ledger.as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []


def lease_pid(ledger: Path) -> int | None:
    rows = _query(ledger, "SELECT pid FROM lease WHERE name = 'migration'")
    return rows[0]["pid"] if rows else None


def applied(ledger: Path) -> list[str]:
    return sorted(row["revision"] for row in _query(ledger, "SELECT revision FROM applied"))


def unfinished(ledger: Path) -> list[str]:
    """Attempts that did not end done (or, for a stamp, stamped): what a user would have to deal with."""
    return [f"{row['direction']} {row['revision']}: {row['outcome']}" + (f" ({row['error']})" if row["error"] else "")
            for row in _query(ledger, "SELECT * FROM attempts ORDER BY id")
            if row["outcome"] not in ("done", "stamped", "rolled-back")]


def position(ledger: Path) -> str:
    """What the ledger says the last attempt was doing: revision, outcome and its steps."""
    attempts = _query(ledger, "SELECT * FROM attempts ORDER BY id DESC LIMIT 1")
    if not attempts:
        return "no attempt recorded"
    attempt = attempts[0]
    steps = _query(ledger, "SELECT * FROM steps WHERE attempt_id = ? ORDER BY step_index", (attempt["id"],))
    parts = [f"{s['step_index'] + 1}:{s['op']} {s['status']} {s['rows_done']} rows" for s in steps]
    return (f"{attempt['direction']} {attempt['revision']} attempt {attempt['id']} {attempt['outcome']}; "
            f"steps [{', '.join(parts) or 'none started'}]")


@dataclass
class Run:
    """One `vecflow` process, its output in a log file."""

    args: list[str]
    process: subprocess.Popen
    log: Path
    started: float
    leased: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 4) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()
        return "\n".join(f"      | {line}" for line in text[-lines:]) or "      | (no output)"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise AssertionError(f"vecflow {' '.join(self.args)} did not finish within {timeout} s:\n"
                                 f"{self.tail(20)}") from exc

    def signal(self, sig: int) -> None:
        os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
        self.process.wait()


def start(root: Path, args: list[str], log: Path, env: dict[str, str] | None = None) -> Run:
    """`python -m vecflow ARGS` in the project at root, in its own process group."""
    handle = log.open("w", encoding="utf-8")
    try:
        process = subprocess.Popen([sys.executable, "-m", "vecflow", *args], cwd=root, stdout=handle,
                                   stderr=subprocess.STDOUT, env={**ENV, **(env or {})}, start_new_session=True)
    finally:
        handle.close()
    return Run(args, process, log, time.monotonic())


def wait_for_lease(run: Run, ledger: Path, timeout: float = RUN_TIMEOUT) -> float | None:
    """The moment run was seen holding the lease; None when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lease_pid(ledger) == run.pid:
            run.leased = time.monotonic()
            return run.leased
        if run.process.poll() is not None:
            return None
        time.sleep(POLL)
    run.kill()
    raise AssertionError(f"vecflow {' '.join(run.args)} never took the lease within {timeout} s:\n{run.tail(20)}")


@dataclass
class Clock:
    """How far one direction has got, read from the ledger: a number that only grows while the
    runs of that direction make progress (rows checkpointed, steps and attempts closed, revisions
    applied or unapplied), counting the attempts after `since` only."""

    ledger: Path
    direction: str
    since: int = 0
    applied_before: int = 0

    def read(self) -> tuple[int, tuple[int, int]]:
        """(progress, activity): activity changes with every attempt begun or resumed."""
        rows = _query(self.ledger, """
            SELECT (SELECT count(*) FROM attempts WHERE id > :since AND direction = :direction
                    AND outcome = 'done') AS attempts_done,
                   (SELECT count(*) FROM steps s JOIN attempts a ON a.id = s.attempt_id
                    WHERE a.id > :since AND a.direction = :direction AND s.status = 'done') AS steps_done,
                   (SELECT coalesce(sum(s.rows_done), 0) FROM steps s JOIN attempts a ON a.id = s.attempt_id
                    WHERE a.id > :since AND a.direction = :direction) AS rows_done,
                   (SELECT count(*) FROM applied) AS applied,
                   (SELECT coalesce(max(id), 0) FROM attempts) AS last_attempt,
                   (SELECT coalesce(sum(resumes), 0) FROM attempts) AS resumes""",
                      {"since": self.since, "direction": self.direction})
        if not rows:
            return 0, (0, 0)
        row = rows[0]
        closed = abs(row["applied"] - self.applied_before)
        return (row["rows_done"] + 1000 * (row["attempts_done"] + row["steps_done"] + closed),
                (row["last_attempt"], row["resumes"]))

    def restart(self) -> None:
        """Count from the attempts after the current ones (a new cycle of the direction)."""
        rows = _query(self.ledger, "SELECT coalesce(max(id), 0) AS last, (SELECT count(*) FROM applied) AS applied "
                            "FROM attempts")
        self.since, self.applied_before = (rows[0]["last"], rows[0]["applied"]) if rows else (0, 0)


@dataclass
class Timeline:
    """The uninterrupted run: (seconds since it took the lease, progress) at each change."""

    points: list[tuple[float, int]]
    seconds: float

    def at(self, fraction: float) -> tuple[int, float, int | None]:
        """The moment `fraction` of the run's work (from taking the lease to its last ledger
        write; what follows is the process closing): (progress then, seconds since that progress
        was reached, the progress that came next or None)."""
        moment = fraction * self.points[-1][0]
        index = max(i for i, (t, _) in enumerate(self.points) if t <= moment)
        following = self.points[index + 1][1] if index + 1 < len(self.points) else None
        return self.points[index][1], moment - self.points[index][0], following


def timed_run(root: Path, args: list[str], log: Path) -> tuple[float, Timeline]:
    """An uninterrupted run that must succeed: (seconds to take the lease, its progress timeline)."""
    ledger = root / ".vecflow" / "ledger.db"
    clock = Clock(ledger, args[0])
    clock.restart()
    run = start(root, args, log)
    leased = wait_for_lease(run, ledger)
    if leased is None:
        run.wait()
        raise AssertionError(f"vecflow {' '.join(args)} ended before it was seen holding the lease:\n{run.tail(20)}")
    points = [(0.0, clock.read()[0])]
    while run.process.poll() is None:
        progress = clock.read()[0]
        if progress != points[-1][1]:
            points.append((time.monotonic() - leased, progress))
        time.sleep(POLL)
    ended = time.monotonic()
    if run.wait() != 0:
        raise AssertionError(f"uninterrupted vecflow {' '.join(args)} failed:\n{run.output()[-4000:]}")
    final = clock.read()[0]
    if final != points[-1][1]:
        points.append((ended - leased, final))
    return leased - run.started, Timeline(points, ended - leased)


@dataclass
class KillLoop:
    """SIGKILL one command at random moments, rerunning it after each kill, then let it finish.

    The kill moments are seeded random fractions of the uninterrupted run (`timeline`), sorted, so
    together they cover it from start to end. A fraction is mapped through the uninterrupted run's
    progress: the kill lands once the rerun has got as far as the uninterrupted run had at that
    moment, plus the time that run spent there since its last checkpoint (never past the next
    one). One kill in ten instead lands at a random moment of the process's start-up, before the
    lease (loading the config and the scripts, opening the ledger). A run that completes before
    its kill is recorded, the reverse command is run uninterrupted and the kills go on, so every
    kill lands inside the command. Any run that exits non-zero on its own is a failure the user would have seen (a
    manual action); it is rerun, and after three such failures in a row the loop gives up.
    """

    root: Path
    command: list[str]
    reverse: list[str]
    kills: int
    timeline: Timeline
    startup: float
    rng: random.Random
    logs: Path
    events: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    delivered: int = 0
    runs: int = 0

    @property
    def ledger(self) -> Path:
        return self.root / ".vecflow" / "ledger.db"

    def _start(self) -> Run:
        self.runs += 1
        return start(self.root, self.command, self.logs / f"run-{self.runs:03d}.log")

    def _record_end(self, run: Run, code: int, label: str) -> bool:
        """Log a run that ended on its own; True when it completed the command."""
        took = time.monotonic() - run.started
        if code == 0:
            self.events.append(f"  run {self.runs:3d} {label}: exit 0 after {took:.2f} s")
            return True
        line = (f"  run {self.runs:3d} {label}: EXIT {code} after {took:.2f} s; ledger: {position(self.ledger)}\n"
                f"{run.tail(6)}")
        self.events.append(line)
        self.failures.append(line)
        return False

    def _until(self, run: Run, done) -> bool:
        """Poll until done() or the run ends; True when done() came first."""
        while run.process.poll() is None:
            if done():
                return True
            time.sleep(POLL)
        return False

    def _aim_at_startup(self, run: Run, delay: float) -> str:
        """Wait `delay` after the start, or until the run takes the lease if that comes first."""
        self._until(run, lambda: time.monotonic() >= run.started + delay or lease_pid(self.ledger) == run.pid)
        return f"{delay:.3f} s after start (start-up)"

    def _aim(self, run: Run, clock: Clock, before: tuple[int, int], fraction: float) -> str:
        """Wait for the moment `fraction` of the uninterrupted run maps to; describe it. `before`
        is the ledger's activity before the run started."""
        target, residual, following = self.timeline.at(fraction)
        # The first ledger write of this run (its attempt begun or resumed): start-up is over.
        self._until(run, lambda: clock.read()[1] != before)
        self._until(run, lambda: clock.read()[0] >= target)
        reached = time.monotonic()
        self._until(run, lambda: time.monotonic() >= reached + residual
                    or (following is not None and clock.read()[0] >= following))
        return f"at {fraction:.1%} of the run ({residual:.3f} s past progress {target})"

    def run(self, give_up_after: int = 3) -> None:
        clock = Clock(self.ledger, self.command[0])
        clock.restart()
        fractions = sorted(self.rng.random() for _ in range(self.kills))
        cycles = failed = 0
        stuck_at = None
        while self.delivered < self.kills:
            if failed >= give_up_after:
                self.failures.append(f"  stranded: {failed} reruns failed on their own without any progress "
                                     "in between; only a manual action gets past this")
                self.try_advice()
                return
            before = clock.read()[1]
            run = self._start()
            if self.rng.random() < 0.1:
                aim = self._aim_at_startup(run, self.rng.uniform(0, self.startup))
            else:
                aim = self._aim(run, clock, before, fractions[self.delivered])
            if run.process.poll() is None:
                run.kill()
                self.delivered += 1
                self.events.append(
                    f"  kill {self.delivered:2d}/{self.kills} (run {self.runs}) {aim}, "
                    f"{time.monotonic() - run.started:.2f} s into the run; ledger: {position(self.ledger)}\n"
                    f"{run.tail(2)}")
                continue
            if not self._record_end(run, run.process.wait(), "ended before its kill"):
                progress = clock.read()[0]
                failed = failed + 1 if progress == stuck_at else 1
                stuck_at = progress
                continue
            failed = 0
            cycles += 1
            if cycles > 5:
                raise AssertionError("harness: the command kept completing before its kill (are the kill "
                                     "moments still spread over the run?):\n" + self.log())
            reverse = start(self.root, self.reverse, self.logs / f"reverse-{cycles}.log")
            code = reverse.wait()
            self.events.append(f"  ({' '.join(self.reverse)} uninterrupted, exit {code}, to kill "
                               f"{self.kills - self.delivered} more runs of {' '.join(self.command)})")
            if code != 0:
                self.failures.append(f"  {' '.join(self.reverse)} failed ({code}):\n{reverse.tail(6)}")
                return
            clock.restart()
        self.finish()

    def finish(self, attempts: int = 3) -> bool:
        """Rerun the command uninterrupted until it exits 0 (at most `attempts` times)."""
        for _ in range(attempts):
            run = self._start()
            if self._record_end(run, run.wait(), "after the last kill"):
                return True
        self.failures.append(f"  still failing after {attempts} uninterrupted reruns: needs a manual action")
        self.try_advice()
        return False

    def try_advice(self) -> None:
        """A diagnosis for the log, not a way out: run the command the last error told the user
        to run (`run 'vecflow ...'`), once, and record what it did. The store is not compared
        after it; the loop has failed already."""
        advice = re.findall(r"run '(vecflow [^']+)'", self.failures[-2] if len(self.failures) > 1 else "")
        if not advice:
            return
        args = advice[0].split()[1:]
        run = start(self.root, args, self.logs / "advice.log")
        code = run.wait()
        self.failures.append(f"  diagnosis: the advised '{advice[0]}' exits {code}:\n{run.tail(3)}")

    def log(self) -> str:
        return "\n".join(self.events)
