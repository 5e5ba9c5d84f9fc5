"""The MLflow adapter against a real store: versions, aliases, tags, native loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from aipaas.exceptions import ModelNotFoundError
from aipaas.settings import Settings
from aipaas.training import registry, tags
from tests.support.models import log_lgbm
from tests.support.registry import MODEL, register_tiny, tiny_settings


def test_load_native_picks_the_flavour(settings: Settings, tmp_path: Path) -> None:
    s = tiny_settings(settings, tmp_path)
    tiny = register_tiny(s)
    flavour, model = registry.load_native(f"models:/{MODEL}/{tiny}")
    assert flavour == "sklearn" and hasattr(model, "predict_proba")
    lgbm = log_lgbm(s, champion=False)
    flavour, model = registry.load_native(f"models:/diagnosis/{lgbm}")
    assert flavour == "lightgbm" and list(model.classes_) == ["benign", "malignant"]
    with pytest.raises(ModelNotFoundError, match="cannot load models:/nope/1"):
        registry.load_native("models:/nope/1")


def test_aliases_and_tags_round_trip(settings: Settings, tmp_path: Path) -> None:
    s = tiny_settings(settings, tmp_path)
    v1, v2 = register_tiny(s), register_tiny(s)
    assert registry.get_alias(MODEL, tags.CHAMPION) is None
    registry.set_alias(MODEL, tags.CHAMPION, v1)
    registry.set_tags(MODEL, v1, {tags.LOG_INPUTS: "false"})
    champion = registry.get_alias(MODEL, tags.CHAMPION)
    assert champion is not None and champion.version == v1
    assert champion.tags[tags.LOG_INPUTS] == "false"
    assert [v.version for v in registry.list_versions(MODEL)] == [v2, v1]
    registry.delete_alias(MODEL, tags.CHAMPION)
    registry.delete_alias(MODEL, tags.CHAMPION)  # deleting a missing alias is not an error
    assert registry.get_alias(MODEL, tags.CHAMPION) is None
    with pytest.raises(ModelNotFoundError, match="no registered version 9"):
        registry.get_version(MODEL, 9)
    assert registry.input_schema(f"models:/{MODEL}/{v1}") == {"a": "double", "b": "double"}


def test_a_store_made_from_the_copied_schema_is_the_one_mlflow_migrates(tmp_path: Path) -> None:
    """The tests' shortcut for new stores (tests/support/mlflowdb.py) changes nothing but time."""
    import sqlite3

    import sqlalchemy
    from mlflow.store.db import utils as db_utils
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    assert getattr(db_utils._initialize_tables, "_aipaas_copy", False), "not installed"
    migrated = tmp_path / "migrated.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{migrated}")
    try:
        db_utils.InitialBase.metadata.create_all(engine)
        db_utils._upgrade_db(engine)  # MLflow's own path: every migration
    finally:
        engine.dispose()
    copied = tmp_path / "copied.db"
    store = SqlAlchemyStore(f"sqlite:///{copied}", str(tmp_path / "artifacts"))
    assert [e.name for e in store.search_experiments()] == ["Default"]

    def tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
        with sqlite3.connect(path) as db:
            names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            # Columns and indexes (by name: their order, like that of the CHECK
            # constraints, follows the order MLflow's batch migrations happen to take).
            return {
                n: db.execute(f"PRAGMA table_info('{n}')").fetchall()
                + sorted(r[1:] for r in db.execute(f"PRAGMA index_list('{n}')"))
                for n in names
            }

    assert tables(copied) == tables(migrated) and "registered_models" in tables(copied)
    version = "SELECT version_num FROM alembic_version"
    with sqlite3.connect(copied) as a, sqlite3.connect(migrated) as b:
        assert a.execute(version).fetchall() == b.execute(version).fetchall()
