"""Backend clients are extras: vecflow installs, imports and runs every command that opens no store
without any of them, and a store whose client is missing fails in one line naming the extra."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from vecflow.backends import _REGISTRY, known_backends

from .conftest import unavailable

REPO = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "without_clients.py"
# backend -> the distribution of its client (what its extra installs)
CLIENTS = {"chroma": "chromadb", "faiss": "faiss-cpu", "redis": "redis", "qdrant": "qdrant-client",
           "files": "pyarrow"}
# What a core install lacks: every module a bundled adapter imports from its extra.
ALL_CLIENTS = ",".join(sorted({module for backend in CLIENTS for module in _REGISTRY[backend].clients}))
# The core dependencies (distribution -> import name).
CORE = {"pydantic": "pydantic", "pyyaml": "yaml", "jinja2": "jinja2", "numpy": "numpy", "sqlite-utils": "sqlite_utils",
        "rich": "rich"}
# The store each backend gets in the test projects (chroma's is the default store).
STORES = {"chroma": "main", "faiss": "local", "redis": "cache", "qdrant": "search", "files": "exports"}
STORE_OPTIONS = {"chroma": "path = %(here)s/chroma", "faiss": "path = %(here)s/faiss",
                 "redis": "url = redis://127.0.0.1:1", "qdrant": "path = %(here)s/qdrant",
                 "files": "path = %(here)s/files"}
# Commands that read or write only vecflow.ini, the scripts and the ledger, in this order.
NO_STORE_COMMANDS = [["revision", "-m", "first"], ["revision", "-m", "second", "--yaml"], ["heads"], ["history"],
                     ["show", "head"], ["branches"], ["current"], ["check"]]
# stamp reads each configured store's vecflow marker (to adopt it), so it tries the client.
STAMP = ["stamp", "head"]


def missing_client_line(backend: str) -> str:
    return (f"vecflow: error: store {STORES[backend]!r} uses backend {backend}, whose client is not installed; "
            f'run: pip install "vecflow[{backend}]"')


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def write_project(root: Path, chain: dict[str, str], stores: dict[str, str]) -> None:
    """vecflow.ini with the given stores (backend -> options; the first is the default store) and
    one Python revision per chain entry (revision id -> body of upgrade), each on the previous."""
    (root / "versions").mkdir(parents=True)
    sections = "".join(f"\n[store:{STORES[backend]}]\nbackend = {backend}\n{options}\n"
                       for backend, options in stores.items())
    (root / "vecflow.ini").write_text(
        "[vecflow]\nscript_location = %(here)s/versions\nledger = %(here)s/.vecflow/ledger.db\n"
        f"default_store = {STORES[next(iter(stores))]}\n{sections}", encoding="utf-8")
    down = None
    for rev, body in chain.items():
        (root / "versions" / f"{rev}_step.py").write_text(
            f"revision = {rev!r}\ndown_revision = {down!r}\n\n\ndef upgrade(op):\n{textwrap.indent(body, '    ')}\n",
            encoding="utf-8")
        down = rev


def without(blocked: str, steps: list[list[str]], cwd: Path) -> dict:
    """Run steps (vecflow argument lists) in one Python that cannot import the blocked modules."""
    result = subprocess.run([sys.executable, str(RUNNER), blocked, "--json", json.dumps(steps)], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def no_clients(tmp_path_factory) -> tuple[Path, dict]:
    """One Python with no backend client: `vecflow init`, the commands that open no store in the new
    project, then `inspect` of a store of each backend and an `export` in a second project."""
    root = tmp_path_factory.mktemp("no-clients")
    write_project(root / "stores", {}, STORE_OPTIONS)
    # stamp before check, which wants the project at its head
    commands = [*NO_STORE_COMMANDS[:-1], STAMP, NO_STORE_COMMANDS[-1]]
    steps = [["init", "proj"], *(["-c", "proj/vecflow.ini", *args] for args in commands)]
    steps += [["-c", "stores/vecflow.ini", "inspect", store] for store in STORES.values()]
    steps += [["-c", "stores/vecflow.ini", "export", "docs", "out"]]
    return root, without(ALL_CLIENTS, steps, root)


def by_command(results: dict, *args: str) -> dict:
    return next(step for step in results["steps"] if step["args"][-len(args):] == list(args))


def test_vecflow_cli_and_pytest_plugin_import_no_backend_client(no_clients):
    _, results = no_clients
    assert results["imports"] == []


@pytest.mark.parametrize("args", [["init", "proj"], *NO_STORE_COMMANDS], ids=lambda args: " ".join(args))
def test_commands_that_open_no_store_work_without_any_client(no_clients, args):
    _, results = no_clients
    step = by_command(results, *args)
    assert (step["code"], step["err"], step["refused"]) == (0, "", [])


def test_stamp_without_the_store_client_stamps_and_warns_that_the_store_keeps_its_marker(no_clients):
    _, results = no_clients
    step = by_command(results, *STAMP)
    assert (step["code"], step["err"]) == (0, "")
    assert "Stamped up:" in step["out"]
    assert "warning: store 'main' keeps its marker: " + missing_client_line("chroma")[len("vecflow: error: "):] \
        in step["out"]


def test_the_project_made_without_clients_has_its_revisions_and_ledger(no_clients):
    root, results = no_clients
    assert "Created proj/vecflow.ini" in by_command(results, "init", "proj")["out"]
    assert sorted(path.suffix for path in (root / "proj" / "versions").glob("*_*")) == [".py", ".yaml"]
    head = by_command(results, "heads")["out"].split()[0]
    history = by_command(results, "history")["out"]
    assert "first" in history and f"-> {head} (head), second" in history
    assert f"Revision: {head} (head)" in by_command(results, "show", "head")["out"]
    assert by_command(results, "current")["out"].strip() == "<base> (nothing applied)"
    assert f"head {head}, ledger matches the scripts" in by_command(results, "check")["out"]


@pytest.mark.parametrize("backend", list(STORES))
def test_a_store_whose_client_is_missing_fails_in_one_line_naming_the_extra(no_clients, backend):
    _, results = no_clients
    step = by_command(results, "inspect", STORES[backend])
    assert (step["code"], step["out"], step["err"]) == (1, "", missing_client_line(backend) + "\n")


def test_export_without_pyarrow_fails_in_one_line_naming_the_files_extra(no_clients):
    root, results = no_clients
    step = by_command(results, "export", "docs", "out")
    assert (step["code"], step["out"]) == (1, "")
    assert step["err"] == ('vecflow: error: backend files needs its client, which is not installed; '
                           'run: pip install "vecflow[files]"\n')
    assert not (root / "out").exists()


def test_an_upgrade_needing_a_store_without_its_client_exits_1_in_one_line(tmp_path):
    """The real process, as `python -m vecflow upgrade head` runs it."""
    write_project(tmp_path, {"a1": 'op.create_collection("docs", 4, "cosine")'}, {"chroma": STORE_OPTIONS["chroma"]})
    result = subprocess.run([sys.executable, str(RUNNER), ALL_CLIENTS, "--", "upgrade", "head"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (1, missing_client_line("chroma") + "\n")
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "chroma").exists()


def test_a_migration_of_one_store_needs_only_that_stores_client(tmp_path):
    """A chroma project migrates its faiss store without chromadb installed."""
    write_project(tmp_path, {"a1": 'op.create_collection("local:docs", 4, "cosine")'},
                  {"chroma": STORE_OPTIONS["chroma"], "faiss": STORE_OPTIONS["faiss"]})
    results = without("chromadb", [["upgrade", "head"], ["current"], ["inspect", "local"], ["inspect", "main"]],
                      tmp_path)
    upgrade, current, local, main = results["steps"]
    for step in (upgrade, current, local):
        assert (step["code"], step["err"], step["refused"]) == (0, "", []), step
    assert current["out"].strip() == "a1 (head)"
    assert "docs" in local["out"]
    assert (main["code"], main["err"]) == (1, missing_client_line("chroma") + "\n")


# the package's metadata ---------------------------------------------------------------------------

def extra_of(backend: str) -> str:
    """The extra a backend's registered install hint names."""
    match = re.fullmatch(r'pip install "vecflow\[(\w+)\]"', _REGISTRY[backend].install_hint)
    assert match, _REGISTRY[backend]
    return match.group(1)


