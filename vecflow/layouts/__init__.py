"""Layouts: raw, langchain, llamaindex. See docs/layouts.md and vecflow/layouts/base.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vecflow.errors import ConfigError
from vecflow.layouts.base import Layout, Logical, Native
from vecflow.layouts.langchain import LangChainLayout
from vecflow.layouts.llamaindex import LlamaIndexLayout
from vecflow.layouts.raw import RawLayout

__all__ = ["LAYOUT_NAMES", "Detected", "Layout", "Logical", "Native", "detect_layout", "get_layout"]

_LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (RawLayout(), LangChainLayout(), LlamaIndexLayout())}
LAYOUT_NAMES = tuple(_LAYOUTS)
AUTO = "auto"


def get_layout(name: str) -> Layout:
    """The layout called name; ConfigError naming the choices otherwise."""
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise ConfigError(f"unknown layout {name!r}; use one of {', '.join((AUTO, *LAYOUT_NAMES))}") from None


def check_layout_name(name: str | None, allow_auto: bool = True) -> str | None:
    if name is None or (allow_auto and name == AUTO):
        return name
    get_layout(name)
    return name


@dataclass(frozen=True)
class Detected:
    """A layout and why it was chosen (shown by `vecflow inspect` and the dry-run)."""

    layout: Layout
    reason: str


def detect_layout(sample: Sequence[tuple[str, Native]], has_text_slot: bool) -> Detected:
    """The framework layout most records of a sample of (native id, native record) match; raw
    when none does.

    LlamaIndex is recognised by its `_node_content` JSON; LangChain by `page_content` + `metadata`
    in a payload, or, on a backend with a text slot (where its records are plain ones), by UUID ids
    and a document on every record."""
    if not sample:
        return Detected(_LAYOUTS["raw"], "empty collection: nothing to detect, raw assumed")
    for layout in (_LAYOUTS["llamaindex"], _LAYOUTS["langchain"]):
        hits = sum(1 for rid, native in sample if layout.matches(rid, native, has_text_slot))
        if hits == len(sample) or (hits * 2 > len(sample) and not (has_text_slot and layout.name == "langchain")):
            return Detected(layout, f"{hits} of {len(sample)} sampled records look written by {layout.writer}")
    return Detected(_LAYOUTS["raw"], f"none of {len(sample)} sampled records carries a framework's fields")
