"""raw: the plain client's conventions.

With a text slot (Chroma) the document is the slot and the metadata is the field map. Without one
(Qdrant) the payload is the metadata plus the document under `document`, as qdrant-client's own
`add()` writes it.
"""

from __future__ import annotations

from typing import Any

from vecflow.errors import InvalidDataError
from vecflow.layouts.base import Layout, Logical, Native

DOCUMENT = "document"


class RawLayout(Layout):
    name = "raw"
    writer = "the plain client"

    def read(self, native: Native, has_text_slot: bool) -> Logical:
        if has_text_slot:
            return Logical(native.text, dict(native.fields), {})
        fields = dict(native.fields)
        return Logical(fields.pop(DOCUMENT, None), fields, {})

    def write(self, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        if has_text_slot:
            return Native(logical.document, dict(logical.metadata))
        if DOCUMENT in logical.metadata:
            raise InvalidDataError(
                f"record {record_id!r}: metadata field {DOCUMENT!r} clashes with where the raw layout keeps "
                f"the document in a payload; rename the field or choose layout = langchain")
        fields = dict(logical.metadata)
        if logical.document is not None:
            fields[DOCUMENT] = logical.document
        return Native(None, fields)

    def with_metadata(self, native: Native, metadata: dict[str, Any], has_text_slot: bool) -> Native:
        if has_text_slot:
            return Native(native.text, dict(metadata))
        fields = dict(metadata)
        if DOCUMENT in native.fields:
            if DOCUMENT in metadata:
                raise InvalidDataError(f"metadata field {DOCUMENT!r} clashes with where the raw layout keeps "
                                       f"the document in a payload; rename the field or choose layout = langchain")
            fields[DOCUMENT] = native.fields[DOCUMENT]
        return Native(None, fields)

    def merge(self, old: Native, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        return self.write(record_id, logical, has_text_slot)

    def owned_fields(self, native: Native, has_text_slot: bool) -> set[str]:
        return set(native.fields)

    def matches(self, record_id: str, native: Native, has_text_slot: bool) -> bool:
        return True
