"""Shadow releases: the challenger's output beside the champion's, for each shadowed row.

Revision ID: 0005
Revises: 0004

A shadow release (``aipaas promote MODEL --shadow``) answers every request
with the champion and gives the challenger a copy off the request path; each
row's two outputs (or the challenger's error) are kept here, so the canary
flow's report can say how often and where they disagree.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "shadow_outputs",
        sa.Column("id", seq, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("champion_version", sa.String(32), nullable=False),
        sa.Column("champion_output", sa.Text, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_shadow_outputs_model", "shadow_outputs", ["model", "version", "at"])


def downgrade() -> None:
    op.drop_index("ix_shadow_outputs_model", table_name="shadow_outputs")
    op.drop_table("shadow_outputs")
