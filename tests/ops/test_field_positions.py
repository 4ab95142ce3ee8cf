"""Field ops keep metadata key order: applications that keep metadata as JSON text read it bytewise."""

from __future__ import annotations

from vecflow.operations.fields import _position, _with_field
from vecflow.runtime.snapshots import ABSENT


def test_setting_an_existing_field_keeps_its_place():
    assert list(_with_field({"a": 1, "b": 2, "c": 3}, "b", 9)) == ["a", "b", "c"]


def test_restoring_a_dropped_field_puts_it_back_where_it_was():
    meta = {"a": 1, "b": 2, "c": 3}
    position = _position(meta, "b")
    dropped = _with_field(meta, "b", ABSENT)
    restored = _with_field(dropped, "b", 2, position)
    assert list(restored.items()) == list(meta.items())


def test_a_new_field_goes_last():
    assert list(_with_field({"a": 1}, "z", 0)) == ["a", "z"]
    assert _position({"a": 1}, "z") is None
