"""Per-key quotas: requests per period and cost per period, counted from the audit trail.

A key may have a *quota* (``"10000/day"``: requests per UTC hour, day or
calendar month) and a *budget* (``"50/month"``: cost, as the audit trail
records it, per the same periods). Serving's Guard calls
:meth:`Quotas.check` after the rate limit; past either, it raises
:class:`~aipaas.exceptions.QuotaExceededError` naming the limit, what was
used, and when the period resets (the next UTC hour, day or month).

**What counts.** Every audited request made with the key counts toward its
quota, answered or refused (a 422 or a 404 used the service too), except
those refused with 429: neither a rate-limit refusal nor a refusal for the
quota itself uses it up, so a client that keeps retrying is not locked out
for longer. The budget sums each request's ``cost``. Requests whose key
could not be established (401) have no key and count for nobody.

**Where counts come from.** The audit trail is the record, so counts survive
a restart and include other processes: the first check of a key in a period
reads that period's count from the database; after that each committed
request is added locally (:meth:`Quotas.record`, called by serving once the
request's record is committed), and at most every ``sync_s`` (2 s) the
records appended since the last read (by sequence number, so none is counted
twice) are read again. The request path itself costs a dictionary lookup and
two comparisons; the database is read only when a key's counts are due
(serving does that in a worker thread).

**How exact.** A check sees every request committed before it (in this
process at once, in others within ``sync_s``). Requests in flight when the
limit is reached are each answered, so a quota can be overshot by the number
of requests in flight at that moment, and a budget by their cost (the cost
of a request is only known once it is answered). With the audit trail
switched off (``serving.audit_enabled: false``) requests are counted in
process memory only and the counts start again at a restart.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.exc import OperationalError

from aipaas import audit, db
from aipaas.exceptions import ConfigurationError, QuotaExceededError
from aipaas.settings import Settings

if TYPE_CHECKING:
    from aipaas.audit import AuditRecord
    from aipaas.inference.keys import ApiKey

log = logging.getLogger(__name__)

PERIODS = ("hour", "day", "month")
# The status of a request refused for its rate or quota: it does not count.
REFUSED = 429
_LIMIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(hour|day|month)\s*$")
# A record's ``ts`` is taken when its response is ready and it commits within
# milliseconds; re-reads look this far back for records committed since.
_LATE_S = 60.0
_MAX_LOCAL = 100_000  # unsynced records kept per key before a full re-read


@dataclass(frozen=True)
class Limit:
    """A quota or budget as configured: ``amount`` per UTC ``period``."""

    text: str
    amount: float
    period: str


def _parse(text: str, what: str, example: str) -> Limit:
    m = _LIMIT_RE.match(text or "")
    if not m:
        raise ConfigurationError(
            f"{what} {text!r} is not like {example!r} (per hour, day or month, UTC)"
        )
    amount = float(m.group(1))
    if amount <= 0:
        raise ConfigurationError(f"{what} {text!r} must be positive")
    return Limit(text=text.strip(), amount=amount, period=m.group(2))


@lru_cache(maxsize=256)
def parse_quota(text: str) -> Limit:
    """``"10000/day"`` -> requests per period (a whole number)."""
    limit = _parse(text, "quota", "10000/day")
    if not limit.amount.is_integer():
        raise ConfigurationError(f"quota {text!r} counts requests: use a whole number")
    return limit


@lru_cache(maxsize=256)
def parse_budget(text: str) -> Limit:
    """``"50/month"`` -> cost per period (the unit of ``serving.cost_per_compute_second``)."""
    return _parse(text, "budget", "50/month")


def period_bounds(period: str, at: datetime) -> tuple[datetime, datetime]:
    """The UTC hour, day or calendar month holding ``at``: [start, end)."""
    at = at.astimezone(UTC)
    if period == "hour":
        start = at.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == "month":
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else None
        return start, nxt or start.replace(month=start.month + 1)
    raise ConfigurationError(f"unknown period {period!r}: use one of {', '.join(PERIODS)}")


@dataclass(frozen=True)
class Used:
    """A key's requests and cost in its current periods."""

    requests: int
    cost: float


