"""The pages that teach run as written: getting-started.md, python-api.md and the cookbook's
recipes are played verbatim (tests/docs_session.py), on real stores seeded the way each page says
the application left them. The tutorial is played by tests/test_new_user.py in a fresh virtualenv,
the LlamaIndex recipe by tests/frameworks/test_docs_cookbook.py."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import chromadb
import numpy as np
import pytest

from tests.conftest import minilm_folder
from tests.docs_session import Command, InProcess, Subprocess, WriteFile, matches, page_steps, section_steps
from tests.test_docs import code_blocks

DOCS = Path(__file__).resolve().parent.parent / "docs"
COOKBOOK = DOCS / "cookbook.md"


@pytest.fixture(autouse=True)
def forget_project_modules():
    """Pages import their own `myproject` package; each test's project is another folder."""
    yield
    for name in [name for name in sys.modules if name == "myproject" or name.startswith("myproject.")]:
        del sys.modules[name]


def chroma_collection(path: Path, name: str, ids, vectors, documents, metadatas) -> None:
    """What the application wrote, with the plain Chroma client."""
    client = chromadb.PersistentClient(path=str(path))
    try:
        collection = client.get_or_create_collection(name, metadata={"hnsw:space": "cosine"})
        for start in range(0, len(ids), 1000):
            end = start + 1000
            collection.add(ids=ids[start:end], embeddings=vectors[start:end], documents=documents[start:end],
                           metadatas=metadatas[start:end])
    finally:
        client.close()


