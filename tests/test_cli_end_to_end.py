"""The whole CLI on a real embedded Chroma: init, revision x3, upgrade, current, downgrade, again."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.project import Project
from vecflow.backends.chroma import ChromaBackend
from vecflow.batch import Batch


def seed_existing_collections(path: str) -> None:
    """Collections an application created before vecflow arrived."""
    backend = ChromaBackend(path=path)
    rng = np.random.default_rng(7)
    for name, n in (("docs", 250), ("legacy", 120)):
        backend.create_collection(name, 12, "cosine")
        backend.upsert(name, Batch(
            [f"{name}-{i}" for i in range(n)], rng.standard_normal((n, 12)).astype(np.float32),
            [f"{name} text {i}" if i % 10 else None for i in range(n)],
            [{"author": f"a{i % 4}", "rank": i % 6, "weight": i / 3, "old": i % 2 == 0} for i in range(n)]))
    backend.close()


def fill(path, body: str) -> None:
    """Put real steps into a generated revision script."""
    text = path.read_text()
    if path.suffix == ".py":
        text = re.sub(r'(def upgrade\(op\):\n    """.*?"""\n)', lambda m: m.group(1) + body, text, flags=re.S)
    else:
        text = text.replace("upgrade: []", "upgrade:\n" + body)
    path.write_text(text)


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_init_revisions_upgrade_downgrade_round_trip(tmp_path, ledger, request):
    root = tmp_path / "proj"
    init = Project.__new__(Project)
    init.root = root
    root.mkdir()
    result = init.cli("init")
    assert "Created" in result.stdout
    if ledger == "postgresql":
        ini = root / "vecflow.ini"
        url = request.getfixturevalue("postgres_url")
        ini.write_text(ini.read_text().replace("ledger = %(here)s/.vecflow/ledger.db", f"ledger = {url}"))
    project = Project.__new__(Project)
    project.root, project.versions = root, root / "versions"
    seed_existing_collections(str(root / ".vecflow" / "chroma"))
    project.write_records("notes.jsonl", 300, dim=12)
    initial = {name: project.digest(name) for name in ("docs", "legacy", "notes")}
    assert initial["notes"] == "absent"

    first = project.cli("revision", "-m", "create notes").stdout.split()[-1]
    fill(root / first if "/" not in first else __import__("pathlib").Path(first),
         '    op.create_collection("notes", data="data/notes.jsonl")\n')
    second = project.cli("revision", "-m", "tidy docs", "--yaml").stdout.split()[-1]
    fill(__import__("pathlib").Path(second),
         "  - rename_field: {collection: docs, old: author, new: writer}\n"
         "  - add_field: {collection: docs, field: source, default: app}\n"
         "  - set_field: {collection: docs, field: rank, expression: 'rank * 10', where: 'old'}\n")
    third = project.cli("revision", "-m", "retire legacy").stdout.split()[-1]
    fill(__import__("pathlib").Path(third),
         '    op.drop_field("docs", "weight")\n    op.drop_collection("legacy")\n')

    up = project.cli("upgrade", "head").stdout
    assert up.count("Upgrade ") == 3
    docs = project.records("docs")
    assert docs["docs-2"].metadata == {"writer": "a2", "rank": 20, "old": True, "source": "app"}
    assert docs["docs-3"].metadata == {"writer": "a3", "rank": 3, "old": False, "source": "app"}
    assert project.digest("legacy") == "absent" and project.digest("notes").startswith("300:")

    heads = project.cli("heads").stdout.split()[0]
    assert project.cli("current").stdout.split()[0] == heads

    down = project.cli("downgrade", "-1").stdout
    assert "verified" in down and project.digest("legacy") == initial["legacy"]
    assert "weight" in project.records("docs")["docs-5"].metadata

    down = project.cli("downgrade", "base").stdout
    assert down.count("Downgrade ") == 2
    assert {name: project.digest(name) for name in initial} == initial
    assert "<base>" in project.cli("current").stdout

    project.cli("upgrade", "head")
    assert project.digest("legacy") == "absent"
    assert project.records("docs")["docs-2"].metadata["rank"] == 20
    history = project.cli("history", "-v").stdout
    assert "retire legacy" in history and "(head, current)" in history
    # With a PostgreSQL ledger, the snapshots and vecflow's state are in its database too.
    kept_here = {path.name for path in (root / ".vecflow").iterdir() if path.suffix == ".db"}
    assert kept_here == (set() if ledger == "postgresql" else {"ledger.db", "snapshots.db", "state.db"})


def test_errors_are_one_line_with_exit_code_1(tmp_path):
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")})
    project.write_python("a1", None, 'op.create_collection("docs", dim=4)')
    for args, message in [
        (("upgrade", "zzz"), "no revision matches 'zzz'"),
        (("downgrade", "-1"), "vecflow: error: "),
        (("show", "nope"), "no revision matches 'nope'"),
        (("-x", "batch_size=0", "upgrade", "head"), "batch_size"),
    ]:
        result = project.cli(*args, check=False)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    missing = project.cli("-c", str(tmp_path / "nope.ini"), "current", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_raiseerr_shows_the_traceback(tmp_path):
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")})
    result = project.cli("--raiseerr", "upgrade", "nothing", check=False)
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("store_down", ["redis://127.0.0.1:1", "http://127.0.0.1:1"])
def test_a_store_that_is_down_is_a_clear_error(tmp_path, store_down):
    backend = "redis" if store_down.startswith("redis") else "chroma"
    project = Project(tmp_path, {"url": store_down}, backend=backend)
    project.write_python("a1", None, 'op.create_collection("docs", dim=4)')
    result = project.cli("upgrade", "head", check=False)
    assert result.returncode == 1 and "127.0.0.1:1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
