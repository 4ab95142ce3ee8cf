"""Functions the record-op tests name by dotted path ("tests.ops.sample_functions:NAME")."""

from __future__ import annotations

from vecflow.batch import Batch


def bump_rank(batch: Batch) -> Batch:
    """Not idempotent on purpose: applied twice to a record, it adds 200. Every record changes."""
    metadatas = [{**meta, "rank": meta["rank"] + 100} for meta in batch.metadatas]
    documents = [None if doc is None else f"[{meta['rank']}] {doc}" for doc, meta in zip(batch.documents, metadatas)]
    return Batch(batch.ids, batch.vectors, documents, metadatas)


def unbump_rank(batch: Batch) -> Batch:
    """The exact inverse of bump_rank."""
    metadatas = [{**meta, "rank": meta["rank"] - 100} for meta in batch.metadatas]
    documents = [None if doc is None else doc.split("] ", 1)[1] for doc in batch.documents]
    return Batch(batch.ids, batch.vectors, documents, metadatas)


def slug(metadata: dict) -> str:
    return f"{metadata['author']}-{metadata['rank']}"


def rename_ids(batch: Batch) -> Batch:
    return Batch([f"new-{rid}" for rid in batch.ids], batch.vectors, batch.documents, batch.metadatas)


def nudge_vectors(batch: Batch) -> Batch:
    return Batch(batch.ids, batch.vectors + 1.0, batch.documents, batch.metadatas)
