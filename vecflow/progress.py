"""Progress of long work while it runs: a live bar on a terminal, a plain line every few seconds
in a log (CI), nothing with -q or when vecflow is called as a library.

The work is a stack of tasks. The runner opens one per step, which counts the rows the step's
checkpoints report (`Progress.rows`), and inside it one per long read (a digest, a verification
pass, a snapshot capture), which counts the records the stores' scans return (`Progress.read`,
every store's read observer). A task has a total when one is cheap to know (a count), so the
display shows records done / total, the rate and the time left. Totals are only taken when the
progress is shown (`live`), so quiet runs pay nothing for them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from vecflow.errors import VecflowError

DEFAULT_INTERVAL = 10.0  # seconds between two plain progress lines ([vecflow] progress_interval)


@dataclass
class Task:
    """One piece of long work. `label` names it in full (the step, then the part of the step)."""

    name: str
    label: str
    total: int | None
    reads: bool  # counts records scanned (Progress.read), not rows checkpointed (Progress.rows)
    done: int = 0
    depth: int = 0
    # Rows done before this run (a resumed step): left out of the rate.
    initial: int = 0
    started: float = field(default_factory=time.monotonic)
    # Seconds spent in the tasks inside this one (a step's digests): left out of its rate.
    inside: float = 0.0

    def rate(self, now: float) -> float | None:
        """Records per second of this task's own work, or None before the first record."""
        elapsed, done = now - self.started - self.inside, self.done - self.initial
        return done / elapsed if elapsed > 0 and done > 0 else None

    def remaining(self, now: float) -> float | None:
        """Seconds left at the current rate, or None when the total or the rate is unknown."""
        rate = self.rate(now)
        if rate is None or self.total is None or self.done > self.total:
            return None
        return (self.total - self.done) / rate

    def line(self, now: float) -> str:
        """`<label>: 12000/50000 records (24%), 3950 records/s, ETA 10 s`."""
        if self.total is not None and self.done <= self.total:
            share = f" ({100 * self.done // self.total}%)" if self.total else ""
            text = f"{self.done}/{self.total} records{share}"
        else:
            text = f"{self.done} records"
        rate, left = self.rate(now), self.remaining(now)
        if rate is not None:
            text += f", {rate:.0f} records/s"
        if left is not None:
            text += f", ETA {duration(left)}"
        return f"  {self.label}: {text}"


