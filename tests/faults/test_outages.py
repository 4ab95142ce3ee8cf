"""Outages: transient store failures are retried with capped, jittered backoff; a store that stays
away stops the run cleanly at a checkpoint; a store that comes back without its data is noticed.

The backoff schedule is tested with injected sleep and random (no waiting). The outages are real:
a redis-server and a `chroma run` server are SIGKILLed in the middle of a `vecflow upgrade head`
that moves a collection into them, and restarted on the same port.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from tests.conftest import start_server, stop, unavailable, wait_for_port
from tests.project import Project, step_progress
from vecflow.backends.faiss import FaissBackend
from vecflow.backends.retry import BASE_SECONDS, RetryPolicy, is_transient
from vecflow.batch import Batch
from vecflow.errors import BackendError, CollectionExistsError, CollectionNotFoundError, ConfigError

RETRY_LINE = re.compile(r"retrying (redis|chroma) [a-z_ ]+('[^']*')? in \d+\.\d s \(retry (\d+) of (\d+)\): .+")
N_RECORDS, BATCH = 1200, 20


# the schedule, without waiting ------------------------------------------------------------------

class Clock:
    """Injected sleep and clock: waits are recorded and advance time, nothing really waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def policy(retries: int, max_wait: float, draws: list[float], clock: Clock, lines: list[str]) -> RetryPolicy:
    values = iter(draws)
    return RetryPolicy(retries, max_wait, on_retry=lines.append, sleep=clock.sleep, random=lambda: next(values),
                       clock=lambda: clock.now)


def failing(times: int, error: Exception, result: str = "done"):
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return result
    return attempt, calls


def test_waits_double_from_the_base_up_to_the_cap():
    capped = RetryPolicy(8, max_wait=3.0)
    assert [capped.cap(k) for k in range(1, 9)] == [BASE_SECONDS * 2 ** (k - 1) if BASE_SECONDS * 2 ** (k - 1) < 3
                                                  else 3.0 for k in range(1, 9)]
    assert capped.cap(1) == BASE_SECONDS and capped.cap(8) == 3.0
    assert capped.longest_total_wait() == sum(capped.cap(k) for k in range(1, 9))


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.999999])
def test_full_jitter_draws_each_wait_between_zero_and_its_cap(draw):
    clock, lines = Clock(), []
    retried = policy(6, 2.0, [draw] * 6, clock, lines)
    attempt, calls = failing(6, ConnectionRefusedError("[Errno 111] Connection refused"))
    assert retried.call("redis", "upsert 'docs'", attempt) == "done"
    assert len(calls) == 7 and retried.retried == 6
    assert clock.waits == pytest.approx([draw * min(2.0, BASE_SECONDS * 2 ** k) for k in range(6)])
    assert all(0 <= wait <= min(2.0, BASE_SECONDS * 2 ** k) for k, wait in enumerate(clock.waits))


def test_each_retry_is_one_line_naming_the_store_the_call_and_the_cause():
    clock, lines = Clock(), []
    retried = policy(3, 30.0, [0.5, 0.5], clock, lines)
    attempt, _ = failing(2, _from(BackendError("redis at redis://127.0.0.1:1: Error 111 connecting. Connection\n"
                                               "refused."), redis.ConnectionError("Error 111")))
    retried.call("redis", "upsert 'docs'", attempt)
    assert lines == ["retrying redis upsert 'docs' in 0.2 s (retry 1 of 3): redis at redis://127.0.0.1:1: "
                     "Error 111 connecting. Connection refused.",
                     "retrying redis upsert 'docs' in 0.5 s (retry 2 of 3): redis at redis://127.0.0.1:1: "
                     "Error 111 connecting. Connection refused."]
    assert all(RETRY_LINE.fullmatch(line) for line in lines)


def test_when_the_retries_run_out_the_error_says_to_rerun_once_the_store_is_back():
    clock, lines = Clock(), []
    retried = policy(2, 30.0, [1.0, 1.0], clock, lines)
    cause = ConnectionResetError("[Errno 104] Connection reset by peer")
    attempt, calls = failing(10, BackendError("cannot reach Chroma at http://h:1 (upserting): reset"))
    attempt_with_cause = _raising_from(attempt, cause)
    with pytest.raises(BackendError) as info:
        retried.call("chroma", "upsert 'docs'", attempt_with_cause)
    message = str(info.value)
    assert len(calls) == 3 and len(lines) == 2 and clock.waits == [0.5, 1.0]
    assert message.startswith("cannot reach Chroma at http://h:1 (upserting): reset; gave up after 2 retries in "
                              "1.5 s (chroma upsert 'docs'). Rerun the same command once the store is reachable")
    assert "\n" not in message


