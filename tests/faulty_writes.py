"""The real `vecflow` CLI with a FAISS store that damages what it is given to write: a fault
injected in the target's write path, so a copy's verification has real damage to find.

    python -m tests.faulty_writes perturb|drop EVERY [vecflow arguments...]

perturb: the vector of every record whose id ends in a number divisible by EVERY is written
with noise added (1% of the length of the vector); drop: those records are not written at all.
The records vecflow passes in are left as they are (the copy loop digests them after the write).
"""

from __future__ import annotations

import re
import sys

import numpy as np

from vecflow import cli
from vecflow.backends.faiss import FaissBackend
from vecflow.batch import Batch

NOISE = 0.01


def damaged(batch: Batch, how: str, every: int) -> Batch:
    """A new batch: batch with the chosen records perturbed or left out."""
    chosen = [i for i, rid in enumerate(batch.ids) if int(re.sub(r"\D", "", rid)) % every == 0]
    if how == "drop":
        left_out = set(chosen)
        return batch.take([i for i in range(len(batch)) if i not in left_out])
    vectors = np.array(batch.vectors, dtype=np.float32, copy=True)
    rng = np.random.default_rng(len(batch))
    for i in chosen:
        noise = rng.standard_normal(vectors.shape[1]).astype(np.float32)
        vectors[i] += NOISE * np.linalg.norm(vectors[i]) * noise / np.linalg.norm(noise)
    return Batch(list(batch.ids), vectors, list(batch.documents), list(batch.metadatas))


def main(argv: list[str]) -> int:
    how, every, vecflow_args = argv[0], int(argv[1]), argv[2:]
    if how not in ("perturb", "drop"):
        raise SystemExit(f"usage: python -m tests.faulty_writes perturb|drop EVERY ...; not {how!r}")
    write = FaissBackend.upsert

    def faulty_upsert(self: FaissBackend, name: str, batch: Batch) -> None:
        write(self, name, damaged(batch, how, every))

    FaissBackend.upsert = faulty_upsert  # type: ignore[method-assign]
    return cli.main(vecflow_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
