"""Pydantic models used as apply_schema schemas by tests/ops/test_schema_ops.py (by class and by
"tests.ops.sample_schemas:Name" path)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator


class Article(BaseModel):
    """Records written by Project.write_records: rank 4 (one record in five) is out of range."""

    author: Literal["ada", "grace", "linus"]
    rank: int = Field(ge=0, le=3)
    score: float
    source: str = "import"


class ScaledRank(BaseModel):
    """A validator that is not idempotent (validating its output again multiplies again): a page
    replayed after a crash must still be scaled exactly once."""

    rank: int

    @field_validator("rank")
    @classmethod
    def _scale(cls, value: int) -> int:
        return value * 10