def _raising_from(attempt, cause):
    def wrapped():
        try:
            return attempt()
        except BackendError as exc:
            raise exc from cause
    return wrapped


def test_no_retries_keeps_the_original_error_and_does_not_wait():
    clock, lines = Clock(), []
    error = BackendError("cannot reach redis at redis://127.0.0.1:1: refused")
    error.__cause__ = redis.ConnectionError("refused")
    attempt, calls = failing(1, error)
    with pytest.raises(BackendError) as info:
        policy(0, 30.0, [], clock, lines).call("redis", "count 'docs'", attempt)
    assert info.value is error and len(calls) == 1 and not lines and not clock.waits


@pytest.mark.parametrize("error", [CollectionNotFoundError("no collection 'docs'"), ConfigError("bad option"),
                                   ValueError("dimension 3, expected 8"), BackendError("rejected the name")])
def test_errors_that_would_come_back_the_same_are_not_retried(error):
    clock, lines = Clock(), []
    attempt, calls = failing(1, error)
    with pytest.raises(type(error)):
        policy(5, 30.0, [], clock, lines).call("redis", "upsert 'docs'", attempt)
    assert len(calls) == 1 and not lines


def _from(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


def _status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:1/api")
    return httpx.HTTPStatusError("status", request=request, response=httpx.Response(code, request=request))


@pytest.mark.parametrize(("error", "transient"), [
    (ConnectionRefusedError(), True), (ConnectionResetError(), True), (TimeoutError(), True),
    (redis.ConnectionError("Error 111"), True), (redis.TimeoutError("timed out"), True),
    (redis.BusyLoadingError("LOADING Redis is loading the dataset in memory"), True),
    (redis.ResponseError("WRONGTYPE"), False),
    (httpx.ConnectError("[Errno 111] Connection refused"), True), (httpx.ReadTimeout("timed out"), True),
    (httpx.RemoteProtocolError("Server disconnected"), True),
    (_status(503), True), (_status(500), True), (_status(429), True), (_status(404), False), (_status(400), False),
    (_from(BackendError("cannot reach Chroma"), httpx.ConnectError("refused")), True),
    (_from(BackendError("redis at x: ..."), redis.ConnectionError("Error 111")), True),
    (_from(CollectionNotFoundError("no collection"), httpx.ConnectError("refused")), False),
    (_from(BackendError("Chroma rejected the name"), ValueError("name")), False),
    (OSError(28, "No space left on device"), False), (ValueError("bad"), False),
])
def test_transient_failures_are_told_by_the_client_exception_under_the_vecflow_error(error, transient):
    assert is_transient(error) is transient


def test_qdrant_and_chroma_server_errors_are_transient_and_their_request_errors_are_not():
    from chromadb.errors import InternalError, InvalidArgumentError
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    def unexpected(code: int) -> UnexpectedResponse:
        return UnexpectedResponse(code, "", b"{}", httpx.Headers())

    assert is_transient(_from(BackendError("cannot upsert"), unexpected(502)))
    assert not is_transient(_from(BackendError("cannot upsert"), unexpected(400)))
    assert is_transient(_from(BackendError("cannot count"), ResponseHandlingException(httpx.ConnectError("refused"))))
    assert not is_transient(_from(BackendError("cannot count"), ResponseHandlingException(ValueError("parse"))))
    assert is_transient(_from(BackendError("Chroma upsert failed"), InternalError("boom")))
    assert not is_transient(_from(BackendError("Chroma upsert failed"), InvalidArgumentError("bad")))


# retried writes that are not idempotent by themselves -----------------------------------------

def lossy(backend: FaissBackend, primitive: str, lose_answers: int = 1) -> list[int]:
    """Make a primitive take effect and then lose its answer (the connection drops) lose_answers times."""
    original = getattr(backend, primitive)
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(1)
        result = original(*args, **kwargs)
        if len(calls) <= lose_answers:
            raise ConnectionResetError("[Errno 104] Connection reset by peer")
        return result
    setattr(backend, primitive, flaky)
    return calls


def quiet(retries: int = 3) -> tuple[RetryPolicy, list[str]]:
    lines: list[str] = []
    return RetryPolicy(retries, 1.0, on_retry=lines.append, sleep=lambda s: None), lines


def test_a_create_whose_answer_was_lost_is_not_refused_as_existing_on_retry(tmp_path):
    backend = FaissBackend(path=str(tmp_path / "faiss"))
    retry, lines = quiet()
    backend.set_retry_policy(retry)
    calls = lossy(backend, "_create_collection")
    backend.create_collection("docs", 4, "l2")
    assert backend.list_collections() == ["docs"] and len(calls) == 1 and len(lines) == 1
    with pytest.raises(CollectionExistsError):  # a genuine clash is still one
        backend.create_collection("docs", 4, "l2")


def test_a_drop_whose_answer_was_lost_is_not_refused_as_missing_on_retry(tmp_path):
    backend = FaissBackend(path=str(tmp_path / "faiss"))
    backend.create_collection("docs", 4, "l2")
    retry, lines = quiet()
    backend.set_retry_policy(retry)
    calls = lossy(backend, "_drop_collection")
    backend.drop_collection("docs")
    assert backend.list_collections() == [] and len(calls) == 1 and len(lines) == 1


def test_upserts_retried_after_a_lost_answer_write_each_record_once(tmp_path):
    backend = FaissBackend(path=str(tmp_path / "faiss"))
    backend.create_collection("docs", 4, "l2")
    retry, lines = quiet()
    backend.set_retry_policy(retry)
    calls = lossy(backend, "_upsert", lose_answers=2)
    rng = np.random.default_rng(0)
    batch = Batch([f"r{i}" for i in range(10)], rng.standard_normal((10, 4)).astype(np.float32),
                  [f"text {i}" for i in range(10)], [{"i": i} for i in range(10)])
    backend.upsert("docs", batch)
    assert backend.count("docs") == 10 and len(calls) == 3 and backend.retried_calls == 2
    assert backend.get("docs", ["r3"]).metadatas == [{"i": 3}]


def test_a_waiting_runner_checks_its_lease_before_every_retry(tmp_path):
    backend = FaissBackend(path=str(tmp_path / "faiss"))
    backend.create_collection("docs", 4, "l2")
    retry, lines = quiet(retries=5)
    backend.set_retry_policy(retry)
    checks: list[int] = []
    backend.write_guard = lambda: checks.append(len(lines))
    calls = lossy(backend, "_count", lose_answers=3)
    assert backend.count("docs") == 0
    assert len(calls) == 4 and checks == [1, 2, 3]  # after each wait, before the next try


def test_a_primitive_that_calls_public_methods_is_retried_once_not_at_every_level(tmp_path):
    backend = FaissBackend(path=str(tmp_path / "faiss"))
    backend.create_collection("docs", 4, "l2")
    retry, lines = quiet(retries=2)
    backend.set_retry_policy(retry)

    def count_through_public_methods(name: str) -> int:
        backend.has_collection(name)  # nested: must not retry on its own
        raise ConnectionRefusedError("[Errno 111] Connection refused")
    backend._count = count_through_public_methods
    with pytest.raises(BackendError, match="gave up after 2 retries"):
        backend.count("docs")
    assert len(lines) == 2


# real servers killed in the middle of a move ---------------------------------------------------

class Server:
    """A server on a loopback port of its own that a test can SIGKILL and start again on that port."""

    def __init__(self, argv: Callable[[int], list[str]], cwd: Path) -> None:
        self.argv, self.cwd = argv, cwd
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.port is None:  # the first start picks the port
            self.process, self.port = start_server(self.argv, cwd=self.cwd)
            return
        self.process = subprocess.Popen(self.argv(self.port), cwd=self.cwd, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", self.port)) != 0

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop(self.process)


@pytest.fixture
def servers():
    started: list[Server] = []

    def make(kind: str, folder: Path, persistent: bool = True) -> Server:
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "redis":
            binary = shutil.which("redis-server")
            if binary is None:
                unavailable("redis-server is not installed (apt-get install -y redis-server)")
            durability = (["--appendonly", "yes", "--appendfsync", "always"] if persistent
                          else ["--appendonly", "no"])

            def argv(port: int) -> list[str]:
                return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *durability,
                        "--dir", str(folder)]
        else:
            binary = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
            if not Path(binary).exists():
                unavailable("the `chroma` server command is not installed (pip install chromadb)")

            def argv(port: int) -> list[str]:
                return [binary, "run", "--path", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port)]
        server = Server(argv, folder)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.close()


