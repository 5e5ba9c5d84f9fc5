"""The audit chain's head anchor moves into the database; ``seq`` becomes 64-bit on PostgreSQL.

Revision ID: 0002
Revises: 0001

``audit_log.seq`` was a 32-bit INTEGER on PostgreSQL: about 250 days at 100
requests a second. The change rewrites the table (it is locked meanwhile);
SQLite's INTEGER is already 64-bit and stays as it is (the rowid).

One row (id 1): the last committed (seq, hash) and an HMAC of both under the
audit key, written in the same transaction as the records, so every process
sees the same head and :func:`aipaas.audit.verify` catches records cut off
the end. The row is seeded from the old head file when there is one (it may
name records already cut off), else from the chain's last record; without
the audit key (``settings`` not handed over) it is left for the first append
to write.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("audit_log", "seq", type_=sa.BigInteger, existing_nullable=False)
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", SEQ, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )
    settings = context.config.attributes.get("settings")
    if settings is None:
        return
    from aipaas import audit  # the running aipaas: its key and MAC

    bind = op.get_bind()
    tail = bind.execute(
        sa.text("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    ).first()
    anchor = (int(tail[0]), str(tail[1])) if tail is not None else None
    legacy = Path(settings.home) / "audit-head"
    try:
        seq_text, hash_ = legacy.read_text().split()[:2]
        noted = (int(seq_text), hash_)
    except (FileNotFoundError, ValueError):
        noted = None
    if noted is not None and (anchor is None or noted[0] > anchor[0]):
        anchor = noted
    if anchor is not None:
        mac = audit.head_mac(audit.chain_key(settings), *anchor)
        op.bulk_insert(head, [{"id": 1, "seq": anchor[0], "hash": anchor[1], "mac": mac}])


def downgrade() -> None:
    op.drop_table("audit_head")
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("audit_log", "seq", type_=sa.Integer, existing_nullable=False)
