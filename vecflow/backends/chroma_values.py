"""Metadata values through Chroma: natively where Chroma holds them, else as an application would
write them, with the original value kept in vecflow's state (never in the record).

Measured on chromadb 1.5.9 (embedded and HTTP):
- held natively: str, bool, int within 64 bits, finite float, and non-empty lists whose items are
  all str, all int, all float or all bool (the same type, no None);
- held approximately: floats. Chroma's Rust core writes metadata to its log as JSON and reads it
  back with serde_json's default float parser, which is not correctly rounded (serde-rs/json#707,
  #1336; chromadb does not enable serde_json's `float_roundtrip`): embedded, Chroma holds
  parse(ryu(x)); over HTTP the server parses the request too, so parse(ryu(parse(json(x)))). About
  10-20% of floats with 16-17 significant digits come back 1 ulp off (0.1% 2 ulps, over HTTP up to
  4), the same value on every write of the same float, and about 20% of those move again when the
  changed value is written back (`serde_json_read` below reproduces it: 0 mismatches in 8,000
  random floats, either way). A float whose shortest decimal has at most 15 significant digits, a
  power of ten within 1e±22 and a magnitude below 1e15 is parsed with one correctly rounded
  operation on two exact doubles, so every parser gives it back exactly; every other float is
  written as the neighbour (within 4 ulps) Chroma reads as it, if there is one, then read back. An
  application's float always has one (what it sent), so vecflow writing back what it read leaves
  Chroma holding the same bits; about 80% of other changed floats have none, and keep their
  original in the state. -0.0 comes back as 0.0;
- dropped: None (an absent key is how Chroma says None), NaN and infinity (silently left out);
- turned into floats (or refused over HTTP): ints beyond 64 bits;
- refused: dicts, tuples, empty lists, mixed or nested lists; a list with NaN or infinity is
  refused over HTTP, but accepted embedded, after which every write to the collection fails
  ("Error in compaction"), so it must never be sent;
- keys refused or dropped: "", "#...", "$...", "chroma:...".

Each record's entry (state kind `values`) maps a field to `{"original": value}` plus `"stored"`,
what Chroma holds for it (absent when the key was left out). Reading restores the original only
while Chroma still holds exactly that, so a field the application rewrote since wins.
"""

from __future__ import annotations

import decimal
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vecflow.backends.helpers import json_default
from vecflow.errors import InvalidDataError
from vecflow.layouts import Native

KIND = "values"
# How a value is written.
NATIVE = "native"
APPROXIMATE = "approximate"  # natively; Chroma decides the stored value, read back after the write
JSON = "json"  # as a JSON string
OMITTED = "omitted"  # left out (None)

_INT64 = (-(2**63), 2**63 - 1)
# Floats every parser reads back exactly (see the module docstring): at most this many significant
# digits, a power of ten within 1e±22 (exact doubles), and below 1e15 in magnitude (so padding an
# integer value with zeros, "123.0", still gives an exact double significand).
_EXACT_DIGITS = 15
_EXACT_POWER = 22
_EXACT_BELOW = 1e15
# How far from a float the neighbour Chroma reads as it may be (ulps; measured over HTTP: 4).
_NEIGHBOURS = 4
_POW10 = [float(f"1e{i}") for i in range(309)]  # serde_json's table
_LIST_ITEM_TYPES = (str, int, float, bool)
_MISSING = object()
# Types whose JSON text is equal exactly when the values are (same() compares them directly).
_PLAIN = (str, int, bool, type(None))


@dataclass(frozen=True)
class Held:
    """A record as Chroma holds it, and its `values` entries."""

    native: Native
    entries: dict[str, dict[str, Any]]

    def decoded(self) -> Native:
        """The record as layouts see it: the original values restored."""
        return Native(self.native.text, decode(self.native.fields, self.entries))


@dataclass
class Encoded:
    """One record's metadata as sent to Chroma, and its `values` entries afterwards.

    `sent` holds only the keys to change (a None value makes Chroma delete that key); `entries`
    are the record's entries after the write (`previous` before it); `pending` are keys whose
    stored value Chroma decides, known once read back."""

    sent: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)


def treatment(value: Any) -> tuple[str, str]:
    """How a (normalised) value is written, and why when not natively."""
    if value is None:
        return OMITTED, "None"
    if isinstance(value, bool) or isinstance(value, str):
        return NATIVE, ""
    if isinstance(value, int):
        return (NATIVE, "") if _INT64[0] <= value <= _INT64[1] else (JSON, "ints beyond 64 bits")
    if isinstance(value, float):
        return _float_treatment(value)
    if isinstance(value, list):
        return _list_treatment(value)
    if isinstance(value, dict):
        return JSON, "dicts"
    return JSON, type(value).__name__


