"""Verification of a copy: counts, id sets, digests and search parity between two collections."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from vecflow.backends import Backend
from vecflow.batch import Batch
from vecflow.runtime.digest import Digest, batch_digest

NORMALISED_TOLERANCE = 1e-6
EXACT_THRESHOLD = 0.99
APPROXIMATE_THRESHOLD = 0.90
PARITY_K = 10


@dataclass
class SideDigest:
    """Streaming summary of one side of a copy: record digest and an id-set digest.

    Both are order-independent sums, so a copy loop can accumulate the source side batch by
    batch (and checkpoint it) instead of scanning the source a second time to verify."""

    records: Digest
    ids: int = 0

    @classmethod
    def empty(cls) -> SideDigest:
        return cls(Digest.empty())

    def add(self, page: Batch, normalise: bool) -> SideDigest:
        """normalise: leave vectors out of the record digest (they are compared with a tolerance)."""
        ids = sum(int.from_bytes(hashlib.blake2b(i.encode(), digest_size=16).digest(), "little") for i in page.ids)
        records = self.records + batch_digest(page, include_vectors=not normalise)
        return SideDigest(records, (self.ids + ids) % (1 << 128))

    def __add__(self, other: SideDigest) -> SideDigest:
        return SideDigest(self.records + other.records, (self.ids + other.ids) % (1 << 128))

    def to_dict(self) -> dict:
        return {"records": self.records.to_text(), "ids": f"{self.ids:032x}"}

    @classmethod
    def from_dict(cls, data: dict) -> SideDigest:
        return cls(Digest.from_text(data["records"]), int(data["ids"], 16))


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
    parity: float | None
    parity_threshold: float
    queries: int
    vectors_off: list[str] = field(default_factory=list)

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
            found.append(f"{len(self.vectors_off)} vectors differ beyond {NORMALISED_TOLERANCE} after normalising "
                         f"(e.g. {self.vectors_off[:5]})")
        if self.parity is not None and self.parity < self.parity_threshold:
            found.append(f"search parity {self.parity:.3f} is below the threshold {self.parity_threshold}")
        return found

    def summary(self) -> str:
        parity = "n/a" if self.parity is None else f"{self.parity:.3f} over {self.queries} queries"
        how = f"vectors within {NORMALISED_TOLERANCE} after normalising" if self.normalised else "exact"
        return (f"{self.target_count} records, ids equal, digest equal ({how}), "
                f"top-{PARITY_K} parity {parity} (threshold {self.parity_threshold})")

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("missing_ids", "extra_ids", "vectors_off"):
            data[key] = data[key][:20]
        return data


def read_side(backend: Backend, name: str, batch_size: int, normalise: bool) -> SideDigest:
    total = SideDigest.empty()
    for page, _ in backend.pages(name, batch_size):
        total = total.add(page, normalise)
    return total


def read_ids(backend: Backend, name: str, batch_size: int) -> set[str]:
    ids: set[str] = set()
    for page, _ in backend.pages(name, batch_size):
        ids.update(page.ids)
    return ids


def normalised_vectors_off(source: Backend, source_name: str, target: Backend, target_name: str,
                           batch_size: int) -> list[str]:
    """Ids whose unit-length vectors differ by more than the tolerance between the two sides."""
    off: list[str] = []
    for page, _ in target.pages(target_name, batch_size):
        if len(page):
            original = source.get(source_name, page.ids)
            position = {rid: i for i, rid in enumerate(original.ids)}
            for i, rid in enumerate(page.ids):
                if rid in position and not np.allclose(_unit(page.vectors[i]), _unit(original.vectors[position[rid]]),
                                                       rtol=0, atol=NORMALISED_TOLERANCE):
                    off.append(rid)
    return off


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def copy_normalises(source: Backend, source_name: str, target: Backend) -> bool:
    """Whether digests of this copy must compare unit-length vectors."""
    return source.describe(source_name).metric == "cosine" and (source.normalises_cosine or target.normalises_cosine)


def search_parity(source: Backend, source_name: str, target: Backend, target_name: str,
                  sample_ids: list[str]) -> float | None:
    """Mean overlap of the top-10 neighbours of sampled records' vectors in both collections."""
    if not sample_ids:
        return None
    queries = source.get(source_name, sample_ids).vectors
    k = min(PARITY_K, source.count(source_name))
    before = source.query(source_name, queries, k)
    after = target.query(target_name, queries, k)
    overlaps = [len({h[0] for h in a} & {h[0] for h in b}) / max(len(a), 1) for a, b in zip(before, after)]
    return float(np.mean(overlaps))


def verify_copy(source: Backend, source_name: str, target: Backend, target_name: str, *, batch_size: int,
                queries: int = 20, threshold: float | None = None, seed: int = 0,
                source_side: SideDigest | None = None) -> VerificationReport:
    """Compare a copy with its source. source_side, when the copy loop accumulated it, spares a
    second scan of the source; ids are listed one by one only when the id digests differ."""
    normalise = copy_normalises(source, source_name, target)
    src = source_side or read_side(source, source_name, batch_size, normalise)
    dst = read_side(target, target_name, batch_size, normalise)
    missing: list[str] = []
    extra: list[str] = []
    if src.ids != dst.ids or src.records.count != dst.records.count:
        source_ids, target_ids = read_ids(source, source_name, batch_size), read_ids(target, target_name, batch_size)
        missing, extra = sorted(source_ids - target_ids), sorted(target_ids - source_ids)
    sample = _sample_ids(source, source_name, queries, seed)
    exact = source.search_is_exact(source_name) and target.search_is_exact(target_name)
    if threshold is None:
        threshold = EXACT_THRESHOLD if exact else APPROXIMATE_THRESHOLD
    return VerificationReport(
        source_count=src.records.count or 0, target_count=dst.records.count or 0,
        source_count_now=source.count(source_name),
        missing_ids=missing, extra_ids=extra,
        source_digest=src.records.to_text(), target_digest=dst.records.to_text(), normalised=normalise,
        parity=search_parity(source, source_name, target, target_name, sample),
        parity_threshold=threshold, queries=len(sample),
        vectors_off=normalised_vectors_off(source, source_name, target, target_name, batch_size) if normalise else [],
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
