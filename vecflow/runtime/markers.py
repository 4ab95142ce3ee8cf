"""Store markers: every store a runner migrates names the ledger that migrates it.

A ledger protects one project's history, but two checkouts with two ledgers (a laptop and CI)
can point at one Chroma server or Qdrant cluster. So each store a step writes carries a small
marker, outside the application's collections and records (each adapter keeps it where the
application does not list it: Backend.read_marker), holding the ledger's identity (a uuid kept
in the ledger), where that ledger is, and the heads it had applied when it last wrote:

    {"vecflow_marker": 1, "ledger": "6f1c...", "where": "postgresql://ci@db/search", "heads": ["c3"]}

Before its first write a runner reads the marker of every store it will write, and refuses when
the marker names another ledger. After each revision it writes the marker with the new heads.
`vecflow stamp` rewrites the markers of the project's marked stores (adopting them), and
`vecflow ledger copy` carries the identity over, so markers stay true after a move.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from vecflow.backends import Backend
from vecflow.errors import LedgerError
from vecflow.runtime.ledger import Ledger

MARKER_VERSION = 1


def marker_text(ledger: Ledger, heads: Iterable[str]) -> str:
    """The marker this ledger writes (no time or user in it: two runs to the same heads write
    the same marker)."""
    return json.dumps({"vecflow_marker": MARKER_VERSION, "ledger": ledger.identity, "where": ledger.describe(),
                       "heads": sorted(heads)}, sort_keys=True)


def read(backend: Backend, store: str) -> dict[str, Any] | None:
    """The store's marker, or None when it has none; LedgerError when it cannot be read."""
    text = backend.read_marker()
    if text is None:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        marker = None
    if not isinstance(marker, dict) or not isinstance(marker.get("ledger"), str):
        raise LedgerError(f"store {store!r} holds a vecflow marker this vecflow cannot read ({text[:80]!r}); "
                          "run 'vecflow stamp <revision>' to replace it")
    return marker


def check(backend: Backend, store: str, ledger: Ledger) -> None:
    """Refuse, in one line, a store whose marker names another ledger."""
    marker = read(backend, store)
    if marker is None or marker["ledger"] == ledger.identity:
        return
    heads = ", ".join(marker.get("heads") or []) or "base"
    raise LedgerError(
        f"store {store!r} is migrated by another ledger: {marker.get('where', '?')} (ledger {marker['ledger']}, "
        f"at {heads}); this project's ledger is {ledger.describe()} (ledger {ledger.identity}). Point `ledger =` "
        "in vecflow.ini at the shared ledger, or run 'vecflow stamp <revision>' to adopt the store into this one")


def write(backend: Backend, ledger: Ledger, heads: Iterable[str]) -> None:
    """Mark the store as this ledger's, at these heads (nothing is written when it already is)."""
    text = marker_text(ledger, heads)
    if backend.read_marker() != text:
        backend.write_marker(text)