def test_core_dependencies_hold_no_backend_client():
    core = {Requirement(line).name for line in pyproject()["project"]["dependencies"]}
    assert core == set(CORE)
    assert not core & (set(CLIENTS.values()) | {"sentence-transformers", "torch"})


@pytest.mark.parametrize("backend", sorted(CLIENTS))
def test_each_backend_has_an_extra_with_its_client_and_its_hint_names_it(backend):
    extras = pyproject()["project"]["optional-dependencies"]
    assert extra_of(backend) == backend
    assert {Requirement(line).name for line in extras[backend]} == {CLIENTS[backend]}


def imported_at_load(module: str, seen: set[str] | None = None) -> set[str]:
    """The top-level packages other than vecflow that importing a vecflow module imports at module
    level, through every vecflow module it imports in turn (read from the source)."""
    seen = set() if seen is None else seen
    seen.add(module)
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            path = REPO / name.replace(".", "/")
            if name.startswith("vecflow."):
                inner = f"{name}.__init__" if path.is_dir() else name
                if (REPO / (inner.replace(".", "/") + ".py")).is_file() and inner not in seen:
                    found |= imported_at_load(inner, seen)
            elif name.partition(".")[0] not in sys.stdlib_module_names | {"vecflow", "__future__"}:
                found.add(name.partition(".")[0])
    return found


