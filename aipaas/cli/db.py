"""``aipaas db upgrade|current``: the platform database schema (Alembic migrations).

Every command that opens the platform database upgrades it first, so these
are for an operator who wants to upgrade before starting servers, or to see
where a database stands; a database migrated by a newer aipaas ends the
command with exit code 19 and says to upgrade aipaas.
"""

from __future__ import annotations

import typer

from aipaas.cli._app import CONTEXT, app, settings

db_app = typer.Typer(
    help="The platform database (keys, audit, usage): schema migrations.",
    no_args_is_help=True,
    context_settings=CONTEXT,
)
app.add_typer(db_app, name="db")


def _where() -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings().db_url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def upgrade_cmd() -> None:
    """Migrate the platform database to the newest schema this aipaas knows."""
    from aipaas import db

    before = db.current(settings())
    after = db.upgrade(settings())
    if before == after:
        typer.echo(f"{_where()}: already at revision {after}")
    else:
        typer.echo(f"{_where()}: upgraded from revision {before or '(none)'} to {after}")


@db_app.command("current")
def current_cmd() -> None:
    """Show the database's schema revision and the newest this aipaas knows; change nothing."""
    from aipaas import db

    found = db.current(settings())
    head = db.head_revision()
    state = "up to date" if found == head else "run `aipaas db upgrade`"
    if found is not None and found != head and found not in db.known_revisions():
        state = "migrated by a newer aipaas: upgrade aipaas"
    typer.echo(f"{_where()}: revision {found or '(none)'}; this aipaas: {head} ({state})")