def encode(new: dict[str, Any], record_id: str, collection: str, held: Held | None = None,
           passes: int = 1) -> Encoded:
    """What to send so that a record Chroma holds (`held`, None for a record written anew) ends up
    holding the field map `new`; InvalidDataError naming the record and key for what Chroma refuses.
    passes: how many times Chroma parses a float on the way in (1 embedded, 2 over HTTP)."""
    stored = held.native.fields if held else {}
    entries = held.entries if held else {}
    decoded = decode(stored, entries)
    out = Encoded(previous=entries)
    for key, raw in new.items():
        check_key(key, record_id, collection)
        value = normalised(raw, record_id, collection, key)
        if key in decoded and same(decoded[key], value):
            if key in entries and _applies(entries[key], stored.get(key, _MISSING)):
                out.entries[key] = entries[key]
            continue
        how, _ = treatment(value)
        if how == OMITTED:
            out.entries[key] = {"original": None}
            if key in stored:
                out.sent[key] = None
        elif how == JSON:
            text = json.dumps(value, ensure_ascii=False, sort_keys=False)
            out.sent[key] = text
            out.entries[key] = {"original": value, "stored": text}
        elif how == APPROXIMATE:
            out.sent[key] = sendable(value, passes)
            out.entries[key] = {"original": value}
            out.pending.append(key)
        else:
            out.sent[key] = value
    out.sent.update((key, None) for key in stored if key not in new)
    return out


