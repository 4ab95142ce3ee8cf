"""Bad records in a create_collection data file: refused naming file:line, with nothing written (the
whole file is checked before the collection is created), and vectors whose float32 squared norm
overflows, which are valid and must survive cosine verification."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.bad_input.conftest import record_line
from vecflow.operations.collections import MAX_ID_LENGTH, read_jsonl_records

GOOD = [record_line(i) for i in range(9)]


def lines_with(index: int, line: str) -> list[str]:
    """The good file with line `index` (0-based) replaced; batch_size is 4, so line 7 is on page 2."""
    return GOOD[:index] + [line] + GOOD[index + 1:]


DATA = {
    "NaN in a vector": (lines_with(6, record_line(6, vector=[1.0, float("nan"), 0.0, 0.0])), ":7:", "vector[1] is nan"),
    "Infinity in a vector": (lines_with(2, record_line(2, vector=[float("inf"), 0, 0, 0])), ":3:", "vector[0] is inf"),
    "a number beyond float32": (lines_with(2, record_line(2, vector=[1e39, 0, 0, 0])), ":3:", "3.4e38"),
    "a shorter vector": (lines_with(6, record_line(6, vector=[1.0, 2.0, 3.0])), ":7:", "vector of 3 numbers"),
    "a longer vector": (lines_with(1, record_line(1, vector=[1.0] * 5)), ":2:", "dimension is 4"),
    "an empty vector": (lines_with(0, record_line(0, vector=[])), ":1:", "got an empty list"),
    "a vector of text": (lines_with(3, record_line(3, vector=["a", "b", "c", "d"])), ":4:", "vector[0] is a string"),
    "numbers written as text": (lines_with(3, record_line(3, vector=["1.0", "2", "3", "4"])), ":4:",
                                "vector[0] is a string"),
    "a boolean in a vector": (lines_with(3, record_line(3, vector=[True, 0, 0, 0])), ":4:", "is a boolean"),
    "a nested vector": (lines_with(3, record_line(3, vector=[[1, 2], [3, 4]])), ":4:", "vector[0] is a list"),
    "a vector that is an object": (lines_with(3, record_line(3, vector={"x": 1})), ":4:", "got an object"),
    "no vector": (lines_with(5, json.dumps({"id": "r5"})), ":6:", "has no 'vector'"),
    "a null id": (lines_with(4, json.dumps({"id": None, "vector": [1, 2, 3, 4]})), ":5:", "got null"),
    "no id": (lines_with(4, json.dumps({"vector": [1, 2, 3, 4]})), ":5:", "has no 'id'"),
    "an empty id": (lines_with(4, record_line(4, id="")), ":5:", "got an empty string"),
    "a boolean id": (lines_with(4, record_line(4, id=True)), ":5:", "got a boolean"),
    "a float id": (lines_with(4, record_line(4, id=1.5)), ":5:", "got a number"),
    "a list id": (lines_with(4, record_line(4, id=["a"])), ":5:", "got a list"),
    "a huge id": (lines_with(4, record_line(4, id="x" * (MAX_ID_LENGTH + 1))), ":5:",
                  f"at most {MAX_ID_LENGTH} characters"),
    "an integer id beyond Python's digit limit": (lines_with(4, '{"id": ' + "9" * 5000 + ', "vector": [1, 2, 3, 4]}'),
                                                  ":5:", "not JSON"),
    "an id repeated on the same page": (lines_with(2, record_line(0)), ":3:", "repeats the record on line 1"),
    "an id repeated on a later page": (lines_with(8, record_line(1)), ":9:", "repeats the record on line 2"),
    "an int id equal to a text id": (GOOD + [record_line(9, id="7"), record_line(10, id=7)], ":11:",
                                     "id '7' repeats"),
    "metadata that is a list": (lines_with(5, record_line(5, metadata=["a", "b"])), ":6:",
                                "metadata must be an object or null, got a list"),
    "metadata that is text": (lines_with(5, record_line(5, metadata="a=b")), ":6:", "got a string"),
    "NaN in metadata": (lines_with(5, record_line(5, metadata={"score": float("nan")})), ":6:",
                        "metadata field 'score' holds NaN"),
    "a number as document": (lines_with(5, record_line(5, document=12)), ":6:", "document must be text or null"),
    "a list as document": (lines_with(5, record_line(5, document=["a"])), ":6:", "got a list"),
    "an unknown key": (lines_with(5, record_line(5, text="the text went here")), ":6:", "unknown key(s) 'text'"),
    "a truncated line": (lines_with(7, record_line(7)[:-9]), ":8:", "not JSON"),
    "a blank line": (lines_with(7, ""), ":8:", "an empty line"),
    "a line that is a list": (lines_with(7, "[1, 2, 3, 4]"), ":8:", "got a list"),
    "a byte order mark inside the file": (lines_with(7, "\ufeff" + record_line(7)), ":8:", "not JSON"),
}


@pytest.mark.parametrize("lines, where, expected", DATA.values(), ids=DATA.keys())
def test_a_bad_record_is_refused_naming_its_line_and_nothing_is_loaded(project, lines, where, expected):
    project.data("more.jsonl", lines)
    project.revision("a1", 'op.create_collection("more", data="data/more.jsonl")')
    project.fails("upgrade", "head", expect=("more.jsonl" + where, expected))
    assert project.attempts("a1") == ["failed"]


FILES = {
    "not UTF-8": (GOOD[:3] + ["@"] + GOOD[4:], ":4:", "not UTF-8 text (byte 0xe9)"),
    "missing": (None, "more.jsonl", "not found"),
    "a directory": ("dir", "more.jsonl", "not found"),
    "empty, without dim": ([], "more.jsonl", "no records to infer the dimension"),
}


@pytest.mark.parametrize("lines, where, expected", FILES.values(), ids=FILES.keys())
def test_a_data_file_that_cannot_be_read_is_refused(project, lines, where, expected):
    path = project.versions / "data" / "more.jsonl"
    if lines == "dir":
        path.mkdir(parents=True)
    elif lines is not None:
        project.data("more.jsonl", "".join(line + "\n" for line in lines).encode().replace(b"@", b"caf\xe9"))
    project.revision("a1", 'op.create_collection("more", data="data/more.jsonl")')
    project.fails("upgrade", "head", expect=(where, expected))


def test_a_declared_dim_that_the_file_does_not_have_is_refused(project):
    project.data("more.jsonl", GOOD)
    project.revision("a1", 'op.create_collection("more", dim=8, data="data/more.jsonl")')
    project.fails("upgrade", "head", expect=("more.jsonl:1:", "dimension is 8"))


def test_the_real_cli_refuses_a_bad_line_far_into_the_file(project):
    lines = [record_line(i) for i in range(300)]
    lines[250] = record_line(250, metadata=[1])
    project.data("more.jsonl", lines)
    project.revision("a1", 'op.create_collection("more", data="data/more.jsonl")')
    project.fails("upgrade", "head", expect="more.jsonl:251:", via_subprocess=True)


def test_windows_line_ends_a_leading_byte_order_mark_and_integer_ids_load_exactly(project):
    text = "\ufeff" + "\r\n".join([record_line(0, id=17), *GOOD[1:]]) + "\r\n"
    project.data("more.jsonl", text.encode("utf-8"))
    project.revision("a1", 'op.create_collection("more", data="data/more.jsonl")')
    project.succeeds("upgrade", "head")
    pages = list(read_jsonl_records(project.versions / "data" / "more.jsonl", 0, 100))
    (page, consumed), = pages
    assert consumed == 9 and page.ids == ["17"] + [f"r{i}" for i in range(1, 9)]
    assert page.documents[1] == "text 1" and page.metadatas[1] == {"n": 1, "tag": "x"}
    np.testing.assert_array_equal(page.vectors[0], np.array([1.0, 0.5, 0.5, 0.5], np.float32))


OVERFLOWING = [1e20, -1e20, 3e19, 1e20]  # finite float32 numbers whose squared norm is not


def test_vectors_whose_float32_squared_norm_overflows_copy_and_verify(project):
    """Verification measures cosine search parity; norms computed in float32 made the query vectors
    NaN ('a query vector is NaN or infinite'), and FAISS indexed such vectors as zeros. Copied
    FAISS -> Chroma -> FAISS, so both stores' search is measured."""
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.float32(1e20) * np.float32(1e20))
    lines = [record_line(i, vector=[v * (1 + i % 3) for v in OVERFLOWING]) if i % 2 else record_line(i)
             for i in range(24)]
    project.data("big.jsonl", lines)
    with project.ini.open("a", encoding="utf-8") as ini:
        ini.write("\n[store:chroma]\nbackend = chroma\npath = %(here)s/chroma\n"
                  "\n[store:faiss]\nbackend = faiss\npath = %(here)s/faiss\n")
    project.revision("a1", 'op.create_collection("big", data="data/big.jsonl")\n'
                           'op.copy_collection("big", "chroma:big_copy")\n'
                           'op.copy_collection("chroma:big_copy", "faiss:big_copy")')
    out = project.succeeds("upgrade", "head")
    assert "verified chroma:big_copy: 24 records" in out
    # Chroma's own index (hnswlib) normalises in float32: an approximate target, held to no floor.
    faiss_line, = [line for line in out.splitlines() if "verified faiss:big_copy" in line]
    assert "24 records, ids equal, digest equal (exact), search parity: recall@10 target 1.000" in faiss_line
    project.succeeds("downgrade", "a0")
    assert project.applied() == {"a0"}
