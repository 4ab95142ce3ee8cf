"""create the demo_docs collection from data shipped in versions/data

Revision ID: 3f2a9c1d0b7e
Revises: None
Create Date: 2026-11-21T14:00:00+00:00
"""

revision = "3f2a9c1d0b7e"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(op):
    # 300 short notes, 16-dimensional vectors; data is relative to this file's folder.
    op.create_collection("demo_docs", metric="cosine", data="data/demo_docs.jsonl")


# No downgrade(): the inverse of create_collection (drop it) is derived.
