"""``aipaas promote, rollback, models list/show, run <flow>``.

``promote`` and ``rollback`` run the decision in this process (no Prefect
needed); ``run <flow>`` runs a Prefect flow now, in this process, reporting
to the Prefect server ``aipaas up`` started when one answers (so the run shows
in the UI), else to a temporary one.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from aipaas.cli._app import app, models_app, run_app, settings
from aipaas.exceptions import ConfigurationError
from aipaas.modeldef import list_definitions
from aipaas.settings import Settings
from aipaas.training import promote, promotion_log, registry, tags
from aipaas.training.promote import Approval

ModelArg = Annotated[str, typer.Argument(help="Model name: a definition in models/.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ALIASES = (tags.CHAMPION, tags.CHALLENGER, tags.PREVIOUS_CHAMPION)


@app.command("promote")
def promote_cmd(
    model: ModelArg,
    version: Annotated[
        str | None,
        typer.Option("--version", "-v", help="Version to promote (default: challenger)."),
    ] = None,
    approve_as: Annotated[
        str | None,
        typer.Option(
            "--approve-as",
            help="Your name, approving the promotion when the definition requires approval.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the gates and promote the version to champion; exit non-zero if a gate fails."""
    approval = Approval(approved=True, reviewer=approve_as) if approve_as else None
    record = promote.promote(settings(), model, version, approval=approval)
    if as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2))
        return
    if record.result == "unchanged":
        typer.echo(f"{model} v{record.version} is already champion; nothing changed")
        return
    typer.echo(promote.format_gates(record.gates))
    before = f"v{record.champion_before}" if record.champion_before else "none"
    typer.secho(
        f"promoted {model} v{record.version} to champion (previous: {before})",
        fg=typer.colors.GREEN,
    )


@app.command("rollback")
def rollback_cmd(model: ModelArg, as_json: JsonOpt = False) -> None:
    """Move champion back to previous-champion in one step; serving reloads at once."""
    record = promote.rollback(settings(), model)
    if as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2))
        return
    typer.secho(
        f"rolled back {model}: champion is v{record.champion_after} "
        f"(was v{record.champion_before})",
        fg=typer.colors.YELLOW,
    )


@models_app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """Models (defined or registered) with their champion, challenger and last decision."""
    s = settings()
    registry.connect(s)
    names = sorted(set(list_definitions(s.models_dir)) | set(registry.list_models()))
    rows: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = {"model": name, "versions": len(registry.list_versions(name))}
        for alias in ALIASES:
            found = registry.get_alias(name, alias) if row["versions"] else None
            row[alias] = found.version if found else None
        last = promotion_log.last(s, name)
        row["last_decision"] = (
            f"{last.action} v{last.version}: {last.result} ({last.at}, {last.decided_by})"
            if last
            else None
        )
        rows.append(row)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'model':<18} {'versions':>8} {'champion':>9} {'challenger':>10} {'previous':>9}")
    for r in rows:
        typer.echo(
            f"{r['model']:<18} {r['versions']:>8} {r[tags.CHAMPION] or '-':>9} "
            f"{r[tags.CHALLENGER] or '-':>10} {r[tags.PREVIOUS_CHAMPION] or '-':>9}"
            + (f"   last: {r['last_decision']}" if r["last_decision"] else "")
        )


@models_app.command("show")
def show_cmd(model: ModelArg, as_json: JsonOpt = False) -> None:
    """Versions, aliases, gate results, data versions and the promotion history of a model."""
    status = promote.model_status(settings(), model)
    if as_json:
        typer.echo(json.dumps(status, indent=2, default=str))
        return
    aliases = ", ".join(f"{a}=v{v}" for a, v in status["aliases"].items()) or "none"
    typer.echo(f"model {model}   aliases: {aliases}\n")
    typer.echo(f"{'ver':>4}  {'aliases':<28} {'status':<12} {'suite':<6} {'data':<14} created")
    for v in status["versions"]:
        typer.echo(
            f"{v['version']:>4}  {','.join(v['aliases']) or '-':<28} {v['status'] or '-':<12} "
            f"{v['suite_passed'] or '-':<6} {(v['data_hash'] or '-')[:12]:<14} {v['created']}"
        )
        if v["reasons"]:
            typer.echo(f"      reasons: {v['reasons']}")
    latest = next((v for v in status["versions"] if v["gates"]), None)
    if latest:
        typer.echo(f"\ngates of v{latest['version']} ({latest['status']}, {latest['decided_by']}):")
        typer.echo(promote.format_gates(latest["gates"]))
    if status["history"]:
        typer.echo("\nhistory:")
        for h in status["history"]:
            typer.echo(
                f"  {h['at']}  {h['action']:<8} v{h['version']:<4} {h['result']:<12} "
                f"by {h['decided_by']}"
                + (f", approved by {h['approved_by']}" if h.get("approved_by") else "")
            )


# --- run <flow> -------------------------------------------------------------------


@contextmanager
def prefect_api(s: Settings) -> Iterator[str | None]:
    """Report flow runs to the running platform's Prefect server when it answers."""
    import os

    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    url = s.prefect_api_url
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            alive = resp.status == 200
    except (urllib.error.URLError, OSError):
        alive = False
    if not alive:
        yield None
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


def _run(flow_module: str, flow_name: str, **params: Any) -> None:
    import importlib

    try:
        module = importlib.import_module(flow_module)
    except ModuleNotFoundError as err:
        if err.name != flow_module:
            raise
        raise ConfigurationError(f"flow {flow_module} is not part of this installation") from err
    flow: Callable[..., Any] = getattr(module, flow_name)
    with prefect_api(settings()) as url:
        typer.echo(f"running {flow_module} on {url or 'a temporary Prefect server'} ...")
        result = flow(**params)
    typer.echo(json.dumps(result, indent=2, default=str))


@run_app.command("lifecycle")
def run_lifecycle(model: ModelArg = "diagnosis") -> None:
    """Data, then train, then promote, now."""
    _run("flows.lifecycle", "lifecycle_flow", model=model)


@run_app.command("promote")
def run_promote(
    model: ModelArg = "diagnosis",
    version: Annotated[str | None, typer.Option("--version", "-v")] = None,
) -> None:
    """The promote flow (gates table artifact; pauses when approval is required)."""
    _run("flows.promote", "promote_flow", model=model, version=version)


@run_app.command("data")
def run_data(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")] = "breast_cancer",
) -> None:
    """The data flow: ingest, validate, split, version, push."""
    _run("flows.data", "data_flow", dataset=dataset)


@run_app.command("train")
def run_train(model: ModelArg = "diagnosis") -> None:
    """The train flow: Ray Tune search, holdout evaluation, register the challenger."""
    _run("flows.train", "train_flow", model=model)


@run_app.command("drift")
def run_drift(model: ModelArg = "diagnosis") -> None:
    """The drift flow: compare served profiles with the champion's reference."""
    _run("flows.drift", "drift_flow", model=model)


@run_app.command("retrain")
def run_retrain(model: ModelArg = "diagnosis") -> None:
    """The retrain flow: new training data, then data, train, promote."""
    _run("flows.retrain", "retrain_flow", model=model)
