"""Start the drift deployment when the profiler closes a window: coalesced, never blocking it.

:class:`DeploymentTrigger` implements :class:`aipaas.monitoring.spool.WindowTrigger`.
A drift run consumes every window closed since the last check, so one run
per model waiting to start covers any number of windows. The trigger keeps
the runs of deployment ``drift/drift`` for each model to at most one queued
and one running, however fast windows close. Before it asks for a run it
reads from the Prefect API the runs of that deployment for that model that
have not finished (:func:`active_drift_runs`):

- one is queued (scheduled and due, late, or pending: its flow has not read
  the windows yet): the window is covered by it; the request is dropped and
  counted as coalesced;
- one is running (it may have read the windows already): the request waits
  in ``<home>/run/triggers/pending.json`` and is looked at again every
  ``recheck_s``; the run is asked for once the running one has ended.
  Further windows join the waiting request (coalesced too);
- none: a run is created (``run_deployment(..., timeout=0)``: create and
  return at once; a worker on the platform's work pool executes it).

When Prefect cannot be reached, or the deployment is not registered yet, the
request waits in the same file and every profiler step retries it with a
growing delay. Whatever is still missed, the drift schedule catches.

What happened is counted per model in ``<home>/run/triggers/stats.json``
(:meth:`DeploymentTrigger.stats`): windows closed, runs asked for, windows
coalesced. ``windows == runs + coalesced + waiting`` at all times.

A run left ``RUNNING`` by a worker killed under it would hold every later
request; a pending or running run whose state is older than an hour
(``STALE_AFTER_S``) is not counted.
Runs the drift cron creates count like any other, so a window that closes a
little before a scheduled check joins it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from aipaas.files import atomic_write_json, read_json
from aipaas.monitoring.spool import WindowInfo
from aipaas.settings import Settings
from flows._common import TAGS, run_deployment_at

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

log = logging.getLogger(__name__)

DRIFT_DEPLOYMENT = "drift/drift"
MAX_BACKOFF_S = 300.0
# A scheduled run due within this long counts as queued (a cron run about to
# start covers the window; also absorbs clock skew with the server).
DUE_WITHIN_S = 60.0
# A pending or running run whose state is older than this is taken for one a
# killed worker left behind, and no longer holds new runs back.
STALE_AFTER_S = 3600.0
_PAGE = 200


@dataclass(frozen=True)
class DriftRuns:
    """Runs of the drift deployment for one model that have not finished."""

    queued: int  # scheduled and due, late, or pending: will read the windows
    running: int  # may have read them already


# (model, window) -> None; raises when the run could not be created.
Runner = Callable[[str, WindowInfo], None]
# model -> its unfinished drift runs; raises when Prefect cannot be reached.
ActiveRuns = Callable[[str], DriftRuns]


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


def active_drift_runs(
    model: str,
    *,
    due_within_s: float = DUE_WITHIN_S,
    stale_after_s: float = STALE_AFTER_S,
    deployment: str = DRIFT_DEPLOYMENT,
) -> DriftRuns:
    """Count the unfinished runs of ``deployment`` for ``model``, from the Prefect API.

    One request: runs of that flow and deployment in a scheduled, pending,
    running or cancelling state whose expected start is at most
    ``due_within_s`` away (the cron's future runs are not queued work yet).
    The model is the run's ``model`` parameter.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    flow_name, deployment_name = deployment.split("/", 1)
    now = datetime.now(UTC)
    types = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    runs: list[FlowRun] = []
    with get_client(sync_client=True) as client:
        while True:  # one page unless many models have runs waiting
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=[deployment_name])
                ),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types)),
                    expected_start_time=FlowRunFilterExpectedStartTime(
                        before_=now + timedelta(seconds=due_within_s)
                    ),
                ),
                limit=_PAGE,  # the server's maximum
                offset=len(runs),
            )
            runs += page
            if len(page) < _PAGE:
                break
    queued = running = 0
    stale_before = now - timedelta(seconds=stale_after_s)
    for run in runs:
        if run.parameters.get("model") != model or run.state is None:
            continue
        if run.state.type == StateType.SCHEDULED:
            queued += 1  # waits for a worker however long: that is what queued means
        elif run.state.timestamp < stale_before:
            continue
        elif run.state.type == StateType.PENDING:
            queued += 1
        else:
            running += 1
    return DriftRuns(queued=queued, running=running)


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    from prefect.exceptions import PrefectException

    # Connection refused, timeouts, 5xx, an unknown deployment: all may pass.
    return (httpx.HTTPError, OSError, PrefectException)


@dataclass
class TriggerStats:
    """What the trigger did for one model since its stats file was created."""

    windows: int = 0  # windows closed
    runs: int = 0  # drift runs asked for
    coalesced: int = 0  # windows covered by a run already queued or a request waiting


def _nothing_active(model: str) -> DriftRuns:
    return DriftRuns(queued=0, running=0)


