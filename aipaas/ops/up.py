"""The process supervisor behind ``aipaas up`` (``make up``).

It starts the platform's servers on 127.0.0.1 as child processes, waits
until each answers, prints where they are, and on Ctrl-C (SIGINT or SIGTERM)
stops every child it started, newest first, each with SIGTERM and then, after
a grace period, SIGKILL. One ``aipaas up`` per home: an exclusive lock on
``<run_dir>/up.lock`` is held for the supervisor's lifetime, so a second one
fails with :class:`AlreadyRunningError` naming the first.

Each child runs in its own session (so the terminal's Ctrl-C reaches only the
supervisor, which then stops the children in order) and, on Linux, is told to
receive SIGTERM if the supervisor dies without cleaning up. Logs go to
``<run_dir>/logs/<service>.log``; ``<run_dir>/up.json`` lists what is running.

Once everything is up, a child that dies on its own is started again, not
the platform stopped: after a pause that doubles with each crash in a row
(:data:`RESTART_BACKOFF_S` up to :data:`RESTART_BACKOFF_MAX_S`), through the
same readiness check as at start-up (the others keep running meanwhile), its
new pid written to ``up.json``, the restart said in ``up``'s output and in
the child's log, and audited (``platform.restarted`` on the audit chain).
A crash loop is not hidden behind restarts: a child that dies
:data:`MAX_RESTARTS` + 1 times in a row, no run of it lasting
:data:`STABLE_S` after it was ready, stops the platform with its log tail
(exit 1). Restarts happen on the supervisor's own thread, between Ctrl-C
checks, so a stop never races a restart; only the audit append runs on
another thread, so a slow or unreachable database delays no restart and
crashes nothing (``up`` then says the restart could not be audited).

This module knows processes, ports and health URLs; what to start is built by
:func:`plan`, and what to do once everything is up is the caller's callback.

Flow runs execute on a Prefect process work pool: before its local worker
starts, ``aipaas worker --register`` creates the pool and registers the
deployments on it (:func:`flows.deployments.register`), so a worker on another machine
(``aipaas worker``) takes runs from the same pool. In the team setup every
child gets the credentials from settings: ``PREFECT_API_AUTH_STRING`` when
``prefect.auth_string`` is set (the server then requires it), and the MLflow
login when ``mlflow.auth_enabled``; ``up``'s own probes send them too.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import ipaddress
import json
import os
import queue
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from aipaas import audit
from aipaas.exceptions import AipaasError, AlreadyRunningError, ConfigurationError
from aipaas.files import atomic_write_json, read_json
from aipaas.ops.net import free_port
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training.registry import credentials_env

STOP_GRACE_S = 15.0
# Restarts: the pause before the n-th crash in a row is restarted is
# RESTART_BACKOFF_S * 2**(n-1), at most RESTART_BACKOFF_MAX_S; after
# MAX_RESTARTS restarts in a row (none of whose runs lasted STABLE_S once
# ready) the next crash stops the platform. A run that lasted resets the count.
# The first pause is short: a one-off crash of serving should cost its
# clients little more than serving's own start (about 7 s here, mostly imports).
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
MAX_RESTARTS = 5
STABLE_S = 60.0
AUDIT_WAIT_S = 10.0  # at stop, how long queued restart events may still take to commit
WORKER_RUN_LIMIT = 4  # concurrent flow runs of one worker (a paused promotion holds one)
POLL_S = 0.5
WAIT_NOTE_S = 10.0  # a start that takes longer says what it waits for, this often
WATCH_S = 0.2  # how often a running platform's children are looked at (a waitpid each)


@dataclass
class Service:
    """One child process and how to tell that it is ready."""

    name: str
    argv: list[str]
    description: str
    url: str | None = None  # what a person opens; printed
    health_url: str | None = None  # answers 200 when ready
    ca_file: Path | None = None  # an https health URL's certificate is verified against it
    host: str = "127.0.0.1"
    port: int | None = None  # must be free before starting
    # Ready when this returns True (instead of a health URL); probed like one. It
    # gets the wall-clock time (time.time()) this run of the child was started.
    ready_check: Callable[[float], bool] | None = None
    # Ready once the child writes a line containing this to its log.
    ready_line: str | None = None
    # What ``up`` says it waits for while the service starts (default: its probe).
    waits_for: str = ""
    port_setting: str = ""  # the setting that moves it, for the error message
    ready_timeout_s: float = 120.0
    # Started only after every service of a lower stage is ready.
    stage: int = 0
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = PROJECT_ROOT


@dataclass
class Running:
    service: Service
    process: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]
    log_offset: int = 0  # where this start's output begins in the log
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)  # the same instant, wall clock
    ready_at: float | None = None  # time.monotonic() once it answered its readiness check


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that died is started again, and when ``up`` gives up on it instead."""

    backoff_s: float = RESTART_BACKOFF_S
    max_backoff_s: float = RESTART_BACKOFF_MAX_S
    max_restarts: int = MAX_RESTARTS
    stable_s: float = STABLE_S

    def delay(self, in_a_row: int) -> float:
        """The pause before restarting the ``in_a_row``-th crash in a row: doubling, capped."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (in_a_row - 1)))


@dataclass
class _Restarts:
    """One service's crash history while ``up`` runs."""

    in_a_row: int = 0  # crashes since its last run that lasted ``stable_s`` once ready
    total: int = 0  # restarts since ``up`` started
    due: float | None = None  # time.monotonic() of the pending restart; None when none is
    died_at: float = 0.0
    exit_code: int | None = None


