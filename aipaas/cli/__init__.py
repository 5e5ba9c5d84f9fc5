"""The ``aipaas`` command.

Errors the platform raises on purpose (:class:`aipaas.exceptions.AipaasError`)
end the command with their message and their exit code, not a traceback.
"""

from __future__ import annotations

import sys

import typer

# Each area module registers its commands on the apps in _app when imported.
from aipaas.cli import audit, data, demo, keys, monitor, promote, serve, train, up
from aipaas.cli._app import app
from aipaas.exceptions import AipaasError

__all__ = ["app", "main"]
AREAS = (audit, data, demo, keys, monitor, promote, serve, train, up)


def main() -> None:
    try:
        app()
    except AipaasError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(err.exit_code)
