"""Simulated stores for dry runs: every collection a plan touches, as the plan leaves it, in memory.

A collection is read from its store once, read only (Backend.open_read_only), as its first
SAMPLE_SIZE records; from then on the steps of the plan change it here. Counts are extrapolated:
each sampled record stands for several records of the collection it was read from (its weight);
a record keeps its weight when copied, split or moved; records beyond the sample (a large data
file or snapshot) add their weight to the collection they go into (`scale`); records outside the
sample are looked up in the store when a step asks for them by id. Snapshots that steps take stay
in memory; the ones real runs took (which a downgrade restores from) are read from the project's
snapshot file.
"""

from __future__ import annotations

import bisect
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vecflow.backends import Backend, CollectionInfo, Hit
from vecflow.batch import Batch
from vecflow.errors import DimensionMismatchError
from vecflow.runtime.context import StepContext
from vecflow.runtime.estimate import SAMPLE_SIZE
from vecflow.runtime.snapshots import SnapshotStore
from vecflow.runtime.stores import Stores
from vecflow.state import VecflowState


@dataclass
class SimulatedCollection:
    """A collection as the plan has left it so far: its sampled records (id -> [vector, document,
    metadata, extras, weight]) and how many records they stand for (scale * the sum of weights)."""

    info: CollectionInfo
    records: dict[str, list[Any]] = field(default_factory=dict)
    scale: float = 1.0
    # Records that came with no known weight (from a data file, a snapshot) held so far.
    fresh: int = 0
    # The store collection the sample was read from, for records outside the sample, and the ids
    # the plan deleted from it so far (not to be looked up there again).
    origin: str | None = None
    deleted: set[str] = field(default_factory=set)
    read_rate: float | None = None  # rows/s of the sample read from the store
    # Whether `represented` is exact: no record of it was extrapolated from a sample.
    exact: bool = True

    @property
    def represented(self) -> float:
        return self.scale * sum(record[4] for record in self.records.values())


