"""Coordination moves into the database: drift and retrain histories, their state, reload signals.

Revision ID: 0003
Revises: 0002

What more than one process or host must agree on was kept in files under
``home``: the retrain guardrails' start times and decision history, how far
feedback was exported for retraining, each model's drift history and
consumed windows, and the marker promotion touched to make serving reload.
Several hosts sharing one PostgreSQL each had their own copy, so two drift
runs on two hosts could both pass the cooldown. These tables hold them now.
The old files are not read here: a migration runs on whichever host opens
the database first, and the files are on every host; each home imports its
own on first use (:func:`aipaas.coordination.import_once`, recorded in
``legacy_imports``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "drift_checks",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
    )
    op.create_index("ix_drift_checks_model", "drift_checks", ["model", "at"])
    op.create_table(
        "drift_state",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.Column("checked_at", sa.Float, nullable=False),
    )
    op.create_table(
        "retrain_starts",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
    )
    op.create_index("ix_retrain_starts_model", "retrain_starts", ["model", "started_at"])
    op.create_table(
        "retrain_history",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("record", sa.Text, nullable=False),
    )
    op.create_index("ix_retrain_history_model", "retrain_history", ["model", "at"])
    op.create_table(
        "retrain_exports",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("exported_through", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "champion_signals",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("generation", SEQ, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "legacy_imports",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("imported_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "legacy_imports",
        "champion_signals",
        "retrain_exports",
        "retrain_history",
        "retrain_starts",
        "drift_state",
        "drift_checks",
    ):
        op.drop_table(table)
