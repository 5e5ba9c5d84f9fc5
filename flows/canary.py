"""Flow ``canary``: watch a canary (or shadow) release on live evidence and decide it.

The release itself is :mod:`aipaas.training.canary` (a signed start event on
the audit chain that every serving replica follows); the evidence and the
verdict are :mod:`aipaas.monitoring.canary_watch`. This flow is the watcher:

1. start the release (the promotion gates first, decided by this flow run),
   unless a release of this version is already running, e.g. started by
   ``aipaas promote --canary ... --detach``: then it takes over watching it;
2. every ``check_every_s`` read the evidence and judge each limit, one task
   run per check, with a progress artifact (how much of the window is gone)
   and a table artifact of the limits (every 30 s and at the end);
3. a limit broken: end ``rolled-back`` at once (traffic back to the
   champion); the window over: ``promoted`` (or ``inconclusive`` with too few
   challenger requests); a shadow: ``completed``, with its report.

Every ending is a decision the platform made as planned, so the run ends
**Completed**, with the outcome as the state's name ("Promoted", "Rolled
back", "Inconclusive", "Stopped") and the reasons as its message: a Failed
run would page people through ``flow_run.failed`` for a rollback that
worked, and the rollback is announced on its own (``canary.decided``). A run
Fails only when the watching itself failed (the gates refused the start, the
database was away past the retries). A release someone stopped meanwhile
(``aipaas canary stop``) ends the run "Stopped"; cancelling the run in the
Prefect UI, or a failure of the run, stops the release it watched, so no
challenger keeps traffic unwatched (and serving stops sending it any 60 s
after its window in any case).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from aipaas.db import DatabaseUnavailableError
from aipaas.exceptions import CanaryError, ConfigurationError
from aipaas.modeldef import ModelDefinition
from aipaas.monitoring import canary_watch
from aipaas.monitoring.canary_watch import Decision, Evidence, ShadowReport
from aipaas.settings import get_settings
from aipaas.training import canary
from aipaas.training.canary import CanaryEnd, CanaryState
from flows._common import artifact_key, retry_only_on
from flows.promote import this_run
from flows.tasks import load_model_definition

# The limits table artifact is written at most this often (and at the end).
PUBLISH_EVERY_S = 30.0
STATE_NAMES = {
    "promoted": "Promoted",
    "rolled-back": "Rolled back",
    "inconclusive": "Inconclusive",
    "stopped": "Stopped",
    "completed": "Completed",
}

db_unreachable = retry_only_on(DatabaseUnavailableError)

# Called with each check's progress line (the CLI prints them): same process only.
Listener = Callable[[str], None]
_listeners: list[Listener] = []
# flow run id -> the release it watches, for the cancellation and failure hooks.
_watching: dict[str, CanaryState] = {}


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener`` with every check's line while a canary flow runs in this process."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


@dataclass(frozen=True)
class Check:
    """One reading of the evidence and what it says."""

    evidence: Evidence
    decision: Decision


@task(name="start release", cache_policy=NO_CACHE, persist_result=False)
def start_release(
    definition: ModelDefinition,
    version: str | None,
    percent: float | None,
    watch_s: float | None,
    mode: canary.Mode,
    decided_by: str,
) -> CanaryState:
    """Start the release through the gates, or take over the one of this version running."""
    s = get_settings()
    running = canary.active(s, definition.name)
    if (
        running is not None
        and running.mode == mode
        and (version is None or running.version == str(version))
    ):
        get_run_logger().info(
            "watching the %s of %s v%s started by %s (%.0f s left)",
            mode,
            running.model,
            running.version,
            running.started_by,
            running.remaining_s(),
        )
        return running
    return canary.start(
        s, definition, version, mode=mode, percent=percent, watch_s=watch_s, decided_by=decided_by
    )


@task(
    name="check evidence",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=db_unreachable,
)
def check_evidence(state: CanaryState) -> Check | None:
    """The evidence and the verdict now; None when the release is no longer running."""
    s = get_settings()
    current = canary.active(s, state.model)
    if current is None or current.seq != state.seq:
        return None
    evidence = canary_watch.read_evidence(s, state)
    decision = canary_watch.decide(evidence, state.policy)
    line = canary_watch.progress_line(evidence, decision)
    get_run_logger().info(line)
    for listener in list(_listeners):
        listener(line)
    return Check(evidence, decision)


@task(name="end release", cache_policy=NO_CACHE, persist_result=False)
def end_release(state: CanaryState, check: Check, decided_by: str) -> CanaryEnd:
    """Record the outcome (a promotion through the usual signed record); a shadow's report."""
    s = get_settings()
    evidence = check.evidence.summary()
    if state.mode == "shadow":
        report = shadow_report(state)
        evidence["shadow"] = report.to_dict()
        if report.store_error:
            get_run_logger().warning("shadow report kept on disk only: %s", report.store_error)
    outcome = check.decision.outcome
    assert outcome is not None
    return canary.end(
        s,
        state.model,
        outcome,
        decided_by=decided_by,
        reasons=check.decision.reasons,
        evidence=evidence,
        evidence_gates=check.decision.gates,
    )


