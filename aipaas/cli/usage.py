"""``aipaas usage``: requests, errors, compute and cost per key and model version, or over time."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aipaas.cli._app import app, settings

if TYPE_CHECKING:
    from aipaas.inference.usage import UsageRow


@app.command("usage")
def usage_cmd(
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="To (UTC).")] = None,
    by: Annotated[
        str | None, typer.Option("--by", help="A time series: one row per UTC 'hour' or 'day'.")
    ] = None,
    end_user: Annotated[
        str | None, typer.Option("--end-user", help="Only this end user (the id sent).")
    ] = None,
    by_end_user: Annotated[
        bool, typer.Option("--by-end-user", help="One row per end user (pseudonym) too.")
    ] = False,
    chart: Annotated[
        Path | None,
        typer.Option(help="Also draw requests and cost per key over time into this PNG."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests, errors, compute seconds and cost per key and model version (and end user).

    With --by hour|day, one row per UTC hour or day; --chart draws it (day if no --by).
    """
    from aipaas.inference import usage

    bucket = by or ("day" if chart is not None else None)
    rows = usage.usage(
        settings(),
        key_id=key,
        since=since,
        until=until,
        end_user=end_user,
        by_end_user=by_end_user,
        bucket=bucket,
    )
    if chart is not None:
        from aipaas.inference import usage_chart

        usage_chart.write_chart(rows, chart, bucket=bucket or "day")
        typer.echo(f"chart: {chart}", err=as_json)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    _table(rows, bucket=bucket is not None, users=by_end_user)


def _table(rows: list[UsageRow], *, bucket: bool, users: bool) -> None:
    when = f"{'start (UTC)':26} " if bucket else ""
    who = f"{'end user':14} " if users else ""
    typer.echo(
        f"{when}{'key':14} {'owner':16} {'model':14} {'ver':>4} {who}{'requests':>9} "
        f"{'errors':>7} {'compute_s':>10} {'cost':>10}"
    )
    for r in rows:
        when = f"{r.bucket:26} " if bucket else ""
        who = f"{(r.end_user or '-')[:14]:14} " if users else ""
        typer.echo(
            f"{when}{r.key_id or '-':14} {(r.owner or '-')[:16]:16} {(r.model or '-')[:14]:14} "
            f"{r.version or '-':>4} {who}{r.requests:>9} {r.errors:>7} {r.compute_s:>10.4f} "
            f"{r.cost:>10.6f}"
        )
