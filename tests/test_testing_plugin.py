"""The pytest plugin (vecflow.testing): docs/testing.md's example project, run for real by pytest
inside pytest (pytester), on embedded Chroma and FAISS; broken chains fail naming the revision."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from vecflow.backends import open_backend
from vecflow.config import StoreConfig
from vecflow.errors import ConfigError
from vecflow.script.revision import Revision, RevisionMap
from vecflow.testing import ChainRunner, DisposableProject, StairwayError, disposable_options, stairway_plan

from .test_docs import code_blocks

pytest_plugins = ["pytester"]


DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
LABEL = re.compile(r"^`([^`]+)`(.*):$")


def labelled_blocks(text: str) -> dict[str, tuple[str, str]]:
    """label line -> (file path, content) of every code block introduced by a line like
    "`tests/conftest.py`:" or "`versions/x.yaml`, broken:" (the blocks that are files)."""
    blocks, lines = {}, text.splitlines()
    for index, line in enumerate(lines):
        match = LABEL.match(line)
        if match is None or index + 2 >= len(lines) or not lines[index + 2].startswith("```"):
            continue
        end = next(i for i in range(index + 3, len(lines)) if lines[i].startswith("```"))
        blocks[line] = (match.group(1), "\n".join(lines[index + 3:end]) + "\n")
    return blocks


TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = labelled_blocks(TEXT)
EXAMPLE = {path: content for label, (path, content) in BLOCKS.items() if LABEL.match(label).group(2) == ""}
CALLABLE_SEED = BLOCKS["`tests/conftest.py`, seeding with a callable:"][1]


def write_example(root: Path, backend: str = "chroma", **replaced: str) -> None:
    """The doc's example project in root; `replaced` maps a file path to other content."""
    for path, content in {**EXAMPLE, **replaced}.items():
        if path == "vecflow.ini":
            content = content.replace("backend = chroma", f"backend = {backend}")
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content, encoding="utf-8")


def shown_output(first_line: str) -> list[str]:
    """The lines of the doc's output block starting with first_line, as fnmatch patterns ("…"
    elides: the digests, and what the commands print)."""
    block = next(body for _, body in code_blocks(TEXT) if body.startswith(first_line))
    return [re.sub(r"([\[\]*?])", r"[\1]", line).replace("…", "*") for line in block.splitlines()
            if line.strip() != "…"]


@pytest.fixture(scope="module")
def backends_loaded(tmp_path_factory):
    """pytester's in-process runs drop the modules each run imported. A chromadb imported anew by a
    later run raises exception classes the adapter does not catch, so each backend is opened once
    here first and what it imports stays loaded for every run."""
    folder = tmp_path_factory.mktemp("backends")
    for name in ("chroma", "faiss"):
        open_backend(name, {"path": str(folder / name)}).close()


def run_pytest(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # Hypothesis' plugin imports all of hypothesis at the end of every run, assertion-rewritten
    # afresh each time (PYTHONDONTWRITEBYTECODE): seconds per run, for nothing these runs use.
    # Its own basetemp: inner runs of one process otherwise reuse the same tmp paths, and chromadb
    # keeps one client per folder path for the whole process (a recreated folder would see the old one).
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-q",
                              f"--basetemp={pytester.path / 'basetemp'}", *args)


def test_the_doc_example_is_a_complete_project():
    assert sorted(EXAMPLE) == [
        "pytest.ini", "tests/conftest.py", "tests/sample/docs.jsonl", "tests/test_migrations.py", "vecflow.ini",
        "versions/1a2b3c4d5e6f_create_tags.yaml", "versions/2b3c4d5e6f7a_rename_author.yaml",
        "versions/3c4d5e6f7a8b_drop_legacy_rank.yaml", "versions/data/tags.jsonl"]


@pytest.mark.parametrize(("backend", "conftest"), [("chroma", None), ("faiss", CALLABLE_SEED)],
                         ids=["chroma-jsonl-sample", "faiss-callable-sample"])
def test_the_doc_example_passes_on_disposable_stores(backends_loaded, pytester, backend, conftest):
    write_example(pytester.path, backend, **({"tests/conftest.py": conftest} if conftest else {}))
    result = run_pytest(pytester)
    result.assert_outcomes(passed=4)
    # The project's own store (path = %(here)s/.vecflow/chroma) was never opened.
    assert not (pytester.path / ".vecflow").exists()