class SimulatedBackend(Backend):
    """One store as the plan leaves it, in memory: collections are read from `real` (opened read
    only) when first used. Subclassed per real adapter class (simulated_class), so that two
    simulated stores are of the same class exactly when their real adapters are."""

    def __init__(self, real: Backend, weights: dict[str, float]) -> None:
        self.real = real
        self._where = real.location
        self._layout_option = real._layout_option
        self._batch_size = real.batch_size
        self._weights = weights  # id -> the weight the record was last read with, shared by all stores
        self._collections: dict[str, SimulatedCollection | None] = {}
        self.initial: dict[str, int | None] = {}  # record counts in the store, before the plan
        self.attach_state(VecflowState.in_memory())

    # what the simulation reports -----------------------------------------------------------------

    def collection(self, name: str) -> SimulatedCollection | None:
        if name not in self._collections:
            self._collections[name] = self._load(name)
        return self._collections[name]

    def represented_count(self, name: str) -> int:
        """The records the collection would hold (extrapolated from its sample)."""
        self._require(name)
        return round(self._live(name).represented)

    def encoded_fields(self, metadatas: list[dict[str, Any]]) -> dict[str, str]:
        return self.real.encoded_fields(metadatas)

    def search_is_exact(self, name: str) -> bool:
        return True

    def _load(self, name: str) -> SimulatedCollection | None:
        real = self.real
        if not real.has_collection(name):
            self.initial[name] = None
            return None
        total = real.count(name)
        started = time.monotonic()
        page, _ = real.scan(name, SAMPLE_SIZE)
        seconds = time.monotonic() - started
        self.initial[name] = total
        info = real.describe(name)
        collection = SimulatedCollection(
            CollectionInfo(name, info.dim, info.metric, dict(info.params)),
            scale=total / len(page) if len(page) else 1.0, origin=name if len(page) < total else None,
            read_rate=len(page) / seconds if len(page) and seconds > 0 else None, exact=len(page) >= total)
        for i, rid in enumerate(page.ids):
            collection.records[rid] = [page.vectors[i].copy(), page.documents[i], copy.deepcopy(page.metadatas[i]),
                                       copy.deepcopy(page.extras[i]), 1.0]
        detected = real.layout_of(name)
        self._layouts()[name] = detected
        self.state.put_collection(self.scope(name), "layout", detected.layout.name)
        if metadata := real.collection_metadata(name):
            self.state.put_collection(self.scope(name), "info", metadata)
        return collection

    def _live(self, name: str) -> SimulatedCollection:
        collection = self.collection(name)
        assert collection is not None  # callers went through _require
        return collection

    def _hidden(self, collection: SimulatedCollection, ids: list[str]) -> Batch:
        """Records outside the sample that the store holds under these ids (and no step deleted)."""
        wanted = [rid for rid in ids if rid not in collection.records and rid not in collection.deleted]
        if collection.origin is None or not wanted:
            return Batch.empty(collection.info.dim)
        return self.real.get(collection.origin, wanted)

    def _remember(self, collection: SimulatedCollection, ids: list[str]) -> None:
        for rid in ids:
            self._weights[rid] = collection.records[rid][4] * collection.scale

    # primitives ------------------------------------------------------------------------------------

    def _list_collections(self) -> list[str]:
        known = {name for name, collection in self._collections.items() if collection is not None}
        return list(known | {name for name in self.real.list_collections() if name not in self._collections})

    def _has_collection(self, name: str) -> bool:
        return self.collection(name) is not None

    def _create_collection(self, name: str, dim: int, metric: str, params: dict[str, Any]) -> None:
        self.real.check_new_collection(name, dict(params))
        self._collections[name] = SimulatedCollection(CollectionInfo(name, dim, metric, dict(params)))

    def _drop_collection(self, name: str) -> None:
        self._collections[name] = None

    def _rename_collection(self, old: str, new: str) -> bool:
        collection = self._live(old)
        collection.info = CollectionInfo(new, collection.info.dim, collection.info.metric, collection.info.params)
        self._collections[new], self._collections[old] = collection, None
        return True

    def _count(self, name: str) -> int:
        return len(self._live(name).records)

    def _describe(self, name: str) -> CollectionInfo:
        return self._live(name).info

    def _scan(self, name: str, batch_size: int, cursor: str | None) -> tuple[Batch, str | None]:
        collection = self._live(name)
        ids = sorted(collection.records)
        start = 0 if cursor is None else bisect.bisect_right(ids, cursor)
        chosen = ids[start:start + batch_size]
        self._remember(collection, chosen)
        more = start + batch_size < len(ids)
        return self._batch(collection, chosen), (chosen[-1] if more else None)

    def _get(self, name: str, ids: list[str]) -> Batch:
        collection = self._live(name)
        held = [rid for rid in dict.fromkeys(ids) if rid in collection.records]
        self._remember(collection, held)
        hidden = self._hidden(collection, ids)
        if not len(hidden):
            return self._batch(collection, held)
        found = self._batch(collection, held)
        page = Batch(found.ids + hidden.ids, np.concatenate([found.vectors.reshape(-1, collection.info.dim),
                                                              hidden.vectors]),
                     found.documents + hidden.documents, found.metadatas + hidden.metadatas,
                     (found.extras or []) + (hidden.extras or []))
        position = {rid: i for i, rid in enumerate(page.ids)}
        return page.take([position[rid] for rid in dict.fromkeys(ids) if rid in position])

    def _upsert(self, name: str, batch: Batch) -> None:
        collection = self._live(name)
        if batch.dim != collection.info.dim:
            raise DimensionMismatchError(f"{self.name} collection {name!r} has dimension {collection.info.dim}; "
                                         f"the records have {batch.dim}")
        unknown = [rid for rid in batch.ids if rid not in collection.records]
        hidden = set(self._hidden(collection, unknown).ids)
        for i, rid in enumerate(batch.ids):
            if rid in hidden:
                continue  # replaces a record outside the sample: the count stays
            held = collection.records.get(rid)
            weight = held[4] if held else None
            if held is None and rid in self._weights:
                weight = self._weights[rid] / collection.scale
                collection.exact = collection.exact and abs(self._weights[rid] - 1) < 1e-9
            if weight is None:
                total = sum(record[4] for record in collection.records.values())
                if collection.fresh >= SAMPLE_SIZE and total > 0:
                    collection.scale = (collection.scale * total + 1) / total  # stands for one more
                    continue
                collection.fresh += 1
                weight = 1 / collection.scale
            collection.records[rid] = [batch.vectors[i].copy(), batch.documents[i], copy.deepcopy(batch.metadatas[i]),
                                       copy.deepcopy(batch.extras[i]), weight]

    def _update_metadata(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        collection = self._live(name)
        for rid, metadata in zip(ids, metadatas):
            if rid in collection.records:
                collection.records[rid][2] = copy.deepcopy(metadata)

    def _delete(self, name: str, ids: list[str]) -> None:
        collection = self._live(name)
        for rid in self._hidden(collection, ids).ids:
            total = sum(record[4] for record in collection.records.values())
            if total > 0:
                collection.scale = max(collection.scale * total - 1, 0) / total
            collection.deleted.add(rid)
        for rid in ids:
            if collection.records.pop(rid, None) is not None and collection.origin is not None:
                collection.deleted.add(rid)

    def _query(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        collection = self._live(name)
        ids = sorted(collection.records)
        if not ids:
            return [[] for _ in vectors]
        stored = np.stack([collection.records[rid][0] for rid in ids]).astype(np.float64)
        queries = vectors.astype(np.float64)
        metric = collection.info.metric
        if metric == "ip":
            scores, best_first = queries @ stored.T, -1
        elif metric == "cosine":
            unit = stored / np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-30)
            scores = 1 - (queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)) @ unit.T
            best_first = 1
        else:
            scores = (queries ** 2).sum(axis=1)[:, None] + (stored ** 2).sum(axis=1)[None, :] - 2 * queries @ stored.T
            best_first = 1
        hits = []
        for row in scores:
            order = np.argsort(best_first * row, kind="stable")[:k]
            hits.append([(ids[j], float(row[j])) for j in order])
        return hits

    def _batch(self, collection: SimulatedCollection, ids: list[str]) -> Batch:
        if not ids:
            return Batch.empty(collection.info.dim)
        rows = [collection.records[rid] for rid in ids]
        return Batch(list(ids), np.stack([row[0] for row in rows]), [row[1] for row in rows],
                     [copy.deepcopy(row[2]) for row in rows], [copy.deepcopy(row[3]) for row in rows])


