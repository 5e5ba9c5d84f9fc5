"""Start the drift deployment when the profiler closes a window, without blocking it.

:class:`DeploymentTrigger` implements :class:`aipaas.monitoring.spool.WindowTrigger`.
A closed window asks the Prefect API for a run of deployment ``drift/drift``
(``run_deployment(..., timeout=0)``: create the run and return at once; a
worker on the platform's work pool executes it). When Prefect cannot be reached,
or the deployment is not registered yet, the request waits in
``<home>/run/triggers/pending.json`` and every profiler step retries it with
a growing delay. Requests for one model coalesce: a drift run consumes every
window closed since the last check, so one pending run per model is enough.
Whatever is still missed, the drift schedule catches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from aipaas.files import atomic_write_json, read_json
from aipaas.monitoring.spool import WindowInfo
from aipaas.settings import Settings
from flows._common import TAGS, run_deployment_at

log = logging.getLogger(__name__)

DRIFT_DEPLOYMENT = "drift/drift"
MAX_BACKOFF_S = 300.0

# (model, window) -> None; raises when the run could not be created.
Runner = Callable[[str, WindowInfo], None]


def run_drift_deployment(model: str, window: WindowInfo) -> None:
    """Create a run of the drift deployment and return without waiting for it.

    It goes to the Prefect API this process is configured with: the
    profiler that ``aipaas up`` starts has ``PREFECT_API_URL`` set to the
    platform's server.
    """
    run_deployment_at(
        None,
        DRIFT_DEPLOYMENT,
        {"model": model},
        tags=(*TAGS, "window-closed"),
        # The same window never starts two runs, even when a retry follows a
        # request whose answer was lost.
        idempotency_key=f"drift-{model}-{window.version}-{window.seq}",
    )


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    from prefect.exceptions import PrefectException

    # Connection refused, timeouts, 5xx, an unknown deployment: all may pass.
    return (httpx.HTTPError, OSError, PrefectException)


class DeploymentTrigger:
    """Window closes -> drift runs, retried from a file when Prefect is away."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner | None = None,
        *,
        clock: Callable[[], float] = time.time,
        base_backoff_s: float = 5.0,
    ) -> None:
        self._path = pending_path(settings)
        self._runner = runner or run_drift_deployment
        self._clock = clock
        self._base = base_backoff_s
        self.triggered: list[tuple[str, int]] = []  # (model, window seq), for logs and tests

    # -- WindowTrigger ---------------------------------------------------------

    def window_closed(self, window: WindowInfo) -> None:
        pending = self._load()
        pending[window.model] = {
            "window": window.to_dict(),
            "attempts": 0,
            "next_at": 0.0,
            "error": pending.get(window.model, {}).get("error"),
        }
        self._save(pending)
        self.tick()

    def tick(self) -> None:
        pending = self._load()
        if not pending:
            return
        now = self._clock()
        errors = _unreachable_errors()
        changed = False
        for model, entry in list(pending.items()):
            if entry["next_at"] > now:
                continue
            window = WindowInfo(**entry["window"])
            try:
                self._runner(model, window)
            except errors as err:
                entry["attempts"] += 1
                delay = min(MAX_BACKOFF_S, self._base * 2 ** (entry["attempts"] - 1))
                entry["next_at"] = now + delay
                entry["error"] = f"{type(err).__name__}: {err}"
                log.warning(
                    "could not start %s for %s (attempt %d, retry in %.0f s): %s",
                    DRIFT_DEPLOYMENT, model, entry["attempts"], delay, entry["error"],
                )  # fmt: skip
            else:
                del pending[model]
                self.triggered.append((model, window.seq))
                log.info("started %s for %s after window #%d", DRIFT_DEPLOYMENT, model, window.seq)
            changed = True
        if changed:
            self._save(pending)

    def pending(self) -> dict[str, Any]:
        """Models whose drift run is still to be started, with the last error."""
        return self._load()

    # -- file ----------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        return dict(read_json(self._path, default={}))

    def _save(self, pending: dict[str, Any]) -> None:
        atomic_write_json(self._path, pending, indent=1)


def pending_path(settings: Settings) -> Path:
    """Where drift runs still to be started wait (one entry per model)."""
    return settings.run_dir / "triggers" / "pending.json"
