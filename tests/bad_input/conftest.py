"""The bad-input suite's project: a FAISS store holding one applied revision, and the check every
case ends with: exit code 1, one line `vecflow: error: ...` on stderr, no traceback, and nothing
written (the store's files and the ledger's applied set as they were).

Most cases call `vecflow.cli.main` in-process (milliseconds each); `fails(..., via_subprocess=True)`
runs the real `python -m vecflow` for a representative subset, and for what needs a process of its
own (resource limits, dropped privileges).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vecflow import command
from vecflow.backends import open_backend
from vecflow.cli import main
from vecflow.config import load_config
from vecflow.state import VecflowState

INI = """\
[vecflow]
script_location = %(here)s/versions
ledger = %(here)s/.vecflow/ledger.db
batch_size = 4

[store:main]
backend = faiss
path = %(here)s/store
"""

BASE_REVISION = '''"""base: the docs collection"""

revision = "a0"
down_revision = None


def upgrade(op):
    op.create_collection("docs", data="data/docs.jsonl")
'''


def record_line(i: int, dim: int = 4, **changes: Any) -> str:
    """One valid JSONL record line (changes replace or add keys; a None value removes the key)."""
    row: dict[str, Any] = {"id": f"r{i}", "vector": [float(i + 1)] + [0.5] * (dim - 1), "document": f"text {i}",
                           "metadata": {"n": i, "tag": "x"}}
    row.update(changes)
    return json.dumps({k: v for k, v in row.items() if v is not None}, allow_nan=True)


class BadInputProject:
    """A project under test: revision a0 applied (collection docs, 6 records) on a FAISS store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "versions"
        self.ini = root / "vecflow.ini"
        self.ledger = root / ".vecflow" / "ledger.db"
        self.snapshots = root / ".vecflow" / "snapshots.db"
        self.store = root / "store"

    @property
    def config(self):
        return load_config(self.ini)

    # writing inputs ----------------------------------------------------------------------------

    def write(self, name: str, text: str | bytes, folder: Path | None = None) -> Path:
        path = (folder or self.versions) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def revision(self, rev: str, body: str, down: str | None = "a0", extra: str = "",
                 downgrade: str | None = None) -> Path:
        """A Python revision whose upgrade(op) runs `body`."""
        text = (f'"""revision {rev}"""\n{extra}\nrevision = {rev!r}\ndown_revision = {down!r}\n\n\n'
                f"def upgrade(op):\n{textwrap.indent(textwrap.dedent(body), '    ')}\n")
        if downgrade is not None:
            text += f"\n\ndef downgrade(op):\n{textwrap.indent(textwrap.dedent(downgrade), '    ')}\n"
        return self.write(f"{rev}_test.py", text)

    def data(self, name: str, lines: list[str] | bytes) -> Path:
        content = lines if isinstance(lines, bytes) else "".join(line + "\n" for line in lines)
        return self.write(name, content, self.versions / "data")

    def set_ini(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            self.ini.write_bytes(text)
        else:
            self.ini.write_text(textwrap.dedent(text), encoding="utf-8")

    # what vecflow wrote ------------------------------------------------------------------------

    def applied(self) -> set[str] | None:
        """The ledger's applied set, read without vecflow (None when there is no readable ledger)."""
        if not self.ledger.is_file():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)) as conn:
                return {row[0] for row in conn.execute("SELECT revision FROM applied")}
        except sqlite3.Error:
            return None

    def attempts(self, revision: str) -> list[str]:
        """Outcomes of a revision's attempts, oldest first."""
        with contextlib.closing(sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)) as conn:
            return [row[0] for row in conn.execute("SELECT outcome FROM attempts WHERE revision = ? ORDER BY id",
                                                   [revision])]

    def store_files(self) -> dict[str, str]:
        """sha256 of every file of the store (SQLite's shared-memory index aside)."""
        if not self.store.exists():
            return {}
        return {str(path.relative_to(self.store)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(self.store.rglob("*")) if path.is_file() and not path.name.endswith("-shm")}

    def data_records(self, collection: str = "docs") -> dict[str, dict[str, Any]]:
        """id -> metadata of a collection of the store, read without the project's ledger or state."""
        backend = open_backend("faiss", {"path": str(self.store)}, VecflowState.in_memory(), None)
        try:
            return {rid: meta for page, _ in backend.pages(collection, 1000)
                    for rid, meta in zip(page.ids, page.metadatas)}
        finally:
            backend.close()

    def written(self) -> dict[str, Any]:
        return {"store": self.store_files(), "applied": self.applied()}

    # running vecflow ---------------------------------------------------------------------------

    def run(self, *args: str, via_subprocess: bool = False, preexec_fn: Callable[[], None] | None = None,
            env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of `vecflow -c vecflow.ini ARGS`."""
        argv = ["-c", str(self.ini), *args]
        if via_subprocess or preexec_fn is not None:
            result = subprocess.run([sys.executable, "-m", "vecflow", *argv], cwd=self.root, capture_output=True,
                                    text=True, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn, timeout=120)
            return result.returncode, result.stdout, result.stderr
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return code, out.getvalue(), err.getvalue()

    def fails(self, *args: str, expect: str | tuple[str, ...] = (), unchanged: bool = True, **how: Any) -> str:
        """Run vecflow; assert exit 1, one `vecflow: error:` line without a traceback, every `expect`
        text in it, and (unless unchanged=False) nothing written. Returns the line."""
        before = self.written()
        code, _, err = self.run(*args, **how)
        lines = err.strip().splitlines()
        assert "Traceback" not in err, err
        assert code == 1, (code, err)
        assert len(lines) == 1 and lines[0].startswith("vecflow: error: "), err
        for text in (expect,) if isinstance(expect, str) else expect:
            assert text in lines[0], (text, lines[0])
        if unchanged:
            assert self.written() == before, "vecflow wrote although it refused the input"
        return lines[0]

    def succeeds(self, *args: str, **how: Any) -> str:
        code, out, err = self.run(*args, **how)
        assert code == 0 and not err.strip(), (code, out, err)
        return out


@pytest.fixture(scope="session")
def base_project(tmp_path_factory) -> Path:
    """The template: a0 applied. Copied for each test (paths in vecflow.ini are relative to it)."""
    root = tmp_path_factory.mktemp("bad-input-base") / "project"
    project = BadInputProject(root)
    project.versions.mkdir(parents=True)
    project.set_ini(INI)
    project.data("docs.jsonl", [record_line(i) for i in range(6)])
    project.write("a0_base.py", BASE_REVISION)
    command.upgrade(project.config, "head", out=lambda line: None)
    return root


@pytest.fixture
def project(base_project, tmp_path) -> BadInputProject:
    root = tmp_path / "project"
    shutil.copytree(base_project, root)
    return BadInputProject(root)
