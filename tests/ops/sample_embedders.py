"""Small deterministic embedders for the reembed tests: float32 vectors hashed from the text.

Every form vecflow accepts is here: a class (instantiated by `module:Class`), a factory called by
`module:factory()`, a plain function, and a Chroma EmbeddingFunction subclass. Each call is
counted in CALLS; with FORBIDDEN set, any call fails (a downgrade must not embed anything).
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

CALLS = {"count": 0}
FORBIDDEN = {"on": False}


def hash_vector(text: str, dim: int) -> np.ndarray:
    """A float32 vector that depends only on the text and dim (never unit length)."""
    seed = int.from_bytes(hashlib.sha256(f"{dim}:{text}".encode()).digest()[:8], "little")
    return (np.random.default_rng(seed).standard_normal(dim) * 3).astype(np.float32)


def embed(texts: list[str], dim: int) -> list[np.ndarray]:
    if FORBIDDEN["on"]:
        raise AssertionError("the embedder was called while forbidden")
    CALLS["count"] += 1
    # Lets a test slow a subprocess run down enough to SIGKILL it mid-step.
    time.sleep(float(os.environ.get("VECFLOW_TEST_EMBED_DELAY", "0")))
    return [hash_vector(text, dim) for text in texts]


class HashEmbedder:
    """A callable object: texts -> 8-d vectors (or `dim`)."""

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim

    def __call__(self, input: list[str]) -> list[np.ndarray]:
        return embed(input, self.dim)


def hash12() -> HashEmbedder:
    """A factory: `tests.ops.sample_embedders:hash12()` gives a 12-d embedder."""
    return HashEmbedder(12)


def hash8_function(texts: list[str]) -> list[np.ndarray]:
    """A plain function used as the embedder itself."""
    return embed(texts, 8)


class ChromaHashEmbedding(EmbeddingFunction[Documents]):
    """The Chroma EmbeddingFunction protocol, as an application already using Chroma has one."""

    def __init__(self, dim: int = 12) -> None:
        self.dim = dim

    def __call__(self, input: Documents) -> Embeddings:
        return embed(list(input), self.dim)

    @staticmethod
    def name() -> str:
        return "vecflow-test-hash"

    def get_config(self) -> dict:
        return {"dim": self.dim}

    @staticmethod
    def build_from_config(config: dict) -> ChromaHashEmbedding:
        return ChromaHashEmbedding(config["dim"])
