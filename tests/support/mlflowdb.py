"""A new MLflow SQLite store gets its tables copied from one migrated store, not migrated again.

MLflow creates a new store's tables by running its whole Alembic history
(about a hundred migrations, each committed): about 1 s of CPU and 3 to 4 s
of wall time per store on this machine, paid by every test with its own
``mlflow.db``. :func:`install` makes a test process build that schema once,
with MLflow's own migrations, and copy it (SQLite's backup API, about 0.05 s)
into each new SQLite store after that. The store is still a real MLflow
SQLite file on the schema MLflow made; only its creation is cheaper. Other
databases (PostgreSQL), and processes the tests start (servers, the CLI),
keep MLflow's own path.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_template: Path | None = None
_lock = threading.Lock()  # flows create stores from their task threads


def install(workdir: Path) -> None:
    """Route MLflow's table creation for new SQLite stores in this process through the copy.

    The template is built in ``workdir`` when the first store is created.
    """
    import mlflow.store.db.utils as db_utils
    import mlflow.store.model_registry.sqlalchemy_store as registry_store

    original = db_utils._initialize_tables
    if getattr(original, "_aipaas_copy", False):
        return

    def initialize_tables(engine: Any) -> None:
        target = _sqlite_file(engine)
        if target is None:
            original(engine)
            return
        copy_schema(_template_file(original, workdir), target)

    initialize_tables._aipaas_copy = True  # type: ignore[attr-defined]
    db_utils._initialize_tables = initialize_tables
    # The registry store imported the function by name.
    if getattr(registry_store, "_initialize_tables", None) is original:
        registry_store._initialize_tables = initialize_tables


def _sqlite_file(engine: Any) -> Path | None:
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _template_file(initialize: Callable[[Any], None], workdir: Path) -> Path:
    """The schema MLflow's migrations make, built once per process."""
    global _template
    with _lock:
        if _template is None:
            import sqlalchemy

            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / "mlflow-schema.db"
            engine = sqlalchemy.create_engine(f"sqlite:///{path}")
            try:
                initialize(engine)
            finally:
                engine.dispose()
            _template = path
        return _template


def copy_schema(template: Path, target: Path) -> None:
    """Copy the template database into ``target`` (its tables, indexes and Alembic version)."""
    src = sqlite3.connect(template)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
