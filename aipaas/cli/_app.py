"""The Typer apps that every command module decorates.

Each command group has its own module in ``aipaas/cli/`` (data, train,
models, promote, canary, run, keys, audit, usage, monitor, serve, up, demo)
registering its commands on these apps.
"""

from __future__ import annotations

import typer

from aipaas.settings import Settings, get_settings

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="aipaas",
    help="aipaas: data -> model -> inference API -> monitoring -> retraining.",
    no_args_is_help=True,
    context_settings=CONTEXT,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Ingest, validate, split and version datasets.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models: list, show, lineage.", no_args_is_help=True)
run_app = typer.Typer(help="Run a flow now, in this process.", no_args_is_help=True)
keys_app = typer.Typer(help="Per-client API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)

app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(run_app, name="run")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")


def settings() -> Settings:
    """The settings for this invocation (environment, .env, params.yaml)."""
    return get_settings()