@dataclass(frozen=True, slots=True)
class _Window:
    """One limit's current period: epoch bounds for the request path, ISO for SQL."""

    limit: Limit
    start: float
    end: float
    start_iso: str
    end_iso: str

    @classmethod
    def at(cls, limit: Limit, now: float) -> _Window:
        start, end = period_bounds(limit.period, datetime.fromtimestamp(now, UTC))
        return cls(
            limit, start.timestamp(), end.timestamp(), audit.iso_utc(start), audit.iso_utc(end)
        )

    @property
    def resets_at(self) -> str:
        return datetime.fromtimestamp(self.end, UTC).isoformat()


@dataclass(slots=True)
class _Count:
    """One key's counts in its current periods: read from the trail, plus local since."""

    quota: str | None
    budget: str | None
    requests: _Window | None
    cost: _Window | None
    db_requests: int = 0
    db_cost: float = 0.0
    synced_seq: int = 0  # every record up to here is in db_*
    synced_at: float = 0.0
    # (seq, counts as a request, cost) committed since; seq 0: not in the trail
    local: list[tuple[int, bool, float]] = field(default_factory=list)
    local_requests: int = 0
    local_cost: float = 0.0
    ends: float = 0.0  # the first of the windows' ends: counts are re-read from then

    def __post_init__(self) -> None:
        self.ends = min(w.end for w in (self.requests, self.cost) if w is not None)

    def keep_local(self, keep: Callable[[int], bool]) -> None:
        self.local = [e for e in self.local if keep(e[0])]
        self.local_requests = sum(1 for e in self.local if e[1])
        self.local_cost = sum(e[2] for e in self.local)


@dataclass(frozen=True, slots=True)
class _Read:
    requests: int
    cost: float
    head: int  # the trail's last seq when read


def _read(settings: Settings, key_id: str, st: _Count, *, after_seq: int, since: str) -> _Read:
    """The key's counted requests and cost in ``st``'s windows, from records after ``after_seq``."""
    t = db.audit_log
    rw, cw = st.requests, st.cost
    counted = or_(t.c.status.is_(None), t.c.status != REFUSED)
    requests = (
        func.sum(case((and_(t.c.ts >= rw.start_iso, t.c.ts < rw.end_iso, counted), 1), else_=0))
        if rw
        else literal(0)
    )
    cost = (
        func.sum(case((and_(t.c.ts >= cw.start_iso, t.c.ts < cw.end_iso), t.c.cost), else_=0.0))
        if cw
        else literal(0.0)
    )
    head = select(func.max(t.c.seq)).scalar_subquery()
    stmt = select(requests.label("requests"), cost.label("cost"), head.label("head")).where(
        t.c.key_id == key_id, t.c.kind == "request", t.c.ts >= since
    )
    if after_seq:
        stmt = stmt.where(t.c.seq > after_seq)
    with db.engine(settings).connect() as conn:
        row = conn.execute(stmt).one()
    return _Read(int(row.requests or 0), float(row.cost or 0.0), int(row.head or 0))


