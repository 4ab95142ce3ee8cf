"""vecflow.ini -> validated pydantic models.

Precedence, lowest first: the file, VECFLOW_* environment variables, then -x key=value.
Values may use %(here)s (the folder holding vecflow.ini) and ${ENV_VAR} (for secrets).
`ledger` is a SQLite path or a PostgreSQL URL (postgresql://user:${PGPASSWORD}@host/db), which
a team shares (docs/team.md).

    [vecflow]
    script_location = %(here)s/versions
    ledger = %(here)s/.vecflow/ledger.db
    default_store = main
    retries = 5
    retry_max_seconds = 10

    [store:main]
    backend = chroma
    path = %(here)s/.vecflow/chroma

`-n NAME` reads a [vecflow:NAME] section instead of [vecflow] (another environment).
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vecflow.database import is_database_url, split_schema
from vecflow.errors import ConfigError

DEFAULT_CONFIG_NAME = "vecflow.ini"
MAIN_SECTION = "vecflow"
STORE_PREFIX = "store:"
NAMED_PREFIX = f"{MAIN_SECTION}:"  # [vecflow:NAME], chosen with -n NAME
_SECTION_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StoreConfig(BaseModel):
    """One [store:NAME] section: the backend name and its options (passed to the adapter)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    backend: str
    options: dict[str, str] = Field(default_factory=dict)