def records(n: int, dim: int = 8) -> Batch:
    rng = np.random.default_rng(7)
    return Batch([f"doc-{i:05d}" for i in range(n)], rng.standard_normal((n, dim)).astype(np.float32),
                 [f"text {i}" for i in range(n)], [{"n": i, "kind": ["a", "b", "c"][i % 3]} for i in range(n)])


def move_project(root: Path, kind: str, server: Server) -> tuple[Project, str]:
    """A FAISS collection on disk, and one revision moving it into the server; the source digest."""
    url = f"redis://127.0.0.1:{server.port}" if kind == "redis" else f"http://127.0.0.1:{server.port}"
    project = Project(root, {"path": "%(here)s/faiss"}, backend="faiss", batch_size=BATCH,
                      extra_stores={"server": (kind, {"url": url})})
    expected = project.seed("main:docs", records(N_RECORDS))
    project.write_python("m1", None, 'op.move_collection("main:docs", "server:docs", parity_queries=5)')
    return project, expected


def upgrade(project: Project, retries: int, max_seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vecflow", "-x", f"retries={retries}", "-x",
                             f"retry_max_seconds={max_seconds}", "upgrade", "head"], cwd=project.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_mid_copy(project: Project, process: subprocess.Popen, server: Server, rows: int = 10 * BATCH) -> int:
    """SIGKILL the server once the move's checkpoint shows `rows` copied; the rows checkpointed then."""
    ledger = project.root / ".vecflow" / "ledger.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = step_progress(ledger, "m1")
        if progress and progress[0] >= rows:
            server.kill()
            return progress[0]
        if process.poll() is not None:
            raise AssertionError(f"the upgrade ended before the server was killed: {process.communicate()}")
        time.sleep(0.002)
    raise AssertionError("the move never reached the rows to kill at")


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def retry_lines(out: str, kind: str) -> list[str]:
    lines = [line for line in out.splitlines() if line.startswith("retrying")]
    assert lines and all(RETRY_LINE.fullmatch(line) and line.startswith(f"retrying {kind} ") for line in lines), lines
    return lines


