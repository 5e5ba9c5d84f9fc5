"""Serving on Ray Serve: the same app, N replicas across a Ray cluster (``aipaas serve --ray``).

Invariant: a replica is what ``uvicorn serving.app:create_app --factory``
runs, nothing less. Ray Serve builds each replica's app with
:func:`serving.app.create_app` from the settings of the process that
deployed it (``__serve_build_asgi_app__``, called on the replica) and runs
its lifespan there (champion load, the follower, the audit writer and the
spool), so keys, limits, audit, profiling and hot reload behave per replica
as they do under uvicorn. What must hold across replicas goes through the
stores they share:

- keys and revocation: the platform database; each replica trusts a key
  lookup for 2 s, so a revoked key is refused everywhere within 2 s;
- audit: every replica's writer appends to the database's one chain under
  its append lock (PostgreSQL's advisory lock, SQLite's write lock), so
  the chain never forks; quotas count from that trail;
- hot reload: each replica follows ``champion`` itself (its poll, and the
  promotion signals in the platform database);
- rate limits (:mod:`aipaas.inference.ratelimit`): on PostgreSQL, one
  bucket per key in the platform database, shared by every replica on every
  host; on SQLite (one host), the host-shared bucket file under ``home``.
  Only with ``serving.rate_limit_store: host`` forced on a cluster of H hosts
  does a key get up to H times its rate: :class:`RayServing` carries ``hosts``.

Ray owns the rest: placement (one CPU per replica, so N replicas on
one-CPU nodes land on N nodes), routing (a proxy on every node with a
replica, each choosing a replica by queue length), and replacement (a
replica that dies, or whose champion follower died, is started again).

Across hosts the platform database and the registry must be servers every
node reaches: a SQLite file or a file-backed MLflow store under one node's
``home`` would give each host its own keys and its own trail.
:func:`shared_store_problems` refuses that before anything is deployed.

The replicas receive the deploying process's :class:`Settings`, secrets
included, through Ray (its GCS keeps the deployment's arguments); Ray's
token authentication is what guards them, as it guards the code a driver
may run on the cluster.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlparse

from aipaas.exceptions import ConfigurationError
from aipaas.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "aipaas"
DEPLOYMENT_NAME = "aipaas-serving"
# One model thread and one event loop per replica: one CPU is what it uses,
# and what makes Ray put N replicas on N one-CPU nodes.
REPLICA_CPUS = 1.0
# Requests a replica takes at once before Ray's proxy queues them: enough
# for the audit writer's group commits to gather several.
MAX_ONGOING_REQUESTS = 32
DEPLOY_TIMEOUT_S = 600.0
NOTE_EVERY_S = 10.0
RAY_LOGS = "serve/ under /tmp/ray/session_latest/logs on each node"


@dataclass(frozen=True)
class RayServing:
    """A running deployment: where it answers and what it spans."""

    url: str
    replicas: int
    ray_address: str
    hosts: int  # distinct hosts among the cluster's nodes: the rate-limit bound's factor


class ServingReplica:
    """One Ray Serve replica of the serving app (wrapped by ``serve.ingress`` at deploy time).

    Plain at module level, so importing this module needs no Ray; the
    ingress wrapper is built in :func:`application`.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        """Ray Serve calls it on the replica, then runs the app's lifespan."""
        from serving.app import create_app

        self._app = create_app(self._settings)
        return self._app

    def check_health(self) -> None:
        """Ray replaces a replica whose champion follower died (its /readyz says 503)."""
        if self._app is None:
            return
        error = self._app.state.components.holder.follower_error
        if error:
            raise RuntimeError(error)


def replica_settings(settings: Settings, replicas: int) -> Settings:
    """The settings every replica gets: the deployer's, with the replica count.

    The count is what turns on, in each replica, the host-shared rate limits
    and the ``X-Aipaas-Replica`` header (see :func:`serving.app.create_app`).
    """
    serving = settings.serving.model_copy(update={"replicas": replicas})
    return settings.model_copy(update={"serving": serving})


def shared_store_problems(settings: Settings, hosts: set[str]) -> list[str]:
    """What stops replicas on ``hosts`` from sharing keys, audit and models; empty if nothing.

    One host: every local file is shared ground. Several: the platform
    database and the MLflow registry must be servers that every node reaches.
    """
    if len(hosts) <= 1:
        return []
    problems = []
    where = f"the Ray cluster spans {len(hosts)} hosts ({', '.join(sorted(hosts))})"
    if settings.db_url.startswith("sqlite"):
        problems.append(
            f"{where} but the platform database is a SQLite file ({settings.db_url}): each "
            "host would have its own keys and its own audit trail; set AIPAAS_AUDIT__DB_URL "
            "to a PostgreSQL server every node reaches (postgresql+psycopg://...)"
        )
    scheme = urlparse(settings.mlflow_tracking_uri).scheme
    if scheme in ("", "file", "sqlite"):
        problems.append(
            f"{where} but the MLflow registry is local to one host "
            f"({settings.mlflow_tracking_uri}); set AIPAAS_MLFLOW__TRACKING_URI to the MLflow "
            "server's URL (http://...)"
        )
    return problems


def application(settings: Settings, replicas: int) -> Any:
    """The Ray Serve application: ``replicas`` copies of the app, one CPU each."""
    from ray import serve

    ingress = serve.ingress()(ServingReplica)
    deployment = serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": REPLICA_CPUS},
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
    )(ingress)
    return deployment.bind(replica_settings(settings, replicas))


def cluster_hosts() -> set[str]:
    """The addresses of the connected Ray cluster's live nodes."""
    import ray

    return {str(n["NodeManagerAddress"]) for n in ray.nodes() if n.get("Alive")}