def test_a_downgrade_that_does_not_restore_fails_the_stairway_naming_revision_and_records(backends_loaded, pytester):
    broken = BLOCKS["`versions/3c4d5e6f7a8b_drop_legacy_rank.yaml`, broken:"][1]
    write_example(pytester.path, **{"versions/3c4d5e6f7a8b_drop_legacy_rank.yaml": broken})
    result = run_pytest(pytester, "-k", "stairway")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(shown_output("____"))


def test_the_stairway_compares_collections_the_upgrade_did_not_touch(tmp_path):
    rename = BLOCKS["`versions/2b3c4d5e6f7a_rename_author.yaml`, with a downgrade that also changes `tags`:"][1]
    write_example(tmp_path, **{"versions/2b3c4d5e6f7a_rename_author.yaml": rename})
    project = DisposableProject(tmp_path / "vecflow.ini", tmp_path / "disposable")
    project.seed({"docs": "tests/sample/docs.jsonl"}, tmp_path)
    with pytest.raises(StairwayError) as failure:
        ChainRunner(project).stairway()
    assert fnmatch.fnmatch(str(failure.value), "\n".join(shown_output("stairway:")))


def test_a_step_that_fails_on_the_sample_data_fails_naming_the_revision(tmp_path):
    rename = EXAMPLE["versions/2b3c4d5e6f7a_rename_author.yaml"] + (
        '  - set_field: {collection: docs, field: rank2, expression: "legacy_rank * 2"}\n')
    write_example(tmp_path, "faiss", **{"versions/2b3c4d5e6f7a_rename_author.yaml": rename})
    project = DisposableProject(tmp_path / "vecflow.ini", tmp_path / "disposable")
    project.seed({"docs": "tests/sample/docs.jsonl"}, tmp_path)  # d4 has no legacy_rank
    with pytest.raises(StairwayError) as failure:
        ChainRunner(project).upgrade_one_at_a_time()
    assert fnmatch.fnmatch(str(failure.value), "\n".join(shown_output("stairway: `vecflow upgrade")))
    assert "record 'd4'" in str(failure.value)  # vecflow's own error, with the record at fault


def test_the_config_and_server_urls_come_from_the_options_then_the_ini_file(pytester):
    pytester.makeini("[pytest]\nvecflow_config = project/vecflow.ini\nvecflow_store_urls =\n    cache = redis://a:1\n"
                     "    main=http://b:2\n")
    pytester.makepyfile(test_options="""
        def test_from_the_ini_file(vecflow_config, vecflow_store_urls, pytestconfig):
            assert vecflow_config == pytestconfig.rootpath / "project" / "vecflow.ini"
            assert vecflow_store_urls == {"cache": "redis://a:1", "main": "http://b:2"}
    """)
    run_pytest(pytester).assert_outcomes(passed=1)
    pytester.makepyfile(test_options="""
        def test_from_the_options(vecflow_config, vecflow_store_urls, pytestconfig):
            assert vecflow_config == pytestconfig.invocation_params.dir / "other.ini"
            assert vecflow_store_urls == {"cache": "redis://c:3", "main": "http://b:2"}
    """)
    run_pytest(pytester, "--vecflow-config", "other.ini", "--vecflow-store-url", "cache=redis://c:3").assert_outcomes(
        passed=1)
    result = run_pytest(pytester, "--vecflow-store-url", "cache")
    assert "--vecflow-store-url: expected STORE=URL, got 'cache'" in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(("backend", "options", "stand_in"), [
    ("chroma", {"url": "https://c.example.com", "tenant": "t", "database": "prod", "headers": "X: y", "layout": "raw"},
     {"layout": "raw"}),
    ("qdrant", {"url": "https://q.example.com", "api_key": "k", "prefer_grpc": "true", "grpc_port": "6334",
                "timeout": "5", "vector_name": "dense"}, {"vector_name": "dense"}),
    ("faiss", {"path": "/data/vectors", "index_type": "hnsw", "allow_pickle": "true"},
     {"index_type": "hnsw", "allow_pickle": "true"}),
    ("files", {"path": "/data/exports", "format": "jsonl"}, {"format": "jsonl"}),
])
def test_a_store_gets_a_folder_stand_in_with_its_other_options_and_no_credentials(tmp_path, backend, options,
                                                                                   stand_in):
    store = StoreConfig(name="main", backend=backend, options=options)
    assert disposable_options(store, tmp_path) == {**stand_in, "path": str(tmp_path)}
    with_url = disposable_options(store, tmp_path, "http://127.0.0.1:9")
    assert with_url["url"] == "http://127.0.0.1:9" and "path" not in with_url
    assert not {"headers", "api_key"} & set(with_url)


