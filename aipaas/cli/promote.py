"""``aipaas promote``, ``aipaas rollback``: the decision, in this process (no Prefect needed).

Who acted is the OS user (``alice (cli)``); the decision is signed, tagged on
the version and appended to the audit trail before the alias moves.

``aipaas promote MODEL --canary PCT --watch 15m`` (or ``--shadow --watch
10m``) starts a release instead (the same gates first, started by the OS
user) and then runs the ``canary`` flow in this process to watch it: a
Prefect flow run, on the platform's Prefect server when it answers. One
line per check; the exit code says the outcome (:data:`EXIT_CODES`).
``--detach`` starts the release and hands the watching to a run of the
``canary`` deployment on the platform's worker (``aipaas up``), then exits.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Annotated, cast

import typer

from aipaas.cli._app import app, settings
from aipaas.cli.models import store_card
from aipaas.exceptions import CanaryError, ConfigurationError, GateFailedError
from aipaas.modeldef import Canary, ModelDefinition, load_definition
from aipaas.settings import Settings
from aipaas.training import promote, registry, tags
from aipaas.training.gates import Approval, format_gates
from aipaas.training.promotion_log import PromotionRecord

if TYPE_CHECKING:
    from aipaas.training.canary import CanaryEnd

ModelArg = Annotated[str, typer.Argument(help="Model name: a definition in models/.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

# How a watched release ended -> the command's exit code (0: the release did its job).
EXIT_CODES = {"promoted": 0, "completed": 0, "rolled-back": 23, "inconclusive": 24, "stopped": 25}


@app.command("promote")
def promote_cmd(
    model: ModelArg,
    version: Annotated[
        str | None,
        typer.Option("--version", "-v", help="Version to promote (default: challenger)."),
    ] = None,
    approve_as: Annotated[
        str | None,
        typer.Option(
            "--approve-as",
            help="Your name, approving the promotion when the definition requires approval.",
        ),
    ] = None,
    canary_pct: Annotated[
        float | None,
        typer.Option(
            "--canary",
            metavar="PCT",
            help="Send PCT% of clients to the version and promote it on live evidence.",
        ),
    ] = None,
    shadow: Annotated[
        bool,
        typer.Option("--shadow", help="Give the version a copy of live requests and report."),
    ] = False,
    watch: Annotated[
        str | None,
        typer.Option(
            "--watch",
            help="The release's window: 90s, 15m, 1h (default: the definition's Canary).",
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Start the release and let the platform's canary deployment watch it.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the gates and promote the version to champion; exit non-zero if a gate fails.

    With --canary or --shadow, start a release watched on live evidence instead;
    exit 0 when promoted (or a shadow completed), 23 rolled back, 24
    inconclusive, 25 stopped.
    """
    watch_s = _release_options(canary_pct, shadow, watch, detach)
    s = settings()
    approval = Approval(approved=True, reviewer=approve_as) if approve_as else None
    definition = load_definition(model, s.models_dir)
    if canary_pct is not None or shadow:
        mode = "shadow" if shadow else "canary"
        release(s, definition, version, mode, canary_pct, watch_s, approval, detach, as_json)
        return
    try:
        record = promote.promote(s, definition, version, approval=approval)
    except GateFailedError:
        rejected = version or getattr(registry.get_alias(model, tags.CHALLENGER), "version", None)
        if rejected:
            store_card(s, definition, str(rejected))  # the card shows why it was rejected
        raise
    if record.result != "unchanged":
        store_card(s, definition, record.version)
    if as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2, default=str))
        return
    if record.result == "unchanged":
        typer.echo(f"{model} v{record.version} is already champion; nothing changed")
        return
    typer.echo(format_gates(record.gates))
    before = f"v{record.champion_before}" if record.champion_before else "none"
    typer.secho(
        f"promoted {model} v{record.version} to champion (previous: {before})",
        fg=typer.colors.GREEN,
    )
    typer.echo(f"signed by {record.decided_by}; on the audit trail (sig {_short(record)})")


def _short(record: PromotionRecord) -> str:
    return (record.signature or "-")[:12]


