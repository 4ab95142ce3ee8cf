"""Exact vector bits for stores that change them on write, kept in vecflow's state.

Chroma and Qdrant keep the vectors of cosine collections normalised, so a vector read back differs
from the one written by an ulp or more. Two ways to give the written bits back:

- `record_bits` / `apply_bits` (kind `bits`, Chroma, whose stored vectors stay put until rewritten):
  after a write the adapter reads the vectors back and records, for each one the store changed, an
  8-byte BLAKE2b of the vector as the store returns it, then the zlib-compressed per-component
  difference of the float32 bit patterns (written - returned, little-endian uint32 modulo 2**32).
  The correction applies only while the hash still matches, so a vector the application rewrote
  since is read as the store has it.
- `record_written` / `apply_written` (kind `vector`, Qdrant, whose local mode re-normalises stored
  vectors when it is queried, so what it returns drifts by an ulp after the write): the written
  float32 vector itself, given back while the stored one still points the same way (cosine
  similarity within 1e-6). No read-back is needed.

A kill between the store's write and the entry's would leave the store's changed vector without
its entry, and a replay that finds nothing else to change would never write it again. Where the
entry is known before the write (FAISS LangChain folders know what they store; Qdrant's entry is
the written vector), the adapter *stages* it first (`stage_bits`, `stage_written`: kinds
`bits_staged`, `vector_staged`, beside the current entries), writes, then records it, which clears
the staged one. A read tries the staged entry, then the current one: whichever matches what the
store holds applies, so a kill on either side of the write reads back exactly what the store has.
Chroma's returned vectors are known only after the write: its writes are redone whole instead
(vecflow/backends/journal.py).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable

import numpy as np

from vecflow.state import VecflowState

KIND = "bits"
WRITTEN = "vector"
STAGED_BITS = "bits_staged"
STAGED_WRITTEN = "vector_staged"
# How close in direction the stored vector must be to the written one for the written one to count.
_SAME_DIRECTION = 1 - 1e-6


def stage_bits(state: VecflowState, scope: str, ids: list[str], written: np.ndarray, stored: np.ndarray) -> None:
    """Before a write of vectors the store will hold as `stored`: their entries, beside the
    current ones until record_bits."""
    state.put_records(scope, STAGED_BITS, {rid: bits_for(written[i], stored[i]) for i, rid in enumerate(ids)})


def record_bits(state: VecflowState, scope: str, ids: list[str], written: np.ndarray, returned: np.ndarray) -> None:
    """Remember the written bits of every vector the store returned changed; clear the others."""
    state.put_records(scope, KIND, {rid: bits_for(written[i], returned[i]) for i, rid in enumerate(ids)})
    _unstage(state, scope, STAGED_BITS, ids)


def apply_bits(state: VecflowState, scope: str, ids: list[str], returned: np.ndarray) -> np.ndarray:
    """The vectors as written, where vecflow knows them; the others as the store returned them."""
    return _apply(state, scope, (STAGED_BITS, KIND), ids, returned, corrected)


def bits_for(written: np.ndarray, returned: np.ndarray) -> bytes | None:
    written_bits = np.ascontiguousarray(written, dtype="<f4").view("<u4")
    returned_bits = np.ascontiguousarray(returned, dtype="<f4").view("<u4")
    if np.array_equal(written_bits, returned_bits):
        return None
    delta = (written_bits - returned_bits).astype("<u4")
    # Level 1: a seventh of level 6's time per vector, for about 1.5x the bytes (350 vs 230 at dim 768).
    return _vector_hash(returned_bits) + zlib.compress(delta.tobytes(), 1)


def corrected(returned: np.ndarray, payload: bytes) -> np.ndarray | None:
    """The written vector, or None unless the entry was recorded for exactly this returned one."""
    returned_bits = np.ascontiguousarray(returned, dtype="<f4").view("<u4")
    if payload[:8] != _vector_hash(returned_bits):
        return None
    try:
        delta = np.frombuffer(zlib.decompress(payload[8:]), dtype="<u4")
    except zlib.error:
        return None
    if delta.shape != returned_bits.shape:
        return None
    return (returned_bits + delta).astype("<u4").view("<f4").astype(np.float32)


def _vector_hash(bits: np.ndarray) -> bytes:
    return hashlib.blake2b(bits.tobytes(), digest_size=8).digest()


def stage_written(state: VecflowState, scope: str, ids: list[str], written: np.ndarray) -> None:
    """Before a write: the written vectors, beside the current entries until record_written."""
    rows = np.ascontiguousarray(written, dtype="<f4")
    state.put_records(scope, STAGED_WRITTEN, {rid: rows[i].tobytes() for i, rid in enumerate(ids)})


def record_written(state: VecflowState, scope: str, ids: list[str], written: np.ndarray) -> None:
    """Remember the written float32 vectors (for stores whose returned bits drift)."""
    rows = np.ascontiguousarray(written, dtype="<f4")
    state.put_records(scope, WRITTEN, {rid: rows[i].tobytes() for i, rid in enumerate(ids)})
    _unstage(state, scope, STAGED_WRITTEN, ids)


def apply_written(state: VecflowState, scope: str, ids: list[str], returned: np.ndarray) -> np.ndarray:
    """The written vectors where vecflow knows them and the store's still point the same way."""
    return _apply(state, scope, (STAGED_WRITTEN, WRITTEN), ids, returned, _written_if_same_direction)


def has_written(state: VecflowState, scope: str, ids: list[str]) -> set[str]:
    """The ids among these whose written vector vecflow keeps (current or staged)."""
    found = set(state.get_records(scope, WRITTEN, ids)) if ids else set()
    if ids and state.has_records(scope, STAGED_WRITTEN):
        found |= set(state.get_records(scope, STAGED_WRITTEN, ids))
    return found


def _written_if_same_direction(stored: np.ndarray, raw: bytes) -> np.ndarray | None:
    if len(raw) != 4 * stored.shape[0]:
        return None
    written = np.frombuffer(raw, dtype="<f4")
    return written if _same_direction(written, stored) else None


def _apply(state: VecflowState, scope: str, kinds: tuple[str, str], ids: list[str], returned: np.ndarray,
           fix: Callable[[np.ndarray, bytes], np.ndarray | None]) -> np.ndarray:
    """returned, with the first entry (staged, then current) that fits each vector applied:
    fix(vector, entry) is the written vector, or None when the entry is not for this one."""
    staged, current = kinds
    found = [state.get_records(scope, current, ids)] if len(ids) else []
    if found and state.has_records(scope, staged):
        found.insert(0, state.get_records(scope, staged, ids))
    if not any(found):
        return returned
    out = np.array(returned, dtype=np.float32, copy=True)
    for i, rid in enumerate(ids):
        for entries in found:
            entry = entries.get(rid)
            fixed = None if entry is None else fix(out[i], entry)
            if fixed is not None:
                out[i] = fixed
                break
    return out


def _unstage(state: VecflowState, scope: str, kind: str, ids: list[str]) -> None:
    if state.has_records(scope, kind):
        state.put_records(scope, kind, dict.fromkeys(ids))


def _same_direction(written: np.ndarray, stored: np.ndarray) -> bool:
    """Whether stored still points where written does; a stored zero vector counts (Qdrant stores
    zeros for vectors whose float32 norm overflows or underflows)."""
    a64, b64 = written.astype(np.float64), stored.astype(np.float64)
    if not b64.any():
        return True
    norms = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return norms > 0 and float(a64 @ b64) / norms >= _SAME_DIRECTION
