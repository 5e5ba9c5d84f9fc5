"""A real MLflow tracking server for the drift store's tests, and hosts that share it.

The server is started as ``aipaas up`` starts it (:mod:`aipaas.ops.up`: a
SQLite backend and proxied artifacts in its own home, a free loopback port)
and stopped on exit. A "host" is a home of its own (its own reports folder,
its own profiles) pointed at that server and at one shared platform
database: what two machines of the team setup share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aipaas.ops import up
from aipaas.settings import Settings
from tests.support.servers import server_settings


@contextmanager
def mlflow_server(home: Path) -> Iterator[Settings]:
    """``mlflow server`` on ``home``; yields its settings (``mlflow.port`` is the port)."""
    s = server_settings(home)
    sup = up.Supervisor(s, [up.mlflow_service(s, up._mlflow_argv(s))], echo=lambda _: None)
    sup.acquire()
    try:
        sup.check_ports()
        try:
            sup.start()
            yield s
        finally:
            sup.stop()
    finally:
        sup.release()


def host(home: Path, server: Settings, db_url: str, **sections: dict[str, object]) -> Settings:
    """A host's settings: its own home, the shared MLflow server and platform database."""
    home.mkdir(parents=True, exist_ok=True)
    mlflow = {"host": server.mlflow.host, "port": server.mlflow.port, **sections.pop("mlflow", {})}
    return Settings(
        _env_file=None,
        home=home,
        mlflow=mlflow,
        audit={"db_url": db_url},
        **sections,  # type: ignore[arg-type]
    )
