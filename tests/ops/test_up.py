"""The supervisor behind ``aipaas up``, with tiny child processes instead of the servers."""

from __future__ import annotations

import socket
import sys

import pytest

from aipaas.exceptions import AipaasError, AlreadyRunningError, ConfigurationError
from aipaas.ops import up
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
    names = [s.name for s in up.plan(local, serving_argv=["serve"])]
    assert names == ["prefect", "mlflow", "runner", "serving"]
    prefect = up.plan(local)[0]
    assert prefect.argv[-4:] == ["--host", "127.0.0.1", "--port", "4300"]
    # Servers named in the settings are used, not started; absent commands are skipped.
    remote = Settings(
        _env_file=None,
        home=settings.home,
        mlflow={"tracking_uri": "http://mlflow.internal:5000"},
        prefect={"api_url": "http://prefect.internal:4200/api"},
    )
    assert [s.name for s in up.plan(remote, profiler_argv=["profiler"])] == ["runner", "profiler"]
    env = up.child_env(remote)
    assert env["PREFECT_API_URL"] == "http://prefect.internal:4200/api"
    assert env["AIPAAS_HOME"] == str(settings.home)


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


def test_a_child_dying_later_stops_the_platform(settings: Settings) -> None:
    quitter = up.Service(
        name="quitter",
        argv=[sys.executable, "-c", "import time; time.sleep(1.5)"],
        description="exits on its own",
        ready_timeout_s=0.5,
    )
    assert up.run(settings, [quitter], echo=lambda _: None) == 1
