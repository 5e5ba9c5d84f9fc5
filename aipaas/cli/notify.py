"""``aipaas notifier`` (the long-running webhook sender) and ``aipaas notify test|status``."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from aipaas.cli._app import app, settings

notify_app = typer.Typer(help="Webhook notifications: test them, see what was sent.")
app.add_typer(notify_app, name="notify")


@app.command("notifier")
def notifier_cmd(
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between two reads of the sources.")
    ] = 5.0,
    once: Annotated[
        bool, typer.Option("--once", help="Read the sources and deliver once, then exit.")
    ] = False,
) -> None:
    """Send webhooks on what operators must hear about, until Ctrl-C or SIGTERM.

    Reads the audit chain (promotions, rejections, rollbacks, canary starts and
    decisions, restarts), the drift history (retrain decisions), Prefect's flow
    runs (failed, crashed, a data suite failed, a promotion waiting for
    approval) and usage against key quotas; configured by the notify settings
    (AIPAAS_NOTIFY__WEBHOOKS, AIPAAS_NOTIFY__SIGNING_KEY). A restart sends
    nothing twice.
    """
    from aipaas.ops import notify

    s = settings()
    notifier = notify.Notifier(s, notify.default_sources(s), echo=_say)
    hooks = ", ".join(
        f"{notify.redacted(h.url)} ({h.format}"
        + (f": {', '.join(h.events)})" if h.events else ", every event)")
        for h in s.notify.webhooks
    )
    if not s.notify.webhooks:
        _say("no webhook configured (notify.webhooks): events are recorded, nothing is sent")
    if not s.notify.signing_key.get_secret_value():
        _say("notify.signing_key is not set: posts are not signed")
    if once:
        notifier.poll()
        for hook in s.notify.webhooks:
            for result in notifier.deliver(hook):
                _say(_line(result))
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _say(
        f"{notify.READY_LINE}: {len(s.notify.webhooks)} webhook(s) {hooks or '-'}; reading "
        f"the audit chain, drift checks, Prefect ({s.prefect_api_url}) and quotas "
        f"every {interval:g} s"
    )
    try:
        notifier.run(stop, interval_s=interval)
    except KeyboardInterrupt:
        stop.set()
    _say("notifier stopped")


@notify_app.command("test")
def test_cmd() -> None:
    """Send one test event to every configured webhook and say how each answered.

    Exits 1 when any webhook did not answer 2xx.
    """
    from aipaas.ops import notify

    s = settings()
    results = notify.send_test(s)
    signed = "signed" if s.notify.signing_key.get_secret_value() else "NOT signed (no signing_key)"
    for result in results:
        typer.echo(_line(result) + f" [{signed}]")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@notify_app.command("status")
def status_cmd(
    limit: Annotated[int, typer.Option(min=1, help="How many recent deliveries to list.")] = 20,
    failed: Annotated[bool, typer.Option("--failed", help="Only deliveries given up.")] = False,
) -> None:
    """Deliveries per webhook (sent, pending, failed) and the latest ones, with their errors."""
    from aipaas.ops import notify

    s = settings()
    store = notify.Store(s)
    names = {notify.webhook_id(h): notify.redacted(h.url) for h in s.notify.webhooks}
    counts = store.counts()
    for hook in sorted({w for w, _ in counts}):
        per = {state: counts.get((hook, state), 0) for state in ("sent", "pending", "failed")}
        name = names.get(hook, f"webhook {hook[:8]} (no longer configured)")
        typer.echo(f"{name}: " + ", ".join(f"{n} {state}" for state, n in per.items()))
    if not counts:
        typer.echo("no notification recorded yet")
    for d in store.deliveries(state=notify.FAILED if failed else None, limit=limit):
        when = datetime.fromtimestamp(d.updated_at, UTC).isoformat(timespec="seconds")
        name = names.get(d.webhook, d.webhook[:8])
        why = f" ({d.error})" if d.error else ""
        typer.echo(
            f"{when} {d.state:<7} {d.event.kind:<26} {name} tries {d.attempts}: "
            f"{d.event.title}{why}"
        )


def _line(result: object) -> str:
    from aipaas.ops.notify import Attempt

    assert isinstance(result, Attempt)
    if result.ok:
        return f"ok      {result.webhook}: HTTP {result.status} in {result.elapsed_s * 1000:.0f} ms"
    return f"FAILED  {result.webhook}: {result.error}"


def _say(line: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    typer.echo(f"{stamp} {line}")
