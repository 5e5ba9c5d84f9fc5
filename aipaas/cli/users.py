"""``aipaas users``: MLflow accounts for the team setup (basic-auth app).

A data scientist gets an MLflow user of their own: with the server's
``default_permission = READ`` (see :mod:`aipaas.ops.tracking_server`) they
read every experiment and registered model, create experiments (and so
runs) of their own and log to them, but cannot edit what the platform
registered: no moving ``champion``, no deleting a version. The platform's
account (``mlflow.username``, the auth app's admin) makes these calls; the
password is read from stdin so it never shows in the shell history or ``ps``.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from aipaas.cli._app import app, settings
from aipaas.exceptions import AipaasError, ConfigurationError
from aipaas.ops.tracking_server import MIN_PASSWORD
from aipaas.settings import Settings
from aipaas.training import registry

users_app = typer.Typer(help="MLflow users of the team setup.", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _auth_client(s: Settings) -> Any:
    """MLflow's auth client, logged in as the platform's account."""
    if not s.mlflow.auth_enabled:
        raise ConfigurationError(
            "MLflow runs without users here (mlflow.auth_enabled is off); "
            "set AIPAAS_MLFLOW__AUTH_ENABLED=true and a password, then restart `aipaas up`"
        )
    from mlflow.server import get_app_client

    uri = registry.connect(s)
    return get_app_client("basic-auth", tracking_uri=uri)


def _refused(action: str, err: Exception) -> AipaasError:
    code = getattr(err, "error_code", "")
    hint = {
        "RESOURCE_ALREADY_EXISTS": "the name is taken; pick another or remove it first",
        "RESOURCE_DOES_NOT_EXIST": "no such user; `aipaas users list` shows them",
        "PERMISSION_DENIED": "AIPAAS_MLFLOW__USERNAME is not the auth app's admin",
        "UNAUTHENTICATED": "AIPAAS_MLFLOW__PASSWORD is not the platform account's password",
    }.get(code, "")
    return AipaasError(f"MLflow refused to {action}: {err}" + (f" ({hint})" if hint else ""))


@users_app.command("add")
def add_cmd(
    name: Annotated[str, typer.Argument(help="The user name the person logs in with.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin (required).")
    ] = False,
) -> None:
    """Create an MLflow user who logs runs in their own experiments and reads the registry.

    Example: ``printf %s "$PASSWORD" | aipaas users add alice --password-stdin``.
    """
    from mlflow.exceptions import MlflowException

    if not password_stdin:
        raise ConfigurationError("give the password on stdin with --password-stdin")
    password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD:
        raise ConfigurationError(
            f"the password must have at least {MIN_PASSWORD} characters (MLflow refuses shorter)"
        )
    client = _auth_client(settings())
    try:
        client.create_user(name, password)
    except MlflowException as err:
        raise _refused(f"create user {name!r}", err) from err
    typer.echo(
        f"created MLflow user {name!r}: reads every experiment and model, logs runs in "
        "experiments of their own; cannot move aliases or delete versions of the platform's models"
    )


@users_app.command("list")
def list_cmd() -> None:
    """The MLflow users, admins marked."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.routes import LIST_USERS

    client = _auth_client(settings())
    try:
        users = client._request(LIST_USERS, "GET").get("users", [])
    except MlflowException as err:
        raise _refused("list users", err) from err
    for user in sorted(users, key=lambda u: u["username"]):
        typer.echo(user["username"] + (" (admin)" if user.get("is_admin") else ""))


@users_app.command("remove")
def remove_cmd(name: Annotated[str, typer.Argument(help="The user to delete.")]) -> None:
    """Delete an MLflow user (their experiments and runs stay)."""
    from mlflow.exceptions import MlflowException

    s = settings()
    if name == s.mlflow.username:
        raise ConfigurationError(f"{name!r} is the platform's own account; it cannot be removed")
    client = _auth_client(s)
    try:
        client.delete_user(name)
    except MlflowException as err:
        raise _refused(f"remove user {name!r}", err) from err
    typer.echo(f"removed MLflow user {name!r}")