class Config(BaseModel):
    """A loaded project configuration."""

    model_config = ConfigDict(extra="forbid")

    config_file: Path
    here: Path
    script_location: Path
    ledger: Path | str  # a SQLite file, or a postgresql:// URL
    # Records per page and per write request everywhere; None (unset, or `auto`): each store's
    # adapter chooses its own (Backend.read_batch_size, Backend.write_batch_size).
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    default_store: str = "main"
    lock_lease_seconds: float = Field(60.0, gt=0, allow_inf_nan=False)
    # Transient store failures (unreachable, timeouts, 5xx): how many retries, and the longest
    # wait between two (waits double from 0.5 s up to it, with full jitter).
    retries: int = Field(5, ge=0, le=100)
    retry_max_seconds: float = Field(10.0, gt=0, le=3600, allow_inf_nan=False)
    # What `vecflow revision` and `vecflow merge` write unless --yaml / --python says otherwise.
    revision_format: Literal["python", "yaml"] = "python"
    # Seconds between two progress lines when the output is not a terminal (a CI log).
    progress_interval: float = Field(10.0, gt=0, le=86400, allow_inf_nan=False)
    stores: dict[str, StoreConfig] = Field(default_factory=dict)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _auto_batch_size(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value

    @field_validator("script_location", "ledger", mode="before")
    @classmethod
    def _expand_user(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        if is_database_url(value):
            try:
                split_schema(value.strip())
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            return value.strip()
        return Path(value).expanduser() if isinstance(value, str) else value

    @property
    def shared_ledger(self) -> bool:
        """The ledger is a PostgreSQL database (shared by every machine that points at it)."""
        return isinstance(self.ledger, str)

    def beside_ledger(self, name: str) -> Path | str:
        """Where vecflow keeps one of its own files (`snapshots.db`, `state.db`): beside a SQLite
        ledger, or in the PostgreSQL ledger's database (its URL), so that every machine sharing
        the ledger also shares the snapshots and state a downgrade needs."""
        if isinstance(self.ledger, str):
            return self.ledger
        return self.ledger.parent / name

    def store(self, name: str | None = None) -> StoreConfig:
        name = name or self.default_store
        if name not in self.stores:
            known = ", ".join(sorted(self.stores)) or "none"
            raise ConfigError(f"{self.config_file.name}: no [store:{name}] section (stores: {known})")
        return self.stores[name]


_MAIN_KEYS = {"script_location", "ledger", "batch_size", "default_store", "lock_lease_seconds", "retries",
              "retry_max_seconds", "revision_format", "progress_interval"}


def parse_x_args(pairs: Sequence[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-x expects key=value, got {pair!r}")
        result[key.strip()] = value
    return result


def find_config_file(explicit: str | os.PathLike | None = None) -> Path:
    if explicit is not None:
        path = Path(explicit)
    elif os.environ.get("VECFLOW_CONFIG"):
        path = Path(os.environ["VECFLOW_CONFIG"])
    else:
        path = Path.cwd() / DEFAULT_CONFIG_NAME
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass the path of its vecflow.ini to -c/--config")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; run 'vecflow init' or pass -c/--config")
    return path.resolve()


def load_config(
    config_file: str | os.PathLike | None = None,
    x_args: Sequence[str] | Mapping[str, str] = (),
    environ: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Config:
    """Read, interpolate, override and validate a vecflow.ini.

    `name` (the CLI's -n) reads the [vecflow:NAME] section instead of [vecflow], as Alembic's -n
    picks a section; its ledger defaults to .vecflow/NAME/ledger.db, so each environment keeps
    its own applied set."""
    environ = os.environ if environ is None else environ
    path = find_config_file(config_file)
    here = path.parent
    parser = configparser.ConfigParser(interpolation=configparser.BasicInterpolation())
    try:
        with path.open(encoding="utf-8-sig") as handle:  # -sig: Windows editors start files with a BOM
            parser.read_file(handle)
    except configparser.Error as exc:
        raise ConfigError(f"{path.name}: {' '.join(str(exc).split())}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "save it as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
    if not parser.sections():
        raise ConfigError(f"{path} has no [{MAIN_SECTION}] or [{STORE_PREFIX}NAME] section; is it a vecflow.ini? "
                          "('vecflow init' writes one)")

    sections: dict[str, dict[str, str]] = {}
    for section in parser.sections():
        values = {}
        for key in parser.options(section):
            try:
                raw = parser.get(section, key, vars={"here": str(here)})
            except configparser.Error as exc:
                raise ConfigError(f"{path.name} [{section}] {key}: {' '.join(str(exc).split())}") from exc
            values[key] = _interpolate_env(raw, environ, f"{path.name} [{section}] {key}")
        sections[section] = values

    for section, values in sections.items():
        if section.startswith(STORE_PREFIX):
            continue
        if section != MAIN_SECTION and not section.startswith(NAMED_PREFIX):
            raise ConfigError(f"{path.name}: unknown section [{section}]; expected [{MAIN_SECTION}], "
                              f"[{NAMED_PREFIX}NAME] or [{STORE_PREFIX}NAME]")
        if section != MAIN_SECTION and not _SECTION_NAME.fullmatch(section[len(NAMED_PREFIX):]):
            raise ConfigError(f"{path.name}: section [{section}]: NAME may hold letters, digits, '_' and '-' only")
        unknown = set(values) - _MAIN_KEYS
        if unknown:
            raise ConfigError(f"{path.name} [{section}]: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"known keys: {', '.join(sorted(_MAIN_KEYS))}")
    main_section = MAIN_SECTION if name is None else f"{NAMED_PREFIX}{name}"
    if name is not None and main_section not in sections:
        named = [f"[{s}]" for s in sections if s.startswith(NAMED_PREFIX)]
        raise ConfigError(f"{path.name} has no [{main_section}] section (-n {name}); "
                          f"{'its named sections: ' + ', '.join(named) if named else 'it has no named sections'}")
    main = dict(sections.get(main_section, {}))
    stores = {s[len(STORE_PREFIX):]: dict(v) for s, v in sections.items() if s.startswith(STORE_PREFIX)}

    origins = {key: f"{path.name} [{main_section}] {key}" for key in main}
    env = _env_overrides(environ)
    _apply_overrides(main, stores, env, origins, lambda key: f"environment VECFLOW_{key.upper()}")
    x = dict(x_args) if isinstance(x_args, Mapping) else parse_x_args(x_args)
    _apply_overrides(main, stores, x, origins, lambda key: f"-x {key}")

    main.setdefault("script_location", str(here / "versions"))
    main.setdefault("ledger", str(here / ".vecflow" / (name or "") / "ledger.db"))
    store_models = {}
    for name, values in stores.items():
        if "backend" not in values:
            raise ConfigError(f"{path.name} [store:{name}]: missing key 'backend'")
        backend = values.pop("backend")
        store_models[name] = StoreConfig(name=name, backend=backend, options=values)
    try:
        config = Config(config_file=path, here=here, stores=store_models, **main)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{origins.get(key, f'{path.name} [{main_section}] {key}')}: {err['msg']}") from exc
    for option, folder in (("script_location", config.script_location), ("ledger", config.ledger)):
        if isinstance(folder, Path) and not folder.is_absolute():
            setattr(config, option, (here / folder).resolve())
    return config


def _interpolate_env(value: str, environ: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return environ[name]

    return _ENV_REF.sub(replace, value)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """VECFLOW_BATCH_SIZE=10 -> batch_size; VECFLOW_STORE__MAIN__PATH=x -> store.main.path."""
    result = {}
    for key, value in environ.items():
        if not key.startswith("VECFLOW_") or key == "VECFLOW_CONFIG":
            continue
        rest = key[len("VECFLOW_"):]
        if rest.startswith("STORE__"):
            parts = rest.split("__")
            if len(parts) == 3:
                result[f"store.{parts[1].lower()}.{parts[2].lower()}"] = value
        elif rest.lower() in _MAIN_KEYS:
            result[rest.lower()] = value
    return result


def _apply_overrides(main: dict, stores: dict, overrides: Mapping[str, str], origins: dict[str, str],
                     origin: Callable[[str], str]) -> None:
    """Apply overrides in place, remembering where each [vecflow] value came from."""
    for key, value in overrides.items():
        if key in _MAIN_KEYS:
            main[key] = value
            origins[key] = origin(key)
        elif key.startswith("store."):
            _, _, rest = key.partition(".")
            name, dot, option = rest.rpartition(".")
            if not dot or not name:
                raise ConfigError(f"{origin(key)}: expected store.NAME.OPTION")
            stores.setdefault(name, {})[option] = value
        else:
            raise ConfigError(f"{origin(key)}: unknown setting; use one of {', '.join(sorted(_MAIN_KEYS))} "
                              "or store.NAME.OPTION")
