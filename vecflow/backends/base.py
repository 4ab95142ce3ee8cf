"""The Backend contract: the few primitives every store adapter implements.

Operations are written once on top of these primitives (see DESIGN.md). An adapter only translates
between Batch and its store; it never interprets migration semantics. Every adapter must pass the
shared contract suite in tests/backends/contract.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vecflow.batch import Batch
from vecflow.errors import CollectionNotFoundError

METRICS = ("cosine", "l2", "ip")


@dataclass(frozen=True)
class CollectionInfo:
    """What describe() reports: enough to recreate the collection elsewhere."""

    name: str
    dim: int
    metric: str
    params: dict[str, Any] = field(default_factory=dict)


# One query hit: (record id, score). Scores follow the metric: distance for l2 (squared
# Euclidean) and cosine (1 - cosine similarity), smaller is closer; similarity (dot product) for
# ip, larger is closer. Results are sorted best first.
Hit = tuple[str, float]


class Backend(ABC):
    """A connection to one store. Constructed with the store's options from vecflow.ini."""

    name: ClassVar[str]
    # True when the store normalises vectors of cosine collections on write (Qdrant does).
    normalises_cosine: ClassVar[bool] = False

    @abstractmethod
    def list_collections(self) -> list[str]:
        """Names of the collections in the store, sorted."""

    def has_collection(self, name: str) -> bool:
        return name in self.list_collections()

    @abstractmethod
    def create_collection(self, name: str, dim: int, metric: str = "cosine", **params: Any) -> None:
        """Create an empty collection; CollectionExistsError when it exists."""

    @abstractmethod
    def drop_collection(self, name: str) -> None:
        """Delete a collection and its records; CollectionNotFoundError when it is absent."""

    def rename_collection(self, old: str, new: str, batch_size: int = 1000) -> None:
        """Rename by copy, verify, then drop; adapters with a native rename override this.

        When `new` already exists it is taken for a partial copy left by an interrupted rename
        (callers check for a genuine name clash first), and the copy continues into it."""
        from vecflow.errors import VerificationError
        from vecflow.runtime.digest import collection_digest

        info = self.describe(old)
        if not self.has_collection(new):
            self.create_collection(new, info.dim, info.metric, **info.params)
        cursor = None
        while True:
            batch, cursor = self.scan(old, batch_size, cursor)
            if len(batch):
                self.upsert(new, batch)
            if cursor is None:
                break
        before, after = collection_digest(self, old, batch_size), collection_digest(self, new, batch_size)
        if before != after:
            raise VerificationError(f"renaming {old!r} to {new!r}: the copy's digest {after} differs from "
                                    f"{before}; {old!r} is kept")
        metadata = self.collection_metadata(old)
        if metadata:
            self.update_collection_metadata(new, metadata)
        self.drop_collection(old)

    @abstractmethod
    def count(self, name: str) -> int:
        """Number of records in the collection."""

    @abstractmethod
    def describe(self, name: str) -> CollectionInfo:
        """Dimension, metric and index parameters of the collection."""

    @abstractmethod
    def scan(self, name: str, batch_size: int, cursor: str | None = None) -> tuple[Batch, str | None]:
        """One page of records in a stable order, and the cursor of the next page (None at the end).

        The cursor is a string that stays valid across processes and restarts while the
        collection is only read or upserted in place, and fetching the page after a cursor costs
        O(batch_size), not O(offset). Pass None to start from the beginning.
        """

    @abstractmethod
    def upsert(self, name: str, batch: Batch) -> None:
        """Insert or replace records by id (idempotent). Durable when it returns."""

    def update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Replace the whole metadata of existing records, leaving vectors and documents untouched.

        Unknown ids are ignored. Field operations use this, so they never rewrite vectors (some
        stores, e.g. Chroma cosine collections, change vector bits on every write). The default
        reads and re-upserts the records; adapters with a metadata-only write override it."""
        wanted = dict(zip(ids, metadatas))
        current = self.get(name, ids)
        if len(current):
            self.upsert(name, current.with_metadatas([wanted[rid] for rid in current.ids]))

    @abstractmethod
    def delete(self, name: str, ids: list[str]) -> None:
        """Delete records by id; unknown ids are ignored."""

    @abstractmethod
    def get(self, name: str, ids: list[str]) -> Batch:
        """The records with these ids that exist, in the order asked."""

    @abstractmethod
    def query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The k nearest records of each query vector, best first."""

    @abstractmethod
    def collection_metadata(self, name: str) -> dict[str, Any]:
        """Metadata about the collection itself (not its records): JSON values, e.g. the model
        that produced its vectors. {} when none was set."""

    @abstractmethod
    def update_collection_metadata(self, name: str, values: dict[str, Any]) -> None:
        """Merge values into the collection's metadata; a None value removes that key."""

    def search_is_exact(self, name: str) -> bool:
        """True when query() is exact (brute force) for this collection, False for ANN indexes."""
        return False

    def encoded_fields(self, metadatas: list[dict[str, Any]]) -> dict[str, str]:
        """Metadata fields this store cannot hold natively and stores in a reversible encoding,
        with how (for the --dry-run coercion report). Empty when everything is stored as is."""
        return {}

    def close(self) -> None:  # noqa: B027 (optional hook: most adapters need no cleanup)
        """Release connections and files; the instance is unusable afterwards. Safe to call twice."""

    # helpers shared by adapters -------------------------------------------------------------

    def _require(self, name: str) -> None:
        if not self.has_collection(name):
            raise CollectionNotFoundError(f"{self.name} store has no collection {name!r}")