def cli_argv(*args: str) -> list[str]:
    """Argv for an ``aipaas`` subcommand with this interpreter (no PATH needed)."""
    script = Path(sys.executable).with_name("aipaas")
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-c", "from aipaas.cli import main; main()", *args]


def child_env(settings: Settings) -> dict[str, str]:
    """The environment every child gets: the same home, ports and servers as ``up``."""
    env = {
        "AIPAAS_HOME": str(settings.home),
        "AIPAAS_MODELS_DIR": str(settings.models_dir),
        "AIPAAS_MLFLOW__HOST": settings.mlflow.host,
        "AIPAAS_MLFLOW__PORT": str(settings.mlflow.port),
        "AIPAAS_MLFLOW__TRACKING_URI": settings.mlflow_tracking_uri,
        "AIPAAS_PREFECT__HOST": settings.prefect.host,
        "AIPAAS_PREFECT__PORT": str(settings.prefect.port),
        "AIPAAS_PREFECT__API_URL": settings.prefect_api_url,
        "AIPAAS_SERVING__HOST": settings.serving.host,
        "AIPAAS_SERVING__PORT": str(settings.serving.port),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_HOME": str(settings.home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # Flow results readable through the API (run_deployment, the UI).
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PYTHONUNBUFFERED": "1",
    }
    auth = settings.prefect.auth_string.get_secret_value()
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    env |= credentials_env(settings)
    return env


def prefect_headers(settings: Settings) -> dict[str, str]:
    """What a raw HTTP client sends to the Prefect API: Basic auth with the auth string."""
    auth = settings.prefect.auth_string.get_secret_value()
    if not auth:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def plan(
    settings: Settings,
    *,
    serving_argv: list[str] | None = None,
    profiler_argv: list[str] | None = None,
    mlflow_argv: list[str] | None = None,
) -> list[Service]:
    """What ``aipaas up`` (and ``aipaas demo``) start for these settings.

    The Prefect and MLflow servers are started only when the settings point
    at the local default (no ``prefect.api_url`` / ``mlflow.tracking_uri``
    given); otherwise the platform uses the servers named there. A worker on
    the work pool (after the deployments are registered), the serving API
    and the profiler always run here.

    Args:
        settings: Ports, hosts and home.
        serving_argv: The serving API's command; default ``aipaas serve``.
        profiler_argv: The profiler's command; default ``aipaas profiler``.
        mlflow_argv: The MLflow server's command; default ``mlflow server`` on
            the SQLite file and artifact directory under home.
    """
    services: list[Service] = []
    if not settings.prefect.api_url:
        services.append(prefect_service(settings))
    if not settings.mlflow.tracking_uri:
        services.append(mlflow_service(settings, mlflow_argv or _mlflow_argv(settings)))
    ray_env: dict[str, str] = {}
    if settings.ray.head and not settings.ray.address:
        head = ray_head_service(settings)
        services.append(head)
        ray_env = {"AIPAAS_RAY__ADDRESS": f"{head.host}:{head.port}", **ray_auth_env(settings)}
    services.append(worker_service(settings, ray_env=ray_env))
    serving = serving_service(settings, serving_argv or cli_argv("serve"))
    if settings.serving.backend == "ray":
        serving.env.update(ray_env)  # Ray Serve joins up's Ray head (address + auth token)
    services.append(serving)
    services.append(profiler_service(profiler_argv or cli_argv("profiler")))
    if settings.notify.webhooks:
        services.append(notifier_service(cli_argv("notifier")))
    return services


