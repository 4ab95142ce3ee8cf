"""`vecflow inspect`: what a store holds, as its application wrote it.

For each collection: count, dimension, metric, the layout vecflow reads it in and why, where the
document text lives, what kinds of ids it has, and each metadata field with its types, fill rate
and an example, from a sample of records. Read-only: it never writes to the store.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from typing import Any

from vecflow.backends import Backend

SAMPLE = 1000
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def inspect_collection(backend: Backend, name: str, sample_size: int = SAMPLE) -> dict[str, Any]:
    """A JSON-able report of one collection (see docs/cli.md, `inspect`)."""
    info = backend.describe(name)
    detected = backend.layout_of(name)
    page, _ = backend.scan(name, sample_size) if backend.count(name) else (None, None)
    records = [] if page is None else list(page.records())
    fields: dict[str, dict[str, Any]] = {}
    for record in records:
        for key, value in record.metadata.items():
            entry = fields.setdefault(key, {"types": Counter(), "present": 0, "example": value})
            entry["types"][_type_name(value)] += 1
            entry["present"] += 1
    documents = sum(1 for record in records if record.document is not None)
    return {
        "collection": name,
        "count": backend.count(name),
        "dim": info.dim,
        "metric": info.metric,
        "params": info.params,
        "layout": detected.layout.name,
        "layout_reason": detected.reason,
        "text": backend.text_location(name),
        "sampled": len(records),
        "documents_present": documents,
        "id_kinds": dict(Counter(_id_kind(record.id) for record in records)),
        "fields": {key: {"types": dict(entry["types"]), "fill_rate": round(entry["present"] / len(records), 4),
                         "example": _example(entry["example"])}
                   for key, entry in sorted(fields.items())},
    }


def inspect_store(backend: Backend, collection: str | None = None, sample_size: int = SAMPLE) -> dict[str, Any]:
    names = [collection] if collection else backend.list_collections()
    return {"backend": backend.name, "location": backend.location,
            "collections": [inspect_collection(backend, name, sample_size) for name in names]}


def format_report(report: dict[str, Any]) -> list[str]:
    """The report as lines for a terminal."""
    lines = [f"{report['backend']} store {report['location']}: {len(report['collections'])} collection(s)"]
    for c in report["collections"]:
        lines.append(f"{c['collection']}: {c['count']} records, dim {c['dim']}, {c['metric']}")
        lines.append(f"  layout: {c['layout']} ({c['layout_reason']})")
        lines.append(f"  text: in {c['text']}; {c['documents_present']} of {c['sampled']} sampled records have one")
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(c["id_kinds"].items())) or "none sampled"
        lines.append(f"  ids: {kinds}")
        for key, field in c["fields"].items():
            types = "/".join(sorted(field["types"]))
            lines.append(f"  field {key}: {types}, {field['fill_rate']:.0%} filled, e.g. {field['example']}")
    marker = report.get("marker")
    if marker:
        lines.append(f"marker: ledger {marker['ledger']} ({marker.get('where', '?')}), at "
                     f"{', '.join(marker.get('heads') or []) or 'base'}")
    return lines


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(
        type(value), type(value).__name__)


def _id_kind(record_id: str) -> str:
    if _UUID.match(record_id):
        try:
            uuid.UUID(record_id)
            return "uuid"
        except ValueError:
            pass
    if record_id.isascii() and record_id.isdigit():
        return "integer"
    return "string"


def _example(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 60 else text[:57] + "..."
