"""``aipaas profiler, aipaas drift``.

``profiler`` is the process that turns serving's spool into whylogs profile
windows (``aipaas up`` starts it beside the server); each window it closes
starts the ``drift`` deployment on the platform's Prefect server. ``drift``
runs one drift check now, in this process, without Prefect.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from aipaas.cli._app import app, settings

if TYPE_CHECKING:
    from aipaas.monitoring.drift_stats import DriftReport


@app.command("profiler")
def profiler_cmd(
    once: Annotated[
        bool, typer.Option("--once", help="Profile what is spooled now, then exit.")
    ] = False,
    poll: Annotated[float, typer.Option(help="Seconds to wait when the spool is idle.")] = 1.0,
    trigger: Annotated[
        bool, typer.Option(help="Start the drift deployment when a window closes.")
    ] = True,
    nice: Annotated[
        int, typer.Option(help="Lower this process's CPU priority by this much (0: leave it).")
    ] = 10,
) -> None:
    """Profile served rows in batches into windows; runs in the foreground until stopped.

    It runs niced by default: on a small machine the server's requests come
    first, and the spool simply waits a little longer.
    """
    from aipaas.monitoring.spool import Profiler

    if nice:
        os.nice(nice)
    s = settings()
    window_trigger = None
    if trigger:
        # The platform's server, never a temporary one: unreachable means retry later.
        os.environ.setdefault("PREFECT_API_URL", s.prefect_api_url)
        if auth := s.prefect.auth_string.get_secret_value():
            os.environ.setdefault("PREFECT_API_AUTH_STRING", auth)
        from flows.triggers import DeploymentTrigger

        window_trigger = DeploymentTrigger(s)
    with Profiler(s, window_trigger) as profiler:
        if once:
            rows = profiler.step()
            typer.echo(f"profiled {rows} rows; open windows: {_open(profiler.open_windows())}")
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        typer.echo(
            f"profiler: spool {s.home / 'spool'} -> {s.profiles_dir} "
            f"(window {s.monitoring.window_rows} rows / {s.monitoring.window_minutes:g} min, "
            f"at most one per {s.monitoring.window_min_seconds:g} s "
            f"after {s.monitoring.window_burst})"
        )
        try:
            profiler.run(stop, poll_s=poll)
        except KeyboardInterrupt:
            pass
        typer.echo(f"profiler stopped; open windows kept: {_open(profiler.open_windows())}")


def _open(windows: dict[tuple[str, str], int]) -> str:
    return ", ".join(f"{m} v{v}: {n} rows" for (m, v), n in windows.items()) or "none"


@app.command("drift")
def drift_cmd(
    model: Annotated[
        str, typer.Argument(help="Model name: a definition in models/.")
    ] = "diagnosis",
    mlflow: Annotated[
        bool, typer.Option(help="Store the check (scores, report, profile) as an MLflow run.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Compare the windows served since the last check with the champion's reference, now.

    Prints the decision, its reasons and the HTML report's path. It does not
    retrain: `aipaas run drift` does, through the flows.
    """
    from aipaas.modeldef import load_definition
    from aipaas.monitoring import drift, drift_store

    s = settings()
    store = drift_store.store_check if mlflow else None
    report = drift.check_model(s, load_definition(model, s.models_dir), report_store=store)
    run_id = report.mlflow_run
    if as_json:
        typer.echo(json.dumps({**report.to_dict(), "mlflow_run": run_id}, indent=2, default=str))
        return
    _print_report(report)
    if run_id:
        typer.echo(f"mlflow run: {run_id}")


def _print_report(report: DriftReport) -> None:
    d = report.decision
    verdict = "RETRAIN" if d.retrain else d.verdict
    typer.echo(
        f"{report.model} v{report.version}: {report.rows} served rows "
        f"(windows {', '.join(map(str, report.windows)) or 'none'})"
    )
    typer.echo(report.summary)
    for f in sorted(report.features, key=lambda f: -f.score)[:10]:
        mark = "DRIFT" if f.drifting else "ok"
        typer.echo(
            f"  {f.feature:<28} {f.method:<9} {f.score:6.3f}  {mark}  {'; '.join(f.reasons)}"
        )
    if report.prediction is not None:
        p = report.prediction
        typer.echo(
            f"  {'prediction':<28} {p.method:<9} {p.score:6.3f}  {'DRIFT' if p.drifting else 'ok'}"
        )
    if report.accuracy is not None:
        a = report.accuracy
        typer.echo(f"  {a.reason}; labels judged: {a.window}")
    typer.echo(f"decision: {verdict}")
    for reason in d.reasons:
        typer.echo(f"  - {reason}")
    typer.echo(f"report: {report.html_path}")
    if report.store_error:
        typer.echo(f"not stored in MLflow (only on this host): {report.store_error}")
