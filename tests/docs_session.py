"""Play a docs page as its reader would: write the files it shows, run the commands it shows, and
compare what each command prints with the output the page shows under it.

A page is read in order:

- A code block right after a line "`PATH`:" is written to PATH (relative to the reader's current
  folder); after "Append to `PATH`:" it is appended.
- In a ```console block, a line "$ COMMAND" is run; the lines after it, up to the next "$ ", are
  what it prints (stdout and stderr together, in order). A command whose output shows a
  `vecflow: error:` line must exit 1, others 0. A last output line "Killed" means the reader killed
  the command: it is started, SIGKILLed once a step of the running attempt has checkpointed rows,
  and what it printed is not compared.
- In expected output, `…` stands for any text within a line; a line holding only `…` for any
  number of lines; times such as `0.23 s`, ISO timestamps and UUIDs (ledger ids) match any value.

Commands a reader types: `vecflow ...`, `cd DIR`, `python FILE.py`, `export NAME=VALUE` and
`pip install ...`. `InProcess` runs vecflow through `vecflow.cli.main` (fast), `Subprocess` runs
`python -m vecflow`, and `Shell` runs every line verbatim in bash (the new-user test, where pip
installs into a virtualenv). Outside `Shell`, `pip install` lines are not run: installing is what
tests/test_new_user.py proves.

With $VECFLOW_UPDATE_DOCS=1 the tests that play pages rewrite the outputs shown on them instead of
failing (see Session); review the result with `git diff docs/`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ELLIPSIS = "…"
FILE_LABEL = re.compile(r"^`([^`\s]+)`:$")
APPEND_LABEL = re.compile(r"^Append to `([^`\s]+)`:$")
DURATION = re.compile(r"\d+\.\d+ s\b")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class WriteFile:
    path: str
    text: str
    append: bool
    line: int


@dataclass
class Command:
    command: str
    expected: list[str]
    line: int

    @property
    def killed(self) -> bool:
        return bool(self.expected) and self.expected[-1] == "Killed"

    @property
    def exit_code(self) -> int:
        return 1 if any(line.startswith("vecflow: error:") for line in self.expected) else 0


Step = WriteFile | Command


def page_steps(text: str) -> list[Step]:
    """The files and commands of a page, in reading order."""
    steps: list[Step] = []
    lines = text.splitlines()
    index, label = 0, None
    while index < len(lines):
        stripped = lines[index].strip()
        if stripped.startswith("```"):
            lang, start = stripped[3:].strip(), index
            indent = len(lines[index]) - len(lines[index].lstrip())
            index += 1
            body = []
            while not lines[index].strip().startswith("```"):
                body.append(lines[index][indent:] if lines[index][:indent].strip() == "" else lines[index])
                index += 1
            content = textwrap.dedent("\n".join(body)) + "\n"
            if label is not None:
                path, append = label
                steps.append(WriteFile(path, content, append, start + 1))
            elif lang == "console":
                steps += _commands(content, start + 2)
            label = None
        elif stripped:
            match, append = FILE_LABEL.match(stripped), APPEND_LABEL.match(stripped)
            label = (match.group(1), False) if match else (append.group(1), True) if append else None
        index += 1
    return steps


def _commands(block: str, first_line: int) -> list[Command]:
    commands: list[Command] = []
    for offset, line in enumerate(block.rstrip("\n").splitlines()):
        if line.startswith("$ "):
            commands.append(Command(line[2:], [], first_line + offset))
        elif commands:
            commands[-1].expected.append(line.rstrip())
        else:
            raise ValueError(f"line {first_line + offset}: console output before any command: {line!r}")
    return commands


def expected_pattern(expected: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        if line == ELLIPSIS:
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        regex = ""
        for piece in re.split(f"({re.escape(ELLIPSIS)}|{DURATION.pattern}|{TIMESTAMP.pattern}|{UUID.pattern})", line):
            if piece == ELLIPSIS:
                regex += r"[^\n]*?"
            elif DURATION.fullmatch(piece):
                regex += DURATION.pattern
            elif TIMESTAMP.fullmatch(piece) or UUID.fullmatch(piece):
                regex += (TIMESTAMP if TIMESTAMP.fullmatch(piece) else UUID).pattern
            else:
                regex += re.escape(piece)
        parts.append(regex + r"\n")
    return re.compile("".join(parts))


def matches(expected: list[str], actual: str) -> bool:
    text = "\n".join(line.rstrip() for line in actual.rstrip("\n").splitlines())
    text = text + "\n" if text else ""
    return expected_pattern(expected).fullmatch(text) is not None


@dataclass
class Ran:
    code: int
    output: str


@dataclass
class Session:
    """A reader at a terminal: a current folder and an environment.

    With $VECFLOW_UPDATE_DOCS=1 a command whose output differs from the page does not fail: the
    page's output block is rewritten from what the command printed (lines that still match are
    kept as written, `…` included; new ones get the session's folder as `…`). Review with git diff.
    """

    cwd: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    transcript: list[str] = field(default_factory=list)
    check: bool = True  # False: only record the transcript
    update: bool = field(default_factory=lambda: os.environ.get("VECFLOW_UPDATE_DOCS") == "1")

    def __post_init__(self) -> None:
        self.root = self.cwd

    def play(self, page: Path | str, steps: list[Step] | None = None) -> list[tuple[Command, Ran]]:
        """Every step of a page (or the given steps of it); fails naming the page line of the
        first command whose output or exit code differs from the page."""
        page = Path(page)
        ran, edits = [], []
        for step in steps if steps is not None else page_steps(page.read_text(encoding="utf-8")):
            if isinstance(step, WriteFile):
                target = self.cwd / step.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("a" if step.append else "w", encoding="utf-8") as handle:
                    handle.write(step.text)
                continue
            result = self.run(step)
            ran.append((step, result))
            self.transcript.append(f"$ {step.command}\n{result.output}")
            where = f"{page.name}:{step.line}: `$ {step.command}`"
            if step.killed or not self.check:
                continue
            if self.update and not self.skips_output(step) and not matches(step.expected, result.output):
                edits.append((step, updated_output(step.expected, result.output, self.root)))
                continue
            if result.code != step.exit_code:
                raise AssertionError(f"{where} exited {result.code}, the page implies {step.exit_code}:\n"
                                     f"{result.output}")
            if not self.skips_output(step) and not matches(step.expected, result.output):
                raise AssertionError(f"{where} printed something else than the page shows.\n--- page:\n"
                                     + "\n".join(step.expected) + f"\n--- printed:\n{result.output}")
        if edits:
            rewrite_outputs(page, edits)
        return ran

    def skips_output(self, step: Command) -> bool:
        return step.command.startswith("pip ")

    def run(self, step: Command) -> Ran:
        words = shlex.split(step.command, comments=True)
        if words[0] == "cd":
            self.cwd = (self.cwd / words[1]).resolve()
            return Ran(0, "")
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            self.env[name] = value
            return Ran(0, "")
        if words[0] == "pip":
            return Ran(0, "")
        if words[0] == "python":
            return self._subprocess([sys.executable, *words[1:]], step)
        if words[0] == "vecflow":
            return self.vecflow(words[1:], step)
        raise AssertionError(f"line {step.line}: a docs session cannot run `{step.command}`")

    def vecflow(self, args: list[str], step: Command) -> Ran:
        return self._subprocess([sys.executable, "-m", "vecflow", *args], step)

    def _subprocess(self, argv: list[str], step: Command) -> Ran:
        env = {**self.env, "PYTHONUNBUFFERED": "1"}
        if step.killed:
            return kill_once_rows_are_done(argv, self.cwd, env)
        result = subprocess.run(argv, cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=600)
        return Ran(result.returncode, result.stdout)


class Subprocess(Session):
    """Every command in a process of its own (`python -m vecflow`)."""


class InProcess(Session):
    """vecflow commands through `vecflow.cli.main`, and `python FILE.py` through runpy, in this
    process (a model or a client imported once serves every command); a killed command runs as
    in Subprocess."""

    def vecflow(self, args: list[str], step: Command) -> Ran:
        if step.killed:
            return super().vecflow(args, step)
        from vecflow.cli import main

        return self._here(lambda: main(args))

    def run(self, step: Command) -> Ran:
        words = shlex.split(step.command, comments=True)
        if words[0] != "python" or step.killed:
            return super().run(step)
        script = self.cwd / words[1]

        def run_script() -> int:
            saved_argv, saved_path = sys.argv, list(sys.path)
            sys.argv, sys.path[0:0] = [str(script), *words[2:]], [str(script.parent)]
            try:
                runpy.run_path(str(script), run_name="__main__")
            finally:
                sys.argv, sys.path[:] = saved_argv, saved_path
            return 0

        return self._here(run_script)

    def _here(self, call: Callable[[], int]) -> Ran:
        """call() with this session's folder and environment, its output captured."""
        buffer = io.StringIO()
        saved_cwd, saved_env = Path.cwd(), dict(os.environ)
        try:
            os.chdir(self.cwd)
            os.environ.clear()
            os.environ.update(self.env)
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                try:
                    code = call()
                except SystemExit as exc:  # argparse: --help, usage errors; sys.exit() in a script
                    code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
        return Ran(code, buffer.getvalue())


