"""``aipaas canary status|stop``: the release running for a model, and ending it by hand.

``status`` reads what every serving replica reads (the model's latest canary
event on the audit chain) and the live evidence since it started, judged by
the limits it started with, then the model's last outcomes. ``stop`` ends
the release ``stopped``: serving sends every request to the champion again
within a tick, and a canary flow watching it ends its run "Stopped".
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from aipaas.cli._app import app, settings
from aipaas.training.gates import format_gates

canary_app = typer.Typer(help="Canary and shadow releases: see them, stop them.")
app.add_typer(canary_app, name="canary")

ModelArg = Annotated[str, typer.Argument(help="Model name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@canary_app.command("status")
def status_cmd(model: ModelArg, as_json: JsonOpt = False) -> None:
    """The running release (time left, evidence against its limits) and the last outcomes."""
    from aipaas.monitoring import canary_watch
    from aipaas.training import canary

    s = settings()
    state = canary.active(s, model)
    history = [h for h in canary.history(s, model, limit=20) if h["event"] == canary.ENDED]
    out: dict[str, Any] = {"model": model, "active": None, "history": history[:5]}
    if state is not None:
        evidence = canary_watch.read_evidence(s, state)
        decision = canary_watch.decide(evidence, state.policy)
        out["active"] = {
            **state.to_dict(),
            "remaining_s": round(state.remaining_s(), 1),
            "evidence": evidence.summary(),
            "gates": [g.to_dict() for g in decision.gates],
            "verdict_now": decision.outcome,
        }
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    if state is None:
        typer.echo(f"no canary or shadow of {model} is running")
    else:
        share = f", {state.percent:g}% of clients" if state.mode == "canary" else ""
        typer.echo(
            f"{state.mode} of {model} v{state.version} beside champion v{state.champion}"
            f"{share}; started by {state.started_by}; "
            f"{canary_watch.format_duration(state.remaining_s())} left "
            f"(until {_clock(state.until)})"
        )
        typer.echo(canary_watch.progress_line(evidence, decision))
        typer.echo(format_gates(decision.gates))
    if history:
        typer.echo("last outcomes:")
    for h in history[:5]:
        why = "; ".join(h.get("reasons") or [])
        typer.echo(
            f"  {h['ts'][:19]}  v{h['version']} {h.get('mode', '')} {h.get('outcome')} "
            f"by {h.get('decided_by') or h.get('owner')}" + (f": {why}" if why else "")
        )


@canary_app.command("stop")
def stop_cmd(
    model: ModelArg,
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for the audit trail.")
    ] = "stopped by hand",
    as_json: JsonOpt = False,
) -> None:
    """End the running release as stopped: all traffic goes back to the champion at once."""
    from aipaas.training import canary

    ended = canary.end(settings(), model, "stopped", reasons=[reason])
    if as_json:
        typer.echo(json.dumps(ended.to_dict(), indent=2, default=str))
        return
    typer.secho(
        f"stopped the {ended.mode} of {model} v{ended.version}: every request goes to champion "
        f"v{ended.champion_after} again",
        fg=typer.colors.YELLOW,
    )
    typer.echo(f"on the audit trail, by {ended.decided_by}")


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))
