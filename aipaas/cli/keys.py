"""``aipaas keys create/list/revoke``."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from aipaas.cli._app import keys_app, settings


@keys_app.command("create")
def create_cmd(
    name: Annotated[str, typer.Option("--name", help="The client this key is for.")],
    scopes: Annotated[
        str,
        typer.Option(help="Comma-separated: predict, predict:<model>, feedback, admin."),
    ] = "predict",
    rate: Annotated[
        str | None,
        typer.Option(help="Rate limit like 50/s or 600/m (default serving.default_rate)."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="Expiry date (2026-12-31) or ISO datetime, UTC.")
    ] = None,
) -> None:
    """Create a key. It is shown once, on the last line; only its hash is stored."""
    from aipaas.inference import keys

    s = settings()
    record, plaintext = keys.create_key(s, name, scopes, rate=rate, expires=expires)
    typer.echo(f"created key {record.id} for {record.name!r}, scopes {','.join(record.scopes)}")
    typer.echo("store it now; it cannot be shown again:", err=True)
    typer.echo(plaintext)


@keys_app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List keys (ids, owners, scopes, state; never the secrets)."""
    from aipaas.inference import keys

    rows = keys.list_keys(settings())
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    if not rows:
        typer.echo("no keys; create one with `aipaas keys create --name APP --scopes predict`")
        return
    typer.echo(f"{'id':14} {'name':20} {'scopes':24} {'rate':8} {'state':8} expires")
    for k in rows:
        state = "revoked" if k.revoked_at else ("expired" if k.expired else "active")
        typer.echo(
            f"{k.id:14} {k.name[:20]:20} {','.join(k.scopes)[:24]:24} {k.rate or '-':8} "
            f"{state:8} {k.expires_at or '-'}"
        )


@keys_app.command("revoke")
def revoke_cmd(key_id: Annotated[str, typer.Argument(help="The key id (aip_<id>_...).")]) -> None:
    """Revoke a key; a running server refuses it within seconds."""
    from aipaas.inference import keys

    s = settings()
    key = keys.revoke_key(s, key_id)
    typer.echo(f"revoked key {key.id} ({key.name}) at {key.revoked_at}")
