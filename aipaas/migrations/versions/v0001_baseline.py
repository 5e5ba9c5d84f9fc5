"""The baseline: the schema aipaas made with ``create_all`` before it had migrations.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from aipaas.migrations.baseline import baseline_metadata

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind())


def downgrade() -> None:
    baseline_metadata().drop_all(op.get_bind())
