"""Verification of a copy: counts, id sets, digests, and search parity measured against ground truth.

Search parity is the recall@k of the target's search against the exact top-k of the source's
logical records (brute force over the streamed source), not the overlap of two indexes' answers:
two HNSW graphs over identical data disagree with each other far more than either misses the
truth, so an overlap measures the graphs, not the copy."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vecflow.backends import Backend
from vecflow.backends.base import Hit, NativePage
from vecflow.batch import Batch
from vecflow.runtime.digest import (
    VERSION,
    Digest,
    DigestPair,
    batch_digest,
    canonical_metadata,
    ids_digest,
    page_digests,
)

NORMALISED_TOLERANCE = 1e-6
# The recall@k an exact target must reach (the op's parity_threshold replaces it).
EXACT_FLOOR = 0.99
# How far an approximate target's recall may fall below an approximate source's on the same queries.
RECALL_TOLERANCE = 0.05
PARITY_K = 10

# Shows one pass of a verification as progress: track(what, total) is a context manager
# (StepContext.track); total may be a function, called only when progress is shown.
Track = Callable[[str, Any], AbstractContextManager]


def untracked(what: str, total: Any = None) -> AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class SideDigest:
    """Streaming summary of one side of a copy: record digest and an id-set digest, and, when
    it was fed the store's native pages from the start, the collection's `logical|native` digest
    pair (the runner's digest of the collection, so it need not read it again).

    All are order-independent sums, so a copy loop can accumulate the source side batch by
    batch (and checkpoint it) instead of scanning the source a second time to verify."""

    records: Digest
    ids: int = 0
    pair: DigestPair | None = None

    @classmethod
    def empty(cls) -> SideDigest:
        return cls(Digest.empty(), pair=DigestPair(Digest.empty(), Digest.empty()))

    def add(self, page: Batch | NativePage, normalise: bool) -> SideDigest:
        """normalise: leave vectors out of the record digest (they are compared with a tolerance).
        A logical Batch instead of a NativePage ends the pair (None from then on)."""
        batch = page.batch if isinstance(page, NativePage) else page
        if self.pair is not None and isinstance(page, NativePage):
            digests = page_digests(page)  # one pass for both
            logical = digests.logical
            pair = DigestPair(self.pair.logical + digests.logical, self.pair.native + digests.native)
        else:
            logical, pair = batch_digest(batch), None
        records = self.records + (batch_digest(batch, include_vectors=False) if normalise else logical)
        return SideDigest(records, (self.ids + ids_digest(batch.ids)) % (1 << 128), pair)

    def __add__(self, other: SideDigest) -> SideDigest:
        pair = None
        if self.pair is not None and other.pair is not None:
            pair = DigestPair(self.pair.logical + other.pair.logical, self.pair.native + other.pair.native)
        return SideDigest(self.records + other.records, (self.ids + other.ids) % (1 << 128), pair)

    def to_dict(self) -> dict:
        data = {"records": self.records.to_text(), "ids": f"{self.ids:032x}"}
        if self.pair is not None:
            data["pair"] = self.pair.to_text() if self.pair.logical.count else "empty"
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SideDigest:
        pair = None
        if data.get("pair") == "empty":
            pair = DigestPair(Digest.empty(), Digest.empty())
        elif data.get("pair"):
            logical, native = data["pair"].split("|")
            pair = DigestPair(Digest.from_text(logical), Digest.from_text(native))
        return cls(Digest.from_text(data["records"]), int(data["ids"], 16), pair)


@dataclass
class SearchParity:
    """Recall@k of both sides' search against the exact top-k of the source, and the bar the
    target had to reach; or why the search was not measured (skipped)."""

    target_recall: float | None = None
    source_recall: float | None = None
    floor: float | None = None
    required: float | None = None
    rule: str = ""
    queries: int = 0
    record_queries: int = 0
    missed: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def problem(self) -> str | None:
        if self.target_recall is None or self.required is None or self.target_recall >= self.required:
            return None
        source = "exact" if self.source_recall is None else f"{self.source_recall:.3f}"
        return (f"search parity: the target's recall@{PARITY_K} is {self.target_recall:.3f}, below the required "
                f"{self.required:.3f} ({self.rule}; the source's own recall: {source}, over {self.queries} queries); "
                f"{len(self.missed)} true neighbours not found in the target (e.g. {self.missed[:5]})")

    def summary(self) -> str:
        if self.skipped:
            return f"search parity not measured: {self.skipped}"
        if self.target_recall is None:
            return "search parity n/a (no queries)"
        source = "" if self.source_recall is None else f", source {self.source_recall:.3f}"
        bar = "no bar" if self.required is None else f"required {self.required:.3f}"
        return (f"search parity: recall@{PARITY_K} target {self.target_recall:.3f}{source} over {self.queries} "
                f"queries ({self.record_queries} records, {self.queries - self.record_queries} random directions; "
                f"{bar}: {self.rule})")


@dataclass
class VerificationReport:
    source_count: int
    target_count: int
    source_count_now: int
    missing_ids: list[str]
    extra_ids: list[str]
    source_digest: str
    target_digest: str
    normalised: bool
    search: SearchParity
    vectors_off: list[str] = field(default_factory=list)
    # Ids on both sides whose document or metadata differ (looked for when the digests differ).
    documents_off: list[str] = field(default_factory=list)
    metadata_off: list[str] = field(default_factory=list)
    # The target's `logical|native` digest pair as verification read it (None: not read natively).
    target_pair: str | None = None

    @property
    def problems(self) -> list[str]:
        found = []
        if self.source_count_now != self.source_count:
            found.append(f"the source changed during the copy: {self.source_count} records copied, "
                         f"{self.source_count_now} now")
        if self.source_count != self.target_count:
            found.append(f"counts differ: source {self.source_count}, target {self.target_count}")
        if self.missing_ids:
            found.append(f"{len(self.missing_ids)} ids missing from the target (e.g. {self.missing_ids[:5]})")
        if self.extra_ids:
            found.append(f"{len(self.extra_ids)} unexpected ids in the target (e.g. {self.extra_ids[:5]})")
        if self.source_digest != self.target_digest:
            found.append(f"digests differ: source {self.source_digest}, target {self.target_digest}")
        if self.vectors_off:
            how = f"beyond {NORMALISED_TOLERANCE} after normalising" if self.normalised else "from the source's"
            found.append(f"{len(self.vectors_off)} vectors differ {how} (e.g. {self.vectors_off[:5]})")
        if self.documents_off:
            found.append(f"{len(self.documents_off)} documents differ from the source's "
                         f"(e.g. {self.documents_off[:5]})")
        if self.metadata_off:
            found.append(f"{len(self.metadata_off)} records' metadata differ from the source's "
                         f"(e.g. {self.metadata_off[:5]})")
        if problem := self.search.problem:
            found.append(problem)
        return found

    @property
    def parity(self) -> float | None:
        """The target's recall@k (the old name)."""
        return self.search.target_recall

    @property
    def parity_threshold(self) -> float | None:
        """The recall floor applied (the old name)."""
        return self.search.floor

    def summary(self) -> str:
        how = f"vectors within {NORMALISED_TOLERANCE} after normalising" if self.normalised else "exact"
        return f"{self.target_count} records, ids equal, digest equal ({how}), {self.search.summary()}"

    def to_dict(self) -> dict:
        """The report as saved in the step's state. parity, parity_threshold and queries keep
        their old names: the target's recall, the recall floor applied, the number of queries."""
        data = asdict(self)
        search = data.pop("search")
        search["missed"] = search["missed"][:20]
        for key in ("missing_ids", "extra_ids", "vectors_off", "documents_off", "metadata_off"):
            data[key] = data[key][:20]
        return {**data, "parity": self.search.target_recall, "parity_threshold": self.search.floor,
                "queries": self.search.queries, "search": search}


def read_side(backend: Backend, name: str, batch_size: int, normalise: bool) -> SideDigest:
    """One side of a copy read in full, with its digest pair (native pages)."""
    total = SideDigest.empty()
    for page, _ in backend.native_pages_ahead(name, batch_size):
        total = total.add(page, normalise)
    return total


def read_ids(backend: Backend, name: str, batch_size: int) -> set[str]:
    ids: set[str] = set()
    for page, _ in backend.pages(name, batch_size):
        ids.update(page.ids)
    return ids


def records_off(source: Backend, source_name: str, target: Backend, target_name: str, batch_size: int,
                normalise: bool) -> dict[str, list[str]]:
    """Ids present on both sides whose vector, document or metadata differ, per part: vectors
    compared bit for bit, or as unit-length vectors within NORMALISED_TOLERANCE when normalise;
    metadata in its canonical (digest) form. One pass over the target, the source read by id."""
    off: dict[str, list[str]] = {"vector": [], "document": [], "metadata": []}
    for page, _ in target.pages(target_name, batch_size):
        if not len(page):
            continue
        original = source.get(source_name, page.ids)
        position = {rid: i for i, rid in enumerate(original.ids)}
        for i, rid in enumerate(page.ids):
            if rid not in position:
                continue
            j = position[rid]
            if not _same_vector(page.vectors[i], original.vectors[j], normalise):
                off["vector"].append(rid)
            if page.documents[i] != original.documents[j]:
                off["document"].append(rid)
            if canonical_metadata(page.metadatas[i]) != canonical_metadata(original.metadatas[j]):
                off["metadata"].append(rid)
    return off


def _same_vector(copied: np.ndarray, original: np.ndarray, normalise: bool) -> bool:
    if not normalise:
        return np.asarray(copied, "<f4").tobytes() == np.asarray(original, "<f4").tobytes()
    return bool(np.allclose(_unit(copied), _unit(original), rtol=0, atol=NORMALISED_TOLERANCE))


def _unit(vector: np.ndarray) -> np.ndarray:
    # float64: the squared norm of a finite float32 vector can overflow float32 (components ~1e20).
    wide = vector.astype(np.float64)
    norm = float(np.linalg.norm(wide))
    return wide / norm if norm > 0 else wide


def copy_normalises(source: Backend, source_name: str, target: Backend) -> bool:
    """Whether digests of this copy must compare unit-length vectors."""
    return source.describe(source_name).metric == "cosine" and (source.normalises_cosine or target.normalises_cosine)


def query_vectors(source: Backend, name: str, queries: int, seed: int) -> tuple[np.ndarray, int]:
    """Seeded search-parity queries and how many of them are records' own vectors: half sampled
    records (where the index is densest), half random directions at the records' typical length
    (where it is not)."""
    own = source.get(name, _sample_ids(source, name, (queries + 1) // 2, seed)).vectors
    dim = source.describe(name).dim
    rng = np.random.default_rng(seed + 1)
    directions = rng.standard_normal((queries // 2, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    length = float(np.linalg.norm(own.astype(np.float64), axis=1).mean()) if len(own) else 1.0
    return np.vstack([own.reshape(-1, dim), directions * length]).astype(np.float32), len(own)


def _ranking_keys(queries: np.ndarray, vectors: np.ndarray, metric: str,
                  unit_queries: np.ndarray | None = None) -> np.ndarray:
    """(queries, vectors) keys that sort best first, as Backend.query ranks: squared L2 distance,
    1 - cosine similarity, or the negated dot product (ip is larger-is-closer). unit_queries: the
    queries at unit length, when the caller keeps them (cosine).

    The cosine key divides each dot product with a unit query by the vector's norm instead of
    normalising a copy of the page first: the same keys within an ulp, at a fifth of the time (the
    normalised copy was most of a ground truth's cost, ~45 µs a 768-d record)."""
    if metric == "l2":
        return _squared_norms(queries)[:, None] - 2 * queries @ vectors.T + _squared_norms(vectors)[None, :]
    if metric == "cosine":
        units = _units(queries) if unit_queries is None else unit_queries
        norms = np.sqrt(_squared_norms(vectors))
        return 1 - (units @ vectors.T) / np.where(norms > 0, norms, 1)[None, :]
    return -(queries @ vectors.T)


def _squared_norms(vectors: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", vectors, vectors)


def _units(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1)


class GroundTruth:
    """The exact top-k of each query over a stream of pages, ties broken by id. Holds only
    queries x k (key, id) pairs, never the collection. `own`: how many of the queries are
    records' own vectors (the first ones)."""

    def __init__(self, queries: np.ndarray, k: int, metric: str, own: int = 0):
        self.queries, self.k, self.metric, self.own = queries.astype(np.float64), k, metric, own
        self.unit_queries = _units(self.queries)
        self.best: list[list[tuple[float, str]]] = [[] for _ in range(len(queries))]

    def to_state(self) -> list[list[list]]:
        """The top-k so far, for a step's checkpoint (floats round-trip exactly through JSON)."""
        return [[[key, rid] for key, rid in best] for best in self.best]

    def restore(self, state: list[list[list]]) -> GroundTruth:
        self.best = [[(float(key), str(rid)) for key, rid in best] for best in state]
        return self

    def add(self, page: Batch) -> None:
        if not len(page):
            return
        keys = _ranking_keys(self.queries, page.vectors.astype(np.float64), self.metric, self.unit_queries)
        for best, row in zip(self.best, keys):
            cut = np.partition(row, self.k - 1)[self.k - 1] if len(row) > self.k else np.inf
            if len(best) == self.k:
                cut = min(cut, best[-1][0])
            best.extend((float(row[i]), page.ids[i]) for i in np.flatnonzero(row <= cut))
            best.sort()
            del best[self.k:]

    def key(self, query: int, vector: np.ndarray) -> float:
        """The ranking key of one record for one query."""
        return float(_ranking_keys(self.queries[query:query + 1], vector[None, :].astype(np.float64),
                                   self.metric)[0, 0])


def parity_truth(source: Backend, name: str, queries: int, seed: int = 0) -> GroundTruth | None:
    """The search-parity queries of a copy from this source, with an empty ground truth for a
    copy loop to feed page by page (sparing verification its own pass over the source); None when
    no query will run. The queries are seeded and drawn from the first pages, so a resumed copy
    draws the same ones."""
    count = source.count(name)
    if queries <= 0 or not count:
        return None
    vectors, own = query_vectors(source, name, queries, seed)
    return GroundTruth(vectors, min(PARITY_K, count), source.describe(name).metric, own)


def ground_truth(source: Backend, name: str, queries: np.ndarray, k: int, batch_size: int) -> GroundTruth:
    """Exact top-k over the source's logical records, streamed page by page."""
    truth = GroundTruth(queries, k, source.describe(name).metric)
    for page, _ in source.pages(name, batch_size):
        truth.add(page)
    return truth


def recall_at_k(hits: list[list[Hit]], truth: GroundTruth, source: Backend, name: str) -> tuple[float, list[str]]:
    """Mean recall of these hits against the ground truth, and the true neighbours they missed.

    A returned record outside the true top-k still counts when, in the source, it ties the k-th
    true neighbour: which of equal neighbours a search returns is arbitrary."""
    wanted = [{rid for _, rid in best} for best in truth.best]
    outside = sorted({rid for found, want in zip(hits, wanted) for rid, _ in found if rid not in want})
    known = source.get(name, outside) if outside else None
    vectors = dict(zip(known.ids, known.vectors)) if known is not None else {}
    recalls, missed = [], []
    for query, (found, best, want) in enumerate(zip(hits, truth.best, wanted)):
        returned = {rid for rid, _ in found}
        last = best[-1][0]
        ties = sum(1 for rid in returned - want
                   if rid in vectors and truth.key(query, vectors[rid]) <= last + 1e-9 * max(1.0, abs(last)))
        recalls.append(min(len(best), len(returned & want) + ties) / len(best))
        missed += [rid for _, rid in best if rid not in returned]
    return float(np.mean(recalls)), list(dict.fromkeys(missed))


def same_index(source: Backend, source_name: str, target: Backend, target_name: str) -> str | None:
    """Why both sides are the same kind of index, or None when they are not."""
    a, b = source.describe(source_name), target.describe(target_name)
    if type(source) is not type(target) or (a.metric, a.params) != (b.metric, b.params):
        return None
    return f"both are {source.name} {a.metric} indexes with the same parameters {a.params or '(defaults)'}"


def search_parity(source: Backend, source_name: str, target: Backend, target_name: str, *, queries: int,
                  floor: float | None, seed: int, batch_size: int, truth: GroundTruth | None = None,
                  track: Track = untracked) -> SearchParity:
    """Recall@k of the target's search (and of an approximate source's) against the exact top-k of
    the source's records, and the bar the target must reach: the floor (EXACT_FLOOR by default
    for an exact target), and for an approximate source its own recall minus RECALL_TOLERANCE.
    `truth`: the ground truth a copy loop accumulated (from parity_truth); else one more pass over
    the source computes it."""
    if floor is None and target.search_is_exact(target_name):
        floor = EXACT_FLOOR
    count = source.count(source_name)
    if queries <= 0 or not count:
        return SearchParity(floor=floor, rule="no queries")
    if truth is None or truth.k != min(PARITY_K, count):
        vectors, own = query_vectors(source, source_name, queries, seed)
        with track(f"verify (exact neighbours of {len(vectors)} queries)", count):
            truth = ground_truth(source, source_name, vectors, min(PARITY_K, count), batch_size)
        truth.own = own
    vectors, records, k = truth.queries.astype(np.float32), truth.own, truth.k
    target_recall, missed = recall_at_k(target.query(target_name, vectors, k), truth, source, source_name)
    source_recall = None
    if not source.search_is_exact(source_name):
        with source.read_only():  # a FAISS source would otherwise save the index it rebuilt
            hits = source.query(source_name, vectors, k)
        source_recall, _ = recall_at_k(hits, truth, source, source_name)
    bars = [(floor, f"the floor {floor}")] if floor is not None else []
    if source_recall is not None:
        bars.append((source_recall - RECALL_TOLERANCE, f"the source's recall minus {RECALL_TOLERANCE}"))
    required, rule = max(bars) if bars else (None, "an exact source and an approximate target give no recall "
                                                  "to compare with; parity_threshold sets a floor")
    return SearchParity(target_recall, source_recall, floor, required, rule, len(vectors), records, missed)


def verify_copy(source: Backend, source_name: str, target: Backend, target_name: str, *, batch_size: int,
                queries: int = 20, threshold: float | None = None, seed: int = 0,
                source_side: SideDigest | None = None, truth: GroundTruth | None = None,
                target_side: SideDigest | None = None, track: Track = untracked) -> VerificationReport:
    """Compare a copy with its source. source_side, when the copy loop accumulated it, spares a
    second scan of the source for digests; target_side, the target as the store read back each
    write (Backend.upsert_read_back), spares the scan of the target while the target still holds
    as many records; ids are listed one by one only when the id digests
    differ. threshold: the recall floor of search parity (None: EXACT_FLOOR for exact targets).
    The search is not measured when the digests prove the data identical and both sides are the
    same kind of index with the same parameters. track shows each pass over a side as progress."""
    normalise = copy_normalises(source, source_name, target)
    if source_side is not None and source_side.records.version != VERSION:
        source_side = None  # accumulated (in part) by an older vecflow: its digests are not comparable
    if source_side is None:
        with track("verify (source records)", lambda: source.count(source_name)):
            source_side = read_side(source, source_name, batch_size, normalise)
    src = source_side
    if target_side is not None and target_side.records.version == VERSION and \
            target.count(target_name) == target_side.records.count:
        dst = target_side
    else:
        with track("verify (target records)", lambda: target.count(target_name)):
            dst = read_side(target, target_name, batch_size, normalise)
    missing: list[str] = []
    extra: list[str] = []
    if src.ids != dst.ids or src.records.count != dst.records.count:
        with track("verify (ids)", lambda: source.count(source_name) + target.count(target_name)):
            source_ids = read_ids(source, source_name, batch_size)
            target_ids = read_ids(target, target_name, batch_size)
        missing, extra = sorted(source_ids - target_ids), sorted(target_ids - source_ids)
    identical = not normalise and (src.records, src.ids) == (dst.records, dst.ids)
    same = same_index(source, source_name, target, target_name) if identical else None
    if same:
        search = SearchParity(floor=threshold, skipped=f"the digests prove the data identical and {same}")
    else:
        search = search_parity(source, source_name, target, target_name, queries=queries, floor=threshold,
                               seed=seed, batch_size=batch_size, truth=truth, track=track)
    off: dict[str, list[str]] = {}
    if normalise or src.records != dst.records:
        # The digests leave vectors out (normalise), or say that something differs: name what.
        what = "verify (vectors)" if normalise and src.records == dst.records else "verify (records that differ)"
        with track(what, lambda: target.count(target_name)):
            off = records_off(source, source_name, target, target_name, batch_size, normalise)
    return VerificationReport(
        source_count=src.records.count or 0, target_count=dst.records.count or 0,
        source_count_now=source.count(source_name),
        missing_ids=missing, extra_ids=extra,
        source_digest=src.records.to_text(), target_digest=dst.records.to_text(), normalised=normalise,
        search=search,
        vectors_off=off.get("vector", []), documents_off=off.get("document", []),
        metadata_off=off.get("metadata", []),
        target_pair=dst.pair.to_text() if dst.pair is not None else None,
    )


def _sample_ids(backend: Backend, name: str, queries: int, seed: int) -> list[str]:
    """A reproducible sample of record ids, drawn from the first pages (no full id scan)."""
    if queries <= 0:
        return []
    pool: list[str] = []
    for page, _ in backend.pages(name, 1000):
        pool += page.ids
        if len(pool) >= 50 * queries:
            break
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(queries, len(pool)), replace=False)] if pool else []
