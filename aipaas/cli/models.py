"""``aipaas models list|show|lineage|card``: the registry, and how each version came to be."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from aipaas.cli._app import models_app, settings
from aipaas.modeldef import list_definitions
from aipaas.training import promote, promotion_log, registry, tags
from aipaas.training.gates import format_gates

ModelArg = Annotated[str, typer.Argument(help="Model name: a definition in models/.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ALIASES = (tags.CHAMPION, tags.CHALLENGER, tags.PREVIOUS_CHAMPION)


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
    """Versions, aliases, gates, data versions and history; whether serving refuses the champion."""
    status = promote.model_status(settings(), model)
    if as_json:
        typer.echo(json.dumps(status.to_dict(), indent=2, default=str))
        return
    aliases = ", ".join(f"{a}=v{v}" for a, v in status.aliases.items()) or "none"
    typer.echo(f"model {model}   aliases: {aliases}")
    _echo_champion(status)
    typer.echo(f"\n{'ver':>4}  {'aliases':<28} {'status':<12} {'suite':<6} {'data':<14} created")
    for v in status.versions:
        typer.echo(
            f"{v.version:>4}  {','.join(v.aliases) or '-':<28} {v.status or '-':<12} "
            f"{v.suite_passed or '-':<6} {(v.data_hash or '-')[:12]:<14} {v.created}"
        )
        if v.reasons:
            typer.echo(f"      reasons: {v.reasons}")
    latest = next((v for v in status.versions if v.gates), None)
    if latest:
        typer.echo(f"\ngates of v{latest.version} ({latest.status}, {latest.decided_by}):")
        typer.echo(format_gates(latest.gates))
    _echo_history(status)


def _echo_champion(status: promote.ModelStatus) -> None:
    """Whether serving takes the champion, checked as serving checks it, and if not why."""
    champion = status.aliases.get(tags.CHAMPION)
    if status.champion_refused:
        typer.secho(
            f"serving REFUSES champion v{champion}: {status.champion_refused}",
            fg=typer.colors.RED,
        )
    elif champion:
        typer.echo(f"champion v{champion} serves: its signed promotion record is the latest")


def _echo_history(status: promote.ModelStatus) -> None:
    if not status.history:
        return
    typer.echo("\nhistory (from the audit trail):")
    for h in status.history:
        typer.echo(
            f"  {h.at}  {h.action:<8} v{h.version:<4} {h.result:<12} by {h.decided_by}"
            + (f", approved by {h.approved_by}" if h.approved_by else "")
        )


@models_app.command("lineage")
def lineage_cmd(
    model: ModelArg,
    version: Annotated[str, typer.Argument(help="Registered version number.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the data a registered version was trained on: dataset, DVC hash, suite, run, commit."""
    from aipaas.training.train import lineage

    info = lineage(model, version, settings())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        typer.echo(f"{key:{width}}  {value}")


@models_app.command("card")
def card_cmd(
    model: ModelArg,
    version: Annotated[
        str | None, typer.Argument(help="Registered version (default: the champion).")
    ] = None,
    html: Annotated[
        str | None, typer.Option("--html", help="Also write the HTML page to this file.")
    ] = None,
    log: Annotated[
        bool, typer.Option(help="Store the card with the version's training run in MLflow.")
    ] = True,
) -> None:
    """Print a version's model card (Markdown): use, data, metrics, gates, drift, limits."""
    from pathlib import Path

    from aipaas.exceptions import ModelNotFoundError
    from aipaas.modeldef import load_definition
    from aipaas.monitoring import card

    s = settings()
    definition = load_definition(model, s.models_dir)
    if version is None:
        registry.connect(s)
        champion = registry.get_alias(model, tags.CHAMPION)
        if champion is None:
            raise ModelNotFoundError(f"{model!r} has no champion; name a version")
        version = champion.version
    made = card.render(card.gather(s, definition, version))
    typer.echo(made.markdown)
    if html:
        Path(html).write_text(made.html)
        typer.echo(f"\nwrote {html}", err=True)
    if log:
        run_id = card.log_card(s, made)
        typer.echo(f"stored in MLflow: run {run_id}, {card.CARD_DIR}/", err=True)


def store_card(s: Any, definition: Any, version: str) -> None:
    """Store ``version``'s card after a registration or a decision; warn, never fail.

    A card is documentation, not a gate: the command that made the version
    (or decided on it) has succeeded whatever happens here.
    """
    from aipaas.exceptions import AipaasError
    from aipaas.monitoring import card

    try:
        card.publish(s, definition, version)
    except AipaasError as err:
        typer.secho(
            f"warning: the model card of {definition.name} v{version} was not stored: {err} "
            f"(`aipaas models card {definition.name} {version}` makes it)",
            err=True,
            fg=typer.colors.YELLOW,
        )