def prefect_service(settings: Settings) -> Service:
    """``prefect server``: the UI, the API, the schedules (stage 0).

    Its database is the SQLite file under ``PREFECT_HOME`` unless
    ``prefect.database_url`` names one (PostgreSQL in the team setup); with
    ``prefect.auth_string`` every API request but the health probe needs it.
    """
    host, port = settings.prefect.host, settings.prefect.port
    env: dict[str, str] = {}
    database = check_prefect_database(settings)
    if database:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database
    auth = settings.prefect.auth_string.get_secret_value()
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    return Service(
        name="prefect",
        argv=[sys.executable, "-m", "prefect", "server", "start"]
        + ["--host", host, "--port", str(port)],
        description="Prefect UI and API: flow runs, deployments, schedules",
        url=f"http://{host}:{port}",
        health_url=f"http://{host}:{port}/api/health",
        host=host,
        port=port,
        port_setting="AIPAAS_PREFECT__PORT",
        env=env,
    )


def check_prefect_database(settings: Settings) -> str:
    """``prefect.database_url``, refused unless Prefect's server can open it; empty: its SQLite.

    Prefect's server reaches PostgreSQL only through asyncpg (it passes
    asyncpg's own connection arguments), so ``postgresql://`` or
    ``postgresql+psycopg://``, right for the other two stores, would let it
    start and then die in its log; ``up`` says so before anything starts.

    Raises:
        ConfigurationError: a PostgreSQL URL with another driver.
    """
    database = settings.prefect.database_url.get_secret_value()
    scheme = database.split("://", 1)[0].lower()
    if scheme.startswith("postgres") and scheme != "postgresql+asyncpg":
        raise ConfigurationError(
            f"prefect.database_url uses {scheme}://, but Prefect's server talks to "
            "PostgreSQL only through asyncpg: "
            "AIPAAS_PREFECT__DATABASE_URL=postgresql+asyncpg://USER:PASSWORD@HOST:5432/prefect"
        )
    return database


def mlflow_service(settings: Settings, argv: list[str]) -> Service:
    """``mlflow server``: tracking and the model registry (stage 0)."""
    host, port = settings.mlflow.host, settings.mlflow.port
    return Service(
        name="mlflow",
        argv=argv,
        description="MLflow UI, tracking and model registry",
        env=server_env(settings),
        url=f"http://{host}:{port}",
        health_url=f"http://{host}:{port}/health",
        host=host,
        port=port,
        port_setting="AIPAAS_MLFLOW__PORT",
    )


def ray_head_service(settings: Settings) -> Service:
    """One Ray head node on loopback for every flow run of this ``up`` (stage 0).

    Its flow runs join it (the worker gets ``AIPAAS_RAY__ADDRESS``), so none
    pays Ray's start; see :mod:`aipaas.ops.rayhead`. ``ray.head: false``
    leaves each flow run to start its own Ray, as without ``up``.
    """
    from aipaas.ops.rayhead import READY_LINE, RETRY_PAUSE_S, START_ATTEMPTS

    host = "127.0.0.1"
    port = settings.ray.head_port or free_port(host)
    sizing = ["--object-store-mb", str(settings.ray.object_store_memory_mb)]
    if settings.ray.num_cpus is not None:
        sizing += ["--num-cpus", str(settings.ray.num_cpus)]
    return Service(
        name="ray",
        argv=cli_argv("ray-head", "--host", host, "--port", str(port), *sizing),
        env=ray_auth_env(settings),
        description=f"Ray head node {host}:{port}: hyperparameter search and evaluation",
        host=host,
        port=port,
        port_setting="AIPAAS_RAY__HEAD_PORT",
        ready_line=READY_LINE,
        waits_for="its node to register with Ray's GCS (a timed-out start is retried)",
        # Ray gives a node 30 s to register; each retry pauses a little longer.
        ready_timeout_s=START_ATTEMPTS * 45.0 + RETRY_PAUSE_S * START_ATTEMPTS**2,
    )


