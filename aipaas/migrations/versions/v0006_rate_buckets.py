"""Rate buckets: per-key token buckets every serving host shares (PostgreSQL).

Revision ID: 0006
Revises: 0005

One row per API key: its tokens after the last check, that check's time on
the database's clock, and whether it took its tokens
(aipaas/inference/ratelimit.py). UNLOGGED on PostgreSQL: a check writes no
WAL and waits for no fsync; a crash or a failover empties the table, which
gives each key at most one extra burst. SQLite keeps the table too (same
schema everywhere) but serving never uses it there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "rate_buckets",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("last", sa.Float, nullable=False),
        sa.Column("granted", sa.Boolean, nullable=False),
        prefixes=["UNLOGGED"] if postgres else [],
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