def deploy(
    settings: Settings,
    *,
    host: str,
    port: int,
    replicas: int,
    tls: tuple[Path, Path] | None = None,
    timeout_s: float = DEPLOY_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> RayServing | None:
    """Join (or start) Ray, start Serve's proxies on ``host:port`` and run the replicas.

    Returns once every replica has run its lifespan and every proxy is
    healthy; None if ``stop`` was set meanwhile. A deployment of the same
    name already on the cluster (a previous run that was killed) is updated
    in place. Serve's HTTP options are fixed when Serve first starts on a
    cluster: a later deployment keeps the port Serve already listens on.

    Raises:
        ConfigurationError: the stores cannot be shared across the cluster's
            hosts, the port is taken, or the replicas did not start.
    """
    from aipaas.training.raycluster import ensure_ray

    info = ensure_ray(settings.ray)
    import ray
    from ray import serve

    hosts = cluster_hosts()
    problems = shared_store_problems(settings, hosts)
    if problems:
        raise ConfigurationError("; ".join(problems))
    here = ray.util.get_node_ip_address() in hosts  # this host runs a node, so a proxy
    if here and not serve.status().proxies and not _port_free(host, port):
        raise ConfigurationError(
            f"port {port} on {host} is in use; stop what listens there or choose "
            "another (--port, AIPAAS_SERVING__PORT)"
        )
    http: dict[str, Any] = {"host": host, "port": port}
    if tls is not None:
        http.update(ssl_certfile=str(tls[0]), ssl_keyfile=str(tls[1]))
    serve.start(http_options=http, proxy_location="EveryNode")
    target = serve.RunTarget(application(settings, replicas), name=APP_NAME, route_prefix="/")
    serve.run_many([target], wait_for_applications_running=False)
    if not _wait_running(replicas, timeout_s, progress, stop or threading.Event()):
        return None
    scheme = "https" if tls is not None else "http"
    return RayServing(f"{scheme}://{host}:{port}", replicas, info.address, len(hosts))


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds it
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait_running(
    replicas: int,
    timeout_s: float,
    progress: Callable[[str], None] | None,
    stop: threading.Event,
) -> bool:
    """Until the app is RUNNING behind healthy proxies; False if ``stop`` was set first."""
    from ray import serve

    start = time.monotonic()
    next_note = start + NOTE_EVERY_S
    while not stop.is_set():
        status = serve.status()
        app = status.applications.get(APP_NAME)
        proxies = {node: str(p.value) for node, p in status.proxies.items()}
        state = str(app.status.value) if app is not None else "NOT_STARTED"
        messages = _messages(app)
        if state == "RUNNING" and proxies and set(proxies.values()) == {"HEALTHY"}:
            return True
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ConfigurationError(
                f"Ray Serve could not run the serving replicas ({state}): {messages}; "
                f"the replicas' logs are in {RAY_LOGS}"
            )
        if "UNHEALTHY" in proxies.values():
            raise ConfigurationError(
                f"a Ray Serve HTTP proxy is unhealthy ({proxies}); is the port in use on "
                f"one of the nodes? Its log is in {RAY_LOGS}"
            )
        waited = time.monotonic() - start
        if waited > timeout_s:
            raise ConfigurationError(
                f"the {replicas} serving replicas were not running after {timeout_s:.0f} s "
                f"({state}: {messages}); each needs {REPLICA_CPUS:g} CPU on a node"
            )
        if progress is not None and time.monotonic() >= next_note:
            next_note += NOTE_EVERY_S
            progress(
                f"aipaas: waiting for {replicas} replicas ({waited:.0f} s): {state} {messages}"
            )
        stop.wait(0.5)
    return False


def _messages(app: Any) -> str:
    if app is None:
        return "not deployed yet"
    parts = [app.message] + [d.message for d in app.deployments.values()]
    return " ".join(p for p in parts if p) or "no message"


def undeploy() -> None:
    """Take the replicas down (each drains and closes its audit writer), then Serve if idle.

    Whatever ended the run (a signal, a failed start), the ``aipaas``
    application is no longer on the cluster afterwards. Serve's controller
    and proxies outlive the driver that started them; when no other
    application is left on the cluster they stop too, so the port is closed
    when this returns.
    """
    import ray

    if not ray.is_initialized():  # never joined: nothing of ours can be running
        return
    from ray import serve

    if APP_NAME in serve.status().applications:
        serve.delete(APP_NAME)
    if not serve.status().applications:
        serve.shutdown()


def serve_until_stopped(
    settings: Settings,
    *,
    host: str,
    port: int,
    replicas: int,
    tls: tuple[Path, Path] | None = None,
    on_ready: Callable[[RayServing], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """``aipaas serve --ray``: deploy, serve until SIGTERM or Ctrl-C, take it all down.

    A driver killed outright (``kill -9``) leaves the deployment running on
    a remote cluster (Ray Serve's applications outlive their drivers); the
    next run updates it in place.
    """
    from aipaas.training.raycluster import ensure_ray, shutdown_ray

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def catch_signals() -> dict[int, Any]:
        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    previous = catch_signals()
    try:
        ensure_ray(settings.ray)
        # ray.init puts its own SIGTERM handlers in place (sys.exit, and its
        # core's crash handler, which ends the process): take them back, so
        # SIGTERM takes the deployment down like Ctrl-C does.
        catch_signals()
        served = deploy(
            settings,
            host=host,
            port=port,
            replicas=replicas,
            tls=tls,
            progress=progress,
            stop=stop,
        )
        if served is not None and on_ready is not None:
            on_ready(served)
        stop.wait()
    finally:
        try:
            undeploy()
        finally:
            shutdown_ray()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
