"""Redis hashes as native and logical records, in each layout (raw, langchain, llamaindex).

A hash is read as `Native(text=<the text field>, fields=<every other field but the vector>)`, the
values decoded from UTF-8 (bytes that are not UTF-8 stay bytes). So the LlamaIndex layout of
vecflow/layouts applies unchanged, the text field being its text slot (as on Chroma). The two
layouts whose Redis conventions differ from other backends' live here:

- raw: vecflow's own hashes (`id`, the whole metadata as JSON in `metadata`, flat copies of its
  scalar values) and *plain* hashes without that JSON field (a RedisVL schema, redis-cli), whose
  every field is metadata, read as the strings Redis holds;
- langchain: langchain-redis 0.2.6 (`RedisVectorStore.add_texts`: `_metadata_json` =
  `json.dumps(metadata)`, `_index_name`, flat copies) and, plain, legacy langchain_community
  0.4.2 (`Redis.add_texts`: flat fields only, `content` / `content_vector`).

A `HashLayout` also turns a native record back into hash fields the way the framework does:
values as redis-py sends them (ints as decimal text, floats as `repr`), the framework's own fields
first, and no flat copy for a value the framework could not write (a list or a bool in a LlamaIndex
node, a bool in langchain-redis): that value is still in the JSON field.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from vecflow.backends.helpers import json_default
from vecflow.errors import InvalidDataError
from vecflow.layouts import Detected, Layout, Logical, Native, get_layout
from vecflow.layouts.llamaindex import NODE_CONTENT, LlamaIndexLayout

RAW_ID, RAW_METADATA = "id", "metadata"
LANGCHAIN_METADATA, LANGCHAIN_INDEX = "_metadata_json", "_index_name"
LANGCHAIN_TAG_SEPARATOR = "|"  # langchain-redis RedisConfig.default_tag_separator
COMMUNITY_TAG_SEPARATOR = ","  # langchain_community REDIS_TAG_SEPARATOR
LLAMAINDEX_ID, LLAMAINDEX_DOC_ID = "id", "doc_id"


class RedisRawLayout(Layout):
    """vecflow's hashes (`plain` False for new records), or plain ones (`plain` True)."""

    name = "raw"
    writer = "vecflow or a plain Redis client"

    def __init__(self, reserved: frozenset[str], plain: bool) -> None:
        self.reserved = reserved | {RAW_ID, RAW_METADATA}
        self.plain = plain

    def read(self, native: Native, has_text_slot: bool) -> Logical:
        metadata = _json_object(native.fields.get(RAW_METADATA))
        return Logical(native.text, dict(native.fields) if metadata is None else metadata, {})

    def write(self, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        if self.plain:
            return Native(logical.document, self._plain_fields(record_id, logical.metadata))
        return Native(logical.document, {RAW_ID: record_id, **self._json_fields(record_id, None, logical.metadata)})

    def with_metadata(self, native: Native, metadata: dict[str, Any], has_text_slot: bool) -> Native:
        if _plain(native, RAW_METADATA):
            return Native(native.text, self._plain_fields(None, metadata))
        old = _json_object(native.fields[RAW_METADATA]) or {}
        kept = {k: v for k, v in native.fields.items() if k not in self._copies(native.fields, old)}
        return Native(native.text, {**kept, **self._json_fields(None, native.fields[RAW_METADATA], metadata)})

    def merge(self, old: Native, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        if old.fields and _plain(old, RAW_METADATA):
            return Native(logical.document, self._plain_fields(record_id, logical.metadata))
        changed = self.with_metadata(Native(None, {**old.fields, RAW_METADATA: old.fields.get(RAW_METADATA, "{}")}),
                                     logical.metadata, True)
        return Native(logical.document, {**changed.fields, RAW_ID: record_id})

    def owned_fields(self, native: Native, has_text_slot: bool) -> set[str]:
        if _plain(native, RAW_METADATA):
            return set(native.fields)
        return {RAW_ID, RAW_METADATA} | self._copies(native.fields, _json_object(native.fields[RAW_METADATA]) or {})

    def matches(self, record_id: str, native: Native, has_text_slot: bool) -> bool:
        return True

    def _copies(self, fields: dict[str, Any], metadata: dict[str, Any]) -> set[str]:
        return {key for key in metadata if key in fields and key not in self.reserved}

    def _json_fields(self, record_id: str | None, old_json: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
        # Sorted keys: vecflow's own JSON then has the same bytes whichever store the record came
        # from (Chroma and Qdrant do not keep metadata key order).
        encoded = _dumps(record_id, metadata, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        fields: dict[str, Any] = {RAW_METADATA: _kept(old_json, encoded)}
        fields.update((key, value) for key, value in metadata.items()
                      if key not in self.reserved and raw_value(value) is not None)
        return fields

    def _plain_fields(self, record_id: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
        return _apart(record_id, metadata, self.reserved - {RAW_ID, RAW_METADATA})


class RedisLangChainLayout(Layout):
    """langchain-redis hashes (`plain` False for new records) or legacy langchain_community ones."""

    name = "langchain"
    writer = "LangChain"

    def __init__(self, reserved: frozenset[str], index_name: str, plain: bool) -> None:
        self.reserved = reserved | {LANGCHAIN_INDEX, LANGCHAIN_METADATA}
        self.index_name = index_name
        self.plain = plain

    def read(self, native: Native, has_text_slot: bool) -> Logical:
        metadata = _json_object(native.fields.get(LANGCHAIN_METADATA))
        if metadata is None:  # what langchain-redis' get_by_ids falls back to
            metadata = {k: v for k, v in native.fields.items() if k != LANGCHAIN_INDEX and not k.startswith("_")}
        return Logical(native.text, metadata, {})

    def write(self, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        if self.plain:
            return Native(logical.document, _apart(record_id, logical.metadata, self.reserved))
        return Native(logical.document, {LANGCHAIN_INDEX: self.index_name,
                                         **self._json_fields(record_id, None, logical.metadata)})

    def with_metadata(self, native: Native, metadata: dict[str, Any], has_text_slot: bool) -> Native:
        if _plain(native, LANGCHAIN_METADATA):
            kept = {k: v for k, v in native.fields.items() if k.startswith("_")}
            return Native(native.text, {**kept, **_apart(None, metadata, self.reserved)})
        old = _json_object(native.fields[LANGCHAIN_METADATA]) or {}
        kept = {k: v for k, v in native.fields.items() if k not in self._copies(native.fields, old)}
        return Native(native.text, {**kept, **self._json_fields(None, native.fields[LANGCHAIN_METADATA], metadata)})

    def merge(self, old: Native, record_id: str, logical: Logical, has_text_slot: bool) -> Native:
        if old.fields and _plain(old, LANGCHAIN_METADATA):
            return Native(logical.document, self.with_metadata(old, logical.metadata, True).fields)
        base = {LANGCHAIN_INDEX: self.index_name, **old.fields, LANGCHAIN_METADATA: old.fields.get(
            LANGCHAIN_METADATA, "{}")}
        return Native(logical.document, self.with_metadata(Native(None, base), logical.metadata, True).fields)

    def owned_fields(self, native: Native, has_text_slot: bool) -> set[str]:
        if _plain(native, LANGCHAIN_METADATA):
            return {k for k in native.fields if not k.startswith("_")}
        return {LANGCHAIN_METADATA} | self._copies(native.fields, _json_object(native.fields[LANGCHAIN_METADATA]) or {})

    def matches(self, record_id: str, native: Native, has_text_slot: bool) -> bool:
        return LANGCHAIN_METADATA in native.fields or LANGCHAIN_INDEX in native.fields

    def _copies(self, fields: dict[str, Any], metadata: dict[str, Any]) -> set[str]:
        return {key for key in metadata if key in fields and key not in self.reserved}

    def _json_fields(self, record_id: str | None, old_json: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {LANGCHAIN_METADATA: _kept(old_json, _dumps(record_id, metadata))}
        fields.update((key, value) for key, value in metadata.items()
                      if key not in self.reserved and langchain_value(value) is not None)
        return fields


# values as the frameworks send them ------------------------------------------------------------

def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def raw_value(value: Any) -> str | None:
    """vecflow's flat copy of a metadata value: bools as "1" / "0" (RediSearch's convention);
    None, lists and dicts have none."""
    value = _scalar(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return _number_or_text(value)


def plain_value(value: Any) -> str | None:
    """A plain hash's field: scalars as text, None absent, lists and dicts as JSON text."""
    value = _scalar(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=json_default)
    return _number_or_text(value)


def langchain_value(value: Any) -> str | None:
    """langchain-redis 0.2.6 add_texts: None skipped, lists of str joined with '|', str / int /
    float as redis-py sends them; it cannot write a bool, a dict or a list of non-strings."""
    value = _scalar(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return LANGCHAIN_TAG_SEPARATOR.join(value)
    return None if isinstance(value, bool) else _number_or_text(value)


def community_value(value: Any) -> str | None:
    """langchain_community 0.4.2 _prepare_metadata: None as "", lists of str joined with ','; what
    it would refuse (a dict, a bool) is written as in a plain hash."""
    value = _scalar(value)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return COMMUNITY_TAG_SEPARATOR.join(value)
    return plain_value(value)


def llamaindex_value(value: Any) -> str | None:
    """llama-index-vector-stores-redis 0.9.0 writes flat metadata through RedisVL's HashStorage,
    which takes str, int and float only (and redis-py refuses bools)."""
    value = _scalar(value)
    return None if isinstance(value, bool) else _number_or_text(value)


def _number_or_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)  # what redis-py's Encoder sends
    return None


# hash fields <-> native records --------------------------------------------------------------

class HashLayout:
    """One collection's layout on Redis: its logical layout (with the text field as text slot),
    and how native records become hash fields."""

    def __init__(self, layout: Layout, vector_field: str, text_field: str, encode, leading: tuple[str, ...]) -> None:
        self.layout, self.name = layout, layout.name
        self.vector_field, self.text_field = vector_field, text_field
        self._encode = encode
        self._leading = leading  # the framework's own fields, in the order it writes them

    def native(self, stored: dict[bytes, bytes]) -> tuple[bytes | None, Native]:
        """(vector bytes, native record) of a hash as HGETALL returns it."""
        vector = stored.get(self.vector_field.encode())
        text = stored.get(self.text_field.encode())
        fields = {_text(key): _value(value) for key, value in stored.items()
                  if key not in (self.vector_field.encode(), self.text_field.encode())}
        return vector, Native(None if text is None else text.decode("utf-8", "surrogateescape"), fields)

    def read(self, native: Native) -> Logical:
        return self.layout.read(native, True)

    def write(self, record_id: str, logical: Logical, old: Native | None) -> Native:
        if old is None:
            return self.layout.write(record_id, logical, True)
        return self.layout.merge(old, record_id, logical, True)

    def with_metadata(self, native: Native, metadata: dict[str, Any]) -> Native:
        return self.layout.with_metadata(native, metadata, True)

    def hash(self, record_id: str, native: Native, vector: bytes | None) -> dict[bytes, bytes]:
        """The hash fields of a native record, the framework's own first (no vector field when
        vector is None)."""
        values: dict[str, Any] = {**native.fields}
        if vector is not None:
            values[self.vector_field] = vector
        if self.name == "llamaindex":
            values[LLAMAINDEX_ID] = record_id  # the node id; a metadata key "id" keeps no flat copy
        if native.text is not None:
            values[self.text_field] = native.text
        else:
            values.pop(self.text_field, None)
        order = [key for key in self._leading if key in values] + [k for k in values if k not in self._leading]
        out: dict[bytes, bytes] = {}
        for key in order:
            value = values[key]
            if isinstance(value, bytes):
                out[_key_bytes(key)] = value
            elif isinstance(value, str):
                out[_key_bytes(key)] = value.encode("utf-8", "surrogateescape")
            elif (encoded := self._encode(value)) is not None:
                out[_key_bytes(key)] = encoded.encode("utf-8", "surrogateescape")
        return out


def hash_layout(name: str, vector_field: str, text_field: str, *, plain: bool = False,
                index_name: str = "") -> HashLayout:
    """The HashLayout of a collection in layout `name`. `plain`: new records are plain hashes
    (raw) or langchain_community ones (langchain); `index_name`: langchain-redis' `_index_name`."""
    reserved = frozenset((vector_field, text_field))
    if name == "llamaindex":
        # llama-index-vector-stores-redis 0.9.0 RedisVectorStore.add: {id, doc_id, text, vector,
        # **node_to_metadata_dict(node, remove_text=True)}
        return HashLayout(LlamaIndexLayout(), vector_field, text_field, llamaindex_value,
                          (LLAMAINDEX_ID, LLAMAINDEX_DOC_ID, text_field, vector_field))
    if name == "langchain":
        # langchain-redis 0.2.6 add_texts: {text, embedding, _index_name, _metadata_json, **flat}
        return HashLayout(RedisLangChainLayout(reserved, index_name, plain), vector_field, text_field,
                          community_value if plain else langchain_value,
                          (text_field, vector_field, LANGCHAIN_INDEX, LANGCHAIN_METADATA))
    return HashLayout(RedisRawLayout(reserved, plain), vector_field, text_field,
                      plain_value if plain else raw_value, (RAW_ID, vector_field, text_field, RAW_METADATA))


# detection -----------------------------------------------------------------------------------

def detect(sample: list[dict[bytes, bytes]]) -> tuple[Detected, bool]:
    """The layout most sampled hashes are in, why, and whether they are plain (no JSON field:
    legacy langchain_community hashes, or plain ones read raw)."""
    if not sample:
        return Detected(get_layout("raw"), "empty collection: nothing to detect, raw assumed"), False
    kinds = Counter(_kind(fields) for fields in sample)
    (layout, plain), hits = kinds.most_common(1)[0]
    writer = {("llamaindex", False): "LlamaIndex", ("langchain", False): "LangChain (langchain-redis)",
              ("langchain", True): "LangChain (langchain_community)", ("raw", False): "vecflow",
              ("raw", True): "a plain Redis client"}[(layout, plain)]
    return Detected(get_layout(layout), f"{hits} of {len(sample)} sampled hashes look written by {writer}"), plain


def plain_collection(sample: list[dict[bytes, bytes]], layout: str) -> bool:
    """Whether most sampled hashes lack the layout's JSON field (so new records are plain too)."""
    field = {"raw": RAW_METADATA, "langchain": LANGCHAIN_METADATA}.get(layout)
    if field is None or not sample:
        return False
    return sum(1 for fields in sample if field.encode() not in fields) * 2 > len(sample)


def index_name_of(sample: list[dict[bytes, bytes]], default: str) -> str:
    """langchain-redis' `_index_name` most sampled hashes carry, else default."""
    names = Counter(fields[LANGCHAIN_INDEX.encode()] for fields in sample if LANGCHAIN_INDEX.encode() in fields)
    return names.most_common(1)[0][0].decode() if names else default


def _kind(fields: dict[bytes, bytes]) -> tuple[str, bool]:
    if _json_object(_value(fields.get(NODE_CONTENT.encode(), b""))) is not None:
        return "llamaindex", False
    if LANGCHAIN_METADATA.encode() in fields or LANGCHAIN_INDEX.encode() in fields:
        return "langchain", False
    if b"content_vector" in fields:
        return "langchain", True
    if _json_object(_value(fields.get(RAW_METADATA.encode(), b""))) is not None:
        return "raw", False
    return "raw", True


# small helpers -------------------------------------------------------------------------------

def _apart(record_id: str | None, metadata: dict[str, Any], reserved: frozenset[str] | set[str]) -> dict[str, Any]:
    """A plain hash's metadata fields; a key that is also one of the hash's own fields is refused
    (the frameworks would let it overwrite the text or the vector)."""
    clash = sorted(set(metadata) & set(reserved))
    if clash:
        raise InvalidDataError(f"record {record_id or ''!r}: metadata field {clash[0]!r} is also one of the hash's "
                               "own fields (vector, text); rename the field")
    return dict(metadata)


def _plain(native: Native, json_field: str) -> bool:
    """Whether a record has no readable JSON field for its metadata (so every field is metadata)."""
    return _json_object(native.fields.get(json_field)) is None


def _json_object(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _dumps(record_id: str | None, metadata: dict[str, Any], **options: Any) -> str:
    try:
        return json.dumps(metadata, default=json_default, **options)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"record {record_id or ''!r}: metadata is not JSON ({exc})") from exc


def _kept(old: str | None, new: str) -> str:
    """The old JSON text when it holds exactly the new value (so its bytes stay), else the new."""
    parsed = _json_object(old)
    return old if parsed is not None and json.dumps(parsed) == json.dumps(json.loads(new)) else new


def _text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _value(value: bytes) -> str | bytes:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value
