"""A throwaway vecflow project for tests: vecflow.ini, versions/, and helpers to run commands."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vecflow import command
from vecflow.backends import Backend
from vecflow.batch import Batch
from vecflow.config import Config, load_config
from vecflow.runtime.digest import collection_digest, collection_digests
from vecflow.runtime.stores import Stores

REPO = Path(__file__).resolve().parent.parent


class Project:
    def __init__(self, root: Path, store_options: dict[str, str], backend: str = "chroma",
                 batch_size: int = 100, extra_stores: dict[str, tuple[str, dict[str, str]]] | None = None) -> None:
        self.root = root
        self.versions = root / "versions"
        self.versions.mkdir(parents=True, exist_ok=True)
        options = "\n".join(f"{k} = {v}" for k, v in store_options.items())
        (root / "vecflow.ini").write_text(textwrap.dedent(f"""\
            [vecflow]
            script_location = %(here)s/versions
            ledger = %(here)s/.vecflow/ledger.db
            batch_size = {batch_size}

            [store:main]
            backend = {backend}
            """) + options + "\n" + "".join(
                f"\n[store:{name}]\nbackend = {kind}\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
                for name, (kind, opts) in (extra_stores or {}).items()), encoding="utf-8")
        self.output: list[str] = []

    @property
    def config(self) -> Config:
        return load_config(self.root / "vecflow.ini")

    def run(self, name: str, *args: Any, **kwargs: Any) -> list[str]:
        """Run a command function in-process; return what it printed."""
        self.output = []
        getattr(command, name)(self.config, *args, out=self.output.append, **kwargs)
        return self.output

    def cli(self, *args: str, check: bool = True, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the real `python -m vecflow` in a subprocess."""
        result = subprocess.run([sys.executable, "-m", "vecflow", *args], cwd=self.root, capture_output=True,
                                text=True, env={**os.environ, **(env or {})}, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"vecflow {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def write_python(self, rev: str, down: str | tuple | None, body: str, downgrade: str | None = None,
                     extra: str = "") -> Path:
        text = (f'"""revision {rev}"""\n\nrevision = {rev!r}\ndown_revision = {down!r}\n{extra}\n\n'
                f"def upgrade(op):\n{textwrap.indent(textwrap.dedent(body), '    ')}\n")
        if downgrade is not None:
            text += f"\n\ndef downgrade(op):\n{textwrap.indent(textwrap.dedent(downgrade), '    ')}\n"
        path = self.versions / f"{rev}_test.py"
        path.write_text(text, encoding="utf-8")
        return path

    def write_yaml(self, rev: str, text: str) -> Path:
        path = self.versions / f"{rev}_test.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def write_records(self, name: str, n: int, dim: int = 8, seed: int = 0) -> Path:
        """A JSONL data file under versions/data for create_collection(data=...)."""
        rng = np.random.default_rng(seed)
        path = self.versions / "data" / name
        path.parent.mkdir(exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            for i in range(n):
                handle.write(json.dumps({
                    "id": f"id-{i:06d}", "vector": rng.standard_normal(dim).astype(np.float32).tolist(),
                    "document": f"text {i} ünïcødé", "metadata": {
                        "author": ["ada", "grace", "linus"][i % 3], "rank": i % 5, "score": i / 9,
                        "draft": i % 2 == 0, "tags": ["a", "b"] if i % 4 == 0 else []}}) + "\n")
        return path

    @contextlib.contextmanager
    def opened(self, ref: str = "docs") -> Iterator[tuple[Backend, str]]:
        """(backend, collection name) of ref, on connections closed afterwards."""
        stores = Stores(self.config)
        try:
            yield stores.resolve(ref)
        finally:
            stores.close()

    def seed(self, ref: str, batch: Batch, metric: str = "cosine", page: int = 1000) -> str:
        """Create ref and write batch into it directly (no revision); its digest."""
        with self.opened(ref) as (backend, name):
            backend.create_collection(name, batch.dim, metric)
            for start in range(0, len(batch), page):
                backend.upsert(name, batch.take(list(range(start, min(start + page, len(batch))))))
        return self.digest(ref)

    def digest(self, collection: str) -> str:
        """The logical digest text."""
        return self._digest_text(collection, collection_digest)

    def digest_pair(self, collection: str) -> str:
        """The `logical|native` digest text the runner records."""
        return self._digest_text(collection, collection_digests)

    def _digest_text(self, collection: str, digest) -> str:
        stores = Stores(self.config)
        try:
            backend, name = stores.resolve(collection)
            return digest(backend, name).to_text()
        finally:
            stores.close()

    def records(self, collection: str):
        stores = Stores(self.config)
        try:
            backend, name = stores.resolve(collection)
            out, cursor = {}, None
            while True:
                page, cursor = backend.scan(name, 1000, cursor)
                out.update({r.id: r for r in page.records()})
                if cursor is None:
                    return out
        finally:
            stores.close()


def step_progress(ledger: Path, revision: str, step_index: int = 0) -> tuple[int, str] | None:
    """(rows_done, status) of one step, read from the ledger while a runner writes it."""
    import sqlite3

    try:
        # closing(): a connection's own `with` only commits, and this runs in a polling loop.
        with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1)) as conn:
            return conn.execute("SELECT s.rows_done, s.status FROM steps s JOIN attempts a ON a.id = s.attempt_id "
                                "WHERE a.revision = ? AND s.step_index = ? ORDER BY a.id DESC",
                                [revision, step_index]).fetchone()
    except sqlite3.Error:
        return None


