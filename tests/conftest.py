"""Shared fixtures: isolated settings, one Prefect harness and one Ray per session.

Every test writes under its own temporary ``AIPAAS_HOME``; nothing touches the
project's ``.aipaas/``. Servers bind to 127.0.0.1 on ports the test picks.
A test module that touches the platform database asks for ``platform_settings``
(or overrides ``settings`` with it) and runs once on SQLite and once on a real
PostgreSQL (``tests/support/postgres.py``). A new MLflow SQLite store in a test
process starts from one migrated schema, copied (``tests/support/mlflowdb.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Under `uv run` Ray would zip the project as every worker's runtime env (slow).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray keeps idle workers only up to its CPU count (2 here), and a search's two
# trial actors count among them: the evaluation's task workers were killed at
# the next training and new ones started (each importing Ray, scikit-learn and
# LightGBM again, about 5 s of CPU). Keeping four lets the session's trainings
# reuse them: test_train.py went from 148 to 106 s of CPU. Only Ray's idle
# worker pool changes; trial actors are still new processes per search.
os.environ.setdefault("RAY_num_workers_soft_limit", "4")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# Tests never read the developer's .env or environment overrides.
# (AIPAAS_UPDATE_SCREENSHOTS is the test run's own switch, not a setting.)
for _key in [k for k in os.environ if k.startswith("AIPAAS_") and k != "AIPAAS_UPDATE_SCREENSHOTS"]:
    del os.environ[_key]

from aipaas.settings import Settings, get_settings  # noqa: E402
from tests.support.net import free_port  # noqa: E402,F401  (re-exported for fixtures)

pytest_plugins = ["tests.support.postgres"]

# The files that take longest (each a whole `aipaas up` with trainings and a
# demo) start first, one per xdist worker, so the run does not end waiting on
# a long file that started late. `make test` passes --no-loadscope-reorder, or
# xdist would sort files by their number of tests instead.
LONG_FILES = ("tests/e2e/test_team_postgres.py", "tests/e2e/test_up.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: every other file keeps its order


@pytest.fixture(scope="session", autouse=True)
def _mlflow_schema_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each new MLflow SQLite store copies one migrated schema (tests/support/mlflowdb.py)."""
    from tests.support import mlflowdb

    mlflowdb.install(tmp_path_factory.getbasetemp() / "mlflow-schema")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def settings(home: Path) -> Settings:
    """Settings on a temporary home, with MLflow on a SQLite file there."""
    return make_settings(home)


@pytest.fixture
def platform_settings(home: Path, db_url: str) -> Settings:
    """:func:`settings`, with the platform database on each backend in turn (``db_backend``)."""
    s = make_settings(home)
    return s.model_copy(update={"audit": s.audit.model_copy(update={"db_url": db_url})})


def make_settings(home: Path) -> Settings:
    return Settings(
        _env_file=None,
        home=home,
        mlflow={"tracking_uri": f"sqlite:///{home / 'mlflow.db'}"},
        tune={"num_samples": 2, "max_concurrent": 2, "cv_folds": 2},
    )


def settings_env(s: Settings) -> dict[str, str]:
    """The environment that makes ``get_settings()`` in another process equal ``s``'s paths."""
    return {
        "AIPAAS_HOME": str(s.home),
        "AIPAAS_MODELS_DIR": str(s.models_dir),
        "AIPAAS_MLFLOW__TRACKING_URI": s.mlflow_tracking_uri,
        "AIPAAS_TUNE__NUM_SAMPLES": str(s.tune.num_samples),
        "AIPAAS_TUNE__MAX_CONCURRENT": str(s.tune.max_concurrent),
        "AIPAAS_TUNE__CV_FOLDS": str(s.tune.cv_folds),
        **({"AIPAAS_AUDIT__DB_URL": s.audit.db_url} if s.audit.db_url else {}),
    }


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Point what code under test reads through ``get_settings()`` (flows, the CLI) here.

    ``use_settings(settings)`` exports that Settings' paths (:func:`settings_env`);
    ``use_settings(settings, {"AIPAAS_RETRAIN__COOLDOWN_MINUTES": "30"})`` adds
    more; ``use_settings(env={...})`` sets only the variables given. The cached
    settings are cleared before and after, so no test sees another's.
    """

    def use(s: Settings | None = None, env: Mapping[str, str] | None = None) -> Settings:
        values = {**(settings_env(s) if s is not None else {}), **(env or {})}
        for key, value in values.items():
            monkeypatch.setenv(key, str(value))
        get_settings.cache_clear()
        return get_settings()

    yield use
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for the whole session (about 12 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session: ray.init() costs about 4 s here."""
    import ray

    from aipaas.settings import RaySettings
    from aipaas.training.raycluster import ensure_ray

    ensure_ray(RaySettings(num_cpus=2))  # the platform's own start (local, retried once)
    yield
    ray.shutdown()
