"""The MLflow tracking server that ``aipaas mlflow`` (and ``aipaas up``) run.

By default: a SQLite backend and an artifact directory under ``AIPAAS_HOME``,
artifacts proxied by the server (``--serve-artifacts``) so clients need no
access to the directory, bound to 127.0.0.1. Settings choose another backend
(PostgreSQL) or artifact store; ``mlflow.tracking_uri`` points clients at a
server run elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aipaas.exceptions import RegistryUnavailableError
from aipaas.settings import Settings
from aipaas.training.registry import wait_for_server


def server_command(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> list[str]:
    """The ``mlflow server`` argv for these settings.

    ``aipaas up`` starts the same argv under its supervisor; it uses the
    venv's interpreter so no ``mlflow`` script needs to be on PATH.
    """
    host = host or settings.mlflow.host
    port = port or settings.mlflow.port
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.mlflow_backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        settings.mlflow_artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def prepare(settings: Settings) -> None:
    """Create the directories the default SQLite backend and artifact store live in."""
    settings.home.mkdir(parents=True, exist_ok=True)
    destination = settings.mlflow_artifacts_destination
    if "://" not in destination:
        Path(destination).mkdir(parents=True, exist_ok=True)


def start_server(
    settings: Settings, *, host: str | None = None, port: int | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the server in the background; the caller stops it (``terminate()``)."""
    prepare(settings)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    # Its own process group: `mlflow server` runs uvicorn as a child, and
    # stop_server() must take both down.
    return subprocess.Popen(
        server_command(settings, host=host, port=port),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    """Block until ``<url>/health`` answers; RegistryUnavailableError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            wait_for_server(url, attempts=1)
            return
        except RegistryUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_server(settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    """Run the server in the foreground until it exits, Ctrl-C or SIGTERM; its exit code.

    The server runs in its own process group and is stopped as a group
    (``mlflow server`` keeps uvicorn as a child, which otherwise outlives it).
    """
    prepare(settings)
    proc = subprocess.Popen(server_command(settings, host=host, port=port), start_new_session=True)

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_server(proc, timeout_s=10)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
