"""Stores: backends opened lazily by store name, and `store:collection` references resolved."""

from __future__ import annotations

from vecflow.backends import Backend, open_backend
from vecflow.config import Config
from vecflow.state import VecflowState


def split_ref(ref: str, default_store: str) -> tuple[str, str]:
    """'store:collection' -> (store, collection); a bare 'collection' uses the default store."""
    store, sep, collection = ref.partition(":")
    return (store, collection) if sep else (default_store, ref)


def sibling_ref(ref: str, collection: str) -> str:
    """A reference to another collection in the same store as ref."""
    store, sep, _ = ref.rpartition(":")
    return f"{store}:{collection}" if sep else collection


class Stores:
    """The open connections of one command run; close() releases them all."""

    def __init__(self, config: Config, state: VecflowState | None = None) -> None:
        self.config = config
        self._open: dict[str, Backend] = {}
        self._state = state

    @property
    def state(self) -> VecflowState:
        """vecflow's state for every store of the project: `state.db` beside the ledger."""
        if self._state is None:
            self._state = VecflowState(self.config.ledger.parent / "state.db")
        return self._state

    def backend(self, store: str | None = None) -> Backend:
        name = store or self.config.default_store
        if name not in self._open:
            store_config = self.config.store(name)
            self._open[name] = open_backend(store_config.backend, store_config.options, self.state,
                                            self.config.here)
        return self._open[name]

    def resolve(self, ref: str) -> tuple[Backend, str]:
        store, collection = split_ref(ref, self.config.default_store)
        return self.backend(store), collection

    def canonical(self, ref: str) -> str:
        store, collection = split_ref(ref, self.config.default_store)
        return f"{store}:{collection}"

    def close(self) -> None:
        for backend in self._open.values():
            backend.close()
        self._open.clear()
        if self._state is not None:
            self._state.close()
            self._state = None
