"""Backend registry: store names in vecflow.ini map to adapter classes, imported lazily.

No backend client is a dependency of vecflow itself: each comes with an extra (`pip install
"vecflow[chroma]"`), and an adapter module (which imports its client) is only imported when a store
of that backend is first opened. So every command that does not open a store (init, revision,
heads, history, show, ...) works without any client, and a missing client is one line naming the
store and the pip command.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, NamedTuple

from vecflow.backends.base import Backend, CollectionInfo, Hit, NativePage
from vecflow.errors import ConfigError, VecflowError
from vecflow.state import VecflowState

__all__ = ["Backend", "CollectionInfo", "Hit", "NativePage", "register_backend", "open_backend", "known_backends"]


class BackendEntry(NamedTuple):
    """Where an adapter lives and how to install what it imports. `clients` are the top-level
    modules the adapter imports that its install command brings (the client and the client's own
    dependencies the adapter uses directly): a missing one is reported as "not installed", any
    other missing module as a client that cannot be imported."""

    target: str  # "package.module:ClassName"
    install_hint: str  # the command that installs the client, e.g. pip install "vecflow[chroma]"
    clients: tuple[str, ...] = ()


def _extra(name: str) -> str:
    return f'pip install "vecflow[{name}]"'


_REGISTRY: dict[str, BackendEntry] = {
    "chroma": BackendEntry("vecflow.backends.chroma:ChromaBackend", _extra("chroma"), ("chromadb", "httpx")),
    "faiss": BackendEntry("vecflow.backends.faiss:FaissBackend", _extra("faiss"), ("faiss",)),
    "redis": BackendEntry("vecflow.backends.redis:RedisBackend", _extra("redis"), ("redis",)),
    "qdrant": BackendEntry("vecflow.backends.qdrant:QdrantBackend", _extra("qdrant"), ("qdrant_client", "grpc")),
    "files": BackendEntry("vecflow.backends.files:FilesBackend", _extra("files"), ("pyarrow",)),
}


def register_backend(name: str, target: str, install_hint: str = "", clients: tuple[str, ...] = ()) -> None:
    """Register a third-party adapter: target is 'package.module:ClassName', install_hint the
    command that installs what it imports, clients the top-level modules that command brings
    (see BackendEntry)."""
    _REGISTRY[name] = BackendEntry(target, install_hint, tuple(clients))


def known_backends() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str, store: str | None = None) -> type[Backend]:
    """The adapter class registered as name, imported now. store (the [store:NAME] that needs
    it) only makes a missing client's message name it."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(known_backends())}")
    target, hint, clients = BackendEntry(*_REGISTRY[name])  # a bare (target, hint) pair works too
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _missing_client(name, store, module_name, hint, clients, exc) from exc
    return getattr(module, class_name)


def _missing_client(name: str, store: str | None, module_name: str, hint: str, clients: tuple[str, ...],
                    exc: ImportError) -> ConfigError:
    """The one line for an adapter that could not be imported: its client is not installed (or
    cannot be imported: a broken or mismatched install), with the command that installs it."""
    missing = exc.name or ""
    if missing == module_name:
        return ConfigError(f"backend {name!r}: adapter module {module_name} is missing")
    user = f"store {store!r} uses backend {name}, whose" if store else f"backend {name} needs its"
    if missing.partition(".")[0] in clients or (not clients and missing):
        what = "client is not installed" if store else "client, which is not installed"
    else:
        what = f"client cannot be imported ({exc})" if store else f"client, which cannot be imported ({exc})"
    return ConfigError(f"{user} {what}" + (f"; run: {hint}" if hint else ""))


def open_backend(name: str, options: dict[str, Any], state: VecflowState | None = None,
                 project_root: Path | None = None, store: str | None = None, read_only: bool = False) -> Backend:
    """Instantiate the adapter registered as name with the store's options. `layout` is an option
    of every store (auto, raw, langchain, llamaindex); `state` is where vecflow keeps what it must
    remember about the store (vecflow/state.py), in memory when None; stores inside project_root are
    scoped in it by their path relative to the project; store is the [store:NAME] being opened
    (for messages); read_only opens it for reading only (Backend.open_read_only)."""
    cls = backend_class(name, store)
    options = dict(options)
    layout = options.pop("layout", None)
    try:
        backend = cls.open_read_only(**options) if read_only else cls(**options)
    except TypeError as exc:
        raise ConfigError(f"backend {name!r}: {exc}") from exc
    try:
        backend.set_layout_option(layout)
    except VecflowError as exc:
        backend.close()
        raise ConfigError(f"store option layout={layout!r}: {exc}") from exc
    if state is not None:
        backend.attach_state(state, project_root)
    return backend