def shadow_report(state: CanaryState) -> ShadowReport:
    s = get_settings()
    return canary_watch.write_shadow_report(s, canary_watch.shadow_report(s, state))


class Publisher:
    """The run's artifacts: window progress at every check, the limits table now and then."""

    def __init__(self, state: CanaryState) -> None:
        self.state = state
        self.key = artifact_key("canary", state.model)
        self.progress_id: UUID | None = None
        self.published_at = 0.0

    def publish(self, check: Check, *, final: bool = False) -> None:
        ev, state = check.evidence, self.state
        window = max(state.until - state.started_at, 1e-9)
        done = min(100.0, 100.0 * (ev.at - state.started_at) / window)
        line = canary_watch.progress_line(ev, check.decision)
        if self.progress_id is None:
            created = create_progress_artifact(
                progress=done, key=f"{self.key}-window", description=line
            )
            assert isinstance(created, UUID)  # sync outside async code
            self.progress_id = created
        else:
            update_progress_artifact(self.progress_id, progress=done, description=line)
        if final or time.monotonic() - self.published_at >= PUBLISH_EVERY_S:
            self.published_at = time.monotonic()
            create_table_artifact(
                table=limits_table(check),
                key=self.key,
                description=f"{state.mode} of {state.model} v{state.version} against "
                f"champion v{state.champion}, {state.percent:g}% of clients: {line}",
            )


def limits_table(check: Check) -> list[dict[str, Any]]:
    """The limits as rows, then one row per arm: what the UI's table shows."""
    rows: list[dict[str, Any]] = [
        {
            "limit": g.name,
            "value": str(g.value),
            "threshold": g.threshold,
            "result": "not judged yet"
            if g.detail.startswith(canary_watch.NOT_YET)
            else ("pass" if g.passed else "FAIL"),
            "detail": g.detail,
        }
        for g in check.decision.gates
    ]
    ev = check.evidence
    for name, arm in (("challenger", ev.challenger), ("champion", ev.champion)):
        a = arm.summary()
        rows.append(
            {
                "limit": f"{name} v{arm.version}",
                "value": f"{a['requests']} requests, {a['errors']} errors",
                "threshold": "",
                "result": "",
                "detail": f"p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, "
                f"accuracy {a['accuracy']} on {a['labelled']} labels",
            }
        )
    return rows


@task(name="publish decision", cache_policy=NO_CACHE, persist_result=False)
def publish_decision(state: CanaryState, ended: CanaryEnd, check: Check | None) -> None:
    lines = [
        f"# {state.mode.capitalize()} of {state.model} v{state.version}: "
        f"{STATE_NAMES[ended.outcome].lower()}",
        "",
        f"Decided by {ended.decided_by} at {ended.at}; champion now "
        f"v{ended.champion_after or state.champion}.",
        "",
        *(f"- {r}" for r in ended.reasons),
    ]
    if check is not None:
        lines += ["", "| limit | value | threshold | result | detail |", "|---|---|---|---|---|"]
        lines += [
            "| " + " | ".join(str(v).replace("|", "/") for v in row.values()) + " |"
            for row in limits_table(check)
        ]
    shadow = ended.evidence.get("shadow") or {}
    if shadow:
        lines += [
            "",
            f"Shadow report: `{shadow.get('html_path')}`"
            + (f" (MLflow run {shadow['mlflow_run']})" if shadow.get("mlflow_run") else ""),
        ]
    create_markdown_artifact(
        markdown="\n".join(lines),
        key=f"{artifact_key('canary', state.model)}-decision",
        description=f"{state.model} v{state.version}: {ended.outcome}",
    )


