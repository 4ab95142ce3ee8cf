"""Backend registry: store names in vecflow.ini map to adapter classes, imported lazily."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from vecflow.backends.base import Backend, CollectionInfo, Hit, NativePage
from vecflow.errors import BackendError, ConfigError, VecflowError
from vecflow.state import VecflowState

__all__ = ["Backend", "CollectionInfo", "Hit", "NativePage", "register_backend", "open_backend", "known_backends"]

# name -> ("module.path:ClassName", install hint)
_REGISTRY: dict[str, tuple[str, str]] = {
    "chroma": ("vecflow.backends.chroma:ChromaBackend", "pip install chromadb"),
    "faiss": ("vecflow.backends.faiss:FaissBackend", "pip install faiss-cpu"),
    "redis": ("vecflow.backends.redis:RedisBackend", "pip install redis"),
    "qdrant": ("vecflow.backends.qdrant:QdrantBackend", "pip install qdrant-client"),
    "files": ("vecflow.backends.files:FilesBackend", "pip install pyarrow"),
}


def register_backend(name: str, target: str, install_hint: str = "") -> None:
    """Register a third-party adapter: target is 'package.module:ClassName'."""
    _REGISTRY[name] = (target, install_hint)


def known_backends() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(known_backends())}")
    target, hint = _REGISTRY[name]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if getattr(exc, "name", None) == module_name:
            raise BackendError(f"backend {name!r}: adapter module {module_name} is missing") from exc
        raise BackendError(f"backend {name!r} needs a package that is not installed ({exc}); {hint}") from exc
    return getattr(module, class_name)


def open_backend(name: str, options: dict[str, Any], state: VecflowState | None = None,
                 project_root: Path | None = None, read_only: bool = False) -> Backend:
    """Instantiate the adapter registered as name with the store's options. `layout` is an option
    of every store (auto, raw, langchain, llamaindex); `state` is where vecflow keeps what it must
    remember about the store (vecflow/state.py), in memory when None; stores inside project_root are
    scoped in it by their path relative to the project; read_only opens it for reading only
    (Backend.open_read_only)."""
    cls = backend_class(name)
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
