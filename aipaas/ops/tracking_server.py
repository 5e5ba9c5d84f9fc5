"""The MLflow tracking server that ``aipaas mlflow`` (and ``aipaas up``) run.

By default: a SQLite backend and an artifact directory under ``AIPAAS_HOME``,
artifacts proxied by the server (``--serve-artifacts``) so clients need no
access to the directory, bound to 127.0.0.1. Settings choose another backend
(PostgreSQL) or artifact store; ``mlflow.tracking_uri`` points clients at a
server run elsewhere.

The team setup (``mlflow.auth_enabled``) runs MLflow's basic-auth app
(``--app-name basic-auth``): every request needs a user, and the platform's
own account (``mlflow.username``) is the app's admin. Its configuration file
is written under home (``mlflow-auth.ini``, readable by its owner only)
without the admin password, which reaches only the server's environment
(``MLFLOW_AUTH_ADMIN_PASSWORD``). ``default_permission = READ``: a user added with
``aipaas users add`` reads every experiment and model, creates experiments
of their own (creators get MANAGE on them), but cannot edit what the platform
registered, so cannot move ``champion`` nor delete a version. The users live
beside the backend store: the same PostgreSQL database when the backend is
PostgreSQL, else a SQLite file under home.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aipaas.exceptions import ConfigurationError, RegistryUnavailableError
from aipaas.settings import Settings
from aipaas.training.registry import wait_for_server

AUTH_CONFIG = "mlflow-auth.ini"
# What every authenticated user may do on what they did not create: read.
DEFAULT_PERMISSION = "READ"
MIN_PASSWORD = 12  # MLflow's auth store refuses shorter passwords


def server_command(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> list[str]:
    """The ``mlflow server`` argv for these settings.

    ``aipaas up`` starts the same argv under its supervisor; it uses the
    venv's interpreter so no ``mlflow`` script needs to be on PATH.
    """
    host = host or settings.mlflow.host
    port = port or settings.mlflow.port
    app = ["--app-name", "basic-auth"] if settings.mlflow.auth_enabled else []
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
        *app,
    ]


def auth_config_path(settings: Settings) -> Path:
    return settings.home / AUTH_CONFIG


def auth_database_uri(settings: Settings) -> str:
    """Where the auth app keeps users and permissions: the backend's PostgreSQL, else SQLite.

    On PostgreSQL the auth app's tables (``users``, ``roles``, ...) sit beside
    MLflow's own in the same database, migrated by the auth app itself.
    """
    backend = settings.mlflow_backend_store_uri
    if backend.startswith(("postgresql", "mysql", "mssql")):
        return backend
    return f"sqlite:///{settings.home / 'mlflow-auth.db'}"


def server_env(settings: Settings) -> dict[str, str]:
    """The environment the server needs on top of the platform's: the auth app's, when on.

    The CSRF secret of the auth app is derived from the admin password, so
    every server of one platform shares it and nothing else must be stored.
    """
    env = {
        # MLflow 3's job runner (GenAI jobs, about seven huey processes) is
        # unused here, costs memory on a small machine and slows shutdown.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    if settings.mlflow.auth_enabled:
        password = settings.mlflow.password.get_secret_value()
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config_path(settings)),
            "MLFLOW_AUTH_ADMIN_USERNAME": settings.mlflow.username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": hashlib.sha256(
                f"aipaas-mlflow-csrf:{password}".encode()
            ).hexdigest(),
        }
    return env


def check_backend(settings: Settings) -> None:
    """Refuse a backend store URL whose database driver is not installed, naming the fix.

    MLflow opens its store through SQLAlchemy, where a bare ``postgresql://``
    means psycopg2; the lock has psycopg 3 only (``postgresql+psycopg://``).
    Unchecked, the server would die in its own log with an import error and
    ``aipaas up`` could only say that it exited.

    Raises:
        ConfigurationError: a PostgreSQL URL for a driver that is not installed.
    """
    scheme = settings.mlflow_backend_store_uri.split("://", 1)[0].lower()
    if not scheme.startswith("postgres"):
        return
    dialect, _, driver = scheme.partition("+")
    driver = driver or "psycopg2"  # SQLAlchemy's default for postgresql://
    # asyncpg is installed (Prefect's driver) but async-only: MLflow's store is not.
    usable = dialect == "postgresql" and driver != "asyncpg"
    if not usable or importlib.util.find_spec(driver) is None:
        raise ConfigurationError(
            f"mlflow.backend_store_uri uses {scheme}://, which MLflow cannot open here "
            f"(driver {driver!r}); use psycopg 3, which is installed: "
            "AIPAAS_MLFLOW__BACKEND_STORE_URI=postgresql+psycopg://USER:PASSWORD@HOST:5432/mlflow"
        )


def check_auth(settings: Settings) -> None:
    """Refuse what the auth app would refuse later, with the setting to change.

    Raises:
        ConfigurationError: a password MLflow's auth store rejects, or the
            auth app's dependency (``mlflow[auth]``: Flask-WTF) is not installed.
    """
    if not settings.mlflow.auth_enabled:
        return
    if len(settings.mlflow.password.get_secret_value()) < MIN_PASSWORD:
        raise ConfigurationError(
            f"mlflow.auth_enabled needs AIPAAS_MLFLOW__PASSWORD of at least {MIN_PASSWORD} "
            "characters (MLflow's auth store refuses shorter ones); set a real password"
        )
    if importlib.util.find_spec("flask_wtf") is None:
        raise ConfigurationError(
            "mlflow.auth_enabled needs MLflow's auth extra (Flask-WTF), which is not installed "
            "here; install it (`uv pip install 'mlflow[auth]'`) or turn auth off"
        )


def write_auth_config(settings: Settings) -> Path:
    """The auth app's configuration file under home, rewritten at every start; its path."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": auth_database_uri(settings),
        "admin_username": settings.mlflow.username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
    }
    path = auth_config_path(settings)
    # Owner-only: with PostgreSQL the database URL may carry its password.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        config.write(f)
    return path


def prepare(settings: Settings) -> None:
    """Create the directories the default SQLite backend and artifact store live in.

    With ``mlflow.auth_enabled``, also check the password and write the auth
    app's configuration file. A backend URL whose driver is missing is refused first.
    """
    check_backend(settings)
    check_auth(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    destination = settings.mlflow_artifacts_destination
    if "://" not in destination:
        Path(destination).mkdir(parents=True, exist_ok=True)
    if settings.mlflow.auth_enabled:
        write_auth_config(settings)


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
        env={**os.environ, **server_env(settings)},
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
    proc = subprocess.Popen(
        server_command(settings, host=host, port=port),
        env={**os.environ, **server_env(settings)},
        start_new_session=True,
    )

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
