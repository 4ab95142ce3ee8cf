"""llamaindex: what LlamaIndex's vector stores write (llama-index-core 0.14 `node_to_metadata_dict`).

A record's fields are the node's metadata as flat keys, plus:
- `_node_content`: the whole node as JSON (`json.dumps(node.model_dump(mode="json"),
  ensure_ascii=False)`), with its metadata again, its relationships and templates, and its text,
  except where the backend has a text slot (Chroma), in which case the text is "" there and lives
  in the slot;
- `_node_type` (`TextNode`), and the source document id three times: `document_id`, `doc_id`,
  `ref_doc_id` ("None" when the node has no source).

The logical metadata is the node's own (`node.metadata`, with its original types and order); a
metadata change rewrites both copies, and only the `metadata` member inside `_node_content`, so every
other byte of the JSON stays as LlamaIndex wrote it. The other parts of the node travel in `extras`.
"""

from __future__ import annotations

import json
from typing import Any

from vecflow.errors import InvalidDataError
from vecflow.layouts.base import Layout, Logical, Native

NODE_CONTENT = "_node_content"
NODE_TYPE = "_node_type"
REF_KEYS = ("document_id", "doc_id", "ref_doc_id")
FRAMEWORK_KEYS = (NODE_CONTENT, NODE_TYPE, *REF_KEYS)
# The node JSON members, in the order TextNode.model_dump gives them (llama-index-core 0.14).
_TEXT_NODE = ("id_", "embedding", "metadata", "excluded_embed_metadata_keys", "excluded_llm_metadata_keys",
              "relationships", "metadata_template", "metadata_separator", "text", "mimetype",
              "start_char_idx", "end_char_idx", "text_template", "class_name")
_SOURCE = "1"  # NodeRelationship.SOURCE


class LlamaIndexLayout(Layout):
    name = "llamaindex"
    writer = "LlamaIndex"

    def read(self, native: Native, has_text_slot: bool) -> Logical:
        node = _node(native)
        metadata = node.get("metadata")
        document = native.text if has_text_slot else node.get("text")
        extras = {"node": {k: v for k, v in node.items() if k not in ("metadata", "text")},
                  **{key: native.fields[key] for key in (NODE_TYPE, *REF_KEYS) if key in native.fields}}
        return Logical(document, dict(metadata) if isinstance(metadata, dict) else {}, extras)

    def write(self, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        extras = logical.extras if "node" in logical.extras else {}
        node = dict(extras.get("node") or _fresh_node(record_id))
        node["metadata"] = dict(logical.metadata)
        node["text"] = "" if has_text_slot else (logical.document or "")
        ordered = {key: node[key] for key in _TEXT_NODE if key in node}
        ordered.update((key, value) for key, value in node.items() if key not in ordered)
        ref = _ref_doc_id(ordered)
        fields: dict[str, Any] = dict(logical.metadata)
        fields[NODE_CONTENT] = json.dumps(ordered, ensure_ascii=False)
        fields[NODE_TYPE] = extras.get(NODE_TYPE, ordered.get("class_name", "TextNode"))
        for key in REF_KEYS:
            fields[key] = extras.get(key, ref)
        return Native(logical.document if has_text_slot else None, fields)

    def with_metadata(self, native: Native, metadata: dict[str, Any], has_text_slot: bool) -> Native:
        text = native.fields[NODE_CONTENT]
        node = _node(native)
        old = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
        node["metadata"] = dict(metadata)
        fields = _replace_flat_copies(native.fields, old, metadata)
        fields[NODE_CONTENT] = text if old == metadata else json.dumps(node, ensure_ascii=False)
        return Native(native.text, fields)

    def merge(self, old: Native, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        if "node" not in logical.extras and NODE_CONTENT in old.fields:
            logical = Logical(logical.document, logical.metadata, self.read(old, has_text_slot).extras)
        return super().merge(old, record_id, logical, has_text_slot)

    def owned_fields(self, native: Native, has_text_slot: bool) -> set[str]:
        node = _node(native) if NODE_CONTENT in native.fields else {}
        metadata = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
        return set(FRAMEWORK_KEYS) | set(metadata)

    def matches(self, record_id: str, native: Native, has_text_slot: bool) -> bool:
        value = native.fields.get(NODE_CONTENT)
        if not isinstance(value, str):
            return False
        try:
            return isinstance(json.loads(value), dict)
        except ValueError:
            return False

    def where_text_lives(self, has_text_slot: bool) -> str:
        return "the text slot (documents)" if has_text_slot else f"{NODE_CONTENT!r} (the node JSON's 'text')"


def _replace_flat_copies(fields: dict[str, Any], old: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """The field map with the flat copies of `old` replaced by those of `metadata`, in the place the
    old ones held (LlamaIndex writes them first), every other field in its own place."""
    new = [(key, value) for key, value in metadata.items() if key not in FRAMEWORK_KEYS]
    out: dict[str, Any] = {} if any(key in old and key not in FRAMEWORK_KEYS for key in fields) else dict(new)
    for key, value in fields.items():
        if key in old and key not in FRAMEWORK_KEYS:
            if not out.keys() & {k for k, _ in new}:
                out.update(new)
            continue
        out[key] = value
    out.update((key, value) for key, value in new if key not in out)
    return out


def _node(native: Native) -> dict[str, Any]:
    value = native.fields.get(NODE_CONTENT)
    try:
        node = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        node = None
    if not isinstance(node, dict):
        raise InvalidDataError(f"a LlamaIndex record has no readable {NODE_CONTENT!r} JSON")
    return node


def _ref_doc_id(node: dict[str, Any]) -> str:
    source = (node.get("relationships") or {}).get(_SOURCE)
    if isinstance(source, dict) and source.get("node_id"):
        return str(source["node_id"])
    return "None"


def _fresh_node(record_id: str) -> dict[str, Any]:
    """A TextNode's JSON as llama-index-core 0.14 dumps it, for records that never were nodes."""
    return {"id_": record_id, "embedding": None, "metadata": {}, "excluded_embed_metadata_keys": [],
            "excluded_llm_metadata_keys": [], "relationships": {}, "metadata_template": "{key}: {value}",
            "metadata_separator": "\n", "text": "", "mimetype": "text/plain", "start_char_idx": None,
            "end_char_idx": None, "text_template": "{metadata_str}\n\n{content}", "class_name": "TextNode"}
