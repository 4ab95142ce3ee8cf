"""Layouts as pure data: native record <-> logical record, both ways, with no backend."""

from __future__ import annotations

import json

import pytest

from vecflow.errors import ConfigError, InvalidDataError
from vecflow.layouts import Logical, Native, detect_layout, get_layout

NODE = json.dumps({
    "id_": "n1", "embedding": None, "metadata": {"author": "ann", "year": 2020, "tags": ["a", "b"]},
    "excluded_embed_metadata_keys": [], "excluded_llm_metadata_keys": [],
    "relationships": {"1": {"node_id": "doc-1", "node_type": None, "metadata": {}, "hash": None,
                            "class_name": "RelatedNodeInfo"}},
    "metadata_template": "{key}: {value}", "metadata_separator": "\n", "text": "", "mimetype": "text/plain",
    "start_char_idx": None, "end_char_idx": None, "text_template": "{metadata_str}\n\n{content}",
    "class_name": "TextNode"}, ensure_ascii=False)
LLAMA_CHROMA = Native("the text", {"author": "ann", "year": 2020, "tags": ["a", "b"], "_node_content": NODE,
                                   "_node_type": "TextNode", "document_id": "doc-1", "doc_id": "doc-1",
                                   "ref_doc_id": "doc-1"})
LANGCHAIN_QDRANT = Native(None, {"page_content": "hello", "metadata": {"source": "web", "n": 1}, "extra": [1]})


def test_unknown_layout_names_the_choices():
    with pytest.raises(ConfigError, match="auto, raw, langchain, llamaindex"):
        get_layout("haystack")


@pytest.mark.parametrize("slot", [True, False])
@pytest.mark.parametrize("name", ["raw", "langchain", "llamaindex"])
def test_reading_what_a_layout_wrote_gives_the_record_back(name, slot):
    layout = get_layout(name)
    logical = Logical("some text", {"a": 1, "b": "x", "c": [1, 2]}, {})
    back = layout.read(layout.write("r1", logical, slot), slot)
    assert (back.document, back.metadata) == (logical.document, logical.metadata)


def test_llamaindex_reads_text_from_the_slot_and_metadata_from_the_node():
    logical = get_layout("llamaindex").read(LLAMA_CHROMA, True)
    assert logical.document == "the text"
    assert logical.metadata == {"author": "ann", "year": 2020, "tags": ["a", "b"]}
    assert logical.extras["doc_id"] == "doc-1" and "relationships" in logical.extras["node"]


def test_llamaindex_metadata_change_rewrites_both_copies_and_nothing_else():
    layout = get_layout("llamaindex")
    changed = layout.with_metadata(LLAMA_CHROMA, {"writer": "ann", "year": 2020, "tags": ["a", "b"]}, True)
    assert "author" not in changed.fields and changed.fields["writer"] == "ann"
    node = json.loads(changed.fields["_node_content"])
    assert node["metadata"] == {"writer": "ann", "year": 2020, "tags": ["a", "b"]}
    original = json.loads(NODE)
    assert {k: v for k, v in node.items() if k != "metadata"} == {k: v for k, v in original.items() if k != "metadata"}
    assert changed.text == LLAMA_CHROMA.text
    back = layout.with_metadata(changed, {"author": "ann", "year": 2020, "tags": ["a", "b"]}, True)
    assert back == LLAMA_CHROMA, "renaming back restores the node JSON byte for byte"


def test_llamaindex_unchanged_metadata_keeps_the_node_json_bytes():
    layout = get_layout("llamaindex")
    same = layout.with_metadata(LLAMA_CHROMA, {"author": "ann", "year": 2020, "tags": ["a", "b"]}, True)
    assert same.fields["_node_content"] is LLAMA_CHROMA.fields["_node_content"]


def test_llamaindex_without_a_text_slot_keeps_the_text_inside_the_node():
    layout = get_layout("llamaindex")
    logical = layout.read(LLAMA_CHROMA, True)
    qdrant = layout.write("n1", logical, False)
    assert qdrant.text is None and json.loads(qdrant.fields["_node_content"])["text"] == "the text"
    assert layout.read(qdrant, False) == logical
    back = layout.write("n1", layout.read(qdrant, False), True)
    assert back == LLAMA_CHROMA, "Chroma -> Qdrant -> Chroma rebuilds the LlamaIndex record exactly"


