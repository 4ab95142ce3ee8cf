"""Examples in the reference pages that a new user tried and that failed (issue 11), run for real:
each test takes the example from its page, so the page and the code cannot part again."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.docs_session import WriteFile, page_steps
from tests.project import Project
from tests.test_docs import code_blocks, read, section
from vecflow.batch import Batch, Record
from vecflow.config import load_config
from vecflow.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def forget_project_modules():
    """The examples import their project's `myproject`; each test's project is another folder."""
    yield
    for name in [name for name in sys.modules if name == "myproject" or name.startswith("myproject.")]:
        del sys.modules[name]


def demo_project(root: Path) -> Project:
    """This repository's example project (vecflow.ini, versions/) in root, upgraded to its head."""
    project = Project(root, {"path": str(root / ".vecflow" / "chroma")})
    shutil.copytree(REPO / "versions", project.versions, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    project.run("upgrade", "head")
    return project


def page_files(page: str) -> list[WriteFile]:
    return [step for step in page_steps(read(page)) if isinstance(step, WriteFile)]


def test_faiss_md_gives_a_collection_its_hnsw_settings_through_params(tmp_path):
    [line] = [line for lang, body in code_blocks(read("backends/faiss.md")) if lang == "python"
              for line in body.splitlines() if line.startswith("op.create_collection(")]
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")},
                      extra_stores={"local": ("faiss", {"path": str(tmp_path / "faiss")})})
    project.write_python("a1", None, line)
    project.run("upgrade", "head")
    with project.opened("local:docs") as (backend, name):
        described = backend.describe(name)
    assert (described.dim, described.metric) == (384, "cosine")
    assert described.params == {"index_type": "hnsw", "hnsw_m": 16, "hnsw_ef_construction": 40, "hnsw_ef_search": 64}
    project.write_python("a1", None, 'op.create_collection("local:other", 384, "cosine", index_type="hnsw")')
    result = project.cli("show", "a1", check=False)
    assert (result.returncode, result.stderr.count("\n")) == (1, 1)
    assert "create_collection: index_type: unknown argument" in result.stderr


def test_reembed_finds_a_dotted_path_in_the_project_folder_as_other_dotted_paths(tmp_path):
    project = Project(tmp_path / "proj", {"path": str(tmp_path / "chroma")})
    package = project.root / "myproject"
    package.mkdir()
    (package / "embeddings.py").write_text(
        "import hashlib\n\nimport numpy as np\n\n\n"
        "def embed(texts):\n"
        "    seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], 'little') for t in texts]\n"
        "    return [np.random.default_rng(seed).standard_normal(8).astype(np.float32) for seed in seeds]\n",
        encoding="utf-8")
    records = Batch.from_records([Record(f"d{i}", [float(i), 1.0, 0.5, 0.25], f"note {i}", {"n": i})
                                  for i in range(12)])
    before = project.seed("docs", records)
    assert [line for line in read("ops.md").splitlines()
            if line.startswith("| `package.module:attribute` | `\"myproject.embeddings:embed\"` |")]
    assert "`package.module` is found like every [dotted path]" in read("ops.md")
    project.write_python("a1", None, 'op.reembed("docs", "myproject.embeddings:embed")')
    lines = project.run("upgrade", "head")
    assert any("embedder myproject.embeddings:embed: dim 4 -> 8" in line for line in lines), lines
    with project.opened("docs") as (backend, name):
        assert backend.describe(name).dim == 8
    project.run("downgrade", "base")
    assert project.digest("docs") == before


def test_a_python_revision_imports_the_projects_article_model_as_revisions_md_shows(tmp_path):
    project = demo_project(tmp_path / "demo")
    files = {step.path: step.text for step in page_files("revisions.md")}
    for path in ("myproject/schemas.py", "versions/5b7e0c2d9a14_validate_articles.py"):
        (project.root / path).parent.mkdir(parents=True, exist_ok=True)
        (project.root / path).write_text(files[path], encoding="utf-8")
    assert str(project.root) not in sys.path, "the project folder is not importable as is"
    before = project.digest("demo_docs")
    project.run("upgrade", "head")
    records = project.records("demo_docs")
    assert len(records) == 300 and all(record.metadata["reviewed"] is False for record in records.values())
    assert project.cli("-c", str(project.root / "vecflow.ini"), "show", "head").returncode == 0
    project.run("downgrade", "-1")
    assert project.digest("demo_docs") == before


