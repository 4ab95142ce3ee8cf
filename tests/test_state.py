"""VecflowState: entries survive reopening, scopes stay apart, renames and drops move them."""

from __future__ import annotations

from vecflow.state import VecflowState


def test_record_entries_survive_reopening_and_none_removes(tmp_path):
    state = VecflowState(tmp_path / "state.db")
    state.put_records("s|a", "bits", {"r1": b"\x01", "r2": b"\x02"})
    state.put_records("s|a", "bits", {"r2": None})
    state.close()
    reopened = VecflowState(tmp_path / "state.db")
    assert reopened.get_records("s|a", "bits", ["r1", "r2", "r3"]) == {"r1": b"\x01"}
    assert reopened.get_records("s|b", "bits", ["r1"]) == {}, "scopes never share entries"


def test_many_ids_are_read_in_chunks():
    state = VecflowState.in_memory()
    state.put_records("s", "id", {str(i): str(i).encode() for i in range(1800)})
    assert len(state.get_records("s", "id", [str(i) for i in range(1800)])) == 1800


def test_collection_entries_rename_and_drop_with_their_scope():
    state = VecflowState.in_memory()
    state.put_collection("s|old", "layout", "llamaindex")
    state.put_records("s|old", "bits", {"r": b"x"})
    state.rename_scope("s|old", "s|new")
    assert state.get_collection("s|new", "layout") == "llamaindex" and state.get_collection("s|old", "layout") is None
    assert state.get_records("s|new", "bits", ["r"]) == {"r": b"x"}
    state.forget_records("s|new", ["r"])
    assert not state.has_records("s|new", "bits")
    state.drop_scope("s|new")
    assert state.get_collection("s|new", "layout") is None
