"""Bad configuration: vecflow.ini, VECFLOW_* variables and -x overrides, refused in one line naming
the file, section and key, before any store or ledger is touched."""

from __future__ import annotations

import pytest

from tests.bad_input.conftest import INI

MAIN, STORE = INI.split("\n[store:main]\n")
STORE = "[store:main]\n" + STORE


def main_with(line: str) -> str:
    return MAIN + line + "\n\n" + STORE


INIS = {
    "no section at all": ("# an empty configuration\n", "has no [vecflow] or [store:NAME] section"),
    "not an ini file": ("just some text\n", "File contains no section headers"),
    "not UTF-8": (b"[vecflow]\nbatch_size = 4\n# caf\xe9\n", "not UTF-8 text (byte 0xe9"),
    "an unknown section": (INI + "\n[stores:other]\nbackend = faiss\n", "unknown section [stores:other]"),
    "an unknown key": (main_with("batch_sise = 3"), "unknown key(s) batch_sise"),
    "a repeated key": (main_with("batch_size = 5"), "batch_size"),
    "a repeated section": (INI + "\n[store:main]\nbackend = redis\n", "section 'store:main' already exists"),
    "batch_size 0": (main_with("").replace("batch_size = 4", "batch_size = 0"), "batch_size: Input should be greater"),
    "batch_size negative": (main_with("").replace("batch_size = 4", "batch_size = -5"), "batch_size"),
    "batch_size not a number": (main_with("").replace("batch_size = 4", "batch_size = lots"), "valid integer"),
    "batch_size a fraction": (main_with("").replace("batch_size = 4", "batch_size = 2.5"), "valid integer"),
    "batch_size empty": (main_with("").replace("batch_size = 4", "batch_size ="), "batch_size"),
    "batch_size huge": (main_with("").replace("batch_size = 4", "batch_size = 10000000"), "less than or equal"),
    "lease of infinite seconds": (main_with("lock_lease_seconds = inf"), "lock_lease_seconds"),
    "lease of NaN seconds": (main_with("lock_lease_seconds = nan"), "lock_lease_seconds"),
    "lease of 0 seconds": (main_with("lock_lease_seconds = 0"), "lock_lease_seconds"),
    "an empty script_location": (main_with("").replace("script_location = %(here)s/versions", "script_location ="),
                                 "script_location: Value error, must not be empty"),
    "a missing script folder": (main_with("").replace("%(here)s/versions", "%(here)s/no_versions"),
                                "no_versions does not exist"),
    "a bad interpolation": (main_with("").replace("%(here)s/versions", "%(there)s/versions"), "script_location"),
    "an unset environment variable": (INI.replace("%(here)s/store", "${VECFLOW_TEST_UNSET_VAR}"),
                                      "environment variable VECFLOW_TEST_UNSET_VAR is not set"),
    "a store without backend": (INI.replace("backend = faiss\n", ""), "[store:main]: missing key 'backend'"),
    "an unknown backend": (INI.replace("backend = faiss", "backend = faiss2"), "faiss2"),
    "an unknown backend option": (INI + "pth = x\n", "pth"),
    "a default store that does not exist": (main_with("default_store = nope"), "no [store:nope] section"),
}


@pytest.mark.parametrize("text, expected", INIS.values(), ids=INIS.keys())
def test_a_bad_vecflow_ini_is_refused_in_one_line(project, text, expected):
    project.revision("a1", 'op.add_field("docs", "x", default=1)')
    project.set_ini(text)
    project.fails("upgrade", "head", expect=expected)


OVERRIDES = {
    "-x without '='": (["-x", "batch_size"], "-x expects key=value, got 'batch_size'"),
    "-x without a key": (["-x", "=5"], "-x expects key=value"),
    "-x unknown setting": (["-x", "bach_size=5"], "-x bach_size: unknown setting"),
    "-x bad value": (["-x", "batch_size=zero"], "-x batch_size: Input should be a valid integer"),
    "-x store option without a store": (["-x", "store.path=x"], "expected store.NAME.OPTION"),
    "-x store without a backend": (["-x", "store.other.path=x"], "[store:other]: missing key 'backend'"),
    "-x an unknown backend": (["-x", "store.main.backend=fass"], "fass"),
}


@pytest.mark.parametrize("args, expected", OVERRIDES.values(), ids=OVERRIDES.keys())
def test_a_bad_override_is_refused_in_one_line(project, args, expected):
    project.revision("a1", 'op.add_field("docs", "x", default=1)')
    project.fails(*args, "upgrade", "head", expect=expected)


def test_a_bad_environment_variable_is_refused_naming_it(project, monkeypatch):
    monkeypatch.setenv("VECFLOW_BATCH_SIZE", "-1")
    project.fails("upgrade", "head", expect="environment VECFLOW_BATCH_SIZE")


@pytest.mark.parametrize("config", ["missing.ini", "a directory"])
def test_a_config_file_that_is_not_there_is_refused(project, config):
    path = project.root / ("conf" if config == "a directory" else config)
    path.mkdir(exist_ok=True) if config == "a directory" else None
    before = project.written()
    code, _, err = project.run("--config", str(path), "upgrade", "head")
    assert code == 1 and err.startswith("vecflow: error: config file") and len(err.splitlines()) == 1, err
    assert project.written() == before


def test_the_real_cli_refuses_a_bad_ini_in_one_line(project):
    project.set_ini(main_with("lock_lease_seconds = inf"))
    project.fails("current", expect="lock_lease_seconds", via_subprocess=True)


def test_an_ini_saved_with_a_byte_order_mark_loads(project):
    project.set_ini(("\ufeff" + INI).encode("utf-8"))
    assert project.succeeds("current").startswith("a0")