def settle(encoded: Encoded, returned: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The record's entries once Chroma's stored values of the pending keys are known."""
    entries = dict(encoded.entries)
    for key in encoded.pending:
        original = entries[key]["original"]
        if key in returned and same(returned[key], original):
            del entries[key]  # Chroma kept it exactly: nothing to remember
        elif key in returned:
            entries[key] = {"original": original, "stored": returned[key]}
        else:
            entries[key] = {"original": original}
    return entries


Resend = Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]


def converge(encoded: dict[str, Encoded], returned: dict[str, dict[str, Any]],
             resend: Resend) -> dict[str, dict[str, Any]]:
    """What Chroma holds for the written records (`returned`, read back after the write) once every
    float sent as a neighbour that Chroma did not read as the original was sent again as itself, so
    Chroma holds what an application writing it would get. resend({id: {key: value}}) makes a
    metadata-only write of those keys and returns what Chroma then holds for those records."""
    sends: dict[str, dict[str, Any]] = {}
    for rid, record in encoded.items():
        for key in record.pending:
            original = record.entries[key]["original"]
            fields = returned.get(rid, {})
            if key in fields and not same(fields[key], original) and not same(record.sent[key], original):
                sends.setdefault(rid, {})[key] = original
    if not sends:
        return returned
    held = {rid: dict(fields) for rid, fields in returned.items()}
    for rid, fields in resend(sends).items():
        held.setdefault(rid, {}).update((key, fields[key]) for key in sends.get(rid, {}) if key in fields)
    return held


def sendable(value: Any, passes: int = 1) -> Any:
    """What to send (a float, or each float of a list) for Chroma to hold `value`: the value itself
    when Chroma reads it back unchanged, else the nearest neighbour it reads as the value, else the
    value."""
    if isinstance(value, list):
        return [sendable(item, passes) for item in value]
    if type(value) is not float or not math.isfinite(value) or chroma_reads(value, passes) == _bits(value):
        return value
    for distance in range(1, _NEIGHBOURS + 1):
        for direction in (-math.inf, math.inf):
            candidate = value
            for _ in range(distance):
                candidate = math.nextafter(candidate, direction)
            if math.isfinite(candidate) and chroma_reads(candidate, passes) == _bits(value):
                return candidate
    return value


def chroma_reads(value: float, passes: int) -> bytes | None:
    """The float64 bits Chroma holds for a finite float it parses `passes` times (None: refused)."""
    for _ in range(passes):
        read = serde_json_read(value)
        if read is None:
            return None
        value = read
    return _bits(value)


def serde_json_read(value: float) -> float | None:
    """What serde_json's default parser (no `float_roundtrip`) reads from serde_json's (ryu's) text
    of a finite float; None where it refuses the number as out of range."""
    if value == 0:
        return value
    _, digits, power = decimal.Decimal(repr(abs(value))).normalize().as_tuple()
    significand, exponent = int("".join(map(str, digits))), int(power)
    if 0 <= exponent and len(digits) + exponent <= 16:  # ryu writes 1234e7 as 12340000000.0
        significand, exponent = significand * 10 ** (exponent + 1), -1
    read = float(significand)
    while -exponent >= len(_POW10):  # beyond the table: divide by 1e308 and go on
        if read == 0:
            break
        read /= 1e308
        exponent += 308
    else:
        read = read * _POW10[exponent] if exponent >= 0 else read / _POW10[-exponent]
    if math.isinf(read):
        return None
    return read if value > 0 else -read


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def decode(stored: dict[str, Any], entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The field map vecflow reads: originals restored where Chroma still holds what was written."""
    fields = dict(stored)
    for key, entry in entries.items():
        if _applies(entry, fields.get(key, _MISSING)):
            fields[key] = entry["original"]
    return fields


def coercions(metadatas: list[dict[str, Any]]) -> dict[str, str]:
    """Fields not written natively, with how (for the dry-run's coercion report)."""
    seen: dict[str, dict[str, set[str]]] = {}
    for metadata in metadatas:
        for key, raw in metadata.items():
            try:
                value = normalised(raw, "", "", key)
            except InvalidDataError:
                continue
            how, why = treatment(value)
            if how != NATIVE:
                seen.setdefault(key, {}).setdefault(how, set()).add(why)
    report = {}
    for key, hows in seen.items():
        parts = []
        if JSON in hows:
            parts.append(f"is written as a JSON string for {', '.join(sorted(hows[JSON]))}")
        if APPROXIMATE in hows:
            parts.append(f"is written as the nearest value Chroma holds for {', '.join(sorted(hows[APPROXIMATE]))}")
        if OMITTED in hows:
            parts.append("is left out where it is None")
        report[key] = "; ".join(parts) + ", the original kept in vecflow's state"
    return report


def check_key(key: Any, record_id: str, collection: str) -> None:
    """Refuse keys Chroma refuses or silently drops."""
    if not isinstance(key, str):
        raise InvalidDataError(f"Chroma collection {collection!r}, record {record_id!r}: metadata key {key!r} "
                               f"is not a string")
    if not key or key[0] in "#$" or key.startswith("chroma:"):
        raise InvalidDataError(f"Chroma collection {collection!r}, record {record_id!r}: Chroma refuses metadata "
                               f"key {key!r} (keys must be non-empty and not start with '#', '$' or 'chroma:'); "
                               f"rename the field first")


def normalised(value: Any, record_id: str, collection: str, key: str) -> Any:
    """The value as plain JSON data (NumPy scalars and arrays, tuples become Python values);
    InvalidDataError naming the record and key for values JSON cannot hold."""
    if value is None or type(value) in (str, bool, int, float):
        return value
    try:
        return json.loads(json.dumps(value, default=json_default, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"Chroma collection {collection!r}, record {record_id!r}: metadata field "
                               f"{key!r} cannot be stored: {exc}") from exc


def same(a: Any, b: Any) -> bool:
    """Equal as JSON: 1, 1.0 and True differ, and so do 0.0 and -0.0."""
    kind = type(a)
    if kind is type(b):  # the common cases, without encoding (a field op compares every key)
        if kind in _PLAIN:
            return a == b
        if kind is float:  # the shortest repr: equal values of one sign, or both NaN
            return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (a != a and b != b)
    return json.dumps(a, sort_keys=True, default=json_default) == json.dumps(b, sort_keys=True, default=json_default)


def pack(entries: dict[str, dict[str, Any]]) -> bytes | None:
    return json.dumps(entries, ensure_ascii=False).encode("utf-8") if entries else None


def unpack(payload: bytes) -> dict[str, dict[str, Any]]:
    try:
        entries = json.loads(payload)
    except ValueError:
        return {}
    return entries if isinstance(entries, dict) else {}


def _applies(entry: dict[str, Any], held: Any) -> bool:
    """True while Chroma holds what vecflow wrote for this entry (nothing, for a None)."""
    if "stored" not in entry:
        return held is _MISSING
    return held is not _MISSING and same(held, entry["stored"])


def _float_treatment(value: float) -> tuple[str, str]:
    if not math.isfinite(value):
        return JSON, "NaN or infinity"
    if value == 0 and math.copysign(1, value) < 0:
        return APPROXIMATE, "-0.0 (Chroma keeps 0.0)"
    if not parsed_exactly(value):
        return APPROXIMATE, "floats Chroma may read back 1 ulp off"
    return NATIVE, ""


def parsed_exactly(value: float) -> bool:
    """Whether any float parser reads this finite float back exactly from its shortest decimal."""
    if abs(value) >= _EXACT_BELOW:
        return False
    _, digits, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    return len(digits) <= _EXACT_DIGITS and -_EXACT_POWER <= int(exponent) <= _EXACT_POWER


def _list_treatment(items: list[Any]) -> tuple[str, str]:
    if not items:
        return JSON, "empty lists"
    kind = type(items[0])
    if kind not in _LIST_ITEM_TYPES or any(type(item) is not kind for item in items):
        return JSON, "lists of mixed, nested or None items"
    hows = {treatment(item) for item in items}
    if any(how == JSON for how, _ in hows):
        return JSON, "lists with " + ", ".join(sorted(why for how, why in hows if how == JSON))
    if any(how == APPROXIMATE for how, _ in hows):
        return APPROXIMATE, "lists with " + ", ".join(sorted(why for how, why in hows if how == APPROXIMATE))
    return NATIVE, ""