def final_state(ended: CanaryEnd) -> State[Any]:
    """Completed, named after the outcome, the reasons as the message."""
    why = "; ".join(ended.reasons) or ended.outcome
    message = f"{ended.model} v{ended.version} {ended.outcome}: {why}"
    return Completed(name=STATE_NAMES[ended.outcome], message=message[:2000], data=ended)


def _ended_elsewhere(state: CanaryState) -> CanaryEnd:
    """How a release this run watched ended without it (``aipaas canary stop``)."""
    last = next(
        (
            h
            for h in canary.history(get_settings(), state.model, limit=5)
            if h["event"] == canary.ENDED and h.get("started_seq") == state.seq
        ),
        None,
    )
    if last is None:  # edited or never ended: it no longer runs either way
        return CanaryEnd(state.model, state.version, state.mode, "stopped", "unknown", "")
    return CanaryEnd(
        model=state.model,
        version=state.version,
        mode=state.mode,
        outcome=last["outcome"],
        decided_by=str(last.get("decided_by") or last.get("owner") or ""),
        at=str(last.get("at") or last["ts"]),
        reasons=list(last.get("reasons") or []),
        evidence=dict(last.get("evidence") or {}),
        started_seq=state.seq,
        champion_after=last.get("champion_after"),
    )


def _stop_unwatched(flow: Any, flow_run: Any, state: Any) -> None:
    """On cancellation or failure: end the release this run watched, so none runs unwatched."""
    watched = _watching.pop(str(flow_run.id), None)
    if watched is None:
        return
    s = get_settings()
    current = canary.active(s, watched.model)
    if current is None or current.seq != watched.seq:
        return
    why = f"the canary flow run {flow_run.id} ended {state.type.value.lower()}"
    try:
        canary.end(
            s,
            watched.model,
            "stopped",
            decided_by=f"flow-run {flow_run.id} (canary)",
            reasons=[why],
        )
    except CanaryError:  # ended meanwhile by someone else
        pass


@flow(
    name="canary",
    persist_result=True,
    log_prints=True,
    on_cancellation=[_stop_unwatched],
    on_failure=[_stop_unwatched],
)
def canary_flow(
    model: str = "diagnosis",
    version: str | None = None,
    percent: float | None = None,
    watch: str | float | None = None,
    mode: str = "canary",
) -> State[Any]:
    """Release ``version`` (default: challenger) as a canary or shadow and decide on evidence.

    ``watch`` is the window (seconds, or ``"90s"``, ``"15m"``, ``"1h"``);
    ``percent`` the share of clients; both default to the model's ``Canary``.
    """
    if mode not in ("canary", "shadow"):
        raise ConfigurationError(f"mode {mode!r} is not 'canary' or 'shadow'")
    watch_s = None if watch is None else canary_watch.parse_duration(watch)
    kind: canary.Mode = "shadow" if mode == "shadow" else "canary"
    definition = load_model_definition(model)
    me = this_run()
    state = start_release(definition, version, percent, watch_s, kind, me)
    from prefect.runtime import flow_run

    _watching[str(flow_run.id)] = state
    publisher = Publisher(state)
    while True:
        check = check_evidence(state)
        if check is None:
            _watching.pop(str(flow_run.id), None)
            ended = _ended_elsewhere(state)
            publish_decision(state, ended, None)
            return final_state(ended)
        publisher.publish(check, final=check.decision.outcome is not None)
        if check.decision.outcome is not None:
            break
        time.sleep(max(0.05, min(state.policy.check_every_s, check.evidence.remaining_s)))
    ended = end_release(state, check, me)
    _watching.pop(str(flow_run.id), None)
    publish_decision(state, ended, check)
    return final_state(ended)