def test_a_record_that_never_was_a_node_gets_a_fresh_text_node():
    native = get_layout("llamaindex").write("plain", Logical("txt", {"k": 1}, {}), False)
    node = json.loads(native.fields["_node_content"])
    assert node["id_"] == "plain" and node["class_name"] == "TextNode" and node["text"] == "txt"
    assert native.fields["doc_id"] == "None" and native.fields["_node_type"] == "TextNode"


def test_langchain_payload_keeps_keys_it_does_not_own():
    layout = get_layout("langchain")
    logical = layout.read(LANGCHAIN_QDRANT, False)
    assert (logical.document, logical.metadata) == ("hello", {"source": "web", "n": 1})
    changed = layout.with_metadata(LANGCHAIN_QDRANT, {"origin": "web", "n": 1}, False)
    assert changed.fields == {"page_content": "hello", "metadata": {"origin": "web", "n": 1}, "extra": [1]}
    merged = layout.merge(LANGCHAIN_QDRANT, "r", Logical("new", {"n": 2}, {}), False)
    assert merged.fields == {"page_content": "new", "metadata": {"n": 2}, "extra": [1]}


def test_conversion_from_llamaindex_to_langchain_gives_text_and_metadata():
    logical = get_layout("llamaindex").read(LLAMA_CHROMA, True)
    native = get_layout("langchain").write("n1", logical, False)
    assert native.fields == {"page_content": "the text",
                             "metadata": {"author": "ann", "year": 2020, "tags": ["a", "b"]}}


def test_raw_payload_keeps_the_document_as_qdrant_client_add_does():
    layout = get_layout("raw")
    native = layout.write("r", Logical("doc", {"k": 1}, {}), False)
    assert native.fields == {"k": 1, "document": "doc"}
    assert layout.with_metadata(native, {"k": 2}, False).fields == {"k": 2, "document": "doc"}
    with pytest.raises(InvalidDataError, match="clashes"):
        layout.write("r", Logical("doc", {"document": "x"}, {}), False)


def test_detection_names_what_it_saw():
    assert detect_layout([("n1", LLAMA_CHROMA)] * 3, True).layout.name == "llamaindex"
    assert detect_layout([("n1", LANGCHAIN_QDRANT)] * 3, False).layout.name == "langchain"
    plain = detect_layout([("r1", Native("t", {"a": 1}))] * 3, True)
    assert plain.layout.name == "raw" and "none of 3" in plain.reason
    assert "empty" in detect_layout([], False).reason
    mixed = detect_layout([("a", LANGCHAIN_QDRANT), ("b", Native(None, {"a": 1})), ("c", Native(None, {"b": 1}))],
                          False)
    assert mixed.layout.name == "raw", "a minority of framework-looking records is not enough"


def test_langchain_on_chroma_is_told_by_uuid_ids_and_documents_on_every_record():
    uid = "0bee1772-3e10-49f3-b9c9-a18fddb55efe"
    assert detect_layout([(uid, Native("t", {"a": 1}))] * 4, True).layout.name == "langchain"
    some_without_text = [(uid, Native("t", {}))] * 3 + [(uid, Native(None, {}))]
    assert detect_layout(some_without_text, True).layout.name == "raw"
    assert detect_layout([("doc-1", Native("t", {}))] * 4, True).layout.name == "raw"


def test_llamaindex_flat_copies_keep_their_place_among_the_payload_keys():
    layout = get_layout("llamaindex")
    native = layout.write("n1", layout.read(LLAMA_CHROMA, True), False)
    assert list(native.fields)[:3] == ["author", "year", "tags"], "LlamaIndex writes metadata first"
    renamed = layout.with_metadata(native, {"writer": "ann", "year": 2020, "tags": ["a", "b"]}, False)
    assert list(renamed.fields)[:3] == ["writer", "year", "tags"]
    back = layout.with_metadata(renamed, {"author": "ann", "year": 2020, "tags": ["a", "b"]}, False)
    assert list(back.fields.items()) == list(native.fields.items())
