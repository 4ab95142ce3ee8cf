"""derive a slug from the title, drop legacy_rank

Revision ID: c7d5e2a90f14
Revises: 8b41e07c5d93
Create Date: 2026-11-21T14:00:00+00:00
"""

revision = "c7d5e2a90f14"
down_revision = "8b41e07c5d93"
branch_labels = None
depends_on = None


def upgrade(op):
    op.set_field("demo_docs", "slug", "title | lower | replace(' ', '-')")
    # drop_field snapshots the dropped values, so the derived downgrade restores them exactly.
    op.drop_field("demo_docs", "legacy_rank")
