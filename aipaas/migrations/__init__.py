"""Alembic migrations of the platform database; run by :func:`aipaas.db.upgrade`, never by hand."""
