"""Quotas and budgets counted from the real audit trail, on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aipaas import audit
from aipaas.exceptions import ConfigurationError, QuotaExceededError
from aipaas.inference import quotas
from aipaas.inference.keys import ApiKey
from tests.support.postgres import never_opened


@pytest.fixture
def settings(platform_settings):
    """Every test here that touches the platform database runs on SQLite and on PostgreSQL."""
    return platform_settings


T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class Clock:
    """Epoch seconds that a test moves."""

    def __init__(self, at: datetime) -> None:
        self.t = at.timestamp()

    def __call__(self) -> float:
        return self.t

    def to(self, at: datetime) -> None:
        self.t = at.timestamp()


def _key(key_id: str = "k1", quota: str | None = None, budget: str | None = None) -> ApiKey:
    return ApiKey(key_id, "app", ("predict",), None, "", None, None, quota=quota, budget=budget)


def _req(key_id: str, at: datetime, status: int = 200, cost: float = 0.0) -> audit.AuditRecord:
    return audit.AuditRecord(
        key_id=key_id, ts=audit.iso_utc(at), route="/predict", status=status, cost=cost
    )


def _commit(settings, *records: audit.AuditRecord) -> list[audit.AuditRecord]:
    """Commit through the serving writer (another process, as far as a Quotas knows)."""
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    for rec in records:
        writer.submit(rec).result(10)
    writer.close()
    assert all(rec.seq > 0 for rec in records)
    return list(records)


def test_limits_parse_and_periods_are_utc_calendar_periods():
    assert quotas.parse_quota("10000/day") == quotas.Limit("10000/day", 10000.0, "day")
    assert quotas.parse_budget(" 2.5 / month ") == quotas.Limit("2.5 / month", 2.5, "month")
    with pytest.raises(ConfigurationError, match="per hour, day or month"):
        quotas.parse_quota("5/fortnight")
    at = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert quotas.period_bounds("month", at) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert quotas.period_bounds("day", at)[1] == datetime(2027, 1, 1, tzinfo=UTC)
    assert quotas.period_bounds("hour", at) == (
        datetime(2026, 12, 31, 23, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_a_key_without_limits_is_never_counted(settings):
    q = quotas.Quotas(settings)
    free = _key()
    assert not q.due(free)
    q.check(free)
    assert q.used(free) == quotas.Used(0, 0.0)
    assert never_opened(settings)


def test_past_the_quota_is_refused_until_the_day_ends_even_after_a_restart(settings):
    _commit(
        settings,
        _req("k1", T0 - timedelta(hours=2)),
        _req("k1", T0 - timedelta(hours=1), status=422),  # refused by validation: counts
        _req("k1", T0 - timedelta(minutes=5), status=429),  # rate or quota refusal: does not
        _req("k1", T0 - timedelta(days=1)),  # yesterday
        _req("k2", T0),  # another key
    )
    key = _key(quota="3/day")
    clock = Clock(T0)
    q = quotas.Quotas(settings, clock=clock)
    q.check(key)
    assert q.used(key).requests == 2
    (third,) = _commit(settings, _req("k1", T0))
    q.record(third)  # what serving does once the record is committed
    with pytest.raises(QuotaExceededError) as err:
        q.check(key)
    e = err.value
    assert (e.quota, e.kind, e.used) == ("3/day", "requests", 3)
    assert e.resets_at == "2026-03-11T00:00:00+00:00"
    assert e.retry_after_s == pytest.approx(12 * 3600)
    assert str(e) == (
        "quota of 3/day exceeded for key k1: 3 requests this day; "
        "resets at 2026-03-11T00:00:00+00:00"
    )

    restarted = quotas.Quotas(settings, clock=Clock(T0 + timedelta(hours=11)))
    with pytest.raises(QuotaExceededError, match="3 requests"):
        restarted.check(key)

    clock.to(datetime(2026, 3, 11, tzinfo=UTC))  # a new day
    q.check(key)
    assert q.used(key).requests == 0


def test_a_request_is_counted_once_whether_recorded_or_read_first(settings):
    key = _key(quota="100/day")
    clock = Clock(T0)
    q = quotas.Quotas(settings, clock=clock, sync_s=2.0)
    q.check(key)
    a, b = _commit(settings, _req("k1", T0), _req("k1", T0))
    q.record(a)  # recorded before the trail is read again
    assert q.used(key).requests == 1
    clock.t += 2.0
    assert q.used(key).requests == 2  # read: a once (dropped locally), b
    q.record(b)  # recorded after the read that counted it
    assert q.used(key).requests == 2
    clock.t += 2.0
    assert q.used(key).requests == 2


def test_requests_of_other_processes_count_within_sync_s(settings):
    key = _key(quota="3/day")
    clock = Clock(T0)
    q = quotas.Quotas(settings, clock=clock, sync_s=2.0)
    q.check(key)
    _commit(settings, *[_req("k1", T0) for _ in range(3)])  # another server process
    q.check(key)  # counts are not due yet: no database read on this request
    clock.t += 2.0
    with pytest.raises(QuotaExceededError, match="3 requests"):
        q.check(key)


def test_past_the_budget_is_refused_until_the_month_ends(settings):
    _commit(
        settings,
        _req("k1", T0 - timedelta(days=3), cost=0.4),
        _req("k1", T0, status=429, cost=0.2),  # cost counts whatever the status
        _req("k1", datetime(2026, 2, 28, tzinfo=UTC), cost=5.0),  # last month
    )
    key = _key(budget="1/month")
    q = quotas.Quotas(settings, clock=Clock(T0))
    q.check(key)
    (last,) = _commit(settings, _req("k1", T0, cost=0.45))
    q.record(last)
    with pytest.raises(QuotaExceededError) as err:
        q.check(key)
    e = err.value
    assert (e.quota, e.kind, e.resets_at) == ("1/month", "cost", "2026-04-01T00:00:00+00:00")
    assert e.used == pytest.approx(1.05)
    assert "budget of 1/month exceeded for key k1: 1.05 spent this month" in str(e)
    assert quotas.Quotas(settings, clock=Clock(datetime(2026, 4, 1, tzinfo=UTC))).used(
        key
    ) == quotas.Used(0, 0.0)


def test_with_the_audit_trail_off_requests_count_in_memory_until_the_period_ends(settings):
    key = _key(quota="2/hour")
    clock = Clock(T0)
    q = quotas.Quotas(settings, clock=clock)
    q.check(key)
    for _ in range(2):  # seq 0: never committed, so never read back
        q.record(audit.AuditRecord(key_id="k1", status=200))
    clock.t += 5.0
    with pytest.raises(QuotaExceededError, match="quota of 2/hour"):
        q.check(key)
    clock.to(T0 + timedelta(hours=1))
    q.check(key)
