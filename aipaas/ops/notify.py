"""Webhooks on what operators must hear about, read from what the platform already records.

Nothing on a hot path calls this module: promotion, serving, drift and ``up``
record what they do durably already (the audit chain, the drift history,
Prefect's flow runs, the usage the audit trail counts), and the notifier
(``aipaas notifier``, one long-running process) polls those records every
few seconds, turns what matters into :class:`Event` values and posts them.
A slow or dead receiver therefore delays no request and no flow.

**Exactly once per webhook, across restarts.** Every event has an id derived
from where it was found (``audit:<seq>``, ``drift:<id>``,
``prefect:<run>:<state>``, ``quota:<key>:<limit>:<period>``), so finding it
twice stores it once. How far each source was read (its cursor), the events
found and, per event and webhook, whether it was delivered live in the
platform database (revision 0004), written in one transaction per poll: a
notifier that restarts resumes where the last one stopped, loses nothing
and sends nothing it already sent. The one gap is a crash between a
receiver's 2xx and the row saying so: that event is sent again, with the
same ``X-Aipaas-Event-Id``, which a receiver can use to drop the repeat. A
fresh database starts at "now": history is not replayed to a new webhook.

**Retries.** A failed post (a non-2xx answer, a timeout, a refused
connection) is tried again after ``backoff_s * 2**(n-1)`` seconds (capped),
up to ``notify.max_attempts`` in all; then it is marked failed, logged and
kept with its error (``aipaas notify status``). Each webhook has its own
delivery thread, so a receiver that hangs until its timeout delays no other.

**Signatures.** With ``notify.signing_key`` set every post carries
``X-Aipaas-Timestamp`` (epoch seconds) and ``X-Aipaas-Signature:
sha256=<hex>``, the HMAC-SHA256 under the key of ``<timestamp>.<body>``
(the exact bytes sent). A receiver recomputes it, compares in constant time
and refuses a timestamp older than a few minutes, so a captured request
cannot be replayed later (:func:`verify_signature` does all three).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson
from sqlalchemy import (
    and_,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from aipaas import db
from aipaas.exceptions import ConfigurationError
from aipaas.inference.quotas import REFUSED, parse_budget, parse_quota, period_bounds
from aipaas.settings import NotifySettings, Settings, WebhookSettings

log = logging.getLogger(__name__)

# -- the event kinds a webhook's ``events`` list may name ------------------------------

FLOW_RUN_FAILED = "flow_run.failed"  # a Prefect flow run FAILED or CRASHED
DATA_SUITE_FAILED = "data.suite_failed"  # the data flow failed its Great Expectations suite
DRIFT_RETRAIN = "drift.retrain"  # a drift check decided to retrain
PROMOTION_PASSED = "promotion.passed"  # champion moved to a new version
PROMOTION_FAILED = "promotion.failed"  # a challenger was rejected by its gates
PROMOTION_WAITING = "promotion.waiting_approval"  # a promote run is paused for a person
ROLLBACK = "model.rolled_back"  # champion moved back
CANARY_STARTED = "canary.started"  # a canary or shadow release began taking live traffic
CANARY_DECIDED = "canary.decided"  # a release ended: promoted, rolled back, inconclusive...
QUOTA_NEAR = "key.quota_near"  # a key used notify.quota_warn_fraction of a quota or budget
PLATFORM_RESTARTED = "platform.restarted"  # aipaas up restarted a child that died
PLATFORM_CRASH_LOOP = "platform.crash_loop"  # ... and stopped the platform after a crash loop
TEST = "notify.test"  # `aipaas notify test`

KINDS = frozenset(
    {
        FLOW_RUN_FAILED,
        DATA_SUITE_FAILED,
        DRIFT_RETRAIN,
        PROMOTION_PASSED,
        PROMOTION_FAILED,
        PROMOTION_WAITING,
        ROLLBACK,
        CANARY_STARTED,
        CANARY_DECIDED,
        QUOTA_NEAR,
        PLATFORM_RESTARTED,
        PLATFORM_CRASH_LOOP,
        TEST,
    }
)

SIGNATURE_HEADER = "X-Aipaas-Signature"
TIMESTAMP_HEADER = "X-Aipaas-Timestamp"
EVENT_ID_HEADER = "X-Aipaas-Event-Id"
EVENT_KIND_HEADER = "X-Aipaas-Event"
# The notifier prints this once it reads its sources (``aipaas up`` waits for it).
READY_LINE = "notifier ready"
# How old a signed timestamp a receiver should still accept.
REPLAY_TOLERANCE_S = 300.0

# The tables (revision 0004) are in aipaas/db.py with the others.
notify_cursors, notify_events, notify_deliveries = (
    db.notify_cursors,
    db.notify_events,
    db.notify_deliveries,
)

PENDING, SENT, FAILED = "pending", "sent", "failed"


# -- events and payloads ------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One thing an operator must hear about; ``id`` is stable for the occurrence."""

    id: str
    kind: str
    at: float  # epoch seconds it happened
    title: str  # one line a person reads (the Slack text)
    model: str | None = None
    version: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def payload(event: Event, fmt: str) -> bytes:
    """The body sent: the event as JSON, or Slack's ``{"text": ...}``.

    The JSON form's keys are sorted, so the same event is the same bytes.
    """
    if fmt == "slack":
        text = f"[aipaas] {event.title}\n`{event.kind}` at {iso(event.at)} UTC"
        return orjson.dumps({"text": text})
    body = {**event.to_dict(), "at_iso": iso(event.at), "source": "aipaas"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=str)


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>``, the header's value."""
    mac = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    key: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: float = REPLAY_TOLERANCE_S,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent.

    Args:
        timestamp: the ``X-Aipaas-Timestamp`` header, as received.
        body: the request body, exactly as received (before any JSON parsing).
        signature: the ``X-Aipaas-Signature`` header.
    """
    try:
        sent = float(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(key, timestamp, body), signature)


def webhook_id(hook: WebhookSettings) -> str:
    """How the database names a webhook: its URL is not stored (a Slack URL is a secret)."""
    return hashlib.sha256(f"{hook.format} {hook.url}".encode()).hexdigest()[:32]


def redacted(url: str) -> str:
    """The URL as printed: scheme, host and port; the path may hold a token."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{'/…' if parts.path.strip('/') else ''}"


