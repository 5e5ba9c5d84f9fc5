"""``aipaas keys create/list/revoke/rotate``."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
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
    pin: Annotated[
        list[str] | None,
        typer.Option(
            "--pin",
            metavar="MODEL=VERSION",
            help="MODEL=VERSION: answer this key with that version instead of the champion "
            "(repeatable; only a version that was promoted at some time).",
        ),
    ] = None,
    quota: Annotated[
        str | None, typer.Option(help="Requests per UTC hour, day or month, like 10000/day.")
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="Cost per UTC hour, day or month, like 50/month.")
    ] = None,
    publishable: Annotated[
        bool,
        typer.Option(
            "--publishable",
            help="A key for a browser app (aip_pub_...): predict scopes only, "
            "and only from --origins.",
        ),
    ] = False,
    origins: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated web origins a publishable key works from, "
            "like https://shop.example,http://localhost:3000."
        ),
    ] = None,
) -> None:
    """Create a key. It is shown once, on the last line; only its hash is stored."""
    from aipaas.inference import keys

    s = settings()
    record, plaintext = keys.create_key(
        s,
        name,
        scopes,
        rate=rate,
        expires=expires,
        pins=pin,
        quota=quota,
        budget=budget,
        publishable=publishable,
        origins=origins,
    )
    typer.echo(
        f"created {record.kind} key {record.id} for {record.name!r}, "
        f"scopes {','.join(record.scopes)}"
    )
    if record.publishable:
        typer.echo(f"works only from: {','.join(record.origins)}")
    if record.pins:
        typer.echo(f"pinned: {_pins(record.pins)}")
    if record.quota or record.budget:
        typer.echo(f"quota: {record.quota or '-'}, budget: {record.budget or '-'}")
    typer.echo("store it now; it cannot be shown again:", err=True)
    typer.echo(plaintext)


def _pins(pins: dict[str, str]) -> str:
    return ",".join(f"{m}={v}" for m, v in sorted(pins.items())) or "-"


@keys_app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List keys (ids, owners, scopes, limits, pins, state; never the secrets)."""
    from aipaas.inference import keys

    rows = keys.list_keys(settings())
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    if not rows:
        typer.echo("no keys; create one with `aipaas keys create --name APP --scopes predict`")
        return
    typer.echo(
        f"{'id':14} {'name':20} {'kind':11} {'scopes':24} {'rate':8} {'quota':12} "
        f"{'budget':12} {'pins':16} {'state':8} {'expires':32} origins"
    )
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    for k in rows:
        state = "revoked" if k.revoked_at else ("expired" if k.expired else "active")
        grace = k.prev_valid_until if k.active and (k.prev_valid_until or "") > now else None
        typer.echo(
            f"{k.id:14} {k.name[:20]:20} {k.kind:11} {','.join(k.scopes)[:24]:24} "
            f"{k.rate or '-':8} {k.quota or '-':12} {k.budget or '-':12} {_pins(k.pins):16} "
            f"{state:8} {k.expires_at or '-':32} {','.join(k.origins) or '-'}"
            + (f"  (previous secret until {grace})" if grace else "")
        )


@keys_app.command("revoke")
def revoke_cmd(key_id: Annotated[str, typer.Argument(help="The key id (aip_<id>_...).")]) -> None:
    """Revoke a key; a running server refuses it within seconds."""
    from aipaas.inference import keys

    s = settings()
    key = keys.revoke_key(s, key_id)
    typer.echo(f"revoked key {key.id} ({key.name}) at {key.revoked_at}")


@keys_app.command("rotate")
def rotate_cmd(
    key_id: Annotated[str, typer.Argument(help="The key id (aip_<id>_...).")],
    grace: Annotated[
        str,
        typer.Option(
            help="How long the current secret keeps working: 30m, 1h, 2d (0s: it stops at once)."
        ),
    ] = "1h",
) -> None:
    """Give a key a new secret, shown once on the last line; the old one works for --grace."""
    from aipaas.inference import keys

    rotation = keys.rotate_key(settings(), key_id, grace)
    key = rotation.key
    typer.echo(f"rotated key {key.id} ({key.name})")
    typer.echo(f"the previous secret works until {rotation.previous_valid_until}")
    typer.echo("store it now; it cannot be shown again:", err=True)
    typer.echo(rotation.plaintext)
