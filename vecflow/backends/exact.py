"""Exact vector bits for stores that change them on write, kept in vecflow's state.

Chroma and Qdrant keep the vectors of cosine collections normalised, so a vector read back differs
from the one written by an ulp or more. Two ways to give the written bits back:

- `record_bits` / `apply_bits` (kind `bits`, Chroma, whose stored vectors stay put until rewritten):
  after a write the adapter reads the vectors back and records, for each one the store changed, an
  8-byte BLAKE2b of the vector as the store returns it, then the zlib-compressed per-component
  difference of the float32 bit patterns (written - returned, little-endian uint32 modulo 2**32).
  The correction applies only while the hash still matches, so a vector the application rewrote
  since is read as the store has it.
- `written_entries` / `apply_written` (kind `vector`, Qdrant, whose local mode re-normalises stored
  vectors when it is queried, so what it returns drifts by an ulp after the write): the written
  float32 vector itself, given back while the stored one still points the same way (cosine
  similarity within 1e-6). No read-back is needed.

A kill between the store's write and the entry's would leave the store's changed vector without
its entry, and a replay that finds nothing else to change would never write it again. Where the
entry is known before the write, it is put first:

- FAISS LangChain folders know what they store: the adapter *stages* the entry (`stage_bits`, kind
  `bits_staged`, beside the current one), writes, then records it, which clears the staged one.
  A read tries the staged entry, then the current one: whichever matches what the store holds
  applies.
- Qdrant's entry is the written vector, and a read tells by direction which vector the store
  holds, so one entry per record holds both candidates: the vector about to be written, then the
  one vecflow gives back for the record now (its `previous`, where an entry of vecflow's gave it
  back: what the store returns itself needs no entry). It is put in one state transaction before
  the write (`written_entries`), and nothing is written after. A kill before the write, or a
  write the store refused, leaves the store holding the previous vector, which the entry's second
  part gives back; once the write landed, its first part does. The next write's previous is the
  vector then read, so the entry never needs more than the two. Entries from older versions of
  vecflow (one vector; kind `vector_staged` from a write they staged) still read, and a write
  drops the record's staged one, which its previous already accounts for.

A store that holds the written vector and the previous one in the same direction reads as the
written one, whichever it holds (the store cannot tell them apart either). The previous vector
stays in the entry after the write landed: a vector the application writes later in its
direction (in practice, that very vector again) reads as it, as one in the written vector's
direction always did; trimming it would take the second state write per request this saves.

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
STAGED_WRITTEN = "vector_staged"  # put by older versions of vecflow, still read
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


def written_entries(state: VecflowState, scope: str, ids: list[str], written: np.ndarray,
                    previous: dict[str, np.ndarray]) -> dict[str, dict[str, bytes | None]]:
    """The entries (kind -> id -> value) to put in one state transaction before writing these
    vectors: each written float32 vector, then, where it differs, the previous one vecflow gives
    back for the record (`previous`: from known_written)."""
    rows = np.ascontiguousarray(written, dtype="<f4")
    entries: dict[str, bytes | None] = {}
    for i, rid in enumerate(ids):
        value = rows[i].tobytes()
        before = previous.get(rid)
        if before is not None:
            old = np.ascontiguousarray(before, dtype="<f4").tobytes()
            value += old if old != value else b""
        entries[rid] = value
    kinds: dict[str, dict[str, bytes | None]] = {WRITTEN: entries}
    if state.has_records(scope, STAGED_WRITTEN):
        kinds[STAGED_WRITTEN] = dict.fromkeys(ids)
    return kinds


def apply_written(state: VecflowState, scope: str, ids: list[str], returned: np.ndarray) -> np.ndarray:
    """The written vectors where vecflow knows them and the store's still point the same way."""
    known = known_written(state, scope, ids, returned)
    if not known:
        return returned
    out = np.array(returned, dtype=np.float32, copy=True)
    for i, rid in enumerate(ids):
        if rid in known:
            out[i] = known[rid]
    return out


def known_written(state: VecflowState, scope: str, ids: list[str], returned: np.ndarray) -> dict[str, np.ndarray]:
    """id -> the written vector, for the ids whose entry fits the vector the store returned: of
    the staged entry (older versions), then the current one's written and previous vectors, the
    first that points the same way as the returned one."""
    found = [state.get_records(scope, WRITTEN, ids)] if len(ids) else []
    if found and state.has_records(scope, STAGED_WRITTEN):
        found.insert(0, state.get_records(scope, STAGED_WRITTEN, ids))
    if not any(found):
        return {}
    dim = returned.shape[1]
    rows: list[int] = []
    candidates: list[bytes] = []
    for entries in found:
        for i, rid in enumerate(ids):
            raw = entries.get(rid)
            if raw is not None and len(raw) in (4 * dim, 8 * dim):
                for part in range(len(raw) // (4 * dim)):
                    rows.append(i)
                    candidates.append(raw[part * 4 * dim:(part + 1) * 4 * dim])
    if not rows:
        return {}
    written = np.frombuffer(b"".join(candidates), dtype="<f4").reshape(len(rows), dim)
    fits = _same_directions(written, np.asarray(returned, dtype=np.float32)[rows])
    known: dict[str, np.ndarray] = {}
    for n, i in enumerate(rows):  # in order of preference: the first that fits wins
        if fits[n] and ids[i] not in known:
            known[ids[i]] = written[n]
    return known


def has_written(state: VecflowState, scope: str, ids: list[str]) -> set[str]:
    """The ids among these whose written vector vecflow keeps (current or staged)."""
    found = set(state.get_records(scope, WRITTEN, ids)) if ids else set()
    if ids and state.has_records(scope, STAGED_WRITTEN):
        found |= set(state.get_records(scope, STAGED_WRITTEN, ids))
    return found


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


def _same_directions(written: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Per row, whether stored still points where written does; a stored zero vector counts
    (Qdrant stores zeros for vectors whose float32 norm overflows or underflows)."""
    a64, b64 = written.astype(np.float64), stored.astype(np.float64)
    dots = np.einsum("ij,ij->i", a64, b64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    cosines = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return ~b64.any(axis=1) | ((norms > 0) & (cosines >= _SAME_DIRECTION))
