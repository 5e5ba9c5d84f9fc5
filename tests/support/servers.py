"""The platform's Prefect and MLflow servers, started as ``aipaas up`` starts them.

The tests of the work pool and of the team setup need the real servers with
the real wiring (auth app, API auth string, environment), not a harness: they
are started by the same :class:`aipaas.ops.up.Supervisor`, on free loopback
ports in the test's home, and stopped by the test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aipaas.ops import up
from aipaas.settings import Settings
from tests.support.net import free_port

CLI = [sys.executable, "-c", "from aipaas.cli import main; main()"]


def server_settings(home: Path, **sections: dict[str, object]) -> Settings:
    """Settings on ``home`` with Prefect and MLflow on free ports (plus ``sections``)."""
    prefect = {"port": free_port(), **sections.pop("prefect", {})}
    mlflow = {"port": free_port(), **sections.pop("mlflow", {})}
    return Settings(_env_file=None, home=home, prefect=prefect, mlflow=mlflow, **sections)


def cli_env(s: Settings, **extra: str) -> dict[str, str]:
    """The environment of an ``aipaas`` command (or worker) on these servers.

    The developer's own ``AIPAAS_``/``PREFECT_``/``MLFLOW_`` variables are
    dropped; the team settings go in as a person would set them.
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIPAAS_", "PREFECT_", "MLFLOW_"))
    }
    env |= up.child_env(s)
    env |= {
        "AIPAAS_MLFLOW__AUTH_ENABLED": str(s.mlflow.auth_enabled).lower(),
        "AIPAAS_MLFLOW__USERNAME": s.mlflow.username,
        "AIPAAS_MLFLOW__PASSWORD": s.mlflow.password.get_secret_value(),
        "AIPAAS_PREFECT__AUTH_STRING": s.prefect.auth_string.get_secret_value(),
        "AIPAAS_PREFECT__WORK_POOL": s.prefect.work_pool,
    }
    return env | extra


@contextmanager
def prefect_and_mlflow(s: Settings) -> Iterator[up.Supervisor]:
    """Both servers up (stage by stage, as ``up`` does); stopped on exit."""
    services = [up.prefect_service(s), up.mlflow_service(s, up._mlflow_argv(s))]
    sup = up.Supervisor(s, services, echo=lambda _: None)
    sup.acquire()
    try:
        sup.check_ports()
        try:
            sup.start()
            yield sup
        finally:
            sup.stop()
    finally:
        sup.release()