class Quotas:
    """Counts each limited key's requests and cost in its current periods.

    Args:
        clock: epoch seconds (tests inject one to cross a period).
        sync_s: how stale a key's counts may get before they are read again.
    """

    def __init__(
        self, settings: Settings, *, clock: Callable[[], float] = time.time, sync_s: float = 2.0
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._sync_s = sync_s
        self._counts: dict[str, _Count] = {}
        self._lock = threading.Lock()

    def due(self, key: ApiKey) -> bool:
        """Whether checking ``key`` needs the database first (serving does it off the loop)."""
        if key.quota is None and key.budget is None:
            return False
        st = self._counts.get(key.id)
        if st is None or st.quota != key.quota or st.budget != key.budget:
            return True
        now = self._clock()
        return now - st.synced_at >= self._sync_s or now >= st.ends

    def refresh(self, key: ApiKey) -> None:
        """Bring ``key``'s counts up to date from the audit trail."""
        now = self._clock()
        with self._lock:
            old = self._counts.get(key.id)
        fresh = old is None or old.quota != key.quota or old.budget != key.budget or now >= old.ends
        if fresh or old is None:
            self._seed(key, now)
        else:
            self._catch_up(key, old, now)

    def _seed(self, key: ApiKey, now: float) -> None:
        st = _Count(
            quota=key.quota,
            budget=key.budget,
            requests=_Window.at(parse_quota(key.quota), now) if key.quota else None,
            cost=_Window.at(parse_budget(key.budget), now) if key.budget else None,
            synced_at=now,
        )
        since = min(w.start_iso for w in (st.requests, st.cost) if w is not None)
        got = _read(self._settings, key.id, st, after_seq=0, since=since)
        st.db_requests, st.db_cost, st.synced_seq = got.requests, got.cost, got.head
        with self._lock:
            old = self._counts.get(key.id)
            if old is not None:  # committed after the read: still to count
                st.local = old.local
                st.keep_local(lambda seq: seq > got.head)
            self._counts[key.id] = st

    def _catch_up(self, key: ApiKey, st: _Count, now: float) -> None:
        after = st.synced_seq
        since = audit.iso_utc(datetime.fromtimestamp(st.synced_at - _LATE_S, UTC))
        try:
            got = _read(self._settings, key.id, st, after_seq=after, since=since)
        except OperationalError as err:  # the database is busy: keep counting locally
            log.warning("quota counts of key %s not re-read: %s", key.id, err)
            st.synced_at = now
            return
        with self._lock:
            if self._counts.get(key.id) is not st or st.synced_seq != after:
                return  # another refresh got there first
            st.db_requests += got.requests
            st.db_cost += got.cost
            st.synced_seq = max(after, got.head)
            st.synced_at = now
            st.keep_local(lambda seq: seq == 0 or seq > st.synced_seq)

    def _state(self, key: ApiKey) -> _Count:
        if self.due(key):
            self.refresh(key)
        st = self._counts.get(key.id)
        if st is None:  # dropped meanwhile (see record): read it again
            self.refresh(key)
            st = self._counts[key.id]
        return st

    def used(self, key: ApiKey) -> Used:
        """What ``key`` has used in its current periods (read from the trail when due)."""
        if key.quota is None and key.budget is None:
            return Used(0, 0.0)
        st = self._state(key)
        return Used(st.db_requests + st.local_requests, st.db_cost + st.local_cost)

    def check(self, key: ApiKey) -> None:
        """Refuse ``key`` when it is past its quota or its budget.

        Raises:
            QuotaExceededError: past its requests or its cost in the current period.
        """
        if key.quota is None and key.budget is None:
            return
        st = self._state(key)
        if st.requests is not None:
            used = st.db_requests + st.local_requests
            if used >= st.requests.limit.amount:
                raise self._exceeded(key, st.requests, "requests", float(used))
        if st.cost is not None:
            spent = st.db_cost + st.local_cost
            if spent >= st.cost.limit.amount:
                raise self._exceeded(key, st.cost, "cost", spent)

    def _exceeded(self, key: ApiKey, w: _Window, kind: str, used: float) -> QuotaExceededError:
        what = (
            f"quota of {w.limit.text} exceeded for key {key.id}: {int(used)} requests"
            if kind == "requests"
            else f"budget of {w.limit.text} exceeded for key {key.id}: {used:.6g} spent"
        )
        return QuotaExceededError(
            f"{what} this {w.limit.period}; resets at {w.resets_at}",
            quota=w.limit.text,
            kind=kind,
            used=used,
            resets_at=w.resets_at,
            retry_after_s=max(0.0, w.end - self._clock()),
        )

    def record(self, rec: AuditRecord) -> None:
        """Count a request once its audit record is committed (``seq`` 0: audit is off)."""
        st = self._counts.get(rec.key_id or "")
        if st is None:
            return
        counts = rec.status != REFUSED
        cost = float(rec.cost or 0.0)
        with self._lock:
            if rec.seq and rec.seq <= st.synced_seq:
                return  # the last read of the trail has it already
            st.local.append((rec.seq, counts, cost))
            st.local_requests += counts
            st.local_cost += cost
            if len(st.local) > _MAX_LOCAL:  # never re-read (no limited route used): start over
                del self._counts[rec.key_id or ""]
