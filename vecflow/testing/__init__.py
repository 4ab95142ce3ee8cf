"""vecflow's pytest plugin: test your own chain of revisions on disposable stores.

Loaded by pytest through the `pytest11` entry point `vecflow` (disable it with `-p no:vecflow`).
It adds fixtures and nothing else runs until a test asks for them:

- `vecflow_config`: the path of the project's vecflow.ini (option `--vecflow-config`, ini option
  `vecflow_config`, `$VECFLOW_CONFIG`, default `vecflow.ini` in the rootdir);
- `vecflow_store_urls`: store name -> URL of a disposable server, for stores that need one
  (ini option `vecflow_store_urls`, lines `STORE = URL`; option `--vecflow-store-url STORE=URL`);
- `vecflow_store_options`: store name -> full options of its disposable store ({} by default);
- `vecflow_sample_data`: what the stores hold before the first revision ({} by default);
- `vecflow_project`: a DisposableProject, seeded; `vecflow_runner`: a ChainRunner on it.

The ready-made tests (`test_single_head`, `test_upgrade`, `test_stairway`) are enabled by
importing them into a test module. See docs/testing.md.

This module imports only pytest: the plugin is loaded into every pytest run of an environment
that has vecflow installed, so vecflow itself is imported when a fixture is first used.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from vecflow.testing.project import DisposableProject, SampleData
    from vecflow.testing.runner import ChainRunner

_EXPORTS = {
    "DisposableProject": "vecflow.testing.project",
    "disposable_options": "vecflow.testing.project",
    "ChainRunner": "vecflow.testing.runner",
    "CollectionState": "vecflow.testing.runner",
    "StairwayError": "vecflow.testing.runner",
    "stairway_plan": "vecflow.testing.runner",
    "test_single_head": "vecflow.testing.tests",
    "test_upgrade": "vecflow.testing.tests",
    "test_stairway": "vecflow.testing.tests",
}


def __getattr__(name: str) -> Any:
    """`from vecflow.testing import test_stairway` and the classes, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vecflow", "vecflow migrations (vecflow.testing, see docs/testing.md)")
    group.addoption("--vecflow-config", metavar="PATH", default=None,
                    help="the project's vecflow.ini (default: the vecflow_config ini option, else vecflow.ini in "
                         "the rootdir)")
    group.addoption("--vecflow-store-url", metavar="STORE=URL", action="append", default=[],
                    help="URL of a disposable, empty server for a store that needs one (repeatable)")
    parser.addini("vecflow_config", "the project's vecflow.ini, relative to this ini file (default: vecflow.ini)")
    parser.addini("vecflow_store_urls", "lines STORE = URL: disposable, empty servers for stores that need one",
                  type="linelist")


@pytest.fixture
def vecflow_config(request: pytest.FixtureRequest) -> Path:
    """The project's vecflow.ini: --vecflow-config, else the vecflow_config ini option, else
    $VECFLOW_CONFIG (as the CLI reads it), else vecflow.ini in the rootdir. Override it to test
    another project."""
    config = request.config
    option = config.getoption("vecflow_config")
    if option:
        return (config.invocation_params.dir / option).resolve()
    if config.getini("vecflow_config"):
        base = config.inipath.parent if config.inipath else config.rootpath
        return (base / config.getini("vecflow_config")).resolve()
    if os.environ.get("VECFLOW_CONFIG"):
        return (config.invocation_params.dir / os.environ["VECFLOW_CONFIG"]).resolve()
    return config.rootpath / "vecflow.ini"


@pytest.fixture
def vecflow_store_urls(request: pytest.FixtureRequest) -> dict[str, str]:
    """Store name -> URL of the disposable server its stand-in uses (ini lines, then options)."""
    urls = {}
    for where, entry in [*(("vecflow_store_urls", line) for line in request.config.getini("vecflow_store_urls")),
                         *(("--vecflow-store-url", value) for value in request.config.getoption("vecflow_store_url"))]:
        name, sep, url = entry.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise pytest.UsageError(f"{where}: expected STORE=URL, got {entry!r}")
        urls[name.strip()] = url.strip()
    return urls


@pytest.fixture
def vecflow_store_options() -> dict[str, dict[str, str]]:
    """Store name -> the full options of its disposable store, for stores the defaults do not fit
    (a "backend" key changes the backend). Empty: every store gets the default stand-in."""
    return {}


@pytest.fixture
def vecflow_sample_data() -> SampleData:
    """What the stores hold before the first revision: override it with a mapping of collections
    (`docs`, `store:docs`) to a JSON lines file (relative to the rootdir) or a list of record
    dicts, or with a callable that receives the DisposableProject and writes what it likes."""
    return {}


@pytest.fixture
def vecflow_project(request: pytest.FixtureRequest, tmp_path: Path, vecflow_config: Path,
                    vecflow_store_urls: dict[str, str], vecflow_store_options: dict[str, dict[str, str]],
                    vecflow_sample_data: SampleData) -> Iterator[DisposableProject]:
    """The project's chain on disposable stores under tmp_path, seeded with vecflow_sample_data.
    Collections left on a disposable server are dropped afterwards."""
    from vecflow.errors import VecflowError
    from vecflow.testing.project import DisposableProject

    try:
        project = DisposableProject(vecflow_config, tmp_path / "vecflow", vecflow_store_urls, vecflow_store_options)
        project.check_servers_empty()
    except VecflowError as exc:
        pytest.fail(f"vecflow_project: {exc}", pytrace=False)
    try:
        try:
            project.seed(vecflow_sample_data, request.config.rootpath)
        except VecflowError as exc:
            pytest.fail(f"vecflow_project: seeding the sample data: {exc}", pytrace=False)
        yield project
    finally:
        project.empty_servers()


@pytest.fixture
def vecflow_runner(vecflow_project: DisposableProject) -> ChainRunner:
    """Upgrade, downgrade, digests and the stairway on vecflow_project."""
    from vecflow.testing.runner import ChainRunner

    return ChainRunner(vecflow_project)