def duration(seconds: float) -> str:
    """`7 s`, `2 min 05 s`, `1 h 02 min`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """The tasks of one command, shown nowhere: what -q and library calls get. The displays
    below override the hooks (`_opened`, `_changed`, `_closed`, `report`)."""

    live = False  # whether anything is shown: totals are worth counting only then

    def __init__(self, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.tasks: list[Task] = []
        self._ready = False

    @contextlib.contextmanager
    def task(self, name: str, total: int | Callable[[], int | None] | None = None, *, reads: bool = False,
             done: int = 0) -> Iterator[Task]:
        """A task inside the current one (its label starts with the current one's). total may
        be a function, called only when the progress is shown; done: rows already done."""
        parent = self.tasks[-1] if self.tasks else None
        task = Task(name, f"{parent.label}: {name}" if parent else name, self.measure(total), reads,
                    done=done, depth=len(self.tasks), initial=done)
        self.tasks.append(task)
        self._opened(task)
        try:
            yield task
        finally:
            self.tasks.remove(task)
            if parent is not None:
                parent.inside += time.monotonic() - task.started
            self._closed(task)

    def measure(self, total: int | Callable[[], int | None] | None) -> int | None:
        """The total; a function is called only when the progress is shown. A store, snapshot or
        file that cannot be counted now (unreachable, damaged, missing) gives an unknown total:
        the work itself meets that error where it knows what to do about it."""
        if not callable(total):
            return total
        if not self.live:
            return None
        try:
            return total()
        except (VecflowError, OSError, sqlite3.Error):
            return None

    def expect(self, total: int | Callable[[], int | None] | None) -> None:
        """Set the total of the innermost row-counting task (a step that learnt its size)."""
        task = self._counting(reads=False)
        value = self.measure(total)
        if task is not None and value is not None:
            task.total = value
            self._changed(task)

    def rows(self, done: int) -> None:
        """The innermost row-counting task (the running step) has done `done` rows."""
        task = self._counting(reads=False)
        if task is not None:
            task.done = done
            self._changed(task)

    def read(self, count: int) -> None:
        """A store scan returned `count` records: counted by the innermost task when it counts reads."""
        if self.tasks and self.tasks[-1].reads:
            self.tasks[-1].done += count
            self._changed(self.tasks[-1])

    def _counting(self, reads: bool) -> Task | None:
        return next((task for task in reversed(self.tasks) if task.reads == reads), None)

    def ready(self, what: str) -> None:
        """Report once how long the command took to get ready for its first step."""
        if not self._ready:
            self._ready = True
            self.report(f"  start-up took {time.monotonic() - self.started:.2f} s ({what})")

    def report(self, line: str) -> None:
        """A line about timing or progress, shown with the progress (not with -q)."""

    def _opened(self, task: Task) -> None:
        pass

    def _changed(self, task: Task) -> None:
        pass

    def _closed(self, task: Task) -> None:
        pass


class LogProgress(Progress):
    """Plain lines for a log: the innermost task's counts, at most once every `interval` seconds."""

    live = True

    def __init__(self, stream: TextIO, interval: float = DEFAULT_INTERVAL, started: float | None = None) -> None:
        super().__init__(started)
        self.stream = stream
        self.interval = interval
        self._last = time.monotonic()

    def report(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _changed(self, task: Task) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval and self.tasks:
            self._last = now
            self.report(self.tasks[-1].line(now))


class BarProgress(Progress):
    """A live rich bar per open task on a terminal; lines printed meanwhile appear above it, and
    the bars vanish when their task ends (the step's own line says what it did)."""

    live = True

    def __init__(self, stream: TextIO, started: float | None = None) -> None:
        super().__init__(started)
        from rich.console import Console
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(*_rich_columns(), console=Console(file=stream), transient=True,
                                 refresh_per_second=8)
        self._ids: dict[int, int] = {}

    def report(self, line: str) -> None:
        self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _opened(self, task: Task) -> None:
        if len(self.tasks) == 1:
            self._bar.start()
        self._ids[id(task)] = self._bar.add_task(task.label if task.depth == 0 else "  " * task.depth + task.name,
                                                 total=task.total, completed=task.done, task=task)

    def _changed(self, task: Task) -> None:
        if id(task) in self._ids:
            self._bar.update(self._ids[id(task)], completed=task.done, total=task.total)

    def _closed(self, task: Task) -> None:
        self._bar.remove_task(self._ids.pop(id(task)))
        if not self.tasks:
            self._bar.stop()


def _rich_columns() -> list:
    """The bar's columns: label, bar, records done / total, rate, time left (rich is imported only
    when a bar is drawn)."""
    from rich.progress import BarColumn, ProgressColumn
    from rich.text import Text

    class Label(ProgressColumn):
        def render(self, task):
            return Text(task.description, overflow="ellipsis", no_wrap=True)

    class Count(ProgressColumn):
        def render(self, task):
            ours: Task = task.fields["task"]
            known = ours.total is not None and ours.done <= ours.total
            return Text(f"{ours.done}/{ours.total} records" if known else f"{ours.done} records",
                        style="progress.download")

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.0f} records/s" if task.speed else "", style="progress.data.speed")

    class Eta(ProgressColumn):
        def render(self, task):
            left = task.time_remaining
            shown = task.total is not None and left is not None and task.completed <= task.total
            return Text(f"ETA {duration(left)}" if shown else "", style="progress.remaining")

    return [Label(), BarColumn(), Count(), Rate(), Eta()]


def progress_for(stream: TextIO, quiet: bool = False, interval: float = DEFAULT_INTERVAL,
                 started: float | None = None) -> Progress:
    """The display for a command's output: none when quiet, a bar on a terminal, lines otherwise."""
    if quiet:
        return Progress(started)
    if stream.isatty():
        return BarProgress(stream, started)
    return LogProgress(stream, interval, started)
