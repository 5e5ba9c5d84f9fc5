"""``aipaas mlflow``'s server: SQLite and artifacts under home, on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aipaas.ops.tracking_server import (
    prepare,
    server_command,
    server_env,
    start_server,
    stop_server,
    wait_healthy,
)
from aipaas.settings import Settings
from aipaas.training import registry
from tests.support.net import free_port


def test_command_line_defaults_to_home(tmp_path: Path) -> None:
    s = Settings(_env_file=None, home=tmp_path)
    argv = server_command(s)
    assert argv[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert argv[argv.index("--artifacts-destination") + 1] == str(tmp_path / "mlartifacts")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "5000"
    pg = Settings(_env_file=None, home=tmp_path, mlflow={"backend_store_uri": "postgresql://db/ml"})
    assert "postgresql://db/ml" in server_command(pg, port=5001)
    assert "5001" in server_command(pg, port=5001)


def test_the_team_setup_runs_the_auth_app_without_writing_the_password(tmp_path: Path) -> None:
    password = "platform-password-1"
    s = Settings(_env_file=None, home=tmp_path, mlflow={"auth_enabled": True, "password": password})
    assert server_command(s)[-2:] == ["--app-name", "basic-auth"]
    assert "--app-name" not in server_command(Settings(_env_file=None, home=tmp_path))
    prepare(s)
    config = (tmp_path / "mlflow-auth.ini").read_text()
    assert "default_permission = READ" in config
    assert "admin_username = aipaas" in config
    assert f"database_uri = sqlite:///{tmp_path / 'mlflow-auth.db'}" in config
    assert password not in config
    assert (tmp_path / "mlflow-auth.ini").stat().st_mode & 0o777 == 0o600
    env = server_env(s)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "mlflow-auth.ini")
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == password
    assert password not in env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    # Users live beside a PostgreSQL backend store.
    pg = s.model_copy(
        update={
            "mlflow": s.mlflow.model_copy(
                update={"backend_store_uri": "postgresql+psycopg://db/ml"}
            )
        }
    )
    prepare(pg)
    assert "database_uri = postgresql+psycopg://db/ml" in (tmp_path / "mlflow-auth.ini").read_text()


@pytest.mark.slow
def test_server_stores_runs_and_artifacts_under_home(tmp_path: Path) -> None:
    import mlflow

    port = free_port()
    s = Settings(_env_file=None, home=tmp_path / "home", mlflow={"port": port})
    proc = start_server(s, log=tmp_path / "mlflow.log")
    try:
        wait_healthy(s.mlflow_tracking_uri, timeout_s=90)
        registry.connect(s)
        registry.ensure_experiment(s)
        (tmp_path / "note.txt").write_text("hello")
        with mlflow.start_run() as run:
            mlflow.log_metric("m", 1.0)
            mlflow.log_artifact(str(tmp_path / "note.txt"))
        assert registry.run_metrics(run.info.run_id) == {"m": 1.0}
        stored = list((s.home / "mlartifacts").rglob("note.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "hello"
        assert (s.home / "mlflow.db").is_file()
    finally:
        stop_server(proc)
    assert proc.poll() is not None
