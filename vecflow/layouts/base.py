"""Layout: how an application framework keeps one record in a backend, both ways.

A backend hands a layout each record's *native* parts exactly as stored: the backend's text slot
(Chroma's `documents`; None where the backend has none, as in Qdrant) and its field map (Chroma's
metadata, a Qdrant payload). The layout turns them into the logical record vecflow works with
(document, metadata, extras) and back. `extras` is what the framework keeps beside the text and
the user's metadata (LlamaIndex's node JSON, its `doc_id`); it travels with the record, so a move
into the same framework on another backend rebuilds the native record whole, and a conversion to
another framework drops it (the dry-run says so).

Rules every layout keeps (tests/layouts/test_layouts.py):
- `with_metadata` changes only what holds the user's metadata; every other field, and the bytes
  of every JSON string it does not need to change, stay as they were;
- `read(write(record))` gives the record back;
- no layout writes a key of vecflow's own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

Fields = dict[str, Any]


@dataclass(frozen=True)
class Logical:
    """One record's logical parts (the id and vector pass through layouts unchanged)."""

    document: str | None
    metadata: dict[str, Any]
    extras: dict[str, Any]


@dataclass(frozen=True)
class Native:
    """One record's native parts, as the backend stores them."""

    text: str | None
    fields: Fields


class Layout(ABC):
    """One framework's conventions. `has_text_slot` says whether the backend has a column for the
    text (Chroma) or keeps everything in the field map (Qdrant)."""

    name: ClassVar[str]
    # Words for `vecflow inspect` and the dry-run: who writes this layout.
    writer: ClassVar[str]

    @abstractmethod
    def read(self, native: Native, has_text_slot: bool) -> Logical:
        """The logical record behind a native one."""

    @abstractmethod
    def write(self, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        """A new native record for a logical one (extras of another framework are ignored)."""

    @abstractmethod
    def with_metadata(self, native: Native, metadata: dict[str, Any], has_text_slot: bool) -> Native:
        """The native record with its user metadata replaced, everything else left as it was."""

    def merge(self, old: Native, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        """The native record that replaces `old` with `logical`: fields this layout does not
        understand are kept. The default writes anew and keeps the old record's unknown fields."""
        new = self.write(record_id, logical, has_text_slot)
        owned = self.owned_fields(old, has_text_slot)
        unknown = {key: value for key, value in old.fields.items() if key not in owned}
        return Native(new.text, {**unknown, **new.fields})

    @abstractmethod
    def owned_fields(self, native: Native, has_text_slot: bool) -> set[str]:
        """The field keys this layout reads or writes for this record."""

    @abstractmethod
    def matches(self, record_id: str, native: Native, has_text_slot: bool) -> bool:
        """True when this record looks written by this layout's framework (for detection)."""

    def where_text_lives(self, has_text_slot: bool) -> str:
        """For `vecflow inspect`: where the document text is."""
        return "the text slot (documents)" if has_text_slot else "the payload"