class DeploymentTrigger:
    """Window closes -> at most one queued and one running drift run per model.

    Args:
        settings: Where the pending and stats files live (``run_dir``).
        runner: Creates a run (default: of deployment ``drift/drift``).
        active_runs: Counts a model's unfinished runs (default: the Prefect
            API's runs of ``drift/drift``). A test that passes its own runner
            and no ``active_runs`` gets a query that always answers "none",
            since its runs are not the deployment's.
        clock: Seconds, for backoff and rechecks.
        base_backoff_s: First retry delay when Prefect is unreachable (doubles).
        recheck_s: How often a request held by a running run looks again.
    """

    def __init__(
        self,
        settings: Settings,
        runner: Runner | None = None,
        *,
        active_runs: ActiveRuns | None = None,
        clock: Callable[[], float] = time.time,
        base_backoff_s: float = 5.0,
        recheck_s: float = 5.0,
    ) -> None:
        self._path = pending_path(settings)
        self._stats_path = self._path.with_name("stats.json")
        self._runner = runner or run_drift_deployment
        if active_runs is None:
            active_runs = active_drift_runs if runner is None else _nothing_active
        self._active = active_runs
        self._clock = clock
        self._base = base_backoff_s
        self._recheck = recheck_s
        self._pending: dict[str, Any] = {
            # Entries an older version wrote lack the newer fields.
            model: {"windows": 1, "waiting": None, **entry}
            for model, entry in dict(read_json(self._path, default={})).items()
        }
        self._stats = {
            model: TriggerStats(**value)
            for model, value in dict(read_json(self._stats_path, default={})).items()
        }
        self.triggered: list[tuple[str, int]] = []  # (model, window seq), for logs and tests

    # -- WindowTrigger ---------------------------------------------------------

    def window_closed(self, window: WindowInfo) -> None:
        stats = self._stats.setdefault(window.model, TriggerStats())
        stats.windows += 1
        entry = self._pending.get(window.model)
        if entry is None:
            entry = {"window": None, "windows": 0, "waiting": None, "attempts": 0,
                     "next_at": 0.0, "error": None}  # fmt: skip
            self._pending[window.model] = entry
        else:
            # A request already waits (Prefect away, or a run in progress): it
            # now covers this window too, and keeps its backoff.
            stats.coalesced += 1
        entry["window"] = window.to_dict()  # the newest: its key names the run
        entry["windows"] += 1
        self._save()
        self.tick()

    def tick(self) -> None:
        if not self._pending:
            return
        now = self._clock()
        changed = False
        for model, entry in list(self._pending.items()):
            if entry["next_at"] <= now:
                self._attempt(model, entry, now)
                changed = True
        if changed:
            self._save()

    def pending(self) -> dict[str, Any]:
        """Models whose drift run is still to be asked for, with why they wait."""
        return {model: dict(entry) for model, entry in self._pending.items()}

    def stats(self) -> dict[str, TriggerStats]:
        """Per model: windows closed, runs asked for, windows coalesced."""
        return {model: TriggerStats(**asdict(s)) for model, s in self._stats.items()}

    # -- one request -----------------------------------------------------------

    def _attempt(self, model: str, entry: dict[str, Any], now: float) -> None:
        window = WindowInfo(**entry["window"])
        stats = self._stats.setdefault(model, TriggerStats())
        try:
            active = self._active(model)
            if active.queued:
                del self._pending[model]
                stats.coalesced += 1
                log.info(
                    "window %s v%s #%d: a %s run for %s is already queued and covers it",
                    model, window.version, window.seq, DRIFT_DEPLOYMENT, model,
                )  # fmt: skip
                return
            if active.running:
                if entry.get("waiting") != "running":
                    log.info(
                        "window %s v%s #%d: a %s run for %s is running; the next one "
                        "starts when it ends",
                        model, window.version, window.seq, DRIFT_DEPLOYMENT, model,
                    )  # fmt: skip
                entry.update(waiting="running", next_at=now + self._recheck, error=None)
                return
            self._runner(model, window)
        except _unreachable_errors() as err:
            entry["attempts"] += 1
            delay = min(MAX_BACKOFF_S, self._base * 2 ** (entry["attempts"] - 1))
            entry.update(
                waiting="unreachable", next_at=now + delay, error=f"{type(err).__name__}: {err}"
            )
            log.warning(
                "could not start %s for %s (attempt %d, retry in %.0f s): %s",
                DRIFT_DEPLOYMENT, model, entry["attempts"], delay, entry["error"],
            )  # fmt: skip
            return
        del self._pending[model]
        stats.runs += 1
        self.triggered.append((model, window.seq))
        log.info(
            "started %s for %s after window #%d (%d window(s) since the last run asked for)",
            DRIFT_DEPLOYMENT, model, window.seq, entry["windows"],
        )  # fmt: skip

    # -- files -----------------------------------------------------------------

    def _save(self) -> None:
        atomic_write_json(self._path, self._pending, indent=1)
        atomic_write_json(
            self._stats_path, {m: asdict(s) for m, s in self._stats.items()}, indent=1
        )


def pending_path(settings: Settings) -> Path:
    """Where drift runs still to be started wait (one entry per model)."""
    return settings.run_dir / "triggers" / "pending.json"