def test_a_store_that_needs_a_server_is_refused_without_a_disposable_url(tmp_path):
    ini = tmp_path / "vecflow.ini"
    ini.write_text("[store:cache]\nbackend = redis\nurl = redis://10.0.0.5:6379\npassword = ${PROD_PASSWORD}\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[store:cache\] \(backend redis\) needs a server: .*--vecflow-store-url"):
        DisposableProject(ini, tmp_path / "disposable")


def test_a_server_store_uses_the_disposable_url_without_the_real_credentials(tmp_path, redis_url):
    ini = tmp_path / "vecflow.ini"
    ini.write_text("[store:cache]\nbackend = redis\nurl = redis://10.0.0.5:6379\npassword = ${PROD_PASSWORD}\n"
                   "key_prefix = app:\n", encoding="utf-8")
    project = DisposableProject(ini, tmp_path / "disposable", {"cache": redis_url})
    assert project.config.stores["cache"].options == {"url": redis_url, "key_prefix": "app:"}
    project.seed({"cache:docs": [{"id": "a", "vector": [1.0, 2.0]}]}, tmp_path)
    other = DisposableProject(ini, tmp_path / "other", {"cache": redis_url})
    with other.stores() as stores:
        assert stores.backend("cache").has_collection("docs")
    project.empty_servers()
    with other.stores() as stores:
        assert not stores.backend("cache").has_collection("docs")


def test_a_server_that_already_holds_collections_is_refused_until_emptied(tmp_path, chroma_url):
    ini = tmp_path / "vecflow.ini"
    ini.write_text("[store:main]\nbackend = chroma\nurl = https://chroma.example.com\nheaders = X-Token: ${TOKEN}\n",
                   encoding="utf-8")
    first, second = (DisposableProject(ini, tmp_path / name, {"main": chroma_url}) for name in ("first", "second"))
    first.check_servers_empty()
    first.seed({"docs": [{"id": "a", "vector": [1.0, 2.0]}]}, tmp_path)
    with pytest.raises(ConfigError, match=r"store 'main': the server at http://127.0.0.1:\d+ already holds docs; "):
        second.check_servers_empty()
    first.empty_servers()
    second.check_servers_empty()


def graph(*edges: tuple[str, tuple[str, ...]]) -> RevisionMap:
    return RevisionMap(Revision(rev, down) for rev, down in edges)


def walk_states(revisions: RevisionMap) -> tuple[list[frozenset], list[frozenset]]:
    """The applied sets after each step up and each step down of the stairway plan."""
    up, down = stairway_plan(revisions)
    applied, ups, downs = set(), [frozenset()], []
    for rev in up:
        applied.add(rev)
        ups.append(frozenset(applied))
    for target, removed in down:
        assert [r.revision for r in revisions.plan_downgrade(applied, target)] == list(removed)
        applied -= set(removed)
        downs.append(frozenset(applied))
    return ups, downs


def test_the_stairway_of_a_linear_chain_removes_one_revision_per_downgrade():
    up, down = stairway_plan(graph(("a", ()), ("b", ("a",)), ("c", ("b",))))
    assert up == ["a", "b", "c"]
    assert down == [("b", ("c",)), ("a", ("b",)), ("base", ("a",))]


@pytest.mark.parametrize("edges", [
    [("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("b", "c"))],  # a branch merged again
    [("a", ()), ("b", ("a",)), ("c", ("a",)), ("e", ("c",))],  # two heads
    [("a", ()), ("x", ())],  # two bases
])
def test_the_stairway_way_down_only_reaches_states_the_way_up_passed(edges):
    ups, downs = walk_states(graph(*edges))
    assert len(ups) == len(edges) + 1 and ups[-1] == frozenset(rev for rev, _ in edges)
    assert downs[-1] == frozenset()
    assert set(downs) <= set(ups)
