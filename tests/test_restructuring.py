"""A real restructuring, end to end: a 10k-chunk corpus with legacy metadata is cleaned up, split
into four collections by collection_type, validated against a 12-field schema (invalid records
quarantined), then fully downgraded to the original corpus."""

from __future__ import annotations

import numpy as np

from tests.project import Project
from vecflow.batch import Batch
from vecflow.runtime.stores import Stores

N = 10_000
TYPES = ["faq", "manual", "blog", "policy"]


def legacy_corpus() -> Batch:
    rng = np.random.default_rng(42)
    metadatas = []
    for i in range(N):
        metadatas.append({
            "Author": ["ada", "grace", "linus", "barbara"][i % 4],
            "cat": ["howto", "reference", "news"][i % 3],
            "relevance": "1.7" if i % 53 == 0 else str(round((i % 100) / 100, 2)),  # legacy: strings
            "conf": (i % 10) / 10,
            "lang": "xx" if i % 97 == 0 else ["en", "de", "fr", "es"][i % 4],
            "collection_type": TYPES[(i // 7) % 4],
            "url": f"https://example.org/doc/{i}",
            "year": 2000 + i % 25,
            "page": i % 40,
            "legacy_rank": i % 9,
        })
    return Batch([f"chunk-{i:05d}" for i in range(N)], rng.standard_normal((N, 32)).astype(np.float32),
                 [f"chunk {i}: body text" for i in range(N)], metadatas)


SCHEMA = """\
          attribution: {type: str, required: true}
          classification: {type: str, required: true, enum: [howto, reference, news]}
          relevance: {type: float, required: true, min: 0, max: 1}
          confidence: {type: float, min: 0, max: 1}
          language: {type: str, required: true, enum: [en, de, fr, es]}
          collection_type: {type: str, required: true, enum: [faq, manual, blog, policy]}
          source_url: {type: str, pattern: "^https?://"}
          published_year: {type: int, min: 1990, max: 2030}
          page: {type: int, min: 0}
          reviewed: {type: bool, default: false}
          tags: {type: list, default: []}
          license: {type: str, default: internal}
"""


def test_split_into_four_collections_with_a_12_field_schema_and_back(fast_tmp_path):
    project = Project(fast_tmp_path / "project", {"path": str(fast_tmp_path / "faiss")}, backend="faiss",
                      batch_size=1000)
    corpus = legacy_corpus()
    stores = Stores(project.config)
    backend, _ = stores.resolve("corpus")
    backend.create_collection("corpus", 32, "l2")
    for start in range(0, N, 2000):
        backend.upsert("corpus", corpus.take(list(range(start, start + 2000))))
    stores.close()
    original = project.digest("corpus")

    project.write_yaml("r1", """\
        revision: r1
        down_revision: null
        message: modernise legacy metadata
        upgrade:
          - rename_field: {collection: corpus, old: Author, new: attribution}
          - rename_field: {collection: corpus, old: cat, new: classification}
          - rename_field: {collection: corpus, old: lang, new: language}
          - rename_field: {collection: corpus, old: url, new: source_url}
          - rename_field: {collection: corpus, old: year, new: published_year}
          - rename_field: {collection: corpus, old: conf, new: confidence}
          - cast_field: {collection: corpus, field: relevance, to: float}
          - drop_field: {collection: corpus, field: legacy_rank}
        """)
    project.write_yaml("r2", """\
        revision: r2
        down_revision: r1
        message: one collection per type
        upgrade:
          - split_collection:
              source: corpus
              by: collection_type
              into: {faq: docs_faq, manual: docs_manual, blog: docs_blog, policy: docs_policy}
        """)
    steps = "".join(f"""\
          - apply_schema:
              collection: docs_{kind}
              schema:
{SCHEMA.replace("          ", "                ")}""" for kind in TYPES)
    project.write_yaml("r3", "revision: r3\ndown_revision: r2\nmessage: enforce the schema\nupgrade:\n" + steps)

    dry = "\n".join(project.run("upgrade", "head", dry_run=True))
    assert "upgrade r3" in dry and "corpus: 10000 records" in dry

    project.run("upgrade", "head")
    invalid = {i for i in range(N) if i % 53 == 0 or i % 97 == 0}
    counts = {kind: len(project.records(f"docs_{kind}")) for kind in TYPES}
    quarantined = {kind: project.records(f"docs_{kind}_quarantine") for kind in TYPES}
    assert sum(counts.values()) == N - len(invalid)
    assert {rid for q in quarantined.values() for rid in q} == {f"chunk-{i:05d}" for i in invalid}
    reasons = {r.metadata.get("_quarantine_reason", "") for q in quarantined.values() for r in q.values()}
    assert any("relevance" in reason for reason in reasons) and any("language" in reason for reason in reasons)
    sample = project.records("docs_faq")["chunk-00001"].metadata
    assert sample["attribution"] == "grace" and sample["relevance"] == 0.01 and sample["license"] == "internal"
    assert sample["reviewed"] is False and sample["tags"] == [] and "legacy_rank" not in sample
    assert project.digest("corpus") == "absent"

    project.run("downgrade", "base")
    assert project.digest("corpus") == original
    for kind in TYPES:
        assert project.digest(f"docs_{kind}") == "absent"
        assert project.digest(f"docs_{kind}_quarantine") == "absent"
