"""Webhook notifications, received by a real HTTP server on loopback.

What the platform records (a promotion on the audit chain, a drift check that
decided to retrain, a key's usage, a failed Prefect flow run) reaches each
configured receiver once, signed, in its format; a receiver that fails gets
the event again after a pause, and at most ``max_attempts`` times; a second
notifier on the same database sends nothing the first one sent.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aipaas import audit
from aipaas.inference import keys
from aipaas.monitoring import drift_report
from aipaas.monitoring.drift_stats import DriftDecision, DriftReport
from aipaas.ops import notify
from aipaas.training import promotion_log
from aipaas.training.promotion_log import PromotionRecord

KEY = "s3cret-signing-key"


@dataclass
class Receiver:
    """A webhook receiver: answers with ``statuses`` in turn (then 200) and keeps every post."""

    url: str
    statuses: list[int] = field(default_factory=list)
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)

    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, body in self.posts]

    def delivered(self) -> list[dict]:
        """The posts answered 2xx: what the receiver accepted."""
        return [
            json.loads(body)
            for (_, body), status in zip(self.posts, self.answered, strict=True)
            if status < 300
        ]


@contextlib.contextmanager
def receiver_servers() -> Iterator[Callable[[], Receiver]]:
    """Makes receivers on loopback ports; all stopped on exit."""
    started: list[tuple[ThreadingHTTPServer, threading.Thread]] = []
    made: list[Receiver] = []

    def make() -> Receiver:
        rec = Receiver(url="")

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = rec.statuses.pop(0) if rec.statuses else 200
                rec.answered.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T0K3N"
        made.append(rec)
        return rec

    try:
        yield make
    finally:
        for server, thread in started:
            server.shutdown()
            server.server_close()
            thread.join(5)


@pytest.fixture
def receivers() -> Iterator[Callable[[], Receiver]]:
    with receiver_servers() as make:
        yield make


@pytest.fixture
def settings(platform_settings):
    return platform_settings


def with_hooks(settings, *hooks: dict, **more):
    cfg = {"webhooks": list(hooks), "signing_key": KEY, "timeout_s": 2.0, **more}
    return settings.model_copy(update={"notify": type(settings.notify)(**cfg)})


def notifier(settings, *sources_of, **kw) -> notify.Notifier:
    sources = [make(settings) for make in (sources_of or (notify.AuditSource, notify.DriftSource))]
    lines: list[str] = []
    n = notify.Notifier(settings, sources, backoff_s=0.05, echo=lines.append, **kw)
    n.lines = lines  # type: ignore[attr-defined]
    return n


def deliver_all(n: notify.Notifier, settings, *, rounds: int = 20) -> None:
    """Deliver to every webhook until nothing is due (retries included)."""
    for _ in range(rounds):
        pending = False
        for hook in settings.notify.webhooks:
            n.deliver(hook)
            pending |= bool(n.store.deliveries(state=notify.PENDING, limit=1))
        if not pending:
            return
        time.sleep(0.06)


def promote(settings, version: str = "2", result: str = "promoted") -> None:
    promotion_log.append(
        settings,
        PromotionRecord(
            model="diagnosis",
            version=version,
            action="rollback" if result == "rolled-back" else "promote",
            result=result,  # type: ignore[arg-type]
            decided_by="alice",
            reasons=["accuracy 0.80 < 0.90"] if result == "rejected" else [],
            champion_before="1",
            champion_after=version if result != "rejected" else "1",
        ),
    )


def drift_retrain(settings) -> None:
    drift_report.record_check(
        settings,
        DriftReport(
            model="diagnosis",
            version="2",
            rows=500,
            windows=(1, 2),
            features=(),
            prediction=None,
            accuracy=None,
            decision=DriftDecision(True, True, ("mean radius drifted",), cause="features: 1"),
        ),
    )


# -- pure: payloads and signatures ------------------------------------------------------


def test_the_signature_verifies_with_the_key_and_fails_with_another_or_when_old():
    event = notify.Event(id="audit:1", kind=notify.ROLLBACK, at=1.0e9, title="rolled back")
    body = notify.payload(event, "json")
    now = 2.0e9
    sig = notify.sign(KEY.encode(), str(int(now)), body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert notify.verify_signature(KEY.encode(), str(int(now)), body, sig, now=now)
    assert not notify.verify_signature(b"another key", str(int(now)), body, sig, now=now)
    assert not notify.verify_signature(KEY.encode(), str(int(now)), body + b" ", sig, now=now)
    # The timestamp is signed: a replay an hour later is refused, and so is a moved stamp.
    assert not notify.verify_signature(KEY.encode(), str(int(now)), body, sig, now=now + 3600)
    assert not notify.verify_signature(KEY.encode(), str(int(now) + 5), body, sig, now=now)


def test_the_slack_format_is_a_text_and_the_json_format_the_event():
    event = notify.Event(
        id="drift:3", kind=notify.DRIFT_RETRAIN, at=0.0, title="drift on m v2", model="m"
    )
    slack = json.loads(notify.payload(event, "slack"))
    assert list(slack) == ["text"]
    assert slack["text"].startswith("[aipaas] drift on m v2") and "drift.retrain" in slack["text"]
    plain = json.loads(notify.payload(event, "json"))
    assert plain["id"] == "drift:3" and plain["kind"] == "drift.retrain" and plain["model"] == "m"
    assert plain["at_iso"] == "1970-01-01T00:00:00+00:00"


def test_a_misconfigured_webhook_is_refused_with_what_to_fix(settings):
    from aipaas.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown event kinds promotion.pased"):
        notifier(with_hooks(settings, {"url": "http://x", "events": ["promotion.pased"]}))
    with pytest.raises(ConfigurationError, match="not an http"):
        notifier(with_hooks(settings, {"url": "hooks.slack.com/x"}))


# -- end to end on the platform database ------------------------------------------------


def test_a_promotion_and_a_drift_retrain_reach_the_receiver_signed(settings, receivers):
    rec, slack = receivers(), receivers()
    s = with_hooks(settings, {"url": rec.url}, {"url": slack.url, "format": "slack"})
    promote(s, version="1")  # before the notifier ever ran: history, not replayed
    n = notifier(s)
    assert n.poll() == []
    promote(s, version="2")
    drift_retrain(s)
    found = n.poll()
    assert [e.kind for e in found] == [notify.PROMOTION_PASSED, notify.DRIFT_RETRAIN]
    deliver_all(n, s)

    assert [(b["kind"], b["model"], b["version"]) for b in rec.bodies()] == [
        ("promotion.passed", "diagnosis", "2"),
        ("drift.retrain", "diagnosis", "2"),
    ]
    promoted = rec.bodies()[0]
    assert promoted["title"] == "diagnosis v2 promoted to champion (champion was v1)"
    assert promoted["detail"]["decided_by"] == "alice"
    assert "mean radius drifted" in rec.bodies()[1]["detail"]["reasons"]
    for headers, body in rec.posts + slack.posts:
        stamp, sig = headers["x-aipaas-timestamp"], headers["x-aipaas-signature"]
        assert notify.verify_signature(KEY.encode(), stamp, body, sig)
        assert not notify.verify_signature(b"not the key", stamp, body, sig)
    assert [h["x-aipaas-event-id"] for h, _ in rec.posts] == [b["id"] for b in rec.bodies()]
    texts = [b["text"] for b in slack.bodies()]
    assert texts[0].startswith("[aipaas] diagnosis v2 promoted to champion")
    assert "retrain decided" in texts[1]


def test_a_receiver_that_fails_twice_gets_the_event_once_after_retries(settings, receivers):
    rec = receivers()
    rec.statuses = [500, 500]
    s = with_hooks(settings, {"url": rec.url})
    n = notifier(s)
    n.poll()
    promote(s, result="rejected")
    n.poll()
    deliver_all(n, s)
    assert rec.answered == [500, 500, 200]
    assert [b["kind"] for b in rec.delivered()] == ["promotion.failed"]
    assert "accuracy 0.80 < 0.90" in rec.delivered()[0]["title"]
    [sent] = n.store.deliveries()
    assert (sent.state, sent.attempts, sent.status) == ("sent", 3, 200)
    assert any("attempt 1 of 5" in line and "HTTP 500" in line for line in n.lines)
    deliver_all(n, s)
    n.poll()
    deliver_all(n, s)
    assert len(rec.posts) == 3  # nothing more


def test_a_receiver_that_is_down_is_given_up_on_without_holding_up_another(settings, receivers):
    from tests.support.net import free_port

    rec = receivers()
    dead = f"http://127.0.0.1:{free_port()}/hook"
    s = with_hooks(settings, {"url": dead}, {"url": rec.url}, max_attempts=2)
    n = notifier(s)
    n.poll()
    promote(s, result="rolled-back", version="1")
    n.poll()
    deliver_all(n, s)
    assert [b["kind"] for b in rec.bodies()] == ["model.rolled_back"]
    [failed] = n.store.deliveries(state=notify.FAILED)
    assert failed.attempts == 2 and failed.status is None
    assert "ConnectError" in (failed.error or "")
    assert any(line.startswith("gave up sending model.rolled_back") for line in n.lines)


def test_a_restarted_notifier_sends_nothing_twice_and_loses_nothing(settings, receivers):
    rec = receivers()
    s = with_hooks(settings, {"url": rec.url})
    first = notifier(s)
    first.poll()
    promote(s, version="2")
    first.poll()
    deliver_all(first, s)
    promote(s, version="3")
    first.poll()  # found, stored, then the process dies before sending it
    drift_retrain(s)  # these two happen while no notifier runs
    promote(s, version="2", result="rolled-back")

    second = notifier(s)  # a new process on the same database
    second.poll()
    deliver_all(second, s)
    second.poll()
    deliver_all(second, s)
    third = notifier(s)
    third.poll()
    deliver_all(third, s)
    assert [(b["kind"], b["version"]) for b in rec.bodies()] == [
        ("promotion.passed", "2"),
        ("promotion.passed", "3"),
        ("drift.retrain", "2"),
        ("model.rolled_back", "2"),
    ]


def test_a_webhook_filtered_to_some_kinds_gets_only_those(settings, receivers):
    everything, rollbacks = receivers(), receivers()
    s = with_hooks(
        settings, {"url": everything.url}, {"url": rollbacks.url, "events": [notify.ROLLBACK]}
    )
    n = notifier(s)
    n.poll()
    promote(s, version="2")
    promote(s, version="1", result="rolled-back")
    drift_retrain(s)
    n.poll()
    deliver_all(n, s)
    assert [b["kind"] for b in everything.bodies()] == [
        "promotion.passed",
        "model.rolled_back",
        "drift.retrain",
    ]
    assert [b["kind"] for b in rollbacks.bodies()] == ["model.rolled_back"]


def test_restarts_and_crash_loops_audited_by_up_are_sent(settings, receivers):
    rec = receivers()
    s = with_hooks(settings, {"url": rec.url})
    n = notifier(s)
    n.poll()
    detail = {"service": "serving", "exit_code": -9, "restarts": 1, "in_a_row": 1, "pid": 7}
    audit.append_event(s, "platform.restarted", detail)
    audit.append_event(s, "platform.crash_loop", {**detail, "in_a_row": 7})
    audit.append_event(s, "key.created", {"name": "x"})  # not a notification
    n.poll()
    deliver_all(n, s)
    assert [b["title"] for b in rec.bodies()] == [
        "aipaas up restarted serving after it exited (exit code -9, restart 1, 1 in a row)",
        "serving crashed 7 times in a row: aipaas up stopped the platform",
    ]


def test_a_canary_start_and_its_decision_are_sent_with_the_evidence(settings, receivers):
    rec, decisions = receivers(), receivers()
    s = with_hooks(
        settings, {"url": rec.url}, {"url": decisions.url, "events": [notify.CANARY_DECIDED]}
    )
    n = notifier(s)
    n.poll()
    start = {"mode": "canary", "percent": 10.0, "champion": "2", "until": 1.0e9, "gates": []}
    audit.append_event(
        s, "model.canary_started", start, model="diagnosis", version="3", owner="alice (cli)"
    )
    arm = {"requests": 40, "error_rate": 0.125, "p99_ms": 31.4}
    ended = {
        "mode": "canary",
        "outcome": "rolled-back",
        "decided_by": "flow-run 1234 (canary)",
        "reasons": ["canary_error_rate = 0.125 (needs <= 0.01)"],
        "champion_after": "2",
        "evidence": {
            "challenger": {**arm, "version": "3"},
            "champion": {"version": "2", "requests": 400, "error_rate": 0.0, "p99_ms": 12.0},
            "output_drift": 0.04,
        },
        "evidence_gates": [
            {"name": "canary_error_rate", "passed": False, "value": 0.125, "threshold": "<= 0.01"}
        ],
    }
    audit.append_event(
        s, "model.canary_ended", ended, model="diagnosis", version="3", owner="flow-run 1234"
    )
    found = n.poll()
    assert [e.kind for e in found] == [notify.CANARY_STARTED, notify.CANARY_DECIDED]
    deliver_all(n, s)
    started, decided = rec.bodies()
    assert started["title"] == (
        "canary of diagnosis v3 started beside champion v2 for 10% of clients, "
        "until 2001-09-09T01:46:40+00:00"
    )
    assert decided["kind"] == "canary.decided" and decided["version"] == "3"
    assert decided["title"] == (
        "canary of diagnosis v3 rolled-back; champion is v2: canary_error_rate = 0.125 "
        "(needs <= 0.01) (challenger v3 40 req, 12.5% errors, p99 31 ms; champion v2 400 req, "
        "0.0% errors, p99 12 ms; output drift 0.040)"
    )
    detail = decided["detail"]
    assert (detail["outcome"], detail["champion_after"]) == ("rolled-back", "2")
    assert detail["evidence_gates"][0]["name"] == "canary_error_rate"
    assert detail["decided_by"] == "flow-run 1234"
    # A webhook filtered to decisions gets only the decision.
    assert [b["kind"] for b in decisions.bodies()] == ["canary.decided"]
    for headers, body in rec.posts:
        stamp, sig = headers["x-aipaas-timestamp"], headers["x-aipaas-signature"]
        assert notify.verify_signature(KEY.encode(), stamp, body, sig)


def test_a_key_past_its_quota_fraction_is_announced_once_per_period(settings, receivers):
    rec = receivers()
    s = with_hooks(settings, {"url": rec.url}, quota_warn_fraction=0.8)
    key, _ = keys.create_key(s, "acme", "predict", quota="10/day")
    other, _ = keys.create_key(s, "calm", "predict", quota="10/day")
    today = datetime.now(UTC)
    tomorrow = today + timedelta(days=1)
    writer = audit.AuditWriter(s, commit_window_ms=0)

    def requests(key_id: str, n: int, at: datetime, status: int = 200) -> None:
        for _ in range(n):
            ts = at.isoformat(timespec="microseconds")
            writer.submit(audit.AuditRecord(ts=ts, key_id=key_id, status=status)).result(10)

    clock = [today.timestamp()]
    n = notifier(s, lambda st: notify.QuotaSource(st, every_s=0.0), clock=lambda: clock[0])
    requests(key.id, 7, today)
    requests(key.id, 5, today, status=429)  # refused: does not count
    requests(other.id, 3, today)
    assert n.poll() == []  # 7 of 10: under 80 %
    requests(key.id, 1, today)
    [near] = n.poll()
    assert near.kind == notify.QUOTA_NEAR and near.detail["key_id"] == key.id
    assert "key acme" in near.title and "80% of its quota 10/day" in near.title
    requests(key.id, 2, today)
    assert n.poll() == []  # the same period: once
    clock[0] = tomorrow.timestamp()
    assert n.poll() == []  # a new period, nothing used yet
    requests(key.id, 9, tomorrow)
    [again] = n.poll()
    assert again.id != near.id and again.detail["used"] == 9
    writer.close()
    deliver_all(n, s)
    assert [b["detail"]["used"] for b in rec.bodies()] == [8, 9]


# -- Prefect ---------------------------------------------------------------------------------


def test_failed_flow_runs_a_failed_suite_and_a_paused_promotion_come_from_prefect(
    settings, receivers, prefect_harness
):
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Paused

    from aipaas.exceptions import DataValidationError

    rec = receivers()
    s = with_hooks(settings, {"url": rec.url})
    s = s.model_copy(
        update={"prefect": s.prefect.model_copy(update={"api_url": PREFECT_API_URL.value()})}
    )
    n = notifier(s, notify.PrefectSource)
    n.poll()  # starts from now

    @flow(name="data")
    def data_flow(dataset: str = "quotes") -> None:
        raise DataValidationError("quotes failed its suite: 3 of 12 expectations")

    @flow(name="train")
    def train_flow(model: str = "topic") -> None:
        raise RuntimeError("out of memory")

    @flow(name="promote")
    def promote_flow(model: str = "topic", version: str | None = None) -> None:
        pass

    @flow(name="drift")
    def fine() -> None:
        pass

    assert data_flow(return_state=True).is_failed()
    assert train_flow(return_state=True).is_failed()
    fine()

    async def paused_promotion() -> None:
        async with get_client() as client:
            run = await client.create_flow_run(
                promote_flow, parameters={"model": "topic", "version": "4"}
            )
            await client.set_flow_run_state(run.id, Paused(), force=True)

    asyncio.run(paused_promotion())
    time.sleep(1.0)
    found = n.poll()
    n.poll()
    deliver_all(n, s)
    by_kind = {b["kind"]: b for b in rec.bodies()}
    assert sorted(by_kind) == [
        "data.suite_failed",
        "flow_run.failed",
        "promotion.waiting_approval",
    ], found
    assert len(rec.bodies()) == 3
    assert "quotes failed its suite" in by_kind["data.suite_failed"]["title"]
    assert by_kind["flow_run.failed"]["title"].startswith("flow run train/")
    assert "out of memory" in by_kind["flow_run.failed"]["title"]
    waiting = by_kind["promotion.waiting_approval"]
    assert (waiting["model"], waiting["version"]) == ("topic", "4")
    assert "waiting for approval" in waiting["title"]


def test_a_key_past_its_budget_fraction_is_announced_with_its_cost(settings, receivers):
    s = with_hooks(settings, {"url": receivers().url}, quota_warn_fraction=0.5)
    key, _ = keys.create_key(s, "spender", "predict", budget="2/day")
    writer = audit.AuditWriter(s, commit_window_ms=0)
    n = notifier(s, lambda st: notify.QuotaSource(st, every_s=0.0))
    writer.submit(audit.AuditRecord(key_id=key.id, status=200, cost=0.6)).result(10)
    assert n.poll() == []
    writer.submit(audit.AuditRecord(key_id=key.id, status=200, cost=0.5)).result(10)
    writer.close()
    [near] = n.poll()
    assert (near.detail["what"], near.detail["used"]) == ("cost", 1.1)
    assert "55% of its budget 2/day" in near.title
