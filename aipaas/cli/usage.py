"""``aipaas usage``: requests, errors, compute and cost per key and model version."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Annotated

import typer

from aipaas.cli._app import app, settings


@app.command("usage")
def usage_cmd(
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="To (UTC).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests, errors, compute seconds and cost per key and model version."""
    from aipaas.inference import usage

    rows = usage.usage(settings(), key_id=key, since=since, until=until)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    typer.echo(
        f"{'key':14} {'owner':16} {'model':14} {'ver':>4} {'requests':>9} {'errors':>7} "
        f"{'compute_s':>10} {'cost':>10}"
    )
    for r in rows:
        typer.echo(
            f"{r.key_id or '-':14} {(r.owner or '-')[:16]:16} {(r.model or '-')[:14]:14} "
            f"{r.version or '-':>4} {r.requests:>9} {r.errors:>7} {r.compute_s:>10.4f} "
            f"{r.cost:>10.6f}"
        )
