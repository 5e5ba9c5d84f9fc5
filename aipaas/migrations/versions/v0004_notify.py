"""Notifications: each source's cursor, the events found, and their delivery to each webhook.

Revision ID: 0004
Revises: 0003

The notifier (:mod:`aipaas.ops.notify`) reads what the platform already records
(the audit chain, drift checks, Prefect's flow runs, usage against quotas)
and sends webhooks. So that a restart neither loses nor repeats an event,
everything it has seen and sent is kept here, not in its memory: how far it
has read each source (``notify_cursors``), every event it found, under an id
derived from its source so finding it twice stores it once
(``notify_events``), and per event and webhook whether it was delivered,
how often it was tried and why it failed (``notify_deliveries``). A webhook
is named by a hash of its URL: a Slack URL is a secret and is not stored.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_cursors",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("position", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "notify_events",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("found_at", sa.Float, nullable=False),
    )
    op.create_table(
        "notify_deliveries",
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("webhook", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_at", sa.Float, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_notify_events_at", "notify_events", ["at"])
    op.create_index(
        "ix_notify_deliveries_due", "notify_deliveries", ["webhook", "state", "next_at"]
    )


def downgrade() -> None:
    for table in ("notify_deliveries", "notify_events", "notify_cursors"):
        op.drop_table(table)