def wants(hook: WebhookSettings, kind: str) -> bool:
    return not hook.events or kind in hook.events


def check(settings: NotifySettings) -> None:
    """Refuse a configuration that would fail silently later.

    Raises:
        ConfigurationError: a URL that is not http(s), or an event kind that
            does not exist (a typo would otherwise filter everything out).
    """
    for hook in settings.webhooks:
        parts = urllib.parse.urlsplit(hook.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"notify webhook {hook.url!r} is not an http(s) URL: set "
                'AIPAAS_NOTIFY__WEBHOOKS=\'[{"url": "https://...", "format": "json"}]\''
            )
        unknown = sorted(set(hook.events) - KINDS)
        if unknown:
            raise ConfigurationError(
                f"notify webhook {redacted(hook.url)} names unknown event kinds "
                f"{', '.join(unknown)}; known: {', '.join(sorted(KINDS))}"
            )


# -- one post -----------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """How one post went: ``status`` when the receiver answered, ``error`` when not 2xx."""

    webhook: str  # the redacted URL
    status: int | None
    error: str | None
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.error is None


def post(
    client: httpx.Client,
    hook: WebhookSettings,
    event: Event,
    key: bytes,
    *,
    timeout_s: float,
    clock: Callable[[], float] = time.time,
) -> Attempt:
    """Post ``event`` once; never raises for what a receiver or the network does."""
    body = payload(event, hook.format)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "aipaas-notifier",
        EVENT_ID_HEADER: event.id,
        EVENT_KIND_HEADER: event.kind,
    }
    if key:
        stamp = str(int(clock()))
        headers[TIMESTAMP_HEADER] = stamp
        headers[SIGNATURE_HEADER] = sign(key, stamp, body)
    start = time.perf_counter()
    try:
        resp = client.post(hook.url, content=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as err:
        what = f"{type(err).__name__}: {err}".strip().rstrip(":")
        return Attempt(redacted(hook.url), None, what, time.perf_counter() - start)
    elapsed = time.perf_counter() - start
    if 200 <= resp.status_code < 300:
        return Attempt(redacted(hook.url), resp.status_code, None, elapsed)
    text = resp.text.strip().replace("\n", " ")[:200]
    error = f"HTTP {resp.status_code}" + (f": {text}" if text else "")
    return Attempt(redacted(hook.url), resp.status_code, error, elapsed)


def send_test(settings: Settings, client: httpx.Client | None = None) -> list[Attempt]:
    """One test event to every webhook, each tried once: what an operator runs after configuring.

    Raises:
        ConfigurationError: no webhook is configured, or one is malformed.
    """
    cfg = settings.notify
    if not cfg.webhooks:
        raise ConfigurationError(
            "no notify webhook is configured: set e.g. "
            'AIPAAS_NOTIFY__WEBHOOKS=\'[{"url": "https://hooks.slack.com/...", '
            '"format": "slack"}]\' (and AIPAAS_NOTIFY__SIGNING_KEY)'
        )
    check(cfg)
    now = time.time()
    event = Event(
        id=f"test:{int(now * 1000)}",
        kind=TEST,
        at=now,
        title="test notification from aipaas: this webhook is configured correctly",
    )
    key = cfg.signing_key.get_secret_value().encode()
    with client or httpx.Client() as http:
        return [post(http, hook, event, key, timeout_s=cfg.timeout_s) for hook in cfg.webhooks]


# -- the store: cursors, events, deliveries ------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """A row of ``notify_deliveries`` with its event: what ``aipaas notify status`` lists."""

    event: Event
    webhook: str
    state: str
    attempts: int
    status: int | None
    error: str | None
    updated_at: float


class Store:
    """The notifier's memory in the platform database (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._eng = db.engine(settings)

    def cursor(self, source: str) -> str | None:
        t = notify_cursors
        with self._eng.connect() as conn:
            row = conn.execute(select(t.c.position).where(t.c.source == source)).first()
        return None if row is None else str(row.position)

    def record(
        self,
        source: str,
        position: str,
        events: Sequence[Event],
        hooks: Sequence[WebhookSettings],
        *,
        now: float,
    ) -> list[Event]:
        """Store the events not already stored, their deliveries, and the cursor: one transaction.

        Returns the events that were new. Deliveries are made only for the
        webhooks that want the kind (``events`` filter) at the time it is found.
        """
        fresh: list[Event] = []
        with self._eng.begin() as conn:
            ids = [e.id for e in events]
            known: set[str] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                found = conn.execute(
                    select(notify_events.c.id).where(notify_events.c.id.in_(chunk))
                )
                known |= {str(r.id) for r in found}
            for event in events:
                if event.id in known:
                    continue
                known.add(event.id)
                fresh.append(event)
            if fresh:
                conn.execute(
                    insert(notify_events),
                    [
                        {
                            "id": e.id,
                            "kind": e.kind,
                            "at": e.at,
                            "event": json.dumps(e.to_dict(), default=str),
                            "found_at": now,
                        }
                        for e in fresh
                    ],
                )
                rows = [
                    {
                        "event_id": e.id,
                        "webhook": webhook_id(h),
                        "state": PENDING,
                        "attempts": 0,
                        "next_at": now,
                        "updated_at": now,
                    }
                    for e in fresh
                    for h in {webhook_id(h): h for h in hooks if wants(h, e.kind)}.values()
                ]
                if rows:
                    conn.execute(insert(notify_deliveries), rows)
            self._set_cursor(conn, source, position, now)
        return fresh

    def _set_cursor(self, conn: Connection, source: str, position: str, now: float) -> None:
        t = notify_cursors
        done = conn.execute(
            update(t).where(t.c.source == source).values(position=position, updated_at=now)
        )
        if done.rowcount == 0:
            conn.execute(insert(t).values(source=source, position=position, updated_at=now))

    def due(self, hook: WebhookSettings, now: float, limit: int = 50) -> list[Delivery]:
        """Pending deliveries to ``hook`` whose time has come, oldest event first."""
        d, e = notify_deliveries, notify_events
        stmt = (
            select(d, e.c.event)
            .join(e, e.c.id == d.c.event_id)
            .where(d.c.webhook == webhook_id(hook), d.c.state == PENDING, d.c.next_at <= now)
            .order_by(e.c.at, e.c.id)
            .limit(limit)
        )
        with self._eng.connect() as conn:
            return [_delivery(r) for r in conn.execute(stmt)]

    def mark(
        self,
        event_id: str,
        hook: WebhookSettings,
        *,
        state: str,
        attempts: int,
        next_at: float,
        status: int | None,
        error: str | None,
        now: float,
    ) -> None:
        d = notify_deliveries
        with self._eng.begin() as conn:
            conn.execute(
                update(d)
                .where(d.c.event_id == event_id, d.c.webhook == webhook_id(hook))
                .values(
                    state=state,
                    attempts=attempts,
                    next_at=next_at,
                    status=status,
                    error=error,
                    updated_at=now,
                )
            )

    def deliveries(self, *, state: str | None = None, limit: int = 50) -> list[Delivery]:
        """The latest deliveries (newest first), optionally only those in ``state``."""
        d, e = notify_deliveries, notify_events
        stmt = select(d, e.c.event).join(e, e.c.id == d.c.event_id)
        if state is not None:
            stmt = stmt.where(d.c.state == state)
        stmt = stmt.order_by(d.c.updated_at.desc()).limit(limit)
        with self._eng.connect() as conn:
            return [_delivery(r) for r in conn.execute(stmt)]

    def counts(self) -> dict[tuple[str, str], int]:
        """(webhook id, state) -> deliveries."""
        d = notify_deliveries
        stmt = select(d.c.webhook, d.c.state, func.count()).group_by(d.c.webhook, d.c.state)
        with self._eng.connect() as conn:
            return {(str(w), str(s)): int(n) for w, s, n in conn.execute(stmt)}


def _delivery(row: Any) -> Delivery:
    return Delivery(
        event=Event.from_dict(json.loads(row.event)),
        webhook=str(row.webhook),
        state=str(row.state),
        attempts=int(row.attempts),
        status=row.status,
        error=row.error,
        updated_at=float(row.updated_at),
    )


# -- sources --------------------------------------------------------------------------------


class Source(Protocol):
    """Where events come from. ``poll`` reads past ``cursor`` and says how far it read.

    A cursor of None is a source never read: it returns no events and its
    current end, so a new notifier does not replay the platform's history.
    Reading some events again is harmless (ids deduplicate); skipping is not.
    """

    name: str

    def poll(self, cursor: str | None, now: float) -> tuple[list[Event], str]: ...


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class AuditSource:
    """Promotions, rejections, rollbacks, canaries and ``up``'s restarts, from the audit chain.

    Sequence numbers are assigned under the append lock and committed before
    it is released, so every record at or below the highest visible ``seq``
    is visible: a cursor on ``seq`` never skips one.
    """

    name = "audit"
    EVENTS = {
        "model.promoted": PROMOTION_PASSED,
        "model.rejected": PROMOTION_FAILED,
        "model.rolled_back": ROLLBACK,
        "model.canary_started": CANARY_STARTED,
        "model.canary_ended": CANARY_DECIDED,
        "platform.restarted": PLATFORM_RESTARTED,
        "platform.crash_loop": PLATFORM_CRASH_LOOP,
    }

    def __init__(self, settings: Settings, *, batch: int = 500) -> None:
        self._settings = settings
        self._batch = batch

    def poll(self, cursor: str | None, now: float) -> tuple[list[Event], str]:
        t = db.audit_log
        with db.engine(self._settings).connect() as conn:
            head = int(conn.execute(select(func.max(t.c.seq))).scalar() or 0)
            if cursor is None:
                return [], str(head)
            after = int(cursor)
            rows = conn.execute(
                select(t)
                .where(
                    t.c.seq > after,
                    t.c.seq <= head,
                    t.c.kind == "admin",
                    t.c.event.in_(tuple(self.EVENTS)),
                )
                .order_by(t.c.seq)
                .limit(self._batch)
            ).all()
        events = [self._event(dict(r._mapping)) for r in rows]
        reached = int(rows[-1].seq) if len(rows) == self._batch else head
        return events, str(reached)

    def _event(self, row: dict[str, Any]) -> Event:
        kind = self.EVENTS[row["event"]]
        detail = json.loads(row["detail"] or "{}")
        model, version = row["model"], row["version"]
        if kind == PROMOTION_PASSED:
            before = detail.get("champion_before")
            was = f" (champion was v{before})" if before else " (first champion)"
            title = f"{model} v{version} promoted to champion{was}"
        elif kind == PROMOTION_FAILED:
            reasons = "; ".join(detail.get("reasons") or []) or "gates failed"
            title = f"{model} v{version} rejected: {reasons}"
        elif kind == ROLLBACK:
            before = detail.get("champion_before")
            title = f"{model} champion rolled back to v{version}" + (
                f" (from v{before})" if before else ""
            )
        elif kind == CANARY_STARTED:
            share = (
                f" for {detail.get('percent'):g}% of clients"
                if detail.get("mode") == "canary"
                else ""
            )
            title = (
                f"{detail.get('mode', 'canary')} of {model} v{version} started beside champion "
                f"v{detail.get('champion')}{share}, until {iso(float(detail.get('until') or 0))}"
            )
            detail = {k: v for k, v in detail.items() if k not in ("attestation", "gates")}
        elif kind == CANARY_DECIDED:
            title, detail = _canary_decided(model, version, detail)
        elif kind == PLATFORM_RESTARTED:
            title = (
                f"aipaas up restarted {detail.get('service')} after it exited "
                f"(exit code {detail.get('exit_code')}, restart {detail.get('restarts')}, "
                f"{detail.get('in_a_row')} in a row)"
            )
        else:
            title = (
                f"{detail.get('service')} crashed {detail.get('in_a_row')} times in a row: "
                "aipaas up stopped the platform"
            )
        if row["owner"]:
            detail["decided_by"] = row["owner"]
        detail["audit_seq"] = row["seq"]
        return Event(
            id=f"audit:{row['seq']}",
            kind=kind,
            at=_epoch(row["ts"]),
            title=title,
            model=model,
            version=version,
            detail=detail,
        )


def _canary_decided(model: str, version: str, detail: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The title and a compact detail of a ``model.canary_ended`` event."""
    outcome = detail.get("outcome", "ended")
    mode = detail.get("mode", "canary")
    reasons = "; ".join(detail.get("reasons") or [])
    evidence = detail.get("evidence") or {}
    summary = _evidence_summary(evidence)
    title = (
        f"{mode} of {model} v{version} {outcome}; champion is v{detail.get('champion_after')}"
        + (f": {reasons}" if reasons else "")
        + (f" ({summary})" if summary else "")
    )
    compact = {
        "outcome": outcome,
        "mode": mode,
        "reasons": detail.get("reasons") or [],
        "champion_after": detail.get("champion_after"),
        "evidence_summary": summary,
        "evidence_gates": [
            {k: g.get(k) for k in ("name", "passed", "value", "threshold")}
            for g in detail.get("evidence_gates") or []
        ],
    }
    shadow = evidence.get("shadow") or {}
    if shadow:
        compact["shadow_report"] = shadow.get("html_path")
        compact["disagreement_rate"] = shadow.get("disagreement_rate")
    return title, compact


def _evidence_summary(evidence: dict[str, Any]) -> str:
    """``challenger 120 req, 0.0% errors, p99 12 ms; champion 980 req ...``, or ""."""
    parts = []
    for arm in ("challenger", "champion"):
        a = evidence.get(arm) or {}
        if not a:
            continue
        rate = a.get("error_rate")
        parts.append(
            f"{arm} v{a.get('version')} {a.get('requests', 0)} req"
            + (f", {rate:.1%} errors" if isinstance(rate, int | float) else "")
            + (f", p99 {a['p99_ms']:.0f} ms" if isinstance(a.get("p99_ms"), int | float) else "")
        )
    if isinstance(evidence.get("output_drift"), int | float):
        parts.append(f"output drift {evidence['output_drift']:.3f}")
    return "; ".join(parts)


class DriftSource:
    """Drift checks that decided to retrain, from the drift history (``drift_checks``).

    Ids come from a sequence: on PostgreSQL two checks committing together
    may become visible out of id order, so each poll reads again the last
    ``lookback`` ids before the cursor (ids deduplicate what was seen).
    """

    name = "drift"

    def __init__(self, settings: Settings, *, lookback: int = 100, batch: int = 500) -> None:
        self._settings = settings
        self._lookback = lookback
        self._batch = batch

    def poll(self, cursor: str | None, now: float) -> tuple[list[Event], str]:
        t = db.drift_checks
        with db.engine(self._settings).connect() as conn:
            if cursor is None:
                return [], str(int(conn.execute(select(func.max(t.c.id))).scalar() or 0))
            after = int(cursor)
            rows = conn.execute(
                select(t.c.id, t.c.record)
                .where(t.c.id > after - self._lookback)
                .order_by(t.c.id)
                .limit(self._batch + self._lookback)
            ).all()
        events = []
        for row in rows:
            record = json.loads(row.record)
            decision = record.get("decision") or {}
            if not decision.get("retrain"):
                continue
            cause = decision.get("cause") or "; ".join(decision.get("reasons") or [])
            events.append(
                Event(
                    id=f"drift:{row.id}",
                    kind=DRIFT_RETRAIN,
                    at=float(record.get("at") or now),
                    title=f"drift on {record.get('model')} v{record.get('version')}: "
                    f"retrain decided ({cause or 'policy violated'})",
                    model=record.get("model"),
                    version=str(record.get("version")),
                    detail={
                        "summary": record.get("summary"),
                        "drifting": record.get("drifting") or [],
                        "reasons": decision.get("reasons") or [],
                        "rows": record.get("rows"),
                        "mlflow_run": record.get("mlflow_run"),
                        "report_uri": record.get("report_uri"),
                    },
                )
            )
        reached = max([after, *(int(r.id) for r in rows)])
        return events, str(reached)


class PrefectSource:
    """Failed and crashed flow runs, and promote runs paused for approval, from Prefect's API.

    Through the REST API (the core imports no prefect). The cursor is a
    floor on state timestamps: each poll reads runs whose state is newer
    than ``floor`` and moves the floor to ``now - lookback`` (never back), so
    a run whose state was written late, or a clock a little off, is still
    found; a state is one event (``prefect:<run>:<state id>``), so a run
    paused twice asks twice.
    """

    name = "prefect"

    def __init__(
        self,
        settings: Settings,
        *,
        client: httpx.Client | None = None,
        lookback_s: float = 600.0,
        limit: int = 200,
    ) -> None:
        self._api = settings.prefect_api_url.rstrip("/")
        self._client = client or httpx.Client(timeout=10.0)
        self._lookback_s = lookback_s
        self._limit = limit
        self._flow_names: dict[str, str] = {}
        auth = settings.prefect.auth_string.get_secret_value()
        self._headers = (
            {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        )

    def poll(self, cursor: str | None, now: float) -> tuple[list[Event], str]:
        if cursor is None:
            return [], repr(now)
        floor = float(cursor)
        failed = self._runs(
            {
                "state": {"type": {"any_": ["FAILED", "CRASHED"]}},
                "end_time": {"after_": iso(floor - 1)},
            },
            "END_TIME_DESC",
        )
        paused = self._runs({"state": {"type": {"any_": ["PAUSED"]}}}, "EXPECTED_START_TIME_DESC")
        events = []
        for run in failed + paused:
            state = run.get("state") or {}
            at = _epoch(state.get("timestamp") or run.get("end_time") or iso(now))
            if at < floor:
                continue
            event = self._event(run, state, at)
            if event is not None:
                events.append(event)
        return events, repr(max(floor, now - self._lookback_s))

    def _runs(self, flow_runs: dict[str, Any], sort: str) -> list[dict[str, Any]]:
        resp = self._client.post(
            f"{self._api}/flow_runs/filter",
            json={"flow_runs": flow_runs, "sort": sort, "limit": self._limit},
            headers=self._headers,
        )
        resp.raise_for_status()
        return list(resp.json())

    def _flow_name(self, flow_id: str) -> str:
        if flow_id not in self._flow_names:
            resp = self._client.get(f"{self._api}/flows/{flow_id}", headers=self._headers)
            resp.raise_for_status()
            self._flow_names[flow_id] = str(resp.json().get("name") or "?")
        return self._flow_names[flow_id]

    def _event(self, run: dict[str, Any], state: dict[str, Any], at: float) -> Event | None:
        flow = self._flow_name(str(run["flow_id"]))
        params = run.get("parameters") or {}
        message = (state.get("message") or "").strip()
        detail = {
            "flow": flow,
            "flow_run": run.get("name"),
            "flow_run_id": run.get("id"),
            "state": state.get("type"),
            "message": message[:2000],
            "parameters": params,
        }
        model = params.get("model")
        version = params.get("version")
        event_id = f"prefect:{run['id']}:{state.get('id')}"
        if state.get("type") == "PAUSED":
            if flow != "promote":
                return None
            return Event(
                id=event_id,
                kind=PROMOTION_WAITING,
                at=at,
                title=f"promotion of {model} v{version or '(latest challenger)'} is waiting for "
                f"approval: resume flow run {run.get('name')} in the Prefect UI",
                model=model,
                version=None if version is None else str(version),
                detail=detail,
            )
        suite = flow == "data" and "DataValidationError" in message
        first = message.splitlines()[0][:300] if message else state.get("type", "")
        return Event(
            id=event_id,
            kind=DATA_SUITE_FAILED if suite else FLOW_RUN_FAILED,
            at=at,
            title=(
                f"data suite failed for dataset {params.get('dataset')}: {first}"
                if suite
                else f"flow run {flow}/{run.get('name')} {str(state.get('type')).lower()}: {first}"
            ),
            model=model,
            version=None if version is None else str(version),
            detail=detail,
        )


class QuotaSource:
    """Keys whose requests or cost in the current period passed ``quota_warn_fraction``.

    Counted from the audit trail as serving's quotas count (refusals with 429
    do not count). One event per key, limit and period: its id names the
    period's start, so the next period may warn again. Counting costs a
    query per limited key, so it runs at most every ``every_s``.
    """

    name = "quota"

    def __init__(self, settings: Settings, *, every_s: float = 30.0) -> None:
        self._settings = settings
        self._fraction = settings.notify.quota_warn_fraction
        self._every_s = every_s
        self._last = float("-inf")

    def poll(self, cursor: str | None, now: float) -> tuple[list[Event], str]:
        if now - self._last < self._every_s:
            return [], cursor or ""
        self._last = now
        k = db.api_keys
        with db.engine(self._settings).connect() as conn:
            keys = conn.execute(
                select(k.c.id, k.c.name, k.c.quota, k.c.budget).where(
                    k.c.revoked_at.is_(None), or_(k.c.quota.is_not(None), k.c.budget.is_not(None))
                )
            ).all()
            events = []
            for key in keys:
                events += self._key(conn, key, now)
        return events, cursor or ""

    def _key(self, conn: Connection, key: Any, now: float) -> list[Event]:
        t = db.audit_log
        found = []
        for what, text, parse in (
            ("requests", key.quota, parse_quota),
            ("cost", key.budget, parse_budget),
        ):
            if not text:
                continue
            limit = parse(text)
            start, end = period_bounds(limit.period, datetime.fromtimestamp(now, UTC))
            lo, hi = (
                start.isoformat(timespec="microseconds"),
                end.isoformat(timespec="microseconds"),
            )
            where = and_(t.c.key_id == key.id, t.c.kind == "request", t.c.ts >= lo, t.c.ts < hi)
            if what == "requests":
                counted = or_(t.c.status.is_(None), t.c.status != REFUSED)
                used = float(
                    conn.execute(
                        select(func.sum(case((counted, 1), else_=0))).where(where)
                    ).scalar()
                    or 0
                )
            else:
                used = float(conn.execute(select(func.sum(t.c.cost)).where(where)).scalar() or 0.0)
            if used < self._fraction * limit.amount:
                continue
            share = used / limit.amount
            found.append(
                Event(
                    id=f"quota:{key.id}:{what}:{lo}",
                    kind=QUOTA_NEAR,
                    at=now,
                    title=f"key {key.name} ({key.id}) has used {share:.0%} of its "
                    f"{'quota' if what == 'requests' else 'budget'} {limit.text} "
                    f"({used:g} so far; resets {end.isoformat(timespec='minutes')})",
                    detail={
                        "key_id": key.id,
                        "key_name": key.name,
                        "limit": limit.text,
                        "what": what,
                        "used": used,
                        "fraction": round(share, 4),
                        "period_start": lo,
                        "resets_at": hi,
                    },
                )
            )
        return found


def default_sources(settings: Settings) -> list[Source]:
    """Every source the platform has: what ``aipaas notifier`` polls."""
    return [
        AuditSource(settings),
        DriftSource(settings),
        PrefectSource(settings),
        QuotaSource(settings),
    ]


# -- the notifier ----------------------------------------------------------------------------


@dataclass
class _HookState:
    hook: WebhookSettings
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Notifier:
    """Polls the sources, stores what is new, delivers it to each webhook with retries.

    Args:
        sources: where events come from (:func:`default_sources`).
        backoff_s: the pause before the first retry; it doubles each time,
            up to ``backoff_max_s``.
        echo: where a line an operator should see goes (the process's output).
    """

    def __init__(
        self,
        settings: Settings,
        sources: Iterable[Source],
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        backoff_s: float = 2.0,
        backoff_max_s: float = 300.0,
        echo: Callable[[str], None] = log.info,
    ) -> None:
        check(settings.notify)
        self._cfg = settings.notify
        self._key = self._cfg.signing_key.get_secret_value().encode()
        self._sources = list(sources)
        self._store = Store(settings)
        self._client = client or httpx.Client()
        self._clock = clock
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._echo = echo
        self._hooks = [_HookState(h) for h in self._cfg.webhooks]
        self._source_down: dict[str, str] = {}

    @property
    def store(self) -> Store:
        return self._store

    def poll(self) -> list[Event]:
        """Read every source once and store what is new; a source that fails is said and skipped."""
        found: list[Event] = []
        for source in self._sources:
            try:
                cursor = self._store.cursor(source.name)
                now = self._clock()
                events, position = source.poll(cursor, now)
                fresh = self._store.record(
                    source.name, position, events, self._cfg.webhooks, now=now
                )
            # A source or the database out of reach: tried again next poll.
            except (httpx.HTTPError, OperationalError, DBAPIError) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                if self._source_down.get(source.name) != first:
                    self._echo(f"could not read {source.name}: {first} (trying again)")
                self._source_down[source.name] = first
                continue
            if source.name in self._source_down:
                self._echo(f"reading {source.name} again")
                del self._source_down[source.name]
            for event in fresh:
                self._echo(f"event {event.kind}: {event.title}")
            found += fresh
        if found:
            for st in self._hooks:
                st.wake.set()
        return found

    def deliver(self, hook: WebhookSettings) -> list[Attempt]:
        """Post what is due to ``hook``; after a failure the rest waits for the next pass.

        A receiver that is down would otherwise cost one timeout per pending
        event in a row; the failed one is retried after its backoff.
        """
        attempts: list[Attempt] = []
        for item in self._store.due(hook, self._clock()):
            result = post(self._client, hook, item.event, self._key, timeout_s=self._cfg.timeout_s)
            attempts.append(result)
            tried = item.attempts + 1
            now = self._clock()
            if result.ok:
                self._store.mark(
                    item.event.id, hook, state=SENT, attempts=tried, next_at=now,
                    status=result.status, error=None, now=now,
                )  # fmt: skip
                continue
            final = tried >= self._cfg.max_attempts
            pause = min(self._backoff_max_s, self._backoff_s * 2 ** (tried - 1))
            self._store.mark(
                item.event.id, hook, state=FAILED if final else PENDING, attempts=tried,
                next_at=now if final else now + pause, status=result.status,
                error=result.error, now=now,
            )  # fmt: skip
            if final:
                self._echo(
                    f"gave up sending {item.event.kind} {item.event.id} to {result.webhook} "
                    f"after {tried} attempts: {result.error}"
                )
            else:
                self._echo(
                    f"sending {item.event.kind} {item.event.id} to {result.webhook} failed "
                    f"(attempt {tried} of {self._cfg.max_attempts}): {result.error}; "
                    f"retrying in {pause:g} s"
                )
            break
        return attempts

    def run(self, stop: threading.Event, *, interval_s: float = 5.0) -> None:
        """Poll every ``interval_s`` until ``stop`` is set; each webhook sends on its own thread."""
        for st in self._hooks:
            st.thread = threading.Thread(
                target=self._deliver_loop, args=(st, stop, interval_s),
                name=f"aipaas-notify-{webhook_id(st.hook)[:8]}", daemon=True,
            )  # fmt: skip
            st.thread.start()
        try:
            while not stop.is_set():
                self.poll()
                stop.wait(interval_s)
        finally:
            stop.set()
            for st in self._hooks:
                st.wake.set()
                if st.thread is not None:
                    st.thread.join(self._cfg.timeout_s + 5)

    def _deliver_loop(self, st: _HookState, stop: threading.Event, interval_s: float) -> None:
        while not stop.is_set():
            st.wake.clear()
            try:
                self.deliver(st.hook)
            except (OperationalError, DBAPIError) as err:  # the database: next pass
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                self._echo(f"could not deliver to {redacted(st.hook.url)}: {first}")
            st.wake.wait(min(interval_s, self._backoff_s))