def kill_upgrade_at(project: Project, revision: str, rows: int, timeout: float = 300) -> int:
    """Start `vecflow upgrade head`, SIGKILL it once `revision`'s first step has done >= rows rows;
    return the rows done when it was killed."""
    import signal
    import time

    ledger = project.root / ".vecflow" / "ledger.db"
    process = subprocess.Popen([sys.executable, "-m", "vecflow", "upgrade", "head"], cwd=project.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            progress = step_progress(ledger, revision)
            if progress and progress[0] >= rows:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return progress[0]
            if process.poll() is not None:
                raise AssertionError(f"upgrade ended before it could be killed: {process.stderr.read().decode()}")
            time.sleep(0.005)
        raise AssertionError(f"step of {revision} never reached {rows} rows")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def kill_mid_batch(root: Path, revision: str, rows: int, batch: int, ahead: Any = None,
                   timeout: float = 3600) -> None:
    """Start `vecflow upgrade head` in root and SIGKILL it once `revision`'s first step has
    checkpointed >= rows rows, between writing a batch and checkpointing it: as soon as
    ahead(checkpointed rows) says the target (read from outside) holds records beyond the
    checkpoint, given ten more batches to catch that moment; without ahead, half a batch's time
    after a checkpoint."""
    import signal
    import time

    ledger = root / ".vecflow" / "ledger.db"
    process = subprocess.Popen([sys.executable, "-m", "vecflow", "upgrade", "head"], cwd=root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, last, pace = time.monotonic() + timeout, (0, time.monotonic()), 0.0
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"upgrade ended before it could be killed: {process.stderr.read().decode()}")
            done = (step_progress(ledger, revision) or (0, ""))[0]
            now = time.monotonic()
            if done != last[0]:
                pace, last = (now - last[1]) / max(1, (done - last[0]) // batch), (done, now)
            if done >= rows and ahead is not None and done < rows + 10 * batch:
                if ahead(done):
                    break
            elif done >= rows and now - last[1] >= pace / 2:
                break
            time.sleep(0.001)
        else:
            raise AssertionError(f"step of {revision} never reached {rows} rows")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def faiss_rows(folder: Path) -> Any:
    """A function giving the records a FAISS collection folder's sidecar holds, read while another
    process writes it (0 while it cannot be read)."""
    import sqlite3

    def rows() -> int:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{folder / 'records.db'}?mode=ro", uri=True,
                                                    timeout=1)) as conn:
                return conn.execute("SELECT count(*) FROM records").fetchone()[0]
        except sqlite3.Error:
            return 0
    return rows
