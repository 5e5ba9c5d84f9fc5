"""The supervisor behind ``aipaas up``, with tiny child processes instead of the servers."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from aipaas.exceptions import AipaasError, AlreadyRunningError, ConfigurationError
from aipaas.ops import up
from aipaas.ops.rayhead import READY_LINE
from aipaas.settings import Settings
from tests.support.net import free_port


def _http_service(port: int, stage: int = 0) -> up.Service:
    return up.Service(
        name=f"web{port}",
        argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        description="a tiny web server",
        url=f"http://127.0.0.1:{port}",
        health_url=f"http://127.0.0.1:{port}/",
        port=port,
        port_setting="TEST_PORT",
        ready_timeout_s=30,
        stage=stage,
    )


def test_plan_follows_the_settings(settings: Settings) -> None:
    local = Settings(_env_file=None, home=settings.home, prefect={"port": 4300})
    services = {s.name: s for s in up.plan(local)}
    assert list(services) == ["prefect", "mlflow", "ray", "worker", "serving", "profiler"]
    assert services["prefect"].argv[-4:] == ["--host", "127.0.0.1", "--port", "4300"]
    assert services["serving"].argv == up.cli_argv("serve")
    assert services["profiler"].argv == up.cli_argv("profiler")
    # Servers first; what needs them (worker, serving, profiler) once they answer.
    assert [s.stage for s in services.values()] == [0, 0, 0, 1, 1, 1]
    # One Ray head for every flow run: the worker's runs join it with its token.
    ray = services["ray"]
    assert ray.argv == up.cli_argv(
        "ray-head", "--host", "127.0.0.1", "--port", str(ray.port), "--object-store-mb", "200"
    )
    assert ray.ready_line == READY_LINE
    worker_env = services["worker"].env
    assert worker_env["AIPAAS_RAY__ADDRESS"] == f"127.0.0.1:{ray.port}"
    assert worker_env["RAY_AUTH_MODE"] == ray.env["RAY_AUTH_MODE"] == "token"
    token = Path(worker_env["RAY_AUTH_TOKEN_PATH"])
    assert token == Path(ray.env["RAY_AUTH_TOKEN_PATH"])
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    # Webhooks configured: the notifier runs too, ready once it has read its sources.
    hooks = Settings(
        _env_file=None, home=settings.home, notify={"webhooks": [{"url": "https://h.example/x"}]}
    )
    notifier = {s.name: s for s in up.plan(hooks)}["notifier"]
    assert notifier.argv == up.cli_argv("notifier") and notifier.ready_line == "notifier ready"
    assert "notifier" not in services
    # Without the head (or with a cluster named), flow runs start or join Ray themselves.
    for ray_settings in ({"head": False}, {"address": "10.0.0.5:6379"}):
        other = Settings(_env_file=None, home=settings.home, ray=ray_settings)
        names = {s.name: s for s in up.plan(other)}
        assert "ray" not in names and "AIPAAS_RAY__ADDRESS" not in names["worker"].env
    # The worker registers the pool and the deployments first, then polls the pool.
    worker = services["worker"].argv
    assert worker[: len(up.cli_argv("worker", "--register"))] == up.cli_argv("worker", "--register")
    assert services["worker"].ready_check is not None
    # The open laptop default: no auth anywhere, Prefect on its SQLite file.
    assert "--app-name" not in services["mlflow"].argv
    assert "PREFECT_SERVER_API_AUTH_STRING" not in services["prefect"].env
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in services["prefect"].env
    assert not {"PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD"} & set(up.child_env(local))
    # Servers named in the settings are used, not started.
    remote = Settings(
        _env_file=None,
        home=settings.home,
        mlflow={"tracking_uri": "http://mlflow.internal:5000"},
        prefect={"api_url": "http://prefect.internal:4200/api"},
    )
    plan = up.plan(remote, serving_argv=["serve"], profiler_argv=["profile"])
    assert [(s.name, s.argv[-1]) for s in plan][2:] == [
        ("serving", "serve"),
        ("profiler", "profile"),
    ]
    assert [s.name for s in plan[:2]] == ["ray", "worker"]
    env = up.child_env(remote)
    assert env["PREFECT_API_URL"] == "http://prefect.internal:4200/api"
    assert env["AIPAAS_HOME"] == str(settings.home)


def test_the_team_setup_wires_credentials_into_every_component(settings: Settings) -> None:
    team = Settings(
        _env_file=None,
        home=settings.home,
        mlflow={"auth_enabled": True, "password": "a-long-password"},
        prefect={
            "auth_string": "aipaas:prefect-secret",
            "database_url": "postgresql+asyncpg://p:s@127.0.0.1:5432/prefect",
        },
    )
    services = {s.name: s for s in up.plan(team, mlflow_argv=["mlflow-server"])}
    prefect_env = services["prefect"].env
    assert prefect_env["PREFECT_SERVER_API_AUTH_STRING"] == "aipaas:prefect-secret"
    assert prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg")
    assert services["mlflow"].env["MLFLOW_AUTH_ADMIN_USERNAME"] == "aipaas"
    assert services["mlflow"].env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "a-long-password"
    env = up.child_env(team)
    assert env["PREFECT_API_AUTH_STRING"] == "aipaas:prefect-secret"
    assert env["MLFLOW_TRACKING_USERNAME"] == "aipaas"
    assert env["MLFLOW_TRACKING_PASSWORD"] == "a-long-password"
    assert up.prefect_headers(team) == {"Authorization": "Basic YWlwYWFzOnByZWZlY3Qtc2VjcmV0"}


def test_a_short_mlflow_password_is_refused_before_anything_starts(settings: Settings) -> None:
    team = Settings(
        _env_file=None, home=settings.home, mlflow={"auth_enabled": True, "password": "short"}
    )
    with pytest.raises(ConfigurationError, match="AIPAAS_MLFLOW__PASSWORD of at least 12"):
        up.plan(team)


def test_supervisor_starts_waits_and_stops_its_children(settings: Settings) -> None:
    first, second = free_port(), free_port()
    services = [_http_service(first), _http_service(second, stage=1)]
    seen: dict[str, object] = {}

    def on_ready(sup: up.Supervisor) -> None:
        seen["pids"] = [r.process.pid for r in sup.running]
        seen["answers"] = [up.http_ok(s.health_url or "") for s in services]
        with pytest.raises(AlreadyRunningError, match="already running"):
            up.Supervisor(settings, []).acquire()
        sup.stop_requested.set()  # what Ctrl-C does

    lines: list[str] = []
    assert up.run(settings, services, on_ready=on_ready, echo=lines.append) == 0
    assert seen["answers"] == [True, True]
    assert any("aipaas is up" in line for line in lines)
    # Stopped newest stage first, and the ports are free again.
    stopped = [line.strip().split()[1] for line in lines if line.strip().startswith("stopped")]
    assert stopped == [f"web{second}", f"web{first}"]
    assert up.port_free("127.0.0.1", first) and up.port_free("127.0.0.1", second)
    assert not (settings.run_dir / "up.json").exists()
    # The lock is released: another supervisor may start now.
    again = up.Supervisor(settings, [])
    again.acquire()
    again.release()


def test_a_slow_start_says_what_it_waits_for_then_how_long_it_took(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up, "WAIT_NOTE_S", 0.3)
    slow = up.Service(
        name="slow",
        argv=[
            sys.executable,
            "-c",
            "import time; time.sleep(1.2); print('go', flush=True); time.sleep(30)",
        ],
        description="prints its ready line after a while",
        ready_line="go",
        waits_for="the word go",
        ready_timeout_s=20,
    )
    lines: list[str] = []
    assert up.run(settings, [slow], echo=lines.append, stay=False) == 0
    waiting = [line for line in lines if line.strip().startswith("waiting for slow: the word go")]
    assert waiting and "s of 20 s; log " in waiting[0]
    [ready] = [line for line in lines if "slow ready after" in line]
    assert float(ready.split("after")[1].split()[0]) >= 1.0


def test_a_taken_port_is_refused_with_the_setting_to_change(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"port {port}.*TEST_PORT"):
            up.run(settings, [_http_service(port)], echo=lambda _: None)


def test_a_child_that_dies_while_starting_is_reported_and_the_rest_stopped(
    settings: Settings,
) -> None:
    ok = _http_service(free_port())
    broken = up.Service(
        name="broken",
        argv=[sys.executable, "-c", "import sys; print('cannot open the database'); sys.exit(3)"],
        description="fails",
        health_url="http://127.0.0.1:9/",
        stage=1,
    )
    lines: list[str] = []
    with pytest.raises(AipaasError, match="broken exited with code 3(.|\n)*cannot open"):
        up.run(settings, [ok, broken], echo=lines.append)
    assert up.port_free("127.0.0.1", ok.port or 0)
    assert any(line.strip().startswith(f"stopped {ok.name}") for line in lines)


def test_a_child_that_keeps_dying_stops_the_platform(settings: Settings) -> None:
    quitter = up.Service(
        name="quitter",
        argv=[sys.executable, "-c", "import time; time.sleep(1.5)"],
        description="exits on its own",
        ready_timeout_s=0.5,
    )
    policy = up.RestartPolicy(backoff_s=0.1, max_backoff_s=0.1, max_restarts=1)
    assert up.run(settings, [quitter], echo=lambda _: None, restart=policy) == 1


def test_without_stay_the_platform_stops_once_the_work_is_done(settings: Settings) -> None:
    """What ``aipaas demo`` does: start, run its steps, stop, without waiting for Ctrl-C."""
    service = _http_service(free_port())
    answered: list[bool] = []

    def work(sup: up.Supervisor) -> None:
        answered.append(up.http_ok(service.health_url or ""))

    lines: list[str] = []
    assert up.run(settings, [service], on_ready=work, echo=lines.append, stay=False) == 0
    assert answered == [True]
    assert "Ctrl-C stops everything." not in lines
    assert any(line.strip() == f"stopped {service.name} (exit -15)" for line in lines), lines
    assert up.port_free("127.0.0.1", service.port or 0)


def test_a_failing_step_still_stops_everything(settings: Settings) -> None:
    service = _http_service(free_port())

    def work(sup: up.Supervisor) -> None:
        raise AipaasError("the demo went wrong")

    lines: list[str] = []
    with pytest.raises(AipaasError, match="the demo went wrong"):
        up.run(settings, [service], on_ready=work, echo=lines.append, stay=False)
    assert any(line.strip().startswith(f"stopped {service.name}") for line in lines)
    assert up.port_free("127.0.0.1", service.port or 0)
    assert not (settings.run_dir / "up.json").exists()


def test_the_three_stores_on_postgresql_reach_their_servers(settings: Settings) -> None:
    """Each store's URL goes to the one process that opens it, with a driver in the lock."""
    team = Settings(
        _env_file=None,
        home=settings.home,
        audit={"db_url": "postgresql+psycopg://aipaas:s@db.internal:5432/platform"},
        mlflow={"backend_store_uri": "postgresql+psycopg://mlflow:s@db.internal:5432/mlflow"},
        prefect={"database_url": "postgresql+asyncpg://prefect:s@db.internal:5432/prefect"},
    )
    services = {s.name: s for s in up.plan(team)}
    argv = services["mlflow"].argv
    backend = argv[argv.index("--backend-store-uri") + 1]
    assert backend == "postgresql+psycopg://mlflow:s@db.internal:5432/mlflow"
    assert services["prefect"].env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == (
        "postgresql+asyncpg://prefect:s@db.internal:5432/prefect"
    )
    # Every child finds the platform database through the same setting.
    assert up.child_env(team)["AIPAAS_HOME"] == str(settings.home)
    assert not list(settings.home.glob("*.db"))


@pytest.mark.parametrize(
    ("store", "url", "message"),
    [
        ("prefect", "postgresql+psycopg://p@db:5432/prefect", "postgresql+asyncpg://"),
        ("prefect", "postgresql://p@db:5432/prefect", "only through asyncpg"),
        ("mlflow", "postgresql://m@db:5432/mlflow", "driver 'psycopg2'"),
        ("mlflow", "postgresql+asyncpg://m@db:5432/mlflow", "postgresql+psycopg://"),
        ("mlflow", "postgres://m@db:5432/mlflow", "postgresql+psycopg://"),
    ],
)
def test_a_store_url_with_a_driver_its_server_cannot_use_is_refused(
    settings: Settings, store: str, url: str, message: str
) -> None:
    section = {"prefect": {"database_url": url}, "mlflow": {"backend_store_uri": url}}[store]
    bad = Settings(_env_file=None, home=settings.home, **{store: section})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message.replace("+", r"\+")):
        up.plan(bad)
