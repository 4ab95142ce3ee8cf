"""Dry-run estimates: how many records a step touches, and how long it may take.

Counts come from a sample (the first records of a collection, as the dry run's simulation holds
it, see runtime/simulate.py) extrapolated to what the sample stands for. Time comes from the
ledger: the rows per second that earlier runs of the same op achieved on this project, applied to
the records the step reads or writes (data files included). Without history, only the measured
read rate of the store's sample is reported, labelled as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from vecflow.backends import Backend
from vecflow.batch import Batch
from vecflow.runtime.ledger import Ledger

SAMPLE_SIZE = 1000


@dataclass
class Sample:
    page: Batch
    total: int

    def extrapolate(self, matching: int) -> str:
        """'N of M records' (exact when the sample is the whole collection, else ~N)."""
        if not len(self.page):
            return f"0 of {self.total} records"
        if len(self.page) >= self.total:
            return f"{matching} of {self.total} records"
        return f"~{round(matching * self.total / len(self.page))} of {self.total} records (sampled {len(self.page)})"


def sample(backend: Backend, name: str, size: int = SAMPLE_SIZE) -> Sample | None:
    """The first `size` records of a collection, or None when it does not exist. On a dry run's
    simulated store, the total is the number of records the simulated sample stands for."""
    if not backend.has_collection(name):
        return None
    page, _ = backend.scan(name, size)
    return Sample(page, total_records(backend, name))


def total_records(backend: Backend, name: str) -> int:
    """The collection's record count (extrapolated, for a dry run's simulated collection)."""
    represented = getattr(backend, "represented_count", None)
    return int(represented(name)) if represented is not None else backend.count(name)


def count_matching(sampled: Sample, predicate: Callable[[str, dict, str | None], bool]) -> int:
    page = sampled.page
    return sum(1 for i, rid in enumerate(page.ids) if predicate(rid, page.metadatas[i], page.documents[i]))


def rows_per_second(ledger: Ledger, op_name: str) -> float | None:
    """Mean throughput of the op's finished steps in this ledger (None without history)."""
    rows, seconds = 0, 0.0
    for step in ledger.finished_steps(op_name):
        try:
            took = (datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"]))
        except (TypeError, ValueError):
            continue
        rows += step["rows_done"]
        seconds += took.total_seconds()
    return rows / seconds if rows and seconds > 0 else None


def estimate_line(ledger: Ledger, op_name: str, records: int, read_rate: float | None) -> str:
    """records: how many records the step reads or writes (the largest of its collections before
    or after it, data files included); read_rate: rows/s measured reading a sample of them."""
    rate = rows_per_second(ledger, op_name)
    if rate:
        return (f"estimated time: ~{records / rate:.1f} s for {records} records "
                f"({rate:.0f} rows/s in earlier {op_name} runs)")
    if read_rate and records:
        return (f"estimated time: at least ~{records / read_rate:.1f} s to read {records} records "
                f"({read_rate:.0f} rows/s measured on the sample; writes not measured yet)")
    if records:
        return f"estimated time: unknown for {records} records (no earlier {op_name} runs in this ledger)"
    return "estimated time: unknown (no history, nothing to sample)"
