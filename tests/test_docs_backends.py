"""Every backend option is documented on its page, and the store sections shown there are valid."""

from __future__ import annotations

import inspect
import textwrap

import pytest

from tests.test_docs import DOCS, code_blocks, read
from vecflow.backends import backend_class, known_backends
from vecflow.config import load_config
from vecflow.layouts import LAYOUT_NAMES

STORE_OPTIONS_OF_EVERY_BACKEND = {"backend", "layout"}


def constructor_options(backend: str) -> set[str]:
    return {name for name in inspect.signature(backend_class(backend).__init__).parameters if name != "self"}


@pytest.mark.parametrize("backend", known_backends())
def test_every_option_of_a_backend_is_documented_on_its_page(backend):
    page = read(f"backends/{backend}.md")
    missing = sorted(option for option in constructor_options(backend) if f"`{option}`" not in page)
    assert not missing, f"docs/backends/{backend}.md does not document option(s) {missing}"


def test_the_layout_option_is_documented_for_every_store():
    assert "| `layout` |" in read("configuration.md")


@pytest.mark.parametrize("page", sorted(p.name for p in (DOCS / "backends").glob("*.md")))
def test_store_sections_shown_on_backend_pages_load_and_name_real_options(page, tmp_path, monkeypatch):
    for secret in ("CHROMA_TOKEN", "QDRANT_API_KEY", "REDIS_PASSWORD"):
        monkeypatch.setenv(secret, "s3cret")
    blocks = [body for lang, body in code_blocks(read(f"backends/{page}")) if lang == "ini"]
    assert blocks, f"docs/backends/{page} shows no store section"
    for body in blocks:
        ini = tmp_path / "vecflow.ini"
        ini.write_text("[vecflow]\nscript_location = %(here)s/versions\n\n" + textwrap.dedent(body), encoding="utf-8")
        config = load_config(ini)
        for name, store in config.stores.items():
            unknown = set(store.options) - constructor_options(store.backend) - STORE_OPTIONS_OF_EVERY_BACKEND
            assert not unknown, f"docs/backends/{page} [store:{name}] uses unknown option(s) {sorted(unknown)}"


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_every_layout_is_documented_in_layouts_md_with_the_backends_that_write_it(layout):
    text = read("layouts.md")
    assert f"`{layout}`" in text
    for backend in known_backends():
        if layout in backend_class(backend).layouts:
            page = read(f"backends/{backend}.md")
            assert layout in page, f"docs/backends/{backend}.md does not mention its {layout} layout"


@pytest.mark.parametrize("backend", known_backends())
def test_the_batch_sizes_an_adapter_chooses_are_the_ones_its_docs_state(backend):
    cls = backend_class(backend)
    sizes = f"{cls.preferred_read_batch:,}", f"{cls.preferred_write_batch:,}"
    table = read("backends.md").partition("## Batch sizes")[2].partition("\n## ")[0]
    rows = [line.split("|")[2:4] for line in table.splitlines() if line.startswith(f"| `{backend}` |")]
    assert len(rows) == 1, f"docs/backends.md#batch-sizes has no row for {backend}"
    stated = rows[0][0].strip(), rows[0][1].strip().partition(",  ")[0]
    assert stated[0] == sizes[0] and stated[1].startswith(sizes[1]), \
        f"docs/backends.md#batch-sizes says {backend} reads {stated[0]} and writes {stated[1]}; it chooses {sizes}"
    page = read(f"backends/{backend}.md")
    assert all(size in page for size in sizes), f"docs/backends/{backend}.md does not state its sizes {sizes}"
