"""langchain: what LangChain's vector stores write.

- Chroma (langchain-chroma 1.1): `documents` holds `page_content`, the metadata is the field map:
  the same native shape as raw, read and written the same way. Detected by a document on every
  record and UUID ids (LangChain generates uuid4 ids), so a move writes LangChain's shape elsewhere.
- Qdrant (langchain-qdrant 1.1): payload `{"page_content": str, "metadata": {...}}`, an unnamed
  vector, UUID point ids; other payload keys are kept as they are.
"""

from __future__ import annotations

import uuid
from typing import Any

from vecflow.layouts.base import Layout, Logical, Native

CONTENT = "page_content"
METADATA = "metadata"


class LangChainLayout(Layout):
    name = "langchain"
    writer = "LangChain"

    def read(self, native: Native, has_text_slot: bool) -> Logical:
        if has_text_slot:
            return Logical(native.text, dict(native.fields), {})
        metadata = native.fields.get(METADATA)
        return Logical(native.fields.get(CONTENT), dict(metadata) if isinstance(metadata, dict) else {}, {})

    def write(self, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        if has_text_slot:
            return Native(logical.document, dict(logical.metadata))
        return Native(None, {CONTENT: logical.document, METADATA: dict(logical.metadata)})

    def with_metadata(self, native: Native, metadata: dict[str, Any], has_text_slot: bool) -> Native:
        if has_text_slot:
            return Native(native.text, dict(metadata))
        return Native(None, {**native.fields, METADATA: dict(metadata)})

    def owned_fields(self, native: Native, has_text_slot: bool) -> set[str]:
        return set(native.fields) if has_text_slot else {CONTENT, METADATA}

    def matches(self, record_id: str, native: Native, has_text_slot: bool) -> bool:
        if has_text_slot:
            # LangChain-Chroma records are plain ones; what gives them away is a document on every
            # record and the uuid4 ids LangChain generates.
            return native.text is not None and _is_uuid(record_id)
        return CONTENT in native.fields and isinstance(native.fields.get(METADATA, {}), dict)

    def where_text_lives(self, has_text_slot: bool) -> str:
        return "the text slot (documents)" if has_text_slot else f"payload {CONTENT!r}"


def _is_uuid(record_id: str) -> bool:
    try:
        return str(uuid.UUID(record_id)) == record_id.lower()
    except ValueError:
        return False
