"""Alembic's entry point: migrate the connection :func:`aipaas.db.upgrade` hands over.

Online only, on the caller's connection and transaction: the caller holds the
lock that keeps two processes from migrating at once, so this module never
opens a connection of its own.
"""

from __future__ import annotations

from alembic import context

from aipaas import db

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("the platform database is migrated by `aipaas db upgrade`, not by alembic")

context.configure(
    connection=connection,
    target_metadata=db.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
