"""Which records of a Chroma collection hold a list value, as a whole pass over it found them.

Dropping a collection must first delete the records that hold a list value (chromadb 1.5.9 hands
a dropped collection's list values to records written later, chroma-core/chroma#7594), and
finding them is a metadata read of every record. A move reads every record of its source just
before dropping it, so the adapter notes them as that pass goes: a pass that starts at the first
page and goes on page after page (each cursor the one the last page returned) to the end leaves
the set of ids holding a list, until this adapter writes to the collection. A pass that starts
part-way (a resumed copy) or skips a page leaves nothing; the drop then reads the metadata itself.

What the application writes into the collection between that pass and the drop is not seen. A
move's source is only read while it is copied (its verification checks the count did not change),
so at worst a list value written meanwhile meets the chromadb bug the deletion works around.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def holds_list(fields: dict[str, Any] | None) -> bool:
    return bool(fields) and any(isinstance(value, list) for value in fields.values())


class ListHolders:
    """Per collection (by Chroma's id for it): the pass in progress, and what a whole pass found."""

    def __init__(self) -> None:
        self._passes: dict[Any, tuple[set[str], str | None]] = {}  # ids so far, the cursor expected next
        self._found: dict[Any, set[str]] = {}

    def page_read(self, collection: Any, cursor: str | None, records: Iterable[tuple[str, dict[str, Any]]],
                  after: str | None) -> None:
        """A page of a pass in id order read from `cursor`, its (id, metadata) pairs as Chroma
        returned them, and the cursor of the next page (None: it was the last)."""
        if cursor is None:
            self._passes[collection] = (set(), None)
        progress = self._passes.pop(collection, None)
        if progress is None or progress[1] != cursor:
            return  # not a pass from the first page on
        held = progress[0] | {rid for rid, fields in records if holds_list(fields)}
        if after is None:
            self._found[collection] = held
        else:
            self._passes[collection] = (held, after)

    def written(self, collection: Any) -> None:
        """This adapter wrote to the collection: what a pass found may not hold any more."""
        self._passes.pop(collection, None)
        self._found.pop(collection, None)

    def found(self, collection: Any) -> set[str] | None:
        """The ids holding a list value, from a whole pass with no write since; None: not known."""
        return self._found.get(collection)
