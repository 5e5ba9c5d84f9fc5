"""``aipaas audit verify|tail|query``: the hash-chained audit trail."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer

from aipaas.cli._app import audit_app, settings


def _line(r: dict[str, Any]) -> str:
    if r["kind"] == "admin":
        what = f"{r['event']} {r['model'] or ''}{' v' + r['version'] if r['version'] else ''}"
        return f"{r['seq']:>7} {r['ts']} admin  {what} {r['detail'] or ''}"
    mv = f"{r['model']} v{r['version']}" if r["version"] else (r["model"] or "-")
    user = f" user={r['end_user'][:12]}" if r.get("end_user") else ""
    note = f" {r['detail']}" if r.get("detail") else ""
    return (
        f"{r['seq']:>7} {r['ts']} {r['status']:>3} {r['route']:22} key={r['key_id'] or '-':13} "
        f"{mv:18} {r['latency_ms'] or 0:8.2f}ms req={r['request_id']}{user}{note}"
    )


@audit_app.command("verify")
def verify_cmd() -> None:
    """Check the hash chain; exit non-zero and say where if any record was tampered with."""
    from aipaas import audit

    report = audit.verify(settings())
    if report.ok:
        typer.echo(f"audit chain OK: {report.records} records, head {report.last_hash[:16]}")
        return
    typer.secho(
        f"audit chain BROKEN: {len(report.problems)} problem(s) in {report.records} records",
        fg=typer.colors.RED,
        err=True,
    )
    for p in report.problems:
        typer.echo(f"  {p}", err=True)
    raise typer.Exit(10)


@audit_app.command("tail")
def tail_cmd(
    n: Annotated[int, typer.Option("-n", help="How many records.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """The latest records, oldest first."""
    from aipaas import audit

    for r in audit.tail(settings(), n):
        typer.echo(json.dumps(r) if as_json else _line(r))


@audit_app.command("query")
def query_cmd(
    key: Annotated[str | None, typer.Option(help="Key id.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From (UTC, inclusive).")] = None,
    until: Annotated[datetime | None, typer.Option(help="To (UTC, exclusive).")] = None,
    end_user: Annotated[
        str | None,
        typer.Option("--end-user", help="End user id as sent in X-End-User (hashed to match)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Records by key, end user and time range, oldest first."""
    from aipaas import audit

    rows = audit.query(
        settings(),
        key_id=key,
        since=since,
        until=until,
        end_user=end_user,
        limit=limit,
        newest_first=False,
    )
    for r in rows:
        typer.echo(json.dumps(r) if as_json else _line(r))