def ray_auth_env(settings: Settings) -> dict[str, str]:
    """Ray's token authentication for ``up``'s head and the drivers that join it.

    Ray's GCS listens on the machine's address, not loopback only (Ray
    refuses to advertise 127.0.0.1), and whoever reaches it can run code; so
    the head requires a token. One random token per home, in
    ``<run_dir>/ray-auth-token`` (mode 0600), not Ray's shared
    ``~/.ray/auth_token``.
    """
    path = settings.run_dir / "ray-auth-token"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def worker_service(settings: Settings, *, ray_env: dict[str, str] | None = None) -> Service:
    """A Prefect worker on the platform's work pool (stage 1: needs the Prefect API).

    ``aipaas worker --register`` first creates the pool and registers the
    deployments on it, then polls the pool; it is ready once the API lists it
    as an online worker of the pool. With ``ray_env`` (``up``'s Ray head:
    its address and token) its flow runs join that Ray instead of starting
    one each.
    """
    name = f"aipaas-up-{socket.gethostname()}-{os.getpid()}"
    return Service(
        name="worker",
        argv=cli_argv("worker", "--register", "--name", name),
        description=(
            f"Prefect worker on work pool {settings.prefect.work_pool!r} "
            f"(up to {WORKER_RUN_LIMIT} flow runs at once)"
            + (f", Ray at {ray_env['AIPAAS_RAY__ADDRESS']}" if ray_env else "")
        ),
        ready_check=lambda started_at: worker_online(settings, name, since=started_at),
        waits_for=f"the Prefect API to list it online on work pool {settings.prefect.work_pool!r}",
        stage=1,
        env=dict(ray_env or {}),
    )


def worker_online(settings: Settings, name: str, *, since: float | None = None) -> bool:
    """Whether the work pool lists a worker called ``name`` as online.

    With ``since`` (epoch seconds), only a worker whose last heartbeat is not
    older counts: a worker restarted under its old name is not ready while the
    pool still lists its dead predecessor online (until heartbeats are missed).
    """
    workers = prefect_api(settings, f"/work_pools/{settings.prefect.work_pool}/workers/filter", {})
    if not isinstance(workers, list):
        return False
    return any(
        w.get("name") == name
        and w.get("status") == "ONLINE"
        and (since is None or _epoch(w.get("last_heartbeat_time")) >= since)
        for w in workers
    )


def _epoch(timestamp: Any) -> float:
    """An API timestamp (ISO 8601) as epoch seconds; 0 when absent or unreadable."""
    try:
        return datetime.fromisoformat(str(timestamp)).timestamp()
    except ValueError:
        return 0.0


def prefect_api(settings: Settings, path: str, body: Any = None) -> Any:
    """``path`` on the platform's Prefect API as JSON (POST when ``body`` is given).

    None when it does not answer 200, so a caller can poll.
    """
    request = urllib.request.Request(
        f"{settings.prefect_api_url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **prefect_headers(settings)},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def serving_service(settings: Settings, argv: list[str]) -> Service:
    """The inference API (stage 1: loads champions from the registry); HTTPS when TLS is set.

    With ``serving.tls_certfile`` and ``tls_keyfile``, the child gets them in
    its environment and the readiness probe uses https, verified against
    that certificate (see :func:`http_ok`).
    """
    host, port = settings.serving.host, settings.serving.port
    check_browser_settings(settings)
    tls = serving_tls(settings)
    scheme = "https" if tls else "http"
    env: dict[str, str] = {}
    if tls is not None:
        env = {
            "AIPAAS_SERVING__TLS_CERTFILE": str(tls[0]),
            "AIPAAS_SERVING__TLS_KEYFILE": str(tls[1]),
        }
    return Service(
        name="serving",
        argv=argv,
        description="inference API (POST /predict, /docs)",
        url=f"{scheme}://{host}:{port}/docs",
        health_url=f"{scheme}://{host}:{port}/healthz",
        ca_file=tls[0] if tls else None,
        host=host,
        port=port,
        port_setting="AIPAAS_SERVING__PORT",
        stage=1,
        env=env,
    )


def check_browser_settings(settings: Settings) -> None:
    """The CORS origins and static folder, checked before a server is started with them.

    Raises:
        ConfigurationError: a malformed origin, or a static folder that is not one.
    """
    from aipaas.inference.keys import parse_origins

    parse_origins(settings.serving.cors_origins)
    static = settings.serving.static_dir
    if static is not None and not static.is_dir():
        raise ConfigurationError(
            f"serving.static_dir {str(static)!r} is not a folder; create it or unset it"
        )


def serving_tls(settings: Settings) -> tuple[Path, Path] | None:
    """The serving certificate chain and key, checked; None when TLS is off.

    Raises:
        ConfigurationError: only one of the two is set, a file is missing,
            or they do not load together (not PEM, key and certificate do
            not match, an encrypted key).
    """
    cert, key = settings.serving.tls_certfile, settings.serving.tls_keyfile
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = (
            ("tls_certfile", "tls_keyfile") if key is None else ("tls_keyfile", "tls_certfile")
        )
        raise ConfigurationError(
            f"serving.{given} is set but serving.{missing} is not: set both "
            f"(AIPAAS_SERVING__TLS_CERTFILE, AIPAAS_SERVING__TLS_KEYFILE) or neither"
        )
    for name, path in (("tls_certfile", cert), ("tls_keyfile", key)):
        if not path.is_file():
            raise ConfigurationError(f"serving.{name}: no such file {path}")
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, OSError) as err:
        raise ConfigurationError(
            f"serving TLS: {cert} and {key} do not load as a PEM certificate chain and its "
            f"unencrypted private key: {err}"
        ) from err
    return cert.resolve(), key.resolve()


