"""The digests of a collection a step rewrites in place, taken by the pass that rewrites it.

`StepContext.rewrite_records(..., digest=True)` reads every page of the collection natively,
hands the logical batch to the op and writes what the op changed. The tally here keeps, in the
step's state, the collection's `logical|native` digest pair before the step (each page as read,
before its write) and after it (the page's untouched records as read, plus its rewritten ones as
the store reads them back, `Backend.get_native`), so the runner reads the collection neither
before nor after the step. The after pair is only ever built from the store's own read-back of
what was written: a store may hold a value other than the one sent (Chroma changes float ulps,
see backends/chroma_values.py), and the native digest must hash what the application reads.

Crash safety. A page's digest before is saved in the step state ("pending") before the page is
written, and folded into the sum with the page's checkpoint. A run resumed after a kill between
the two reads that page back already rewritten: it takes the pending digest instead, once it has
checked the page holds the same records (the pass keeps its page size in the state, so a resumed
pass pages the same way). When it does not (another writer added or removed records meanwhile),
the digest before cannot be completed: it is dropped, not recorded partial.

Failure. A step that stops part-way (an error, or a kill followed by a rollback) holds only part
of the digest before; `finish_before` completes it from the pages the pass had not reached, which
are still as they were before the step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from vecflow.backends.base import Backend, NativePage
from vecflow.runtime.digest import Digest, DigestPair, page_digests

# The step-state key of the tallies, one per rewrite loop key.
TALLIES = "rewrite_digests"


def pair_of(page: NativePage, positions: list[int] | None = None) -> DigestPair:
    """The digest pair of a native page, or of the records at these positions of it."""
    return page_digests(page if positions is None else page.take(positions))


def _add(one: DigestPair | None, other: DigestPair | None) -> DigestPair | None:
    if one is None or other is None:
        return None
    return DigestPair(one.logical + other.logical, one.native + other.native)


def _text(pair: DigestPair | None) -> str | None:
    return None if pair is None else f"{pair.logical.to_text()}|{pair.native.to_text()}"


def _pair(text: str | None) -> DigestPair | None:
    if text is None:
        return None
    logical, native = text.split("|")
    return DigestPair(Digest.from_text(logical), Digest.from_text(native))


def _ids_of(page: NativePage) -> str:
    """An order-independent fingerprint of a page's record ids."""
    total = sum(int.from_bytes(hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=16).digest(),
                               "little") for rid in page.batch.ids)
    return f"{len(page.batch.ids)}:{total % (1 << 128):032x}"


EMPTY = DigestPair(Digest.empty(), Digest.empty())


@dataclass
class RewriteTally:
    """One rewrite pass's digests so far. before is None once it cannot be completed (see the
    module docstring); after is None when it is not taken (no verification, or a store that
    cannot read records back by id): the runner then reads the collection after the step."""

    ref: str
    size: int
    before: DigestPair | None
    after: DigestPair | None
    pending: dict[str, Any] | None = None
    # The digest before was dropped: a page read again after a kill held other records.
    lost: bool = False

    @classmethod
    def load(cls, state: dict[str, Any], key: str, ref: str, size: int, after: bool) -> RewriteTally:
        saved = state.get(TALLIES, {}).get(key)
        if saved is None and state.get(key) is not None:
            return cls(ref, size, None, None)  # a pass an older vecflow began: the runner digests
        if saved is None:
            return cls(ref, size, EMPTY, EMPTY if after else None)
        return cls(saved["ref"], saved["size"], _pair(saved["before"]), _pair(saved["after"]), saved["pending"],
                   saved.get("lost", False))

    def save_into(self, state: dict[str, Any], key: str) -> None:
        state.setdefault(TALLIES, {})[key] = {"ref": self.ref, "size": self.size, "before": _text(self.before),
                                              "after": _text(self.after), "pending": self.pending,
                                              **({"lost": True} if self.lost else {})}

    def page_before(self, page: NativePage) -> DigestPair | None:
        """The page's digest before the step: as read, or the pending one when this page was
        written before a kill (then it must hold the same records)."""
        if self.pending is None:
            return pair_of(page)
        if self.pending["ids"] != _ids_of(page):
            self.before, self.pending, self.lost = None, None, True
            return None
        return _pair(self.pending["pair"])

    def hold(self, before: DigestPair | None, page: NativePage, following: str | None) -> bool:
        """Before the page is written: keep its digest before as pending. True when the state
        must be saved first (it was not pending yet)."""
        if self.pending is not None or self.before is None or before is None:
            return False
        self.pending = {"pair": _text(before), "ids": _ids_of(page), "following": following}
        return True

    def page_after(self, backend: Backend, name: str, page: NativePage, written: list[str],
                   back: NativePage | None) -> DigestPair | None:
        """The page's digest after its write: untouched records as read, rewritten ones as the
        store reads them back: `back` when the write read them (`Backend.rewrite_metadata`),
        else read now (`Backend.get_native`)."""
        if self.after is None:
            return None
        if not written:
            return pair_of(page)
        rewritten = set(written)
        kept = [i for i, rid in enumerate(page.batch.ids) if rid not in rewritten]
        if back is None:
            back = backend.get_native(name, [rid for rid in page.batch.ids if rid in rewritten])
        if back is None:
            self.after = None
            return None
        return _add(pair_of(page, kept), pair_of(back))

    def fold(self, before: DigestPair | None, after: DigestPair | None) -> None:
        """The page is checkpointed: its digests join the sums."""
        self.before, self.after, self.pending = _add(self.before, before), _add(self.after, after), None

    def finish_before(self, backend: Backend, name: str, cursor: str | None) -> DigestPair | None:
        """The whole digest before, for a pass stopped at cursor (the page it had not finished):
        the sum so far, the pending page's, and every page after them read now (untouched)."""
        if self.before is None:
            return None
        total, start = self.before, cursor
        if self.pending is not None:
            total, start = _add(total, _pair(self.pending["pair"])), self.pending["following"]
            if start is None:
                return total
        for page, _ in backend.native_pages(name, self.size, start):
            total = _add(total, pair_of(page))
        return total


def unfinished_tallies(state: dict[str, Any]) -> list[tuple[str, RewriteTally]]:
    """(loop key, tally) of each rewrite pass of a step state that had not reached its end."""
    return [(key, RewriteTally.load(state, key, saved["ref"], saved["size"], True))
            for key, saved in state.get(TALLIES, {}).items() if not state.get(f"{key}_done")]
