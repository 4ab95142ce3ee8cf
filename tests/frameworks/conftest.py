"""The framework tests need the real frameworks (the `test` extra). Without them they are not
collected locally; under CI=true a missing framework is an import error, never a skip."""

from __future__ import annotations

import importlib.util

from tests.conftest import IN_CI

FRAMEWORKS = ("langchain_core", "langchain_chroma", "langchain_qdrant", "langchain_community", "llama_index")
_MISSING = [name for name in FRAMEWORKS if importlib.util.find_spec(name) is None]

if _MISSING and not IN_CI:
    collect_ignore_glob = ["test_*.py"]
