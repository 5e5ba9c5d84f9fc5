"""``aipaas promote``, ``aipaas rollback``: the decision, in this process (no Prefect needed).

Who acted is the OS user (``alice (cli)``); the decision is signed, tagged on
the version and appended to the audit trail before the alias moves.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from aipaas.cli._app import app, settings
from aipaas.cli.models import store_card
from aipaas.exceptions import GateFailedError
from aipaas.modeldef import load_definition
from aipaas.training import promote, registry, tags
from aipaas.training.gates import Approval, format_gates
from aipaas.training.promotion_log import PromotionRecord

ModelArg = Annotated[str, typer.Argument(help="Model name: a definition in models/.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


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
    s = settings()
    approval = Approval(approved=True, reviewer=approve_as) if approve_as else None
    definition = load_definition(model, s.models_dir)
    try:
        record = promote.promote(s, definition, version, approval=approval)
    except GateFailedError:
        rejected = version or getattr(registry.get_alias(model, tags.CHALLENGER), "version", None)
        if rejected:
            store_card(s, definition, str(rejected))  # the card shows why it was rejected
        raise
    if record.result != "unchanged":
        store_card(s, definition, record.version)
    if as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2, default=str))
        return
    if record.result == "unchanged":
        typer.echo(f"{model} v{record.version} is already champion; nothing changed")
        return
    typer.echo(format_gates(record.gates))
    before = f"v{record.champion_before}" if record.champion_before else "none"
    typer.secho(
        f"promoted {model} v{record.version} to champion (previous: {before})",
        fg=typer.colors.GREEN,
    )
    typer.echo(f"signed by {record.decided_by}; on the audit trail (sig {_short(record)})")


def _short(record: PromotionRecord) -> str:
    return (record.signature or "-")[:12]


@app.command("rollback")
def rollback_cmd(model: ModelArg, as_json: JsonOpt = False) -> None:
    """Move champion back to previous-champion in one step; serving reloads at once."""
    record = promote.rollback(settings(), model)
    if as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2, default=str))
        return
    typer.secho(
        f"rolled back {model}: champion is v{record.champion_after} "
        f"(was v{record.champion_before})",
        fg=typer.colors.YELLOW,
    )
    typer.echo(f"signed by {record.decided_by}; on the audit trail (sig {_short(record)})")
