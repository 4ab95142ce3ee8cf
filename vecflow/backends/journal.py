"""Write intents: what an adapter is about to write, kept in vecflow's state until it is done.

Some writes take more than one step that a kill can separate: Chroma replaces a record whose
document becomes None by a delete and an insert, and after every write it records bookkeeping
(exact vector bits, original metadata values, key order) that reads need. An adapter that writes
this way puts an intent per record into vecflow's state (kind `intent`) before its first write to
the store, and removes it once the write and the bookkeeping are done. An intent left behind is a
write a kill (or a failure) interrupted at some unknown point: the adapter finishes it by writing
the intent's record again, whole, through its ordinary path, before anything else touches the
collection. Writing a record again is idempotent, so the repair is too, whatever the interrupted
write had already done; an intent survives its own repair until that repair is complete.

An intent holds the logical record (or, for a metadata-only write, the new metadata) exactly as the
adapter was asked to write it: `U` + a JSON header + the float32 vector bytes, or `M` + JSON.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from vecflow.backends.helpers import json_default
from vecflow.batch import Batch
from vecflow.state import VecflowState

KIND = "intent"
_RECORD, _METADATA = b"U", b"M"
_HEADER = struct.Struct("<I")


@dataclass
class Pending:
    """The interrupted writes of one collection: records to upsert again, metadata to set again."""

    records: Batch | None
    metadata: dict[str, dict[str, Any]]

    def __bool__(self) -> bool:
        return bool(self.records is not None and len(self.records)) or bool(self.metadata)


def begin_upsert(state: VecflowState, scope: str, batch: Batch) -> None:
    """Record the intent to write these records (before the first write to the store)."""
    vectors = np.ascontiguousarray(batch.vectors, dtype="<f4")
    intents = {}
    for i, rid in enumerate(batch.ids):
        header = _dumps({"document": batch.documents[i], "metadata": batch.metadatas[i],
                         "extras": batch.extras[i]})
        intents[rid] = _RECORD + _HEADER.pack(len(header)) + header + vectors[i].tobytes()
    state.put_records(scope, KIND, intents)


def begin_metadata(state: VecflowState, scope: str, metadatas: dict[str, dict[str, Any]]) -> None:
    """Record the intent to replace these records' metadata."""
    state.put_records(scope, KIND, {rid: _METADATA + _dumps({"metadata": metadata})
                                    for rid, metadata in metadatas.items()})


def end(state: VecflowState, scope: str, ids: list[str]) -> None:
    """The write of these records and its bookkeeping are done."""
    state.put_records(scope, KIND, dict.fromkeys(ids))


def pending(state: VecflowState, scope: str, dim: int) -> Pending:
    """What interrupted writes left to finish in this collection. Intents that cannot be read
    (another dimension, damaged bytes) are dropped: nothing could finish them."""
    ids, vectors, documents, metadatas, extras = [], [], [], [], []
    metadata_only: dict[str, dict[str, Any]] = {}
    unreadable = []
    for rid, payload in sorted(state.all_records(scope, KIND).items()):
        try:
            if payload[:1] == _METADATA:
                metadata_only[rid] = json.loads(payload[1:])["metadata"]
                continue
            (size,) = _HEADER.unpack_from(payload, 1)
            start = 1 + _HEADER.size
            header = json.loads(payload[start:start + size])
            vector = np.frombuffer(payload[start + size:], dtype="<f4")
            if payload[:1] != _RECORD or vector.shape != (dim,):
                raise ValueError("not a record of this collection")
        except (ValueError, KeyError, TypeError, struct.error):
            unreadable.append(rid)
            continue
        ids.append(rid)
        vectors.append(vector)
        documents.append(header["document"])
        metadatas.append(header["metadata"])
        extras.append(header["extras"])
    if unreadable:
        end(state, scope, unreadable)
    records = Batch(ids, np.stack(vectors), documents, metadatas, extras) if ids else None
    return Pending(records, metadata_only)


def _dumps(value: Any) -> bytes:
    # Python's float repr round-trips exactly; NaN and infinity are kept (allow_nan).
    return json.dumps(value, ensure_ascii=False, default=json_default).encode("utf-8")