_SIMULATED: dict[type[Backend], type[SimulatedBackend]] = {}


def simulated_class(real: type[Backend]) -> type[SimulatedBackend]:
    """The simulated adapter class standing for one real adapter class."""
    if real not in _SIMULATED:
        _SIMULATED[real] = type(f"Simulated{real.__name__}", (SimulatedBackend,), {
            "name": real.name, "layouts": real.layouts, "normalises_cosine": real.normalises_cosine,
            "has_text_slot": real.has_text_slot})
    return _SIMULATED[real]


class SimulatedStores(Stores):
    """The project's stores as the plan leaves them; the real ones are only read."""

    def __init__(self, real: Stores) -> None:
        super().__init__(real.config, state=VecflowState.in_memory())
        self.real = real
        self.weights: dict[str, float] = {}

    def backend(self, store: str | None = None) -> Backend:
        name = store or self.config.default_store
        if name not in self._open:
            real = self.real.backend(name)
            self._open[name] = simulated_class(type(real))(real, self.weights)
        return self._open[name]

    def simulated(self, ref: str) -> tuple[SimulatedBackend, str]:
        backend, name = self.resolve(ref)
        assert isinstance(backend, SimulatedBackend)
        return backend, name


class SimulatedSnapshots:
    """Snapshots for a simulation: the ones steps take stay in memory; the ones real runs took
    (which a downgrade restores from) are read from the project's snapshot file."""

    def __init__(self, real: SnapshotStore) -> None:
        self.real = real
        self.own = SnapshotStore(Path(":memory:"))

    def exists(self, name: str) -> bool:
        return self.own.exists(name) or self.real.exists(name)

    def close(self) -> None:
        self.own.close()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            store = self.real if self.real.exists(name) and not self.own.exists(name) else self.own
            return getattr(store, method)(name, *args, **kwargs)
        return call


class SimulatedContext(StepContext):
    """A StepContext whose checkpoints go nowhere (there is no attempt to record)."""

    def save(self, rows: int = 0, **changes: Any) -> None:
        self.state.update(changes)
        self.rows_done += rows
