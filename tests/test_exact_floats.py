"""Float metadata comes back exactly as written, and digests compare floats exactly (float64).

Chroma is the store that changes floats (chromadb 1.5.9 parses them with serde_json's default,
not correctly rounded, parser; see vecflow/backends/chroma_values.py); the other backends are
covered value by value in tests/test_property_roundtrip.py.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import uuid
from urllib.parse import urlparse

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings

from tests.project import Project
from vecflow.backends import files_folder
from vecflow.backends.chroma import ChromaBackend
from vecflow.backends.chroma_values import chroma_reads, parsed_exactly
from vecflow.backends.files import FilesBackend
from vecflow.batch import Batch
from vecflow.errors import DigestMismatchError
from vecflow.runtime.digest import (
    LEGACY,
    MIXED,
    VERSION,
    Digest,
    DigestPair,
    batch_digest,
    collection_digest,
    collection_digests,
    version_of,
)


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


def hard_floats(n: int, seed: int) -> list[float]:
    """Floats Chroma changes about 15% of: random bit patterns, [0, 1) doubles, float32 values
    (what an application's numpy scores are), subnormals and the extremes."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 2**63, n // 3, dtype=np.uint64).view(np.float64) * rng.choice([-1.0, 1.0], n // 3)
    values = [float(v) for v in patterns if math.isfinite(v) and v != 0]
    values += [float(v) for v in rng.random(n // 3)]
    values += [float(np.float32(v)) for v in rng.standard_normal(n - len(values))]
    return values + [5e-324, 1e-310, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308]


def plain_floats(backend: ChromaBackend, name: str, ids: list[str], key: str = "x") -> list[float]:
    """What an application reading the collection with chromadb gets."""
    got = backend.client.get_collection(name).get(ids=ids, include=["metadatas"])
    held = dict(zip(got["ids"], got["metadatas"]))
    return [held[rid][key] for rid in ids]


@pytest.fixture(params=["embedded", "http"])
def chroma(request, tmp_path):
    """A ChromaBackend, embedded or on the session's `chroma run` server (a database of its own)."""
    if request.param == "embedded":
        backend = ChromaBackend(path=str(tmp_path / "chroma"))
        yield backend
        backend.close()
        return
    url = request.getfixturevalue("chroma_url")
    admin = chromadb.AdminClient(Settings(chroma_api_impl="chromadb.api.fastapi.FastAPI",
                                          chroma_server_host=url, chroma_server_http_port=urlparse(url).port))
    database = f"floats-{uuid.uuid4().hex}"
    admin.create_database(database)
    backend = ChromaBackend(url=url, database=database)
    yield backend
    for name in backend.list_collections():
        backend.drop_collection(name)
    backend.close()
    admin.delete_database(database)


# Chroma ------------------------------------------------------------------------------------------


def test_chroma_changes_floats_as_serde_json_reads_them(chroma):
    # The measured cause, which chroma_values.sendable relies on: embedded, Chroma holds
    # serde_json's reading of ryu's text of the float; over HTTP it parses the request first.
    values = hard_floats(600, seed=1)
    collection = chroma.client.create_collection("plain", embedding_function=None)
    ids = [f"p{i:05d}" for i in range(len(values))]
    collection.add(ids=ids, embeddings=np.ones((len(ids), 2)), metadatas=[{"x": v} for v in values])
    held = plain_floats(chroma, "plain", ids)
    changed = sum(bits(h) != bits(v) for h, v in zip(held, values))
    assert 0.05 * len(values) < changed < 0.3 * len(values)
    passes = 2 if chroma.location.startswith("http") else 1
    assert [bits(h) for h in held] == [chroma_reads(v, passes) for v in values]


def test_floats_every_parser_reads_exactly_are_written_natively_and_held_exactly(chroma):
    # n significant digits times 10**p, p in [-22, 15 - n]: short decimals of any magnitude below 1e15.
    rng = np.random.default_rng(2)
    values = []
    for n in rng.integers(1, 16, 1500):
        digits = int(rng.integers(10 ** (n - 1), 10 ** n))
        values.append(float(f"{digits * int(rng.choice([-1, 1]))}e{rng.integers(-22, 16 - n)}"))
    values += [round(float(v), 6) for v in rng.uniform(-1e8, 1e8, 500)] + [0.0, 1.0, 0.1, 123456789012345.0]
    assert all(parsed_exactly(v) for v in values)
    chroma.create_collection("easy", 2, "l2")
    ids = [f"e{i:05d}" for i in range(len(values))]
    chroma.upsert("easy", Batch(ids, np.ones((len(ids), 2), np.float32), [None] * len(ids), [{"x": v} for v in values]))
    assert [bits(v) for v in plain_floats(chroma, "easy", ids)] == [bits(v) for v in values]
    assert not chroma.state.has_records(chroma.scope("easy"), "values")


def test_every_float_reads_back_exactly_through_vecflow(chroma):
    values = hard_floats(600, seed=3)
    ids = [f"f{i:05d}" for i in range(len(values))]
    metadatas = [{"x": v, "pair": [v, -v], "n": i} for i, v in enumerate(values)]
    batch = Batch(ids, np.ones((len(ids), 2), np.float32), [None] * len(ids), metadatas)
    chroma.create_collection("floats", 2, "l2")
    chroma.upsert("floats", batch)
    got = chroma.get("floats", ids)
    assert [json.dumps(m) for m in got.metadatas] == [json.dumps(m) for m in metadatas]
    assert collection_digest(chroma, "floats", batch_size=400) == batch_digest(batch)
    # Chroma cannot hold some of them: their originals are in vecflow's state, not in the records.
    raw = chroma.client.get_collection("floats").get(ids=ids, include=["metadatas"])["metadatas"]
    assert all(sorted(m) == ["n", "pair", "x"] for m in raw)
    assert any(bits(m["x"]) != bits(v) for m, v in zip(raw, values))
    # A metadata-only write (field ops) is exact too.
    chroma.update_metadata("floats", ids, [{"y": -v} for v in values])
    assert [m["y"] for m in chroma.get("floats", ids).metadatas] == [-v for v in values]


def test_an_applications_floats_are_written_back_to_the_same_bits(chroma):
    # What Chroma holds for an application's float is parse(x); vecflow reads that, and writing it
    # back sends x's neighbour that Chroma reads as it, so the application sees the same bits.
    values = hard_floats(600, seed=4)
    ids = [f"a{i:05d}" for i in range(len(values))]
    chroma.client.create_collection("app", embedding_function=None).add(
        ids=ids, embeddings=np.ones((len(ids), 2)), metadatas=[{"x": v} for v in values])
    before = plain_floats(chroma, "app", ids)
    read = chroma.get("app", ids)
    assert [bits(m["x"]) for m in read.metadatas] == [bits(v) for v in before]
    chroma.drop_collection("app")
    chroma.create_collection("app", 2, "l2")
    chroma.upsert("app", read)
    assert [bits(v) for v in plain_floats(chroma, "app", ids)] == [bits(v) for v in before]
    assert not chroma.state.has_records(chroma.scope("app"), "values")


def test_a_float_the_application_rewrote_wins_over_vecflows_original(chroma):
    values = [v for v in hard_floats(300, seed=5) if not parsed_exactly(v)]
    ids = [f"w{i:04d}" for i in range(len(values))]
    chroma.create_collection("alpha", 2, "l2")
    chroma.upsert("alpha", Batch(ids, np.ones((len(ids), 2), np.float32), [None] * len(ids),
                                 [{"x": v} for v in values]))
    changed = [rid for rid, v, h in zip(ids, values, plain_floats(chroma, "alpha", ids)) if bits(v) != bits(h)]
    assert changed
    chroma.client.get_collection("alpha").update(ids=changed, metadatas=[{"x": 0.25}] * len(changed))
    assert {m["x"] for m in chroma.get("alpha", changed).metadatas} == {0.25}


def test_downgrade_restores_an_applications_floats_bit_for_bit(tmp_path):
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")}, batch_size=200,
                      extra_stores={"faiss": ("faiss", {"path": str(tmp_path / "faiss")})})
    values = hard_floats(600, seed=6)
    ids = [f"d{i:04d}" for i in range(len(values))]
    with project.opened("docs") as (backend, _):
        backend.client.create_collection("docs", embedding_function=None).add(
            ids=ids, embeddings=np.random.default_rng(0).standard_normal((len(ids), 4)),
            documents=[f"doc {i}" for i in range(len(ids))],
            metadatas=[{"score": v, "keep": [v, 0.5], "n": i} for i, v in enumerate(values)])
        before = plain_floats(backend, "docs", ids, "score"), plain_floats(backend, "docs", ids, "keep")
    project.write_python("r1", None, 'op.drop_field("docs", "score")')
    project.write_python("r2", "r1", 'op.move_collection("main:docs", "faiss:docs")')
    project.run("upgrade", "head")
    lines = project.run("downgrade", "base")
    assert sum("restored exactly" in line for line in lines) == 2, lines
    with project.opened("docs") as (backend, _):
        after = plain_floats(backend, "docs", ids, "score"), plain_floats(backend, "docs", ids, "keep")
    assert [bits(v) for v in after[0]] == [bits(v) for v in before[0]]
    assert [[bits(v) for v in pair] for pair in after[1]] == [[bits(v) for v in pair] for pair in before[1]]


# digests -----------------------------------------------------------------------------------------


def one(metadata: dict, document: str | None = None) -> Batch:
    return Batch(["r"], np.ones((1, 2), np.float32), [document], [metadata])


def test_digest_compares_floats_exactly():
    x = 0.1
    assert batch_digest(one({"x": x})) != batch_digest(one({"x": math.nextafter(x, 1)}))
    assert batch_digest(one({"x": [1e300]})) != batch_digest(one({"x": [math.nextafter(1e300, 0)]}))
    assert batch_digest(one({"x": 0.0})) != batch_digest(one({"x": -0.0}))
    assert batch_digest(one({"x": 5e-324})) != batch_digest(one({"x": 0.0}))
    assert batch_digest(one({"x": 1})) != batch_digest(one({"x": 1.0})) != batch_digest(one({"x": True}))
    assert batch_digest(one({"x": math.nan})) != batch_digest(one({"x": "nan"}))
    assert batch_digest(one({"x": math.inf})) != batch_digest(one({"x": "inf"}))
    assert batch_digest(one({"x": np.float64(x)})) == batch_digest(one({"x": x}))
    # What float32 rounding merged (the version before exact floats) stays merged in that version.
    assert batch_digest(one({"x": x}), version=LEGACY) == batch_digest(one({"x": math.nextafter(x, 1)}), version=LEGACY)


def test_digest_does_not_depend_on_order():
    rng = np.random.default_rng(7)
    floats = hard_floats(60, seed=7)
    metadatas = [{"a": v, "b": [v, i], "c": {"z": v, "y": None}} for i, v in enumerate(floats)]
    batch = Batch([f"o{i}" for i in range(len(floats))], rng.standard_normal((len(floats), 3)).astype(np.float32),
                  [None if i % 5 else f"t{i}" for i in range(len(floats))], metadatas)
    order = rng.permutation(len(batch))
    shuffled = batch.take(list(order))
    reordered = shuffled.with_metadatas([dict(reversed(list(m.items()))) for m in shuffled.metadatas])
    parts = [reordered.take(list(range(lo, min(lo + 7, len(batch))))) for lo in range(0, len(batch), 7)]
    assert sum((batch_digest(part) for part in parts), Digest.empty()) == batch_digest(batch)


def test_digest_texts_carry_their_version():
    batch = one({"x": 0.1})
    new, old = batch_digest(batch), batch_digest(batch, version=LEGACY)
    assert new.to_text().endswith(f":v{VERSION}") and old.to_text().count(":") == 1
    for digest in (new, old, Digest.empty(), Digest.absent(), new + old):
        assert Digest.from_text(digest.to_text()) == digest
    assert (new + old).version == MIXED and (new + Digest.empty()).version == VERSION
    assert Digest.empty().to_text() == Digest(0, 0, LEGACY).to_text() == "0:" + "0" * 32
    pair = DigestPair(new, new).to_text()
    assert version_of(pair) == VERSION and version_of(f"{old}|{old}") == LEGACY and version_of("absent") == VERSION
    assert not DigestPair.same(f"{old}|{old}", pair)


def test_the_version_1_digest_is_what_vecflow_recorded_before_exact_floats():
    # Ledgers and exports written before exact floats hold these texts (computed by that version).
    batch = Batch(["a", "ü"], np.array([[1, 2], [0.5, -0.0]], np.float32), [None, "doc"],
                  [{"x": 0.1, "n": 3, "l": [1e300, -0.0], "s": "nan", "f": math.nan},
                   {"d": {"k": 2.5e-320}, "b": True}])
    assert batch_digest(batch, version=LEGACY).to_text() == "2:0588bbfc38dbe74e0e2a1296178ec1e6"


def _ledger_digests_as_an_older_vecflow_wrote_them(project: Project, texts: dict[str, str]) -> None:
    with sqlite3.connect(project.root / ".vecflow" / "ledger.db") as conn:
        for (step_id, before) in conn.execute("SELECT rowid, digest_before FROM steps").fetchall():
            recorded = json.loads(before or "{}")
            conn.execute("UPDATE steps SET digest_before = ? WHERE rowid = ?",
                         [json.dumps({ref: texts.get(ref, text) for ref, text in recorded.items()}), step_id])


@pytest.fixture
def float_project(tmp_path):
    project = Project(tmp_path, {"path": str(tmp_path / "chroma")}, batch_size=100)
    values = hard_floats(300, seed=8)
    batch = Batch([f"r{i:04d}" for i in range(len(values))], np.ones((len(values), 3), np.float32),
                  [None] * len(values), [{"score": v, "other": -v} for v in values])
    project.seed("docs", batch, metric="l2")
    with project.opened("docs") as (backend, name):
        legacy = collection_digests(backend, name, version=LEGACY).to_text()
    project.write_python("r1", None, 'op.drop_field("docs", "score")')
    project.run("upgrade", "head")
    _ledger_digests_as_an_older_vecflow_wrote_them(project, {"main:docs": legacy})
    return project


def test_downgrade_verifies_against_digests_an_older_vecflow_recorded(float_project):
    lines = float_project.run("downgrade", "base")
    assert any("restored exactly" in line for line in lines), lines


def test_downgrade_over_older_digests_still_sees_a_changed_record(float_project):
    with float_project.opened("docs") as (backend, name):
        backend.update_metadata(name, ["r0000"], [{"other": 1.5}])
    with pytest.raises(DigestMismatchError, match="did not restore the data exactly"):
        float_project.run("downgrade", "base")


def test_an_export_an_older_vecflow_wrote_still_passes_its_integrity_check(tmp_path, monkeypatch):
    files = FilesBackend(path=str(tmp_path / "export"))
    files.create_collection("docs", 2, "l2")
    values = hard_floats(90, seed=9)

    def write(lo: int, hi: int) -> None:
        part = values[lo:hi]
        files.upsert("docs", Batch([f"x{lo + i:03d}" for i in range(len(part))], np.ones((len(part), 2), np.float32),
                                   [None] * len(part), [{"v": v} for v in part]))

    # Two parts written by the older vecflow (its digests), then one by this one.
    with monkeypatch.context() as patch:
        patch.setattr(files_folder, "batch_digest", lambda batch: batch_digest(batch, version=LEGACY))
        write(0, 30)
        write(30, 60)
    write(60, 90)
    files.close()
    reopened = FilesBackend(path=str(tmp_path / "export"))
    assert [version_of(part["digest"]) for part in reopened.manifest("docs")["parts"]] == [LEGACY, LEGACY, VERSION]
    assert Digest.from_text(reopened.manifest("docs")["digest"]).version == MIXED
    assert "matching the digest" in reopened.check_integrity("docs")
    reopened.close()