class Shell(Session):
    """Every command line verbatim in bash, with this session's environment (PATH included)."""

    def skips_output(self, step: Command) -> bool:
        return step.command.startswith("pip ") or " && " in step.command

    def run(self, step: Command) -> Ran:
        words = shlex.split(step.command, comments=True)
        if words[0] == "cd":
            return super().run(step)
        argv = ["bash", "-c", step.command]
        return self._subprocess(argv, step)


def kill_once_rows_are_done(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> Ran:
    """Start a command, SIGKILL it once a step of its attempt has checkpointed rows (the ledger
    is .vecflow/ledger.db of the project in cwd)."""
    ledger = cwd / ".vecflow" / "ledger.db"
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"`{' '.join(argv)}` ended before it could be killed:\n{process.stdout.read()}")
            if _rows_done(ledger) > 0:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return Ran(-9, process.stdout.read())
            time.sleep(0.005)
        raise AssertionError(f"`{' '.join(argv)}` checkpointed no rows within {timeout} s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _rows_done(ledger: Path) -> int:
    """Rows checkpointed by a running step of an unfinished attempt."""
    if not ledger.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1)) as conn:
            row = conn.execute("SELECT MAX(s.rows_done) FROM steps s JOIN attempts a ON a.id = s.attempt_id "
                               "WHERE a.finished_at IS NULL AND s.status = 'running'").fetchone()
    except sqlite3.Error:
        return 0
    return (row and row[0]) or 0