def chroma_records(path: Path, name: str) -> dict:
    client = chromadb.PersistentClient(path=str(path))
    try:
        got = client.get_collection(name).get(include=["embeddings", "documents", "metadatas"])
    finally:
        client.close()
    return {rid: (np.asarray(vector, np.float32).tobytes(), doc, meta)
            for rid, vector, doc, meta in zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"])}


def assert_the_application_reads_what_it_read(before: dict, after: dict) -> None:
    """Same ids, documents and metadata; vectors within the 1-2 ulps a Chroma cosine collection
    moves a rewritten vector by (docs/backends/chroma.md#cosine-vectors)."""
    assert {rid: record[1:] for rid, record in after.items()} == {rid: record[1:] for rid, record in before.items()}
    for rid, (vector, _, _) in before.items():
        old, new = np.frombuffer(vector, np.float32), np.frombuffer(after[rid][0], np.float32)
        assert old.shape == new.shape and np.allclose(old, new, rtol=1e-6, atol=1e-7), rid


def block_lines(page: Path) -> list[tuple[int, tuple[str, str]]]:
    """(1-based line of the opening fence, (language, body)) of each code block of a page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    fences = [i + 1 for i, line in enumerate(lines) if line.lstrip().startswith("```")][::2]
    return list(zip(fences, code_blocks(page.read_text(encoding="utf-8"))))


# the session player itself --------------------------------------------------------------------


def test_expected_output_matches_times_timestamps_and_ellipses_but_nothing_else():
    expected = ["Upgrade a1 (x)", "  [1/1] add_field d: +f: 4 rows, 0.02 s", "applied 2026-11-21T14:01:47.943+00:00",
                "chroma store …/chroma: 1 collection(s)", "…", "end"]
    actual = ("Upgrade a1 (x)\n  [1/1] add_field d: +f: 4 rows, 12.51 s\napplied 2027-01-02T03:04:05.678+00:00\n"
              "chroma store /tmp/p/chroma: 1 collection(s)\nany\nlines\nend\n")
    assert matches(expected, actual)
    assert not matches(expected, actual.replace("4 rows", "5 rows"))
    assert not matches(expected, actual.replace("end\n", "end\nmore\n"))
    assert not matches([line for line in expected if line != "…"], actual)
    assert matches(["…"], "") and matches([], "") and not matches([], "something\n")


def test_a_page_is_read_as_files_written_and_commands_with_their_output():
    page = ("Write it.\n\n`versions/a.yaml`:\n\n```yaml\nrevision: a\n```\n\nAppend to `vecflow.ini`:\n\n"
            "```ini\n[store:x]\n```\n\n```console\n$ vecflow upgrade head\nUpgrade a\n$ vecflow current\n"
            "vecflow: error: nope\n```\n\n```yaml\nnot: written\n```\n")
    steps = page_steps(page)
    assert steps == [WriteFile("versions/a.yaml", "revision: a\n", False, 5),
                     WriteFile("vecflow.ini", "[store:x]\n", True, 11),
                     Command("vecflow upgrade head", ["Upgrade a"], 16),
                     Command("vecflow current", ["vecflow: error: nope"], 18)]
    assert [step.exit_code for step in steps[2:]] == [0, 1]


def test_a_command_whose_output_differs_from_the_page_fails_naming_the_page_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```console\n$ vecflow list_templates\nAvailable templates:\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"page.md:2: `\$ vecflow list_templates` printed something else"):
        InProcess(tmp_path, update=False).play(page)
    page.write_text("```console\n$ rm -rf /\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="a docs session cannot run `rm -rf /`"):
        InProcess(tmp_path, update=False).play(page)


# getting started and the Python API ----------------------------------------------------------


def test_getting_started_then_the_python_api_example_run_verbatim(tmp_path, monkeypatch):
    session = InProcess(tmp_path)
    session.play(DOCS / "getting-started.md")
    assert session.cwd == tmp_path / "notes"
    api = InProcess(tmp_path)
    [(command, ran)] = api.play(DOCS / "python-api.md")
    assert command.command == "python api_example.py" and "refused: no revision matches 'zzz'" in ran.output
    # The snippets without a file name run where the example ran, as in a notebook next to notes/.
    labelled = {step.line for step in page_steps((DOCS / "python-api.md").read_text(encoding="utf-8"))
                if isinstance(step, WriteFile)}
    snippets = [body for line, (lang, body) in block_lines(DOCS / "python-api.md")
                if lang == "python" and line not in labelled]
    assert snippets
    monkeypatch.chdir(tmp_path)
    for snippet in snippets:
        namespace: dict = {}
        exec(snippet, namespace)  # noqa: S102  (the page's own example)
        assert namespace["config"].stores["main"].backend == "chroma"


def test_python_api_md_documents_every_command_function():
    from vecflow.cli import COMMANDS

    text = (DOCS / "python-api.md").read_text(encoding="utf-8")
    python_names = {function.__name__: name for name, function in vars(sys.modules["vecflow.command"]).items()
                    if function in COMMANDS}
    missing = [name for name in python_names.values() if f"`command.{name}(" not in text]
    assert not missing, f"docs/python-api.md does not document command.{missing}"


# the cookbook -----------------------------------------------------------------------------------


def test_cookbook_chroma_to_faiss_is_resumed_after_a_kill_verified_and_moved_back(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64))
    vectors = centres[rng.integers(0, 40, 3000)] + 0.35 * rng.standard_normal((3000, 64))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    topics = ["rivers", "compilers", "tea", "glaciers", "chess", "bridges", "moths", "opera"]
    ids = [f"a{i:05d}" for i in range(3000)]
    chroma_collection(tmp_path / "chroma", "articles", ids, vectors, [f"Article {i} about {topics[i % 8]}"
                                                                       for i in range(3000)],
                      [{"topic": topics[i % 8], "year": 2000 + i % 25} for i in range(3000)])
    before = chroma_records(tmp_path / "chroma", "articles")
    ran = Subprocess(tmp_path).play(COOKBOOK, section_steps(
        COOKBOOK, "Chroma to FAISS and back, resumed after a kill, with search parity"))
    killed, resumed = ran[0][1], ran[2][1]
    assert killed.code == -9 and "Resuming upgrade 5a1b2c3d4e5f" in resumed.output
    assert_the_application_reads_what_it_read(before, chroma_records(tmp_path / "chroma", "articles"))
    assert not (tmp_path / "faiss" / "articles").exists()


def test_cookbook_reembed_uses_the_projects_model_module_and_comes_back_without_it(tmp_path):
    minilm_folder()
    texts = {
        "glaciers": ["Glaciers grind valleys into a U shape as the ice slowly flows downhill.",
                     "Meltwater from glaciers feeds rivers through the summer.",
                     "A glacier advances when more snow falls than melts.",
                     "Moraines are ridges of rock a retreating glacier leaves behind.",
                     "Crevasses open where glacier ice bends over uneven bedrock."],
        "tea": ["Green tea leaves are steamed or pan-fired to stop oxidation.", "Black tea is fully oxidised.",
                "Oolong sits between green and black tea.", "Water just off the boil suits black tea.",
                "Matcha is stone-ground powder of shade-grown tea leaves."],
        "chess": ["Castling moves the king two squares toward a rook.", "A fork attacks two pieces at once.",
                  "The Sicilian Defence answers 1.e4 with c5.", "Rook endgames are the most common.",
                  "Zugzwang is a position where any move worsens your game."],
        "compilers": ["A parser turns tokens into an abstract syntax tree.", "Register allocation maps variables "
                      "onto CPU registers.", "Inlining replaces a call with the callee's body.",
                      "SSA form gives each variable one definition.", "A lexer splits source code into tokens."],
        "bridges": ["Suspension bridges hang the deck from cables.", "Arch bridges carry loads by compression.",
                    "Cantilever bridges extend arms from piers.", "Expansion joints let a deck grow with heat.",
                    "Truss bridges use triangles of beams."],
        "opera": ["An aria pauses the plot for a song.", "Recitative carries the story between arias.",
                  "The libretto is the text an opera is sung to.", "Verdi wrote La Traviata and Aida.",
                  "A soprano sings the highest part."],
        "moths": ["Many moths fly at night.", "Moths find mates by scent.", "The luna moth has pale green tails.",
                  "Moth caterpillars spin silk cocoons.", "Some moths mimic wasps to deter birds."],
        "rivers": ["A river meanders as its valley flattens.", "Deltas form where a river drops its sediment.",
                   "Floodplains are built by rivers overflowing.", "Oxbow lakes are meanders cut off from a river.",
                   "A river's source is often a spring."],
    }
    rows = [(f"{topic}-{i}", text, topic) for topic, items in texts.items() for i, text in enumerate(items)]

    def old_model(text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(16).astype(np.float32)

    chroma_collection(tmp_path / "chroma", "articles", [r[0] for r in rows], [old_model(r[1]) for r in rows],
                      [r[1] for r in rows], [{"topic": r[2]} for r in rows])
    before = chroma_records(tmp_path / "chroma", "articles")
    steps = section_steps(COOKBOOK, "Re-embed with a new model of another dimension")
    assert {"myproject/embeddings.py", "search.py"} <= {s.path for s in steps if isinstance(s, WriteFile)}
    ran = InProcess(tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}).play(COOKBOOK, steps)
    assert "dim 16 -> 384" in ran[1][1].output
    assert_the_application_reads_what_it_read(before, chroma_records(tmp_path / "chroma", "articles"))


def test_cookbook_split_under_a_12_field_schema_is_refused_over_5_percent_then_quarantines_3(tmp_path):
    rng = np.random.default_rng(3)
    categories = ["books", "games", "music", "tools"]
    ids, metadatas = [], []
    for i in range(400):
        category = categories[i % 4]
        metadata = {"sku": f"SKU-{i:05d}", "title": f"{category.title()} item {i}", "category": category,
                    "price": round(5 + (i * 7.3) % 95, 2), "currency": "USD" if i % 3 == 0 else "EUR",
                    "stock": i % 17, "rating": round((i * 0.37) % 5, 1),
                    "tags": ["new"] if i % 5 == 0 else ["sale", category],
                    "brand": ["acme", "globex", "initech"][i % 3],
                    "weight_kg": round(0.1 + (i % 9) * 0.25, 2), "updated": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}"}
        if i % 10 == 7:
            del metadata["stock"]  # 40 preorders without stock
        if i in (11, 52, 93, 134, 175):
            metadata["price"] = -1.0
        if i in (20, 121, 222, 323):
            metadata["category"] = "misc"
        if i in (30, 230, 330):
            metadata["rating"] = 7.5
        ids.append(f"p{i:04d}")
        metadatas.append(metadata)
    chroma_collection(tmp_path / "chroma", "products", ids, rng.standard_normal((400, 32)).astype(np.float32),
                      [m["title"] for m in metadatas], metadatas)
    before = chroma_records(tmp_path / "chroma", "products")
    steps = section_steps(COOKBOOK, "Split one collection into four under a 12-field schema, at least 95% valid")
    schema_fields = [line for step in steps if isinstance(step, WriteFile) and step.path.endswith(".yaml")
                     for line in step.text.splitlines() if line.startswith("        ") and ": {type:" in line]
    assert len(schema_fields) == 2 * 12
    ran = InProcess(tmp_path).play(COOKBOOK, steps)
    assert ran[0][1].code == 1 and "(13.0%)" in ran[0][1].output
    assert "12 quarantined into products_quarantine" in ran[2][1].output
    assert_the_application_reads_what_it_read(before, chroma_records(tmp_path / "chroma", "products"))
