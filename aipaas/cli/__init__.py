"""The ``aipaas`` command.

Errors the platform raises on purpose (:class:`aipaas.exceptions.AipaasError`)
end the command with their message and their exit code, not a traceback.
"""

from __future__ import annotations

import sys

import typer

from aipaas.cli._app import app
from aipaas.exceptions import AipaasError

# Each import registers its commands on the apps in _app.
from aipaas.cli import (  # noqa: F401,E402
    audit as _audit,
    data as _data,
    keys as _keys,
    monitor as _monitor,
    promote as _promote,
    serve as _serve,
    train as _train,
    up as _up,
)

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except AipaasError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(err.exit_code)
