"""Progress of long steps: plain lines in a log, a live bar on a terminal, nothing with -q; lines in
order, each naming its step."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.project import Project
from vecflow.cli import build_parser
from vecflow.errors import BackendError, InvalidDataError
from vecflow.progress import BarProgress, LogProgress, Progress, Task, duration, progress_for

N = 600
# Every page may print a line: the step is slow enough for that without slow data.
FREQUENT = {"VECFLOW_PROGRESS_INTERVAL": "0.001"}


# the display, without any store -------------------------------------------------------------------

def test_a_task_line_shows_records_done_of_total_rate_and_time_left():
    task = Task("step", "[1/2] rename_field docs: a -> b", total=5000, reads=False, done=1000, started=100.0)
    assert task.line(102.0) == "  [1/2] rename_field docs: a -> b: 1000/5000 records (20%), 500 records/s, ETA 8 s"
    task.total = None
    assert task.line(102.0) == "  [1/2] rename_field docs: a -> b: 1000 records, 500 records/s"
    assert Task("s", "s", 10, False, started=100.0).line(100.5) == "  s: 0/10 records (0%)"


def test_the_rate_leaves_out_rows_done_before_a_resume_and_time_spent_in_inner_tasks():
    task = Task("s", "s", total=4000, reads=False, done=3000, initial=2000, started=0.0, inside=6.0)
    assert task.rate(10.0) == 250.0 and task.remaining(10.0) == 4.0


def test_durations_read_as_seconds_minutes_and_hours():
    assert [duration(s) for s in (7.4, 125, 3720)] == ["7 s", "2 min 05 s", "1 h 02 min"]


def test_log_lines_name_the_step_and_the_part_of_it_that_runs():
    stream = io.StringIO()
    progress = LogProgress(stream, interval=0)
    with progress.task("[1/2] copy_collection a -> b", 100):
        progress.rows(40)
        with progress.task("verify (target records)", 10, reads=True):
            progress.rows(50)  # still the step's rows, shown with the read that runs now
            progress.read(4)
        progress.read(3)  # a scan outside a read task counts for nothing
    lines = stream.getvalue().splitlines()
    assert [line.split(", ")[0] for line in lines] == [
        "  [1/2] copy_collection a -> b: 40/100 records (40%)",
        "  [1/2] copy_collection a -> b: verify (target records): 0/10 records (0%)",
        "  [1/2] copy_collection a -> b: verify (target records): 4/10 records (40%)",
    ]


def test_a_step_that_learns_its_size_shows_it_as_its_total():
    stream = io.StringIO()
    progress = LogProgress(stream, interval=0)
    with progress.task("[1/1] create_collection docs", lambda: None):
        progress.expect(lambda: 1500)
        progress.rows(300)
    assert stream.getvalue().splitlines()[-1].startswith("  [1/1] create_collection docs: 300/1500 records (20%)")


def test_without_a_display_nothing_is_printed_and_no_total_is_counted():
    progress = Progress()
    counted = []
    with progress.task("step", lambda: counted.append(1) or 10) as task:
        progress.expect(lambda: counted.append(2) or 20)
        progress.rows(5)
        progress.ready("stores")
    assert counted == [] and task.total is None and task.done == 5


def test_the_display_follows_the_output():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert type(progress_for(io.StringIO(), quiet=True)) is Progress
    assert type(progress_for(io.StringIO())) is LogProgress
    assert type(progress_for(Terminal())) is BarProgress
    assert type(progress_for(Terminal(), quiet=True)) is Progress


# the real command line --------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path):
    project = Project(tmp_path / "project", {"path": str(tmp_path / "chroma")}, batch_size=50,
                      extra_stores={"faiss": ("faiss", {"path": str(tmp_path / "faiss")})})
    project.write_records("docs.jsonl", N, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.copy_collection("docs", "faiss:docs")')
    return project


PROGRESS_LINE = re.compile(r"  .+: \d+(/\d+)? records( \(\d+%\))?(, \d+ records/s)?(, ETA .+)?")


def progress_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if PROGRESS_LINE.fullmatch(line)]


def test_a_log_gets_progress_lines_that_name_their_step_and_come_in_order(project):
    lines = project.cli("upgrade", "head", env=FREQUENT).stdout.splitlines()
    assert lines[0] == "Upgrade r1 (revision r1)"
    assert re.fullmatch(r"  start-up took \d+\.\d\d s \(scripts, ledger, lock and stores opened\)", lines[1]), lines
    create = "  [1/1] create_collection docs (dim of the data, cosine) from data/docs.jsonl"
    copy = "  [1/1] copy_collection docs -> faiss:docs"
    assert any(re.fullmatch(rf"{re.escape(create)}: \d+/{N} records \(\d+%\), \d+ records/s, ETA \d+ s", line)
               for line in lines), lines
    assert any(line.startswith(f"{create}: digest after main:docs: ") for line in lines), lines
    assert any(re.match(rf"{re.escape(copy)}: verify \(target records\): \d+/{N} records", line) for line in lines)
    assert any(re.fullmatch(rf"{re.escape(create)}: {N} rows, \d+\.\d\d s \(digests \d+\.\d\d s\)", line)
               for line in lines), lines

    # In order: a step's progress lines between its revision's heading and its own line, and
    # what the copy verified after that line.
    headings = [next(i for i, line in enumerate(lines) if line.startswith(f"Upgrade {rev} ")) for rev in ("r1", "r2")]
    ends = [next(i for i, line in enumerate(lines) if line.startswith(f"{step}: {N} rows")) for step in (create, copy)]
    assert headings[0] < ends[0] < headings[1] < ends[1]
    for number, step in enumerate((create, copy)):
        shown = [i for i, line in enumerate(lines) if line.startswith(f"{step}: ") and i != ends[number]]
        assert shown and all(headings[number] < i < ends[number] for i in shown), (step, lines)
    assert [line.split(":")[0] for line in lines[ends[1] + 1:]] == ["      target faiss", "      verified faiss",
                                                                   "      full reads"]
    assert set(progress_lines(lines)) <= {line for line in lines if line.startswith((create, copy))}

    down = project.cli("downgrade", "r1", env=FREQUENT).stdout.splitlines()
    assert any(line.startswith("  downgrade r2: verify faiss:docs: ") for line in down) or \
        any(line.startswith("  downgrade r2: verify main:docs: ") for line in down), down
    assert down[-1].startswith("  verified: faiss:docs, main:docs restored exactly")


def test_quiet_shows_no_progress_and_keeps_what_was_done(project):
    lines = project.cli("-q", "upgrade", "head", env=FREQUENT).stdout.splitlines()
    assert not progress_lines(lines) and not any("start-up" in line for line in lines), lines
    assert lines[:2] == ["Upgrade r1 (revision r1)", f"  {lines[1].split(': ')[0].strip()}: {N} rows, "
                         + lines[1].split(" rows, ")[1]]
    assert any(line.startswith(f"      verified faiss:docs: {N} records") for line in lines), lines


@pytest.mark.parametrize("argv", [["-q", "upgrade", "head"], ["upgrade", "head", "-q"], ["upgrade", "--quiet", "head"],
                                  ["--quiet", "export", "docs", "out"], ["import", "out", "docs", "-q"]])
def test_quiet_goes_before_or_after_the_command(argv):
    assert build_parser().parse_args(argv).quiet is True
    assert build_parser().parse_args([a for a in argv if a not in ("-q", "--quiet")]).quiet is False


def on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, bytes]:
    """Run a command with stdin and stdout on a new pseudo-terminal (40 rows, 200 columns) and
    stderr on a pipe; return its exit code, its stderr and everything it wrote to the terminal.

    The terminal is read with poll(), not select(): a test process that holds many descriptors
    gets a master above FD_SETSIZE (1024), which select() refuses. It stays open until the child
    has closed its side (the read fails with EIO once every slave descriptor is gone): closing it
    earlier hangs the terminal up, and the child's next write fails with EIO."""
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        # Without COLUMNS and LINES (pytest-xdist's workers set 80 and 24): the terminal's size decides.
        env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
        process = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                   env={**env, "TERM": "xterm"})
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    output = b""
    try:
        terminal = select.poll()
        terminal.register(master, select.POLLIN)
        while True:
            assert terminal.poll(120_000), f"no output for 120 s: {output.decode(errors='replace')}"
            try:
                chunk = os.read(master, 65536)
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                break  # the child closed the terminal: everything it wrote has been read
            if not chunk:
                break
            output += chunk
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return code, process.stderr.read().decode(errors="replace"), output


