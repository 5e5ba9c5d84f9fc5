"""The ``aipaas`` command.

Errors the platform raises on purpose (:class:`aipaas.exceptions.AipaasError`)
end the command with their message and their exit code, not a traceback.
"""

from __future__ import annotations

import sys

import typer

# One module per command group; importing it registers its commands on the
# apps in _app.
from aipaas.cli import (  # noqa: F401
    audit,
    batch,
    canary,
    data,
    db,
    demo,
    keys,
    models,
    monitor,
    notify,
    promote,
    rayhead,
    run,
    serve,
    train,
    up,
    usage,
    users,
    worker,
)
from aipaas.cli._app import app
from aipaas.exceptions import AipaasError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except AipaasError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(err.exit_code)