def _no_password() -> bytes:
    raise ssl.SSLError("the private key is encrypted; give an unencrypted key")


def profiler_service(argv: list[str]) -> Service:
    """The profiler (stage 1: a closed window asks the Prefect API for a drift run).

    It has no health URL: alive for a few seconds counts as started.
    """
    return Service(
        name="profiler",
        argv=argv,
        description="profiles served traffic in windows; closes trigger drift",
        stage=1,
        ready_timeout_s=5.0,
    )


def notifier_service(argv: list[str]) -> Service:
    """The notifier (stage 1: it reads the Prefect API), when webhooks are configured.

    See :mod:`aipaas.ops.notify`: it reads what the platform records and
    posts what operators must hear about; ready once it has read its sources.
    """
    from aipaas.ops.notify import READY_LINE

    return Service(
        name="notifier",
        argv=argv,
        description="webhooks: failed runs and suites, promotions, rollbacks, drift, quotas",
        ready_line=READY_LINE,
        ready_timeout_s=60.0,
        stage=1,
    )


def server_env(settings: Settings) -> dict[str, str]:
    """The MLflow server's own environment, its store's driver and auth settings checked first."""
    from aipaas.ops.tracking_server import check_auth, check_backend
    from aipaas.ops.tracking_server import server_env as mlflow_server_env

    check_backend(settings)
    check_auth(settings)
    return mlflow_server_env(settings)


def _mlflow_argv(settings: Settings) -> list[str]:
    from aipaas.ops.tracking_server import prepare, server_command

    prepare(settings)
    return server_command(settings)


# --- the supervisor ---------------------------------------------------------------