def section_steps(page: Path, title: str) -> list[Step]:
    """The steps under the `## title` heading of a page (up to the next `## ` heading)."""
    text = page.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line == f"## {title}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [step for step in page_steps(text) if start < step.line <= end]


def _line_matches(expected: str, actual: str) -> bool:
    return expected != ELLIPSIS and matches([expected], actual + "\n")


def updated_output(expected: list[str], printed: str, root: Path) -> list[str]:
    """The page's output lines for what a command printed: expected lines that still match
    (aligned by longest common subsequence) are kept, a `…` line stays where printed lines fall
    between the same neighbours, other printed lines are taken as printed (root shown as `…`)."""
    actual = [line.rstrip() for line in printed.rstrip("\n").splitlines()] if printed.strip() else []
    plain = [(i, line) for i, line in enumerate(expected) if line != ELLIPSIS]
    n, m = len(plain), len(actual)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = (table[i + 1][j + 1] + 1 if _line_matches(plain[i][1], actual[j])
                           else max(table[i + 1][j], table[i][j + 1]))
    pairs, i, j = {}, 0, 0
    while i < n and j < m:
        if _line_matches(plain[i][1], actual[j]) and table[i][j] == table[i + 1][j + 1] + 1:
            pairs[j] = plain[i][0]
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    out: list[str] = []
    previous = -1  # index in expected of the last kept line
    for j, line in enumerate(actual):
        if j in pairs:
            out.append(expected[pairs[j]])
            previous = pairs[j]
            continue
        following = next((pairs[k] for k in range(j + 1, m) if k in pairs), len(expected))
        if ELLIPSIS in expected[previous + 1:following]:
            if not out or out[-1] != ELLIPSIS:
                out.append(ELLIPSIS)
            continue
        out.append(_machine_neutral(line, root))
    return out


def _machine_neutral(line: str, root: Path) -> str:
    """A printed line with this machine's folder, user@host and host shown as `…`."""
    host = socket.gethostname()
    line = line.replace(str(root), ELLIPSIS)
    line = re.sub(rf"\S+@{re.escape(host)}\b", ELLIPSIS, line)
    return line.replace(f" on {host})", f" on {ELLIPSIS})")


def rewrite_outputs(page: Path, edits: list[tuple[Command, list[str]]]) -> None:
    """Replace the output lines under each command on the page. A command is found by its `$ `
    line followed by the output the session read (the closest such place to the line it was
    read at: an earlier rewrite of the same page may have moved it)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    for step, new in sorted(edits, key=lambda edit: edit[0].line, reverse=True):
        block = [f"$ {step.command}", *step.expected]
        places = [i for i in range(len(lines) - len(block) + 1) if lines[i:i + len(block)] == block]
        if not places:
            raise AssertionError(f"{page.name}: cannot find `$ {step.command}` and its output to rewrite")
        start = min(places, key=lambda i: abs(i + 1 - step.line)) + 1
        lines[start:start + len(step.expected)] = new
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