def assert_moved(project: Project, expected: str) -> None:
    assert project.digest("server:docs") == expected
    assert project.digest("main:docs") == "absent"
    assert project.run("current")[0].split()[0] == "m1"


@pytest.mark.parametrize("kind", ["redis", "chroma"])
def test_a_server_killed_mid_move_and_restarted_lets_the_move_finish_by_itself(tmp_path, servers, kind):
    server = servers(kind, tmp_path / kind, persistent=True)
    project, expected = move_project(tmp_path / "project", kind, server)
    process = upgrade(project, retries=30, max_seconds=1)
    rows = kill_mid_copy(project, process, server)
    assert rows < N_RECORDS
    time.sleep(1.5)
    server.start()
    code, out, err = finished(process)
    assert code == 0 and err == "" and "verified server:docs" in out, (out, err)
    assert retry_lines(out, kind)
    assert_moved(project, expected)


def test_a_server_away_longer_than_the_budget_stops_cleanly_and_the_rerun_resumes(tmp_path, servers):
    server = servers("redis", tmp_path / "redis", persistent=True)
    project, expected = move_project(tmp_path / "project", "redis", server)
    process = upgrade(project, retries=2, max_seconds=0.2)
    kill_mid_copy(project, process, server)
    code, out, err = finished(process)
    assert code == 1 and len(retry_lines(out, "redis")) == 2, (out, err)
    address = f"127.0.0.1:{server.port}"
    assert re.fullmatch(rf"vecflow: error: redis at redis://{address}: Error 111 connecting to {address}\. "
                        r"Connection refused\.; gave up after 2 retries in \d+\.\d s \(redis [a-z_]+ 'docs'\)\. "
                        r"Rerun the same command once the store is reachable: a migration resumes from its last "
                        r"checkpoint\n", err), err
    rows, status = step_progress(project.root / ".vecflow" / "ledger.db", "m1")
    assert 0 < rows < N_RECORDS and status == "running"

    server.start()
    rerun = project.cli("-x", "retries=2", "upgrade", "head").stdout
    assert "Resuming upgrade m1" in rerun and f"resuming at {rows} rows" in rerun
    assert_moved(project, expected)


def test_a_redis_that_came_back_empty_is_explained_and_the_rerun_copies_again(tmp_path, servers):
    server = servers("redis", tmp_path / "redis", persistent=False)
    project, expected = move_project(tmp_path / "project", "redis", server)
    process = upgrade(project, retries=30, max_seconds=0.5)
    rows = kill_mid_copy(project, process, server)
    time.sleep(0.5)
    server.start()  # without persistence: empty
    code, out, err = finished(process)
    assert code == 1 and retry_lines(out, "redis"), (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    match = re.fullmatch(r"vecflow: error: move_collection main:docs -> server:docs: server:docs holds (\d+) but "
                         r"(\d+) records had been written into it: the redis store lost data it had acknowledged "
                         r"\(e\.g\. a Redis without persistence that restarted\)\. The source is untouched and the "
                         r"copy starts over on the next run; make the store durable \(Redis: appendonly yes\) and "
                         r"rerun the same command\n", err)
    assert match and int(match.group(1)) < rows <= int(match.group(2)), err
    assert project.digest("main:docs") == expected

    rerun = project.cli("upgrade", "head").stdout
    assert "Resuming upgrade m1" in rerun and "verified server:docs" in rerun
    assert_moved(project, expected)