@app.command("rollback")
def rollback_cmd(
    model: ModelArg,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="VERSION",
            help="Roll back to this version (one that was promoted once), "
            "not to previous-champion.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move champion back to previous-champion (or --to a version that served); serving reloads."""
    record = promote.rollback(settings(), model, to_version=to)
    if as_json:
        typer.echo(json.dumps(record.to_dict(), indent=2, default=str))
        return
    if record.result == "unchanged":
        typer.echo(f"{model} v{record.version} is already champion; nothing changed")
        return
    typer.secho(
        f"rolled back {model}: champion is v{record.champion_after} "
        f"(was v{record.champion_before})",
        fg=typer.colors.YELLOW,
    )
    typer.echo(f"signed by {record.decided_by}; on the audit trail (sig {_short(record)})")


# -- canary and shadow --------------------------------------------------------------------


def _release_options(
    canary_pct: float | None, shadow: bool, watch: str | None, detach: bool
) -> float | None:
    """The window in seconds; refuses contradictory options before anything changes."""
    from aipaas.monitoring.canary_watch import parse_duration

    releasing = canary_pct is not None or shadow
    if canary_pct is not None and shadow:
        raise ConfigurationError("choose --canary PCT or --shadow, not both")
    for flag, given in (("--watch", watch is not None), ("--detach", detach)):
        if given and not releasing:
            raise ConfigurationError(f"{flag} needs --canary PCT or --shadow")
    watch_s = None if watch is None else parse_duration(watch)
    if canary_pct is not None:
        Canary(percent=canary_pct, watch_s=watch_s or Canary.watch_s)  # refuses a bad share
    return watch_s


def release(
    s: Settings,
    definition: ModelDefinition,
    version: str | None,
    mode: str,
    percent: float | None,
    watch_s: float | None,
    approval: Approval | None,
    detach: bool,
    as_json: bool,
) -> None:
    """Start the release (gates first), then watch it here or hand it to the platform."""
    from aipaas.training import canary

    api = _prefect_answering(s) if detach else None
    if detach and api is None:
        raise CanaryError(
            f"--detach hands the watching to the platform's canary deployment, but Prefect at "
            f"{s.prefect_api_url} does not answer: start the platform with `aipaas up`, or "
            "watch from here without --detach; nothing was started"
        )
    try:
        state = canary.start(
            s,
            definition,
            version,
            mode="shadow" if mode == "shadow" else "canary",
            percent=percent,
            watch_s=watch_s,
            approval=approval,
        )
    except GateFailedError:
        rejected = version or getattr(
            registry.get_alias(definition.name, tags.CHALLENGER), "version", None
        )
        if rejected:
            store_card(s, definition, str(rejected))
        raise
    if not as_json:
        typer.echo(format_gates(state.gates))
        typer.echo(
            f"started a {state.mode} of {state.model} v{state.version} beside champion "
            f"v{state.champion}"
            + (f" for {state.percent:g}% of clients" if state.mode == "canary" else "")
            + f", until {_clock(state.until)} (started by {state.started_by})"
        )
    params = {"model": state.model, "version": state.version, "mode": state.mode}
    if detach:
        _detach(s, api or s.prefect_api_url, params, as_json)
        return
    _watch_here(s, params, as_json)


def _prefect_answering(s: Settings) -> str | None:
    import os

    url = os.environ.get("PREFECT_API_URL") or s.prefect_api_url
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=3) as resp:
            return url if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _detach(s: Settings, api: str, params: dict[str, str], as_json: bool) -> None:
    from flows._common import TAGS, run_deployment_at

    flow_run = run_deployment_at(
        api,
        "canary/canary",
        params,
        tags=(*TAGS, "canary"),
        auth_string=s.prefect.auth_string.get_secret_value() or None,
    )
    ui = api.removesuffix("/api")
    if as_json:
        typer.echo(json.dumps({**params, "flow_run": str(flow_run.id)}, indent=2))
        return
    typer.echo(
        f"the platform's canary deployment watches it: {ui}/runs/flow-run/{flow_run.id}\n"
        f"see `aipaas canary status {params['model']}`; stop it with "
        f"`aipaas canary stop {params['model']}`"
    )


def _watch_here(s: Settings, params: dict[str, str], as_json: bool) -> None:
    from aipaas.cli.run import prefect_api
    from flows.canary import canary_flow, listening

    def say(line: str) -> None:
        if not as_json:
            typer.echo(f"{time.strftime('%H:%M:%S')} {line}")

    with prefect_api(s) as url:
        if not as_json:
            typer.echo(f"watching in this process (Prefect: {url or 'a temporary server'}) ...")
        with listening(say):
            final = canary_flow(**params, return_state=True)  # type: ignore[call-overload]
    # A failed run raises its error here (the gates, the database away).
    ended = cast("CanaryEnd", final.result())
    if as_json:
        typer.echo(json.dumps(ended.to_dict(), indent=2, default=str))
    else:
        colour = typer.colors.GREEN if EXIT_CODES[ended.outcome] == 0 else typer.colors.YELLOW
        typer.secho(f"{ended.outcome}: {final.message}", fg=colour)
        typer.echo(f"champion is v{ended.champion_after}; decided by {ended.decided_by}")
    code = EXIT_CODES[ended.outcome]
    if code:
        raise typer.Exit(code)


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))
