"""A user's vecflow project on disposable stores: the same scripts, every [store:NAME] replaced.

The project's own vecflow.ini and script directory are used where they are (so data files and
dotted paths resolve as in a real run); the ledger, vecflow's state and every store move to a
temporary folder. Nothing the real project points at is opened.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from vecflow.config import STORE_PREFIX, Config, StoreConfig, load_config
from vecflow.errors import ConfigError, VecflowError
from vecflow.operations.collections import read_jsonl_records
from vecflow.runtime.stores import Stores, split_ref

# Options that log in to a server: never carried over to a disposable store.
CREDENTIALS = frozenset({"headers", "api_key", "password", "username"})
# Backends that also run on a folder, each with the options only its server stores have.
FOLDER_BACKENDS = {
    "chroma": frozenset({"url", "tenant", "database"}),
    "qdrant": frozenset({"url", "prefer_grpc", "grpc_port", "timeout"}),
    "faiss": frozenset(),
    "files": frozenset(),
}
# Stands in for an environment variable a store option reads but the test run does not set: the
# real store's secrets are not needed unless a disposable store keeps the option.
_UNSET = "<vecflow.testing: unset environment variable>"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

RecordData: TypeAlias = "str | os.PathLike | Sequence[Mapping[str, Any]]"
SampleData: TypeAlias = "Mapping[str, RecordData] | Callable[[DisposableProject], None] | None"


def disposable_options(store: StoreConfig, folder: Path, url: str | None = None) -> dict[str, str]:
    """The options of a disposable stand-in for `store`: on the server at `url` when one is given,
    else in `folder` (backends that run on a folder: a store on a Chroma or Qdrant server becomes
    an embedded Chroma / Qdrant local-mode store). Credentials are dropped; every other option
    (layout, key prefix, index settings, ...) is kept."""
    options = {key: value for key, value in store.options.items() if key not in CREDENTIALS}
    if url is not None:
        options.pop("path", None)
        return {**options, "url": url}
    if store.backend not in FOLDER_BACKENDS:
        raise ConfigError(
            f"[store:{store.name}] (backend {store.backend}) needs a server: give the URL of a disposable, empty "
            f"one with --vecflow-store-url {store.name}=URL or the vecflow_store_urls ini option, or override "
            "the vecflow_store_options fixture")
    for key in FOLDER_BACKENDS[store.backend]:
        options.pop(key, None)
    return {**options, "path": str(folder)}


class DisposableProject:
    """The chain of `config_file` with its ledger and stores under `folder`.

    store_urls: store name -> URL of a disposable server for it. store_options: store name -> the
    full options of its disposable store (a "backend" key may change the backend), for stores the
    defaults do not fit. `config` is what vecflow.command functions take."""

    def __init__(self, config_file: Path, folder: Path, store_urls: Mapping[str, str] | None = None,
                 store_options: Mapping[str, Mapping[str, str]] | None = None) -> None:
        store_urls, store_options = dict(store_urls or {}), dict(store_options or {})
        self.folder = folder
        self.user_config = _load_without_store_secrets(config_file)
        unknown = sorted((set(store_urls) | set(store_options)) - set(self.user_config.stores))
        if unknown:
            known = ", ".join(sorted(self.user_config.stores)) or "none"
            raise ConfigError(f"{config_file.name} has no store {', '.join(unknown)} (stores: {known})")
        stores = {}
        for name, store in self.user_config.stores.items():
            if name in store_options:
                options = {key: str(value) for key, value in store_options[name].items()}
                backend = options.pop("backend", store.backend)
            else:
                options = disposable_options(store, folder / "stores" / name, store_urls.get(name))
                backend = store.backend
            for key, value in options.items():
                if _UNSET in value:
                    raise ConfigError(f"{config_file.name} [store:{name}] {key} reads an environment variable that "
                                      "is not set")
            stores[name] = StoreConfig(name=name, backend=backend, options=options)
        self.config: Config = self.user_config.model_copy(
            update={"ledger": folder / ".vecflow" / "ledger.db", "stores": stores})

    @property
    def server_stores(self) -> list[str]:
        """Names of the stores that live on a (disposable) server rather than in a folder."""
        return sorted(name for name, store in self.config.stores.items() if "url" in store.options)

    def store_options(self, name: str | None = None) -> dict[str, str]:
        """The options of a disposable store (e.g. its `path`, to write into it with the
        application's own client)."""
        return dict(self.config.store(name).options)

    @contextlib.contextmanager
    def stores(self) -> Iterator[Stores]:
        """The project's stores, opened on demand (`stores.backend(name)`, `stores.resolve(ref)`),
        closed afterwards."""
        stores = Stores(self.config)
        try:
            yield stores
        finally:
            stores.close()

    def check_servers_empty(self) -> None:
        """Refuse a server that already holds collections: it is not disposable, or another test
        is using it. (empty_servers drops whatever a test leaves there.)"""
        with self.stores() as stores:
            for name in self.server_stores:
                found = stores.backend(name).list_collections()
                if found:
                    url = self.config.stores[name].options["url"]
                    raise ConfigError(f"store {name!r}: the server at {url} already holds {', '.join(found)}; "
                                      "give the URL of a disposable, empty server (vecflow.testing drops everything "
                                      "in it after each test)")

    def empty_servers(self) -> None:
        """Drop every collection of the server stores (folder stores go with the tmp folder)."""
        with self.stores() as stores:
            for name in self.server_stores:
                backend = stores.backend(name)
                for collection in backend.list_collections():
                    backend.drop_collection(collection)

    def seed(self, sample: SampleData, relative_to: Path) -> None:
        """Write the sample data the chain starts from.

        `sample` is a callable (given this project), or a mapping of collection references
        (`docs`, `store:docs`) to records: a JSON lines file (a path, relative to `relative_to`)
        or a list of dicts, each `{"id", "vector", "document", "metadata"}` as create_collection's
        data files. Mapped collections are created with the cosine metric."""
        if sample is None:
            return
        if callable(sample):
            sample(self)
            return
        if not isinstance(sample, Mapping):
            raise ConfigError(f"vecflow_sample_data must be a mapping of collections to records or a callable, not "
                              f"{type(sample).__name__}")
        with self.stores() as stores:
            for ref, data in sample.items():
                backend, name = stores.resolve(ref)
                path = self._records_file(ref, data, relative_to)
                try:
                    pages = [page for page, _ in read_jsonl_records(path, 0, backend.read_batch_size(name))]
                except VecflowError as exc:
                    raise ConfigError(f"vecflow_sample_data[{ref!r}]: {exc}") from exc
                if not pages:
                    raise ConfigError(f"vecflow_sample_data[{ref!r}]: no records; give at least one (the collection "
                                      "takes its dimension from them), or seed it with a callable")
                backend.create_collection(name, pages[0].dim, "cosine")
                for page in pages:
                    backend.upsert(name, page)

    def _records_file(self, ref: str, data: RecordData, relative_to: Path) -> Path:
        if isinstance(data, (str, os.PathLike)):
            path = relative_to / data
            if not path.is_file():
                raise ConfigError(f"vecflow_sample_data[{ref!r}]: {path} is not a file")
            return path
        store, collection = split_ref(ref, self.config.default_store)
        path = self.folder / "sample" / f"{store}.{collection}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.write_text("".join(json.dumps(dict(record)) + "\n" for record in data), encoding="utf-8")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"vecflow_sample_data[{ref!r}]: records must be dicts of JSON values: {exc}") from exc
        return path


def _load_without_store_secrets(config_file: Path) -> Config:
    """load_config, with the environment variables that store sections read but this run does
    not set standing in as _UNSET (an option still holding it after the rewrite is refused)."""
    if not config_file.is_file():
        raise ConfigError(f"no vecflow.ini at {config_file}; set vecflow_config in pytest's ini file, pass "
                          "--vecflow-config, or override the vecflow_config fixture")
    raw = configparser.RawConfigParser()
    try:
        raw.read(config_file, encoding="utf-8-sig")
    except configparser.Error:
        return load_config(config_file)  # load_config reports the error in its own words
    missing = {name for section in raw.sections() if section.startswith(STORE_PREFIX)
               for value in raw[section].values() for name in _ENV_REF.findall(value) if name not in os.environ}
    return load_config(config_file, environ={**os.environ, **dict.fromkeys(missing, _UNSET)})
