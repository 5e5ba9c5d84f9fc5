"""Prometheus metrics, kept in plain dicts.

Counting in the ASGI middleware is two dict updates per request; the text
exposition format is built only when ``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import MutableMapping
from typing import Any

BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(**kv: str) -> str:
    inner = ",".join(f'{k}="{_esc(v)}"' for k, v in kv.items())
    return "{" + inner + "}"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def route_label(scope: MutableMapping[str, Any]) -> str:
    """The ``route`` label of a request (the middleware calls this once it is answered)."""
    return str(scope["path"])


class Metrics:
    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, str, str], int] = {}
        # (model, version) -> [bucket counts..., +Inf count, sum]
        self._latency: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()
        self.models_loaded = 0
        self.reload_failures = 0

    def observe(
        self, route: str, model: str | None, version: str | None, status: int, seconds: float
    ) -> None:
        key = (route, model or "", version or "", str(status))
        m = (model or "", version or "")
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            if model:
                h = self._latency.get(m)
                if h is None:
                    h = self._latency[m] = [0.0] * (len(BUCKETS_S) + 2)
                h[bisect.bisect_left(BUCKETS_S, seconds)] += 1
                h[-1] += seconds

    def render(self) -> str:
        out = [
            "# HELP aipaas_requests_total Requests by route, model, version and status.",
            "# TYPE aipaas_requests_total counter",
        ]
        errors: dict[tuple[str, str, str], int] = {}
        with self._lock:
            requests = dict(self._requests)
            latency = {k: list(v) for k, v in self._latency.items()}
        for (route, model, version, status), n in sorted(requests.items()):
            out.append(
                "aipaas_requests_total"
                + _labels(route=route, model=model, version=version, status=status)
                + f" {n}"
            )
            if int(status) >= 400:
                k = (route, model, version)
                errors[k] = errors.get(k, 0) + n
        out += [
            "# HELP aipaas_request_errors_total Requests answered with status >= 400.",
            "# TYPE aipaas_request_errors_total counter",
        ]
        for (route, model, version), n in sorted(errors.items()):
            out.append(
                "aipaas_request_errors_total"
                + _labels(route=route, model=model, version=version)
                + f" {n}"
            )
        out += [
            "# HELP aipaas_request_duration_seconds Model request latency.",
            "# TYPE aipaas_request_duration_seconds histogram",
        ]
        for (model, version), h in sorted(latency.items()):
            cum = 0.0
            for le, c in zip(BUCKETS_S, h, strict=False):
                cum += c
                out.append(
                    "aipaas_request_duration_seconds_bucket"
                    + _labels(model=model, version=version, le=str(le))
                    + f" {int(cum)}"
                )
            cum += h[len(BUCKETS_S)]
            out.append(
                "aipaas_request_duration_seconds_bucket"
                + _labels(model=model, version=version, le="+Inf")
                + f" {int(cum)}"
            )
            mv = _labels(model=model, version=version)
            out.append(f"aipaas_request_duration_seconds_sum{mv} {h[-1]}")
            out.append(f"aipaas_request_duration_seconds_count{mv} {int(cum)}")
        out += [
            "# HELP aipaas_model_loads_total Model versions loaded (startup and swaps).",
            "# TYPE aipaas_model_loads_total counter",
            f"aipaas_model_loads_total {self.models_loaded}",
            "# HELP aipaas_model_load_failures_total Versions that failed to load.",
            "# TYPE aipaas_model_load_failures_total counter",
            f"aipaas_model_load_failures_total {self.reload_failures}",
        ]
        return "\n".join(out) + "\n"