@pytest.mark.parametrize("backend", sorted(CLIENTS))
def test_an_adapter_imports_only_the_core_and_the_modules_its_extra_brings(backend):
    """Else a core install would report a missing dependency as a client that "cannot be imported"."""
    module = _REGISTRY[backend].target.partition(":")[0]
    assert imported_at_load(module) - set(CORE.values()) == set(_REGISTRY[backend].clients)


def test_the_all_extra_installs_every_backend_and_embeddings_is_its_own():
    extras = pyproject()["project"]["optional-dependencies"]
    (everything,) = (Requirement(line) for line in extras["all"])
    assert (everything.name, everything.extras) == ("vecflow", set(known_backends()))
    assert {Requirement(line).name for line in extras["embeddings"]} == {"sentence-transformers"}
    assert "vecflow[all,postgres]" in extras["test"]  # the suite runs every backend and both ledgers
    assert {Requirement(line).name for line in extras["postgres"]} == {"psycopg"}


def pip_extras(command: str) -> set[str]:
    """The extras of the `pip install [-e] ".[...]"` of this repository in a shell command."""
    words = shlex.split(command)
    (spec,) = (word for word in words if word.startswith(".["))
    return set(spec[2:-1].split(","))


def test_readmes_first_command_installs_what_the_demo_needs_and_ci_what_the_tests_need():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first, tests = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2]
    demo_backends = set(re.findall(r"^backend = (\w+)$", (REPO / "vecflow.ini").read_text(), re.M))
    assert {extra_of(backend) for backend in demo_backends} <= pip_extras(first.split("&&")[0])
    ci = next(line for line in (REPO / ".ci" / "run").read_text().splitlines() if '-e ".[' in line)
    readme_install = next(part for part in tests.split("&&") if '-e ".[' in part)
    assert pip_extras(ci) == pip_extras(readme_install) >= {"test", "all", "embeddings"}


@pytest.mark.slow
def test_a_fresh_virtualenv_installs_the_core_without_clients_and_runs(tmp_path):
    """`pip install .` in a new virtualenv (from the package registry): no backend client, the
    console script works, and the default store asks for its extra."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, vecflow = venv / "bin" / "python", venv / "bin" / "vecflow"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(REPO)], capture_output=True,
                             text=True, env=env, timeout=600)
    if install.returncode != 0:
        unavailable(f"pip install . failed (no package registry?): {install.stderr.strip()[-500:]}")
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                            env=env, check=True).stdout
    installed = {item["name"].lower() for item in json.loads(listed)}
    assert "vecflow" in installed
    assert not installed & (set(CLIENTS.values()) | {"sentence-transformers", "torch"})

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(vecflow), *args], cwd=tmp_path, capture_output=True, text=True, env=env,
                              timeout=120)

    assert run("init", "proj").returncode == 0
    for args in (["revision", "-m", "first"], ["heads"], ["history"], ["show", "head"]):
        result = run("-c", "proj/vecflow.ini", *args)
        assert (result.returncode, result.stderr) == (0, ""), args
    result = run("-c", "proj/vecflow.ini", "inspect")
    assert (result.returncode, result.stderr) == (1, missing_client_line("chroma") + "\n")
