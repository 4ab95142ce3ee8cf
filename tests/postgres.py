"""A real PostgreSQL server for the tests: initdb + pg_ctl on a free loopback port, stopped after.

The binaries are found on PATH or where Debian's `postgresql` package puts them
(/usr/lib/postgresql/<version>/bin). PostgreSQL refuses to run as root, so as root the server
runs as the unprivileged `postgres` user (which that package creates), switched to in the child
process before it starts. Durability is not what
these tests check: the cluster runs with fsync off, on tmpfs when the machine has one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port, unavailable

USER = "postgres"


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl (the newest version when several are installed)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                     if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(folders):
        if (Path(folder) / "pg_ctl").exists() and (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


def _server_user() -> pwd.struct_passwd | None:
    """As root, the unprivileged `postgres` user the server runs as; None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        unavailable(f"running as root and there is no {USER!r} user to run PostgreSQL as "
                    "(apt-get install -y postgresql creates it)")


def _run_as(user: pwd.struct_passwd | None, args: list[str], cwd: Path, timeout: float) -> None:
    def drop() -> None:
        if user is not None:
            os.setgid(user.pw_gid)
            os.setgroups([])
            os.setuid(user.pw_uid)

    subprocess.run(args, check=True, capture_output=True, timeout=timeout, cwd=cwd, preexec_fn=drop,
                   env={**os.environ, "HOME": str(cwd)})


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster on 127.0.0.1 with trust authentication; yields its URL."""
    folder = binaries()
    if folder is None:
        unavailable("PostgreSQL is not installed (apt-get install -y postgresql)")
    user = _server_user()
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="vecflow-pg-", dir=base))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    try:
        _run_as(user, [str(folder / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
                       "--no-sync"], root, 120)
        port = _start(user, folder, root, data)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            _run_as(user, [str(folder / "pg_ctl"), "stop", "-m", "immediate", "-D", str(data)], root, 60)
        shutil.rmtree(root, ignore_errors=True)


def _start(user: pwd.struct_passwd | None, folder: Path, root: Path, data: Path) -> int:
    """Start the cluster on a free loopback port, on another one when that port was taken between
    the probe and the server's bind (parallel test workers each start their own server); its port."""
    log = root / "server.log"
    for _ in range(5):
        port = free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off "
                   "-c synchronous_commit=off -c max_connections=100")
        try:
            _run_as(user, [str(folder / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(log),
                           "-o", options], root, 90)
            return port
        except subprocess.CalledProcessError as exc:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            if "could not bind" not in text:
                raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')}\n{text}") from exc
            log.unlink()
    raise RuntimeError(f"PostgreSQL found no free port in five tries:\n{text}")


def fresh_schema(url: str) -> str:
    """The server's URL with a schema of its own: a new, empty ledger location."""
    return f"{url}?schema=t{uuid.uuid4().hex[:12]}"
