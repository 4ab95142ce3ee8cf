"""Fixtures shared by the op tests: every op runs on every backend."""

from __future__ import annotations

import pytest

from tests.conftest import BACKENDS
from tests.project import Project


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def project(tmp_path, backend, store_options):
    """A project on a fresh store of `backend`, with revision base0 (150 records in docs) applied."""
    project = Project(tmp_path / "project", store_options, backend=backend, batch_size=40)
    project.write_records("docs.jsonl", 150, dim=8)
    project.write_python("base0", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.run("upgrade", "base0")
    return project
