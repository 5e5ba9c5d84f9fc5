"""``aipaas demo`` (``make demo``): the whole loop, on the embedded defaults.

1. lifecycle: data -> train -> promote, so champion v1 serves;
2. simulated clients, each with its own API key, send ordinary traffic:
   the profiler closes windows, each close starts the drift flow, and no drift
   is reported;
3. a shifted population (scaled size measurements) with labels sent to
   ``/feedback``: drift is detected, the drift flow starts retraining (data
   with the feedback rows, train, promote through the same gates), and
   serving swaps to the new champion while a client keeps calling it;
4. a summary: versions and their gates, drift scores, requests served and
   failed, and the audit chain verified.

If ``aipaas up`` already runs on this home the demo uses it; otherwise it
starts the same services and stops them at the end (``--stay`` keeps them).
Everything it leaves (MLflow runs, Prefect flow runs, drift reports, the audit
trail) stays under ``AIPAAS_HOME`` for a look in the UIs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import typer

from aipaas.cli._app import app
from aipaas.exceptions import AipaasError
from aipaas.ops import up
from aipaas.settings import Settings, get_settings

# The demo's own defaults, used only when the environment does not set them:
# small profile windows so drift checks come within seconds, a short search,
# and a cooldown shorter than the production default (30 min), so that running
# the demo again soon after retrains again.
DEMO_ENV = {
    "AIPAAS_MONITORING__WINDOW_ROWS": "150",
    "AIPAAS_TUNE__NUM_SAMPLES": "4",
    "AIPAAS_RETRAIN__COOLDOWN_MINUTES": "5",
    "AIPAAS_RETRAIN__MAX_PER_DAY": "50",
}
CLIENTS = ("clinic-north", "clinic-south", "research-app")
# A recalibrated imaging device: every size measurement reads 45% larger.
SHIFT = {f"{kind}_{m}": 1.45 for kind in ("mean", "worst") for m in ("radius", "perimeter", "area")}
SHIFT |= {f"{m}_error": 1.45 for m in ("radius", "perimeter", "area")}
RATE_PER_CLIENT = 30.0


class DemoFailed(AipaasError):
    exit_code = 12


def say(msg: str) -> None:
    typer.echo(f"[{time.strftime('%H:%M:%S')}] {msg}")


@app.command("demo")
def demo_cmd(
    stay: Annotated[
        bool, typer.Option("--stay", help="Keep the platform running after the demo (Ctrl-C).")
    ] = False,
    model: Annotated[str, typer.Option(help="The model to run the loop on.")] = "diagnosis",
    timeout_min: Annotated[
        float, typer.Option(help="Give up on a step after this many minutes.")
    ] = 8.0,
) -> None:
    """Run the whole loop: lifecycle, traffic, drift, retraining, hot swap, summary."""
    for key, value in DEMO_ENV.items():
        os.environ.setdefault(key, value)
    get_settings.cache_clear()
    s = get_settings()
    base = f"http://{s.serving.host}:{s.serving.port}"
    if up.http_ok(f"{base}/healthz") and up.http_ok(f"{s.prefect_api_url}/health"):
        say(f"aipaas is already up on this home; using it ({base})")
        _run(s, base, model, timeout_min * 60)
        return
    from aipaas.cli.up import _has_command

    services = up.plan(
        s,
        serving_argv=up.cli_argv("serve") if _has_command("serve") else None,
        profiler_argv=up.cli_argv("profiler") if _has_command("profiler") else None,
    )
    sup = up.Supervisor(s, services, echo=say)
    sup.acquire()
    code = 0
    try:
        with sup.signals():
            sup.check_ports()
            say(f"starting aipaas (home {s.home}) ...")
            try:
                sup.start()
                typer.echo(sup.summary())
                _run(s, base, model, timeout_min * 60)
                if stay:
                    say("the demo is done; the platform keeps running. Ctrl-C stops it.")
                    code = sup.watch()
            finally:
                say("stopping the platform ...")
                sup.stop()
    finally:
        sup.release()
    raise typer.Exit(code)


def _run(s: Settings, base: str, model: str, timeout_s: float) -> None:
    from aipaas.datasets import ingest as data
    from aipaas.inference import audit, keys
    from aipaas.modeldef import load_definition
    from aipaas.monitoring import drift
    from aipaas.ops import simulate
    from aipaas.training import promotion_log, registry, tags

    definition = load_definition(model, s.models_dir)
    registry.connect(s)
    prefect_ui = s.prefect_api_url.removesuffix("/api")
    started = time.time()

    # 1. lifecycle -----------------------------------------------------------------
    say(f"step 1/4: lifecycle for {model!r} (watch it in the Prefect UI: {prefect_ui})")
    champion = registry.get_alias(model, tags.CHAMPION)
    if champion is None:
        flow_run = _run_deployment(s, "lifecycle/lifecycle", {"model": model}, timeout_s)
        say(f"  lifecycle run {flow_run}: completed")
    champion = registry.get_alias(model, tags.CHAMPION)
    if champion is None:
        raise DemoFailed("the lifecycle ended with no champion (see `aipaas models show`)")
    v1 = _wait(lambda: _serving_version(base, model) == champion.version, timeout_s)
    say(f"  champion v{champion.version} serving at {base}/predict ({v1:.0f} s to load)")

    window = s.monitoring.window_rows
    clients = []
    for name in CLIENTS:
        record, key = keys.create_key(s, f"demo-{name}", "predict,feedback", rate="60/s")
        clients.append((name, key))
    say(f"  created an API key per client: {', '.join(f'demo-{c}' for c in CLIENTS)}")
    train = data.recorded_version(definition.dataset, s)
    import pandas as pd

    frame = pd.read_csv(train.train_path)
    totals = simulate.ClientStats("all")

    # 2. ordinary traffic -----------------------------------------------------------
    checks_before = len(drift.history(s, model))
    n = 2 * window
    say(f"step 2/4: {len(CLIENTS)} clients send {n} ordinary requests ({window}-row windows)")
    traffic = simulate.sample_traffic(
        frame, definition.features, definition.target, n, seed=int(started)
    )
    for st in simulate.run_clients(base, clients, traffic, rate_per_s=RATE_PER_CLIENT):
        totals.add(st)
    ordinary = _wait_checks(s, model, checks_before, n, timeout_s)
    for check in (c for c in ordinary if c["rows"]):
        _print_check(check)
    if any(c["decision"]["retrain"] for c in ordinary):
        say("  ! the ordinary traffic was reported as drift (a false alarm)")
    else:
        say("  no drift reported on ordinary traffic")

    # 3. shifted traffic with labels -----------------------------------------------
    checks_before = len(drift.history(s, model))
    say(
        f"step 3/4: shifted traffic ({len(SHIFT)} size measurements read 45% larger), "
        "with each answer labelled through /feedback"
    )
    traffic = simulate.sample_traffic(
        frame, definition.features, definition.target, n, seed=int(started) + 1, scale=SHIFT
    )
    for st in simulate.run_clients(
        base, clients, traffic, rate_per_s=RATE_PER_CLIENT, feedback=True
    ):
        totals.add(st)
    shifted = _wait_checks(s, model, checks_before, n, timeout_s)
    for check in (c for c in shifted if c["rows"]):
        _print_check(check)
    if not any(c["decision"]["retrain"] for c in shifted):
        raise DemoFailed("the shifted traffic was not reported as drift")
    decisive = next(c for c in shifted if c["decision"]["retrain"])
    say(f"  drift detected: {'; '.join(decisive['decision']['reasons'])}")
    say(f"  report: {decisive.get('html')}")
    say("  the drift flow started retraining (data -> train -> promote)")

    # While retraining runs, one client keeps calling: the swap must fail no request.
    stop = threading.Event()
    background: dict[str, simulate.ClientStats] = {}
    endless = simulate.sample_traffic(
        frame, definition.features, definition.target, 100_000, seed=int(started) + 2
    )

    def keep_calling() -> None:
        name, key = clients[0]
        background["stats"] = simulate.run_client(
            base, name, key, endless, rate_per_s=10.0, stop=stop
        )

    caller = threading.Thread(target=keep_calling, daemon=True)
    caller.start()
    try:
        waited = _wait(
            lambda: _promotion_after(s, model, started, champion.version) is not None,
            timeout_s,
            progress=lambda: _retrain_progress(s, model, started),
        )
        decision = _promotion_after(s, model, started, champion.version)
        assert decision is not None
        if decision.result == "promoted":
            _wait(lambda: _serving_version(base, model) == decision.version, timeout_s)
            say(f"  v{decision.version} passed its gates; serving swapped to it ({waited:.0f} s)")
        else:
            say(f"  v{decision.version} was {decision.result}: {'; '.join(decision.reasons)}")
        time.sleep(2.0)  # a few requests on the new version
    finally:
        stop.set()
        caller.join(timeout=30)
    totals.add(background.get("stats", simulate.ClientStats("none")))

    # 4. summary ---------------------------------------------------------------------
    say("step 4/4: summary")
    typer.echo("\nmodel versions and their gates")
    for rec in promotion_log.read(s, model):
        gates = ", ".join(
            f"{g.get('name')}={_fmt(g.get('value'))}{'' if g.get('passed') else ' FAIL'}"
            for g in rec.gates
        )
        typer.echo(f"  v{rec.version:<3} {rec.action:<9} {rec.result:<9} {gates}")
    typer.echo("\ndrift checks")
    for check in [c for c in drift.history(s, model) if c["rows"]][-6:]:
        typer.echo("  " + _check_line(check))
    verdict = audit.verify(s)
    typer.echo("\nrequests")
    typer.echo(
        f"  sent {totals.sent}, answered {totals.ok}, failed {totals.failed}, "
        f"labelled {totals.labelled}; by version {dict(totals.versions)}"
    )
    for err in totals.errors[:5]:
        typer.echo(f"    {err}")
    typer.echo(
        f"  audit chain: {verdict.records} records, "
        + ("verified" if verdict.ok else "BROKEN: " + "; ".join(verdict.problems[:3]))
    )
    typer.echo(
        f"\nlook: Prefect {prefect_ui}, MLflow http://{s.mlflow.host}:{s.mlflow.port}, "
        f"the drift report that started retraining {decisive.get('html')}"
    )
    say(f"demo finished in {time.time() - started:.0f} s")
    if totals.failed or not verdict.ok or decision.result != "promoted":
        raise DemoFailed("the demo did not end as expected (see above)")


def _run_deployment(s: Settings, name: str, params: dict[str, Any], timeout_s: float) -> str:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: s.prefect_api_url}):
        flow_run = run_deployment(name, parameters=params, timeout=timeout_s, as_subflow=False)
    assert isinstance(flow_run, FlowRun)  # run_deployment is sync outside async code
    state = flow_run.state
    if state is None or not state.is_completed():
        raise DemoFailed(f"{name} ended {getattr(state, 'name', 'unknown')}: {state}")
    return str(flow_run.name)


def _serving_version(base: str, model: str) -> str | None:
    try:
        resp = httpx.get(f"{base}/readyz", timeout=5)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return resp.json().get("models", {}).get(model)


def _wait(
    done: Callable[[], bool],
    timeout_s: float,
    *,
    progress: Callable[[], str | None] | None = None,
) -> float:
    start = time.monotonic()
    last = None
    while not done():
        if time.monotonic() - start > timeout_s:
            raise DemoFailed(f"gave up after {timeout_s:.0f} s (logs in the run/logs folder)")
        if progress is not None:
            note = progress()
            if note and note != last:
                say(f"  {note}")
                last = note
        time.sleep(2.0)
    return time.monotonic() - start


def _wait_checks(
    s: Settings, model: str, before: int, rows: int, timeout_s: float
) -> list[dict[str, Any]]:
    """The drift checks that the windows of this step started, once they cover its rows."""
    from aipaas.monitoring import drift

    def covered() -> bool:
        return sum(c["rows"] for c in drift.history(s, model)[before:]) >= rows

    _wait(covered, timeout_s)
    return drift.history(s, model)[before:]


def _check_line(check: dict[str, Any]) -> str:
    decision = check["decision"]
    verdict = "retrain" if decision["retrain"] else ("no drift" if decision["decided"] else "—")
    drifting = check.get("drifting") or []
    names = ", ".join(drifting[:4]) + (" ..." if len(drifting) > 4 else "")
    return (
        f"v{check['version']} windows {check['windows']}: {check['rows']} rows, "
        f"{len(drifting)} features drifting{f' ({names})' if names else ''} -> {verdict}"
    )


def _print_check(check: dict[str, Any]) -> None:
    say("  drift check: " + _check_line(check))


def _promotion_after(s: Settings, model: str, since: float, champion: str) -> Any:
    from datetime import datetime

    from aipaas.training import promotion_log

    for rec in reversed(promotion_log.read(s, model)):
        when = datetime.fromisoformat(rec.at).timestamp()
        if when >= since - 1 and rec.version != champion and rec.action == "promote":
            return rec
    return None


def _retrain_progress(s: Settings, model: str, since: float) -> str | None:
    """What retraining is doing; raises when it ended, or was refused, with no decision.

    Later drift checks may ask again while the retrain runs; the cooldown
    skips those, which is expected and not a failure.
    """
    from aipaas.monitoring import retrain
    from aipaas.training import registry

    entries = [e for e in retrain.history(s, model) if e.get("at", 0) >= since]
    failed = [e for e in entries if e.get("outcome") == "failed"]
    if failed:
        raise DemoFailed(f"retraining failed: {failed[-1].get('error')}")
    if not any(t >= since for t in retrain.started_at(s, model)):
        refused = [e for e in entries if e.get("action") in ("skipped", "suggested")]
        if refused:
            raise DemoFailed(f"retraining was not started: {refused[-1].get('guardrails')}")
        return "waiting for the retrain flow to start"
    versions = registry.list_versions(model)
    newest = versions[0].version if versions else "?"
    return f"retraining ... newest registered version v{newest}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