def test_a_terminal_gets_a_live_bar(project):
    project.write_python("r2", "r1", "pass")
    code, errors, output = on_a_terminal([sys.executable, "-m", "vecflow", "upgrade", "head"], project.root)
    assert code == 0, (errors, output.decode(errors="replace"))
    text = output.decode()
    assert "\x1b[2K" in text  # redrawn in place, and erased when the step ends
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # without colours and cursor moves
    frames = re.split(r"[\r\n]", plain)
    bar = (rf"\[1/1\] create_collection docs \(dim of the data, cosine\) from data/docs\.jsonl +[━╸╺]+ "
           rf"\d+/{N} records \d+ records/s ETA \d+ s *")
    assert any(re.fullmatch(bar, frame) for frame in frames), plain
    # The step's own line once its bar is gone.
    assert any(re.fullmatch(rf"  \[1/1\] create_collection docs .*: {N} rows, .* s \(digests .* s\)", frame)
               for frame in frames), frames


def test_a_failing_step_says_where_it_stopped_before_the_error(tmp_path):
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")}, batch_size=50)
    project.write_records("docs.jsonl", 120, dim=6)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")\n'
                                     'op.set_field("docs", "x", "missing + 1")')
    with pytest.raises(InvalidDataError):
        project.run("upgrade", "head")
    assert project.output[-1].startswith("  [2/2] set_field docs: x = {{ missing + 1 }}: stopped at 0 rows after "), \
        project.output


def test_a_store_that_cannot_count_now_leaves_the_total_unknown():
    def unreachable() -> int:
        raise BackendError("store 'main' is unreachable")

    progress = LogProgress(io.StringIO(), interval=0)
    with progress.task("[1/1] step", unreachable) as task:
        assert task.total is None