class Supervisor:
    """Starts services, restarts one that dies, stops them all; one per home."""

    def __init__(
        self,
        settings: Settings,
        services: list[Service],
        *,
        echo: Callable[[str], None] = print,
        restart: RestartPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.services = services
        self.echo = echo
        self.policy = restart or RestartPolicy()
        self.running: list[Running] = []
        self._restarts = {s.name: _Restarts() for s in services}
        self._auditor = _EventAuditor(settings, echo)
        self.stop_requested = threading.Event()
        self.logs_dir = settings.run_dir / "logs"
        self.state_path = settings.run_dir / "up.json"
        self._lock: IO[str] | None = None
        self.started = _now()

    # -- lock -----------------------------------------------------------------

    def acquire(self) -> None:
        """Take the per-home lock or raise :class:`AlreadyRunningError`."""
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.settings.run_dir / "up.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise AlreadyRunningError(self._already_running_message()) from None
        self._lock = lock

    def _already_running_message(self) -> str:
        try:
            state = read_json(self.state_path, default={})
        except (OSError, ValueError):  # unreadable: the message names less
            state = {}
        pid = state.get("pid", "?")
        urls = ", ".join(f"{s['name']} {s['url']}" for s in state.get("services", []) if s["url"])
        return (
            f"aipaas up is already running for home {self.settings.home} "
            f"(pid {pid}, since {state.get('started', '?')}"
            + (f"; {urls}" if urls else "")
            + f"). Stop it with Ctrl-C in its terminal or `kill {pid}`; "
            "or start another with a different AIPAAS_HOME and ports."
        )

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # -- start ----------------------------------------------------------------

    def check_ports(self) -> None:
        """Refuse to start when a port is taken, naming the setting that moves it."""
        for svc in self.services:
            if svc.port is None:
                continue
            if not port_free(svc.host, svc.port):
                raise ConfigurationError(
                    f"port {svc.port} ({svc.name}) on {svc.host} is already in use by another "
                    f"program; stop it or pick another port with {svc.port_setting}=..."
                )

    def start(self) -> None:
        """Start every service stage by stage, each stage waiting until it is ready."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for stage in sorted({s.stage for s in self.services}):
            group = [s for s in self.services if s.stage == stage]
            started = []
            for svc in group:
                run = self._spawn(svc)
                started.append(run)
                self.running.append(run)
                self.echo(f"  starting {svc.name:<9} pid {run.process.pid:<7} log {run.log}")
            self._write_state()
            for run in started:
                self._wait_ready(run)
                run.ready_at = time.monotonic()

    def _spawn(self, svc: Service, note: str = "starting") -> Running:
        log = self.logs_dir / f"{svc.name}.log"
        log_file = log.open("ab")
        log_file.write(f"\n=== {_now()} {note}: {' '.join(svc.argv)}\n".encode())
        log_file.flush()
        env = {**os.environ, **child_env(self.settings), **svc.env}
        process = subprocess.Popen(
            svc.argv,
            cwd=svc.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only sets a death signal
        )
        return Running(svc, process, log, log_file, log_file.tell())

    def _wait_ready(self, run: Running) -> None:
        svc = run.service
        started = time.monotonic()
        deadline = started + svc.ready_timeout_s
        next_note = started + WAIT_NOTE_S
        self._poll_ready(run, deadline, next_note)
        if not self.stop_requested.is_set():
            self.echo(f"  {svc.name} ready after {time.monotonic() - started:.1f} s")

    def _poll_ready(self, run: Running, deadline: float, next_note: float) -> None:
        svc = run.service
        while True:
            if self.stop_requested.is_set():
                return
            if time.monotonic() >= next_note:  # say what a slow start waits for
                self.echo(
                    f"  waiting for {svc.name}: {_waits_for(svc)} "
                    f"({time.monotonic() - deadline + svc.ready_timeout_s:.0f} s of "
                    f"{svc.ready_timeout_s:.0f} s; log {run.log})"
                )
                next_note += WAIT_NOTE_S
            code = run.process.poll()
            if code is not None:
                raise AipaasError(
                    f"{svc.name} exited with code {code} while starting; "
                    f"the end of {run.log}:\n{tail(run.log)}"
                )
            if svc.ready_check is not None or svc.ready_line is not None:
                if _ready(run):
                    return
                if time.monotonic() >= deadline:
                    raise AipaasError(
                        f"{svc.name} did not become ready within {svc.ready_timeout_s:.0f} s; "
                        f"the end of {run.log}:\n{tail(run.log)}"
                    )
            elif svc.health_url is None:
                if time.monotonic() >= deadline:  # no probe: alive long enough
                    return
            elif http_ok(svc.health_url, ca_file=svc.ca_file):
                return
            elif time.monotonic() >= deadline:
                raise AipaasError(
                    f"{svc.name} did not become ready within {svc.ready_timeout_s:.0f} s "
                    f"({svc.health_url}); the end of {run.log}:\n{tail(run.log)}"
                )
            time.sleep(POLL_S)

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "started": self.started,
            "home": str(self.settings.home),
            "services": [
                {
                    "name": r.service.name,
                    "pid": r.process.pid,
                    "url": r.service.url,
                    "log": str(r.log),
                }
                for r in self.running
            ],
        }
        atomic_write_json(self.state_path, state)

    # -- run and stop -----------------------------------------------------------

    def watch(self) -> int:
        """Block until asked to stop (0) or a child keeps crashing (1); restart the others.

        Everything happens on this thread, one child at a time between two
        looks at ``stop_requested``: a restart is either done before
        :meth:`stop` runs (which then stops the new process) or never begun.
        """
        while not self.stop_requested.wait(WATCH_S):
            for i in range(len(self.running)):
                if self.stop_requested.is_set():
                    break
                if not self._tend(i):
                    return 1
        return 0

    def _tend(self, i: int) -> bool:
        """One look at one child: restart it when its pause is over, see it back, or see it die.

        Returns:
            False when it keeps crashing and the platform must stop.
        """
        run = self.running[i]
        state = self._restarts[run.service.name]
        if state.due is not None:
            if time.monotonic() >= state.due:
                self._restart(i, state)
            return True
        code = run.process.poll()
        if code is not None:
            return self._crashed(run, state, f"exited with code {code}")
        if run.ready_at is None:
            return self._check_back(run, state)
        return True

    def _crashed(self, run: Running, state: _Restarts, what: str) -> bool:
        """Schedule the restart of a child that died (or never got ready); False: give up."""
        svc, pid = run.service, run.process.pid
        now = time.monotonic()
        lasted = run.ready_at is not None and now - run.ready_at >= self.policy.stable_s
        state.in_a_row = 1 if lasted else state.in_a_row + 1
        state.exit_code = run.process.returncode
        state.died_at = now
        # Whatever it left in its session (uvicorn's, Ray's processes) would hold its port.
        _signal_group(run.process, signal.SIGKILL)
        if state.in_a_row > self.policy.max_restarts:
            self._note(run, f"{what}; crashed {state.in_a_row} times in a row: not restarted")
            self.echo(
                f"{svc.name} (pid {pid}) {what}; it crashed {state.in_a_row} times in a row "
                f"(restarted {state.in_a_row - 1} times, no run lasting "
                f"{self.policy.stable_s:g} s): stopping everything. "
                f"The end of {run.log}:\n{tail(run.log)}"
            )
            self._auditor.submit("platform.crash_loop", self._event(svc, state))
            return False
        delay = self.policy.delay(state.in_a_row)
        state.due = now + delay
        self._note(run, f"{what}; restarting in {delay:g} s")
        self.echo(
            f"{svc.name} (pid {pid}) {what}; restarting it in {delay:g} s "
            f"({state.in_a_row} crash(es) in a row; the platform stops at "
            f"{self.policy.max_restarts + 1})"
        )
        return True

    def _restart(self, i: int, state: _Restarts) -> None:
        old = self.running[i]
        svc = old.service
        state.total += 1
        note = f"restarting (restart {state.total}, after exit code {state.exit_code})"
        try:
            run = self._spawn(svc, note)
        except OSError as err:
            raise AipaasError(
                f"could not restart {svc.name} ({' '.join(svc.argv)}): {err}"
            ) from err
        self.running[i] = run
        state.due = None
        self._write_state()
        self.echo(
            f"  restarted {svc.name:<9} pid {run.process.pid:<7} (restart {state.total}); "
            "waiting until it is ready"
        )
        self._auditor.submit("platform.restarted", self._event(svc, state, pid=run.process.pid))

    def _check_back(self, run: Running, state: _Restarts) -> bool:
        """Probe a restarted child once; one not ready in time is killed and counts as a crash."""
        svc = run.service
        if _probe(run):
            run.ready_at = time.monotonic()
            self._note(run, "ready again")
            self.echo(
                f"{svc.name} is back (pid {run.process.pid}, "
                f"{run.ready_at - state.died_at:.1f} s after it died)"
            )
            return True
        if time.monotonic() - run.started < svc.ready_timeout_s:
            return True
        _signal_group(run.process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.process.wait(10)
        return self._crashed(
            run, state, f"did not become ready within {svc.ready_timeout_s:g} s of its restart"
        )

    def _note(self, run: Running, what: str) -> None:
        """A line in the child's own log, between its output, then the log closed if it died."""
        with contextlib.suppress(OSError, ValueError):
            run.log_file.write(f"=== {_now()} aipaas up: {run.service.name} {what}\n".encode())
            run.log_file.flush()
        if run.process.returncode is not None:
            run.log_file.close()

    def _event(self, svc: Service, state: _Restarts, **more: Any) -> dict[str, Any]:
        return {
            "service": svc.name,
            "exit_code": state.exit_code,
            "restarts": state.total,
            "in_a_row": state.in_a_row,
            **more,
        }

    def stop(self) -> None:
        """Stop every child, last stage first: SIGTERM, then SIGKILL after a grace period.

        Stage by stage, because the worker tells the Prefect API it is leaving
        (and marks the runs it held) on the way out and needs the server up.
        """
        for stage in sorted({r.service.stage for r in self.running}, reverse=True):
            group = [r for r in reversed(self.running) if r.service.stage == stage]
            for run in group:
                _signal_group(run.process, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for run in group:
                try:
                    run.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.echo(f"  {run.service.name} ignored SIGTERM; killing it")
                    _signal_group(run.process, signal.SIGKILL)
                    run.process.wait(10)
                # Whatever the child left in its session (workers, subprocesses) goes too.
                _signal_group(run.process, signal.SIGKILL)
                run.log_file.close()
                self.echo(f"  stopped {run.service.name} (exit {run.process.returncode})")
        self.running.clear()
        self._auditor.close(AUDIT_WAIT_S)

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM ask for a clean stop instead of killing the supervisor."""

        def handler(signum: int, frame: Any) -> None:
            self.stop_requested.set()

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def summary(self) -> str:
        lines = [f"aipaas is up (home {self.settings.home}; logs in {self.logs_dir})"]
        for r in self.running:
            lines.append(
                f"  {r.service.name:<9} {r.service.url or '-':<32} pid {r.process.pid:<7} "
                f"{r.service.description}"
            )
        return "\n".join(lines)


def run(
    settings: Settings,
    services: list[Service],
    *,
    on_ready: Callable[[Supervisor], None] | None = None,
    echo: Callable[[str], None] = print,
    stay: bool = True,
    restart: RestartPolicy | None = None,
) -> int:
    """The one start-up sequence of ``aipaas up`` and ``aipaas demo``.

    Take the home's lock, refuse taken ports, start everything stage by
    stage, call ``on_ready``, then (``stay``) wait for Ctrl-C or a child's
    crash loop (a child that dies is restarted, ``restart`` says how);
    whatever happens, stop everything and release the lock. Ctrl-C sets
    ``Supervisor.stop_requested``, which a long ``on_ready`` may watch.

    Returns:
        0 after a requested stop (or after ``on_ready`` when not ``stay``),
        1 when a child kept crashing.

    Raises:
        AlreadyRunningError: another ``aipaas up`` holds this home.
        ConfigurationError: a port is taken.
        AipaasError: a service failed to start (everything started is stopped),
            or whatever ``on_ready`` raised.
    """
    sup = Supervisor(settings, services, echo=echo, restart=restart)
    sup.acquire()
    try:
        with sup.signals():
            sup.check_ports()
            echo(f"starting aipaas (home {settings.home}) ...")
            try:
                sup.start()
                if sup.stop_requested.is_set():
                    return 0
                echo(sup.summary())
                if on_ready is not None:
                    on_ready(sup)
                if not stay or sup.stop_requested.is_set():
                    return 0
                echo("Ctrl-C stops everything.")
                return sup.watch()
            finally:
                echo("stopping ...")
                sup.stop()
    finally:
        sup.release()


class _EventAuditor:
    """Appends the supervisor's events to the audit chain on a thread of its own, in order.

    An append waits for the database's append lock and, when the database
    is down, for its connection to fail: neither may hold up a restart. An
    event that cannot be written is said in ``up``'s output, and the next
    one is still tried.
    """

    def __init__(self, settings: Settings, echo: Callable[[str], None]) -> None:
        self._settings = settings
        self._echo = echo
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, event: str, detail: dict[str, Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aipaas-up-audit", daemon=True)
            self._thread.start()
        self._queue.put((event, detail))

    def close(self, timeout_s: float) -> None:
        """Let queued events commit for up to ``timeout_s``, then leave them (a daemon thread)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._echo(
                f"  could not audit every restart within {timeout_s:g} s; not waiting longer"
            )
        self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            event, detail = item
            try:
                audit.append_event(self._settings, event, detail)
            # Whatever the database or its driver raises (SQLAlchemy's, the DBAPI's
            # own, a failed migration): said to the operator, and the thread lives on.
            except Exception as err:  # noqa: BLE001
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                self._echo(
                    f"  could not audit {event} of {detail.get('service')} "
                    f"(platform database {self._settings.db_url.split('@')[-1]}): {first}"
                )


# --- helpers ---------------------------------------------------------------------


def _probe(run: Running) -> bool:
    """One readiness check, as at start-up: ready_check or ready_line, else the health URL.

    A service with neither counts as ready once it has stayed alive for its
    ``ready_timeout_s``.
    """
    svc = run.service
    if svc.ready_check is not None or svc.ready_line is not None:
        return _ready(run)
    if svc.health_url is None:
        return time.monotonic() - run.started >= svc.ready_timeout_s
    return http_ok(svc.health_url, ca_file=svc.ca_file)


def _waits_for(svc: Service) -> str:
    if svc.waits_for:
        return svc.waits_for
    if svc.health_url:
        return f"{svc.health_url} to answer 200"
    if svc.ready_line:
        return f"{svc.ready_line!r} in its log"
    return "its readiness check"


def _ready(run: Running) -> bool:
    svc = run.service
    if svc.ready_check is not None:
        return svc.ready_check(run.started_at)
    assert svc.ready_line is not None
    try:
        with run.log.open("rb") as f:
            f.seek(run.log_offset)
            return svc.ready_line.encode() in f.read()
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def http_ok(
    url: str,
    timeout: float = 2.0,
    *,
    ca_file: Path | None = None,
    headers: dict[str, str] | None = None,
) -> bool:
    """Whether ``url`` answers 200.

    For an https URL with ``ca_file``, the server's certificate chain must
    verify against that file: the CA, or the served certificate itself
    (a partial chain is accepted, so a self-signed or leaf certificate can
    be given). The host name is checked too, except for a loopback or
    unspecified address, where the probe reaches the child ``up`` started
    itself and a certificate for a public name would not match.
    """
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = not _local(urllib.parse.urlsplit(url).hostname or "")
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the supervisor dies (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
