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


# Set by a command whose process has nothing left to do once it succeeds: the
# DVC stage commands, which DVC starts once per stage. ``aipaas.cli.main``
# then ends the process without the interpreter's teardown.
_exit_without_teardown = False


def exit_without_teardown() -> None:
    """Ask ``main`` to end this process at once when the command succeeds.

    Tearing down an interpreter that imported Great Expectations, scikit-learn
    and pandas costs 1.5-4 s here (freeing every module's objects), paid by
    each of the three DVC stages of every data run. Only for commands whose
    outputs are closed files and printed lines: ``main`` flushes the streams
    and the log handlers first. Commands run in-process (tests' CliRunner) are
    unaffected: only ``main`` acts on it.
    """
    global _exit_without_teardown
    _exit_without_teardown = True


def wants_fast_exit() -> bool:
    return _exit_without_teardown
