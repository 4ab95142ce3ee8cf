"""vecflow.ini parsing: interpolation, overrides, and errors that name file, section and key."""

from __future__ import annotations

import pytest

from vecflow.config import load_config
from vecflow.errors import ConfigError
from vecflow.runtime.stores import Stores


def write(tmp_path, text: str):
    path = tmp_path / "vecflow.ini"
    path.write_text(text, encoding="utf-8")
    return path


def test_here_is_the_folder_of_the_ini_file(tmp_path):
    config = load_config(write(tmp_path, "[vecflow]\n[store:main]\nbackend = chroma\npath = %(here)s/db\n"), environ={})
    assert config.stores["main"].options == {"path": f"{tmp_path}/db"}
    assert config.script_location == tmp_path / "versions"
    assert config.ledger == tmp_path / ".vecflow" / "ledger.db"
    assert config.batch_size is None and config.default_store == "main"


def test_environment_references_fill_secrets(tmp_path):
    path = write(tmp_path, "[store:q]\nbackend = qdrant\nurl = ${QDRANT_URL}\napi_key = ${QDRANT_KEY}\n")
    config = load_config(path, environ={"QDRANT_URL": "http://q:6333", "QDRANT_KEY": "s3cret"})
    assert config.stores["q"].options == {"url": "http://q:6333", "api_key": "s3cret"}


def test_a_postgresql_ledger_url_reads_its_password_from_the_environment(tmp_path):
    path = write(tmp_path, "[vecflow]\nledger = postgresql://ci:${PGPASSWORD}@db.internal:5433/search?schema=team\n")
    config = load_config(path, environ={"PGPASSWORD": "s3cret"})
    assert config.ledger == "postgresql://ci:s3cret@db.internal:5433/search?schema=team" and config.shared_ledger
    assert config.beside_ledger("snapshots.db") == config.ledger, "snapshots and state go to the same database"
    assert load_config(path, environ={"PGPASSWORD": "x"}, x_args=["ledger=lg.db"]).ledger == tmp_path / "lg.db"
    with pytest.raises(ConfigError, match=r"-x ledger: .*schema='no-dash' must be letters, digits and _"):
        load_config(path, environ={"PGPASSWORD": "x"}, x_args=["ledger=postgresql://h/db?schema=no-dash"])


def test_missing_environment_variable_names_file_section_and_key(tmp_path):
    path = write(tmp_path, "[store:q]\nbackend = qdrant\napi_key = ${NOPE_KEY}\n")
    with pytest.raises(ConfigError, match=r"vecflow.ini \[store:q\] api_key: environment variable NOPE_KEY"):
        load_config(path, environ={})


def test_environment_overrides_then_x_overrides(tmp_path):
    path = write(tmp_path, "[vecflow]\nbatch_size = 10\n[store:main]\nbackend = chroma\npath = /a\n")
    env = {"VECFLOW_BATCH_SIZE": "20", "VECFLOW_STORE__MAIN__PATH": "/b"}
    config = load_config(path, environ=env)
    assert (config.batch_size, config.stores["main"].options["path"]) == (20, "/b")
    config = load_config(path, ["batch_size=30", "store.main.path=/c"], environ=env)
    assert (config.batch_size, config.stores["main"].options["path"]) == (30, "/c")


def test_unset_batch_size_lets_each_adapter_choose_and_a_set_one_is_used_everywhere(tmp_path):
    stores = "[store:main]\nbackend = faiss\npath = %(here)s/f\n[store:kv]\nbackend = files\npath = %(here)s/k\n"
    unset = load_config(write(tmp_path, "[vecflow]\n" + stores), environ={})
    assert unset.batch_size is None
    opened = Stores(unset)
    try:
        main, kv = opened.backend("main"), opened.backend("kv")
        chosen = {(b.name, b.read_batch_size("docs"), b.write_batch_size("docs")) for b in (main, kv)}
        assert chosen == {(b.name, type(b).preferred_read_batch, type(b).preferred_write_batch) for b in (main, kv)}
        # A copy reads no more per page than the target writes per request, or 1,000 records.
        assert type(main).preferred_read_batch == 5000
        assert [main.copy_batch_size("docs", writes) for writes in (256, 1000, 3000, 8000)] == [1000, 1000, 3000, 5000]
        assert main.copy_batch_size("docs", 256, configured=300) == 300
    finally:
        opened.close()
    path = write(tmp_path, "[vecflow]\nbatch_size = 300\n" + stores)
    opened = Stores(load_config(path, environ={}))
    try:
        for backend in (opened.backend("main"), opened.backend("kv")):
            assert (backend.read_batch_size("docs"), backend.write_batch_size("docs")) == (300, 300)
            assert backend.copy_batch_size("docs", 5000) == 300
    finally:
        opened.close()
    # `auto` says "unset" where a file or the environment set one.
    assert load_config(path, ["batch_size=auto"], environ={}).batch_size is None
    assert load_config(path, environ={"VECFLOW_BATCH_SIZE": "Auto"}).batch_size is None


def test_bad_override_names_where_it_came_from(tmp_path):
    path = write(tmp_path, "[vecflow]\nbatch_size = 10\n")
    with pytest.raises(ConfigError, match=r"^environment VECFLOW_BATCH_SIZE: .*integer"):
        load_config(path, environ={"VECFLOW_BATCH_SIZE": "lots"})
    with pytest.raises(ConfigError, match=r"^-x batch_size: .*greater than or equal to 1"):
        load_config(path, ["batch_size=0"], environ={})
    with pytest.raises(ConfigError, match=r"^-x tenant_hint: unknown setting; use one of batch_size"):
        load_config(path, ["tenant_hint=blue"], environ={})


def test_x_can_declare_a_whole_store(tmp_path):
    config = load_config(write(tmp_path, "[vecflow]\n"), ["store.tmp.backend=faiss", "store.tmp.path=/f"], environ={})
    assert config.store("tmp").backend == "faiss"


def test_bad_value_names_file_section_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"vecflow.ini \[vecflow\] batch_size: .*integer"):
        load_config(write(tmp_path, "[vecflow]\nbatch_size = many\n"), environ={})
    with pytest.raises(ConfigError, match=r"batch_size: .*greater than or equal to 1"):
        load_config(write(tmp_path, "[vecflow]\nbatch_size = 0\n"), environ={})


def test_unknown_keys_and_sections_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"\[vecflow\]: unknown key\(s\) batchsize"):
        load_config(write(tmp_path, "[vecflow]\nbatchsize = 5\n"), environ={})
    with pytest.raises(ConfigError, match=r"unknown section \[stores\]"):
        load_config(write(tmp_path, "[stores]\nx = 1\n"), environ={})
    with pytest.raises(ConfigError, match=r"\[store:main\]: missing key 'backend'"):
        load_config(write(tmp_path, "[store:main]\npath = x\n"), environ={})


def test_unknown_store_lists_the_known_ones(tmp_path):
    config = load_config(write(tmp_path, "[store:main]\nbackend = chroma\n"), environ={})
    with pytest.raises(ConfigError, match=r"no \[store:other\] section \(stores: main\)"):
        config.store("other")


def test_malformed_file_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="vecflow.ini: .*"):
        load_config(write(tmp_path, "no section header\n"), environ={})
    with pytest.raises(ConfigError, match="not found; run 'vecflow init'"):
        load_config(tmp_path / "absent.ini", environ={})


def test_malformed_x_argument(tmp_path):
    with pytest.raises(ConfigError, match="-x expects key=value"):
        load_config(write(tmp_path, "[vecflow]\n"), ["batch_size"], environ={})
