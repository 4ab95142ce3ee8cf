"""Metadata key order through Chroma: the written order kept in vecflow's state (never in the record).

Measured on chromadb 1.5.9 (embedded): Chroma hands a record's metadata keys back in a random
order, a different one on each read of the same record (a hash map per read). Logical metadata
is an ordered dict, and some layouts turn it into bytes an application reads (langchain-redis's
`_metadata_json`), so a record moved through Chroma and back must keep its order.

vecflow therefore reads the field map of raw and langchain records in sorted key order, unless
the record's entry (state kind `order`) holds the order it was written in: an entry is kept only
for records written in another order, and applies while Chroma holds exactly that key set, so an
application that changed the keys since wins (its record reads sorted). LlamaIndex records are
left alone: their logical metadata is the ordered JSON in `_node_content`, and the flat copies
beside it are not read back as metadata.
"""

from __future__ import annotations

import json
from typing import Any

KIND = "order"
# Layouts whose logical metadata is the record's field map, in its order.
ORDERED_LAYOUTS = ("raw", "langchain")


def entry(fields: dict[str, Any]) -> bytes | None:
    """The order entry for a field map as written: None when sorted order (how vecflow reads a
    record without an entry) already gives it."""
    keys = list(fields)
    return None if keys == sorted(keys) else json.dumps(keys, ensure_ascii=False).encode("utf-8")


def restore(fields: dict[str, Any], payload: bytes | None) -> dict[str, Any]:
    """The field map in the recorded order while Chroma holds that key set, else sorted."""
    keys = _unpack(payload) if payload is not None else None
    if keys is None or len(keys) != len(fields) or set(keys) != set(fields):
        keys = sorted(fields)
    return {key: fields[key] for key in keys}


def _unpack(payload: bytes) -> list[str] | None:
    try:
        keys = json.loads(payload)
    except ValueError:
        return None
    return keys if isinstance(keys, list) and all(isinstance(key, str) for key in keys) else None