def test_the_loop_in_revisions_md_runs_over_the_collections_the_tutorial_split_made(tmp_path):
    project = demo_project(tmp_path / "demo")
    for step in page_files("tutorial.md"):
        if step.path.startswith("versions/4d1e") or step.path.startswith("versions/9a3c"):
            (project.root / step.path).write_text(step.text, encoding="utf-8")
    [loop] = [body for lang, body in code_blocks(read("revisions.md")) if lang == "python" and "for lang in" in body]
    project.write_python("e1", "9a3c5e7f1b08", loop.split("def upgrade(op):\n", 1)[1])
    project.run("upgrade", "head")
    for lang in ("en", "de", "fr", "es"):
        assert {r.metadata["lang_label"] for r in project.records(f"notes_{lang}").values()} == {lang.upper()}
    assert any("restored exactly" in line for line in project.run("downgrade", "-1"))


def test_create_collection_is_undone_by_a_drop_that_snapshots_records_added_since(tmp_path):
    text = section(read("ops.md"), r"^create_collection$") or ""
    assert "**Inverse:** `drop_collection`, which snapshots the collection first" in text
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")})
    project.write_records("notes.jsonl", 10)
    project.write_python("a1", None, 'op.create_collection("docs", data="data/notes.jsonl")')
    project.run("upgrade", "head")
    with project.opened("docs") as (backend, name):
        backend.upsert(name, Batch.from_records([Record("late-1", [0.5] * 8, "added later", {}),
                                                 Record("late-2", [0.25] * 8, None, {"k": 1})]))
    project.run("downgrade", "base")
    snapshots = project.run("snapshots")
    assert any(re.fullmatch(r"snap_\d+_0: records, 12 rows, .* \(not needed\)", line) for line in snapshots), snapshots


def test_revisions_md_shows_the_error_an_unquoted_numeric_id_gives(tmp_path):
    [message] = [line for lang, body in code_blocks(read("revisions.md")) if lang == "text"
                 for line in body.splitlines() if "was read as the number" in line]
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")})
    project.write_yaml("0012", 'revision: "0012"\ndown_revision: null\nupgrade: []\n')
    path = project.versions / "0013_more.yaml"
    path.write_text('revision: "0013"\ndown_revision: 0012\nupgrade: []\n', encoding="utf-8")
    result = project.cli("heads", check=False)
    assert result.returncode == 1
    assert result.stderr == message.replace("/srv/app/versions/", f"{project.versions}/") + "\n"


@pytest.mark.parametrize("origin", ["environment", "-x"])
def test_configuration_md_says_where_a_bad_override_is_reported(tmp_path, origin):
    ini = tmp_path / "vecflow.ini"
    ini.write_text("[vecflow]\nbatch_size = 10\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        if origin == "-x":
            load_config(ini, ["batch_size=0"], environ={})
        else:
            load_config(ini, environ={"VECFLOW_BATCH_SIZE": "0"})
    errors = section(read("configuration.md"), r"^Errors$") or ""
    assert f"`{caught.value}`" in errors


def test_every_example_the_issue_listed_is_gone_from_the_docs():
    """The spellings that failed for a new user (issue 11)."""
    pages = {page.name: page.read_text(encoding="utf-8") for page in (REPO / "docs").rglob("*.md")}
    for name, text in pages.items():
        assert 'index_type="hnsw", hnsw_m=16)' not in text, name
        assert "even when it came from a `VECFLOW_*`" not in text, name
        assert 'for name in ("notes", "faq", "blog")' not in text, name
    assert "`drop_collection` with `snapshot: false`. A downgrade drops the collection" not in pages["ops.md"]
    assert "beside the revision scripts, it is imported from there" not in pages["ops.md"]


def test_the_python_examples_on_the_backend_pages_record_valid_steps():
    from vecflow.operations import Operations

    recorded = 0
    for page in sorted((REPO / "docs" / "backends").glob("*.md")):
        for lang, body in code_blocks(page.read_text(encoding="utf-8")):
            for line in body.splitlines() if lang == "python" else []:
                if line.startswith("op."):
                    op = Operations()
                    eval(line, {"op": op})  # noqa: S307  (the docs' own examples)
                    recorded += len(op.steps)
    assert recorded >= 2


def test_json_lines_shown_as_data_files_in_the_teaching_pages_are_valid_records():
    for page in ("getting-started.md", "testing.md"):
        for step in page_files(page):
            if step.path.endswith(".jsonl"):
                for line in step.text.splitlines():
                    record = json.loads(line)
                    assert set(record) <= {"id", "vector", "document", "metadata"} and record["vector"], page
