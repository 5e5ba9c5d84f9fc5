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
    _app,
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
    except SystemExit as done:
        if done.code in (0, None) and _app.wants_fast_exit():
            _exit_now()
        raise


def _exit_now() -> None:
    """End a successful stage command without the interpreter's teardown (see _app)."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
