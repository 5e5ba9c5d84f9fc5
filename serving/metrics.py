"""Prometheus metrics on prometheus-client, with labels a client cannot multiply.

Every label value comes from a bounded set, whatever a client sends: the
``route`` is the matched route's template (``/models/{name}/predict``, never
the raw path; ``unmatched`` for a path no route has), the ``model`` a model
this process serves (``other`` for any other name a client puts in a path or
``X-Model``), the ``version`` one that is loaded, the ``status`` an HTTP code.
So random paths and headers add no series.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (tests
build many apps in one process), with the process, platform and GC
collectors. When ``PROMETHEUS_MULTIPROC_DIR`` is set when the process
starts, prometheus-client's multiprocess mode keeps the values in files
there, and ``/metrics`` aggregates every process that wrote to that
directory (replicas behind one scrape); process metrics are then left out,
as prometheus-client documents.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, MutableMapping
from typing import Any

from fastapi.routing import iter_route_contexts
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.routing import Match

BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UNMATCHED = "unmatched"  # the route label of a path no route matches
OTHER_MODEL = "other"  # the model label of a name this process does not serve
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes (names escaped)


def route_label(scope: MutableMapping[str, Any]) -> str:
    """The ``route`` label of a request: its route's template, or ``unmatched``.

    The middleware calls this once the request is answered, when the router
    has put the matched route in the scope. A request answered before
    routing (413, a bad ``X-End-User``), or by a mount (the docs' assets),
    is matched here against the app's routes without running them.
    """
    route = scope.get("route")
    if route is None:
        route = _match(scope)
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED


def _match(scope: MutableMapping[str, Any]) -> Any:
    routes = getattr(scope.get("app"), "routes", None)
    # A mount (the docs' assets) has moved root_path under itself by now.
    probe = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    for context in iter_route_contexts(routes or ()):
        match, _ = context.original_route.matches(probe)
        if match is not Match.NONE:
            return context
    return None


class Metrics:
    """The serving tier's metrics, in a registry of its own.

    Args:
        models: the model names this process serves (the only ``model`` labels).
        is_loaded: whether a (model, version) is loaded (the only ``version`` labels).
    """

    def __init__(
        self,
        models: Collection[str] = (),
        is_loaded: Callable[[str, str], bool] = lambda _m, _v: False,
    ) -> None:
        self._models = models  # kept, not copied: serving adds models it discovers
        self._is_loaded = is_loaded
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = reg = CollectorRegistry()
        if not self.multiprocess:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)
        self.requests = Counter(
            "aipaas_requests",
            "Requests by route template, model, version and status.",
            ["route", "model", "version", "status"],
            registry=reg,
        )
        self.errors = Counter(
            "aipaas_request_errors",
            "Requests answered with status >= 400.",
            ["route", "model", "version"],
            registry=reg,
        )
        self.latency = Histogram(
            "aipaas_request_duration_seconds",
            "Latency of requests a loaded model version answered.",
            ["model", "version"],
            buckets=BUCKETS_S,
            registry=reg,
        )
        self.loads = Counter(
            "aipaas_model_loads",
            "Model versions loaded (startup, swaps, pinned versions).",
            ["model"],
            registry=reg,
        )
        self.load_failures = Counter(
            "aipaas_model_load_failures",
            "Versions that failed to load (the previous one kept serving).",
            ["model"],
            registry=reg,
        )
        self.refusals = Counter(
            "aipaas_model_refusals",
            "Versions refused for want of a valid promotion record.",
            ["model"],
            registry=reg,
        )

    def labels(self, model: str | None, version: str | None) -> tuple[str, str]:
        """Bounded ``model`` and ``version`` labels for what a request named."""
        if not model:
            return "", ""
        if model not in self._models:
            return OTHER_MODEL, ""
        if version and self._is_loaded(model, version):
            return model, version
        return model, ""

    def observe(
        self, route: str, model: str | None, version: str | None, status: int, seconds: float
    ) -> None:
        """Count one answered request (the middleware calls this)."""
        m, v = self.labels(model, version)
        self.requests.labels(route, m, v, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, m, v).inc()
        if v:  # a loaded version answered it
            self.latency.labels(m, v).observe(seconds)

    def on_model_event(self, event: str, model: str) -> None:
        """Count the holder's events: loaded, swapped, pin loaded, load failed, refused."""
        if model not in self._models:
            return
        if event in ("model.loaded", "model.swapped", "model.pin_loaded"):
            self.loads.labels(model).inc()
        elif event == "model.load_failed":
            self.load_failures.labels(model).inc()
        elif event == "model.refused":
            self.refusals.labels(model).inc()

    def render(self) -> bytes:
        """The text exposition format: this app's registry, or every process's files."""
        if self.multiprocess:
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
