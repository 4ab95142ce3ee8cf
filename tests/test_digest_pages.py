"""Digests hashed a page at a time give exactly the values vecflow computed record by record
(tests/digest_reference.py), in both versions: ledgers hold texts the record-by-record code wrote.

No backend: pages are built in memory, with the values that take each path of the page-at-a-time
code (fields of one type or mixed across a page, keys needing escapes, values the canonical form
rewrites, native pages that share the logical ids and texts or not, vectors of 0 to 768
dimensions)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import digest_reference as reference
from vecflow.backends.base import NativePage
from vecflow.batch import Batch
from vecflow.layouts.base import Native
from vecflow.runtime.digest import (
    LEGACY,
    VERSION,
    DigestPair,
    batch_digest,
    ids_digest,
    native_digest,
    page_digests,
)
from vecflow.runtime.verify import SideDigest

texts = st.one_of(st.text(max_size=6),
                  st.sampled_from(["", "{}", "{0}", "%s", '"', "\\", "\u2028", "é", "😀", ",", "},{"]))
numbers = st.one_of(
    st.integers(), st.sampled_from([2**64, -(2**70), 0, True, False, None]),
    st.floats(), st.sampled_from([0.0, -0.0, 5e-324, math.nan, math.inf, -math.inf, 3.4e38, 3.5e38, 0.1]),
)
scalars = st.one_of(texts, numbers)
numpy_values = st.sampled_from([np.float64(0.1), np.float32(0.1), np.int64(-3), np.bool_(True)])
values = st.one_of(scalars, numpy_values, st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=3), scalars, max_size=2))
# What one field holds across a page: one kind of value (each is encoded a field at a time), or any.
columns = st.sampled_from([texts, numbers, scalars, values])
keys = st.one_of(st.text(max_size=4), st.sampled_from(["{", "}", "{x}", "%", "%s", '"q"', "a:b", "ü", "source"]))
documents = st.one_of(st.none(), st.text(max_size=20))


@st.composite
def pages(draw: st.DrawFn) -> NativePage:
    """A NativePage whose records share one key set (or not), with a native side that shares the
    logical ids and texts (a store with a text slot, raw layout) or not (a Qdrant payload)."""
    n = draw(st.integers(1, 6))
    dim = draw(st.sampled_from([0, 1, 3, 600]))
    field_names = draw(st.lists(keys, max_size=4, unique=True))
    if draw(st.booleans()):
        kinds = {key: draw(columns) for key in field_names}
        metadatas = [{key: draw(kind) for key, kind in kinds.items()} for _ in range(n)]
    else:
        metadatas = [draw(st.dictionaries(keys, values, max_size=4)) for _ in range(n)]
    ids = draw(st.lists(st.text(min_size=1, max_size=6), min_size=n, max_size=n))
    texts = draw(st.lists(documents, min_size=n, max_size=n))
    vectors = np.random.default_rng(draw(st.integers(0, 2**32))).standard_normal((n, dim)).astype(np.float32)
    batch = Batch(ids, vectors, texts, metadatas)
    if draw(st.booleans()):
        return NativePage(batch, list(ids), [Native(text, dict(m)) for text, m in zip(texts, metadatas)])
    return NativePage(batch, [f"point-{i}" for i in range(n)],
                      [Native(None, {**m, "document": text}) for text, m in zip(texts, metadatas)])


def assert_digests_as_recorded(page: NativePage) -> None:
    batch = page.batch
    for version in (VERSION, LEGACY):
        logical, native = reference.batch_digest(batch, version=version), reference.native_digest(page, version)
        assert batch_digest(batch, version=version) == logical
        assert batch_digest(batch, include_vectors=False, version=version) == reference.batch_digest(
            batch, include_vectors=False, version=version)
        assert native_digest(page, version) == native
        assert page_digests(page, version) == DigestPair(logical, native)
    assert ids_digest(batch.ids) == reference.ids_digest(batch.ids)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(pages())
def test_page_digests_are_the_record_by_record_values(page):
    assert_digests_as_recorded(page)


def test_a_page_of_benchmark_records_digests_as_recorded():
    # 1,000 records at dim 768, every field of one type (what the benchmark measures).
    from tests.bench.data import block

    batch = block(3, 768)
    same = NativePage(batch, list(batch.ids), [Native(d, dict(m)) for d, m in zip(batch.documents, batch.metadatas)])
    assert_digests_as_recorded(same)
    # A field whose values differ in type from record to record, and one record without it.
    mixed = [{**m, "score": [1, 1.0, True, None, "1", math.nan][i % 6]} for i, m in enumerate(batch.metadatas)]
    assert_digests_as_recorded(NativePage(batch.with_metadatas(mixed), same.native_ids, same.natives))
    del mixed[7]["score"]
    assert_digests_as_recorded(NativePage(batch.with_metadatas(mixed), same.native_ids, same.natives))


class Shouting(str):
    def __str__(self) -> str:
        return self.upper()


def test_pages_with_keys_that_are_not_plain_text_digest_as_recorded():
    vectors = np.zeros((2, 2), np.float32)
    for metadatas in ([{1: "a", "b": 2}, {1: "c", "b": 3}], [{"k": 1}, {Shouting("k"): 2}],
                      [{"k": 1}, {"j": 1}], [{"k": 1}, {"k": 1, "j": 2}], [{}, {}]):
        batch = Batch(["a", "b"], vectors, [None, "x"], metadatas)
        assert_digests_as_recorded(NativePage(batch, ["a", "b"], [Native(None, m) for m in metadatas]))
        assert_digests_as_recorded(NativePage(batch, ["a", "b"], [Native(d, m) for d, m in zip(["x", "y"], metadatas)]))


def test_side_digest_of_native_pages_is_the_record_by_record_value():
    from tests.bench.data import block

    batch = block(0, 768)
    page = NativePage(batch, list(batch.ids), [Native(d, dict(m)) for d, m in zip(batch.documents, batch.metadatas)])
    for normalise in (False, True):
        side = SideDigest.empty().add(page, normalise)
        records = reference.batch_digest(batch, include_vectors=not normalise)
        pair = DigestPair(reference.batch_digest(batch), reference.native_digest(page))
        assert side == SideDigest(records, reference.ids_digest(batch.ids), pair)


def test_the_version_2_digest_is_what_vecflow_recorded_before_hashing_by_page():
    # Ledgers written before the digest hashed a page at a time hold these texts.
    batch = Batch(["a", "ü", "c"], np.array([[1, 2], [0.5, -0.0], [3, 4]], np.float32), [None, "doc", ""],
                  [{"x": 0.1, "n": 3, "s": "nan", "f": math.nan, "b": True},
                   {"x": -0.0, "n": 2**70, "s": "}", "f": math.inf, "b": None},
                   {"x": 1, "n": 1.0, "s": "ü", "f": [1e300], "b": False}])
    page = NativePage(batch, list(batch.ids), [Native(d, dict(m)) for d, m in zip(batch.documents, batch.metadatas)])
    assert batch_digest(batch).to_text() == "3:cefbdb4bdcb1d6d2158511fe7a51c4ca:v2"
    assert page_digests(page).to_text() == ("3:cefbdb4bdcb1d6d2158511fe7a51c4ca:v2|"
                                            "3:101447bd8edb5eac92fd68e69e601b98:v2")

