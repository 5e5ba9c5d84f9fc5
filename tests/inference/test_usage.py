from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aipaas import audit
from aipaas.exceptions import ConfigurationError
from aipaas.inference import usage, usage_chart


@pytest.fixture
def settings(platform_settings):
    """Every test here that touches the platform database runs on SQLite and on PostgreSQL."""
    return platform_settings


def test_usage_groups_by_key_and_version_with_cost(settings):
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    recs = [
        ("k1", "1", 200, 0.002),
        ("k1", "1", 200, 0.004),
        ("k1", "1", 422, None),
        ("k1", "2", 200, 0.001),
        ("k2", "2", 429, None),
    ]
    futures = [
        writer.submit(
            audit.AuditRecord(
                key_id=k,
                owner=f"owner-{k}",
                model="diagnosis",
                version=v,
                status=s,
                compute_s=c,
                cost=(c or 0) * 0.5,
            )
        )
        for k, v, s, c in recs
    ]
    [f.result(timeout=10) for f in futures]
    writer.close()
    audit.append_event(settings, "key.created", key_id="k1")  # admin events are not usage
    rows = {(r.key_id, r.version): r for r in usage.usage(settings)}
    assert set(rows) == {("k1", "1"), ("k1", "2"), ("k2", "2")}
    k1v1 = rows[("k1", "1")]
    assert (k1v1.requests, k1v1.errors, k1v1.owner) == (3, 1, "owner-k1")
    assert k1v1.compute_s == pytest.approx(0.006)
    assert k1v1.cost == pytest.approx(0.003)
    assert rows[("k2", "2")].errors == 1
    assert [r.key_id for r in usage.usage(settings, key_id="k2")] == ["k2"]


def _traffic(settings):
    """Requests over two days and three hours, for two keys and two end users."""
    alice = audit.end_user_pseudonym(settings, "alice")
    bob = audit.end_user_pseudonym(settings, "bob")
    plan = [
        ("2026-03-09T23:59:59.999999+00:00", "k1", "1", 200, 0.5, alice),
        ("2026-03-10T00:00:00.000000+00:00", "k1", "1", 200, 1.0, alice),
        ("2026-03-10T00:30:00.000000+00:00", "k1", "2", 500, 2.0, bob),
        ("2026-03-10T01:15:00.000000+00:00", "k1", "2", 200, 4.0, None),
        ("2026-03-10T01:45:00.000000+00:00", "k2", "2", 422, None, bob),
    ]
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    futures = [
        writer.submit(
            audit.AuditRecord(
                ts=ts,
                key_id=k,
                owner=f"owner-{k}",
                model="diagnosis",
                version=v,
                status=s,
                compute_s=c,
                cost=(c or 0.0) * 0.5,
                end_user=u,
            )
        )
        for ts, k, v, s, c, u in plan
    ]
    [f.result(timeout=10) for f in futures]
    writer.close()
    audit.append_event(settings, "key.created", key_id="k1", ts="2026-03-10T00:10:00+00:00")
    return alice, bob


def _totals(rows):
    return (
        sum(r.requests for r in rows),
        sum(r.errors for r in rows),
        pytest.approx(sum(r.compute_s for r in rows)),
        pytest.approx(sum(r.cost for r in rows)),
    )


def test_usage_by_hour_and_day_sums_to_the_per_request_rows(settings):
    _traffic(settings)
    per_request = [
        r for r in audit.query(settings, limit=100, newest_first=False) if r["kind"] == "request"
    ]
    by_hour = usage.usage(settings, bucket="hour")
    by_day = usage.usage(settings, bucket="day")
    total = usage.usage(settings)
    assert _totals(by_hour) == _totals(by_day) == _totals(total) == (5, 2, 7.5, 3.75)
    assert len(per_request) == 5
    assert [(r.bucket, r.key_id, r.version, r.requests) for r in by_day] == [
        ("2026-03-09T00:00:00+00:00", "k1", "1", 1),
        ("2026-03-10T00:00:00+00:00", "k1", "1", 1),
        ("2026-03-10T00:00:00+00:00", "k1", "2", 2),
        ("2026-03-10T00:00:00+00:00", "k2", "2", 1),
    ]
    hours = {(r.bucket, r.key_id, r.version): (r.requests, r.errors, r.cost) for r in by_hour}
    assert hours == {
        ("2026-03-09T23:00:00+00:00", "k1", "1"): (1, 0, 0.25),
        ("2026-03-10T00:00:00+00:00", "k1", "1"): (1, 0, 0.5),
        ("2026-03-10T00:00:00+00:00", "k1", "2"): (1, 1, 1.0),
        ("2026-03-10T01:00:00+00:00", "k1", "2"): (1, 0, 2.0),
        ("2026-03-10T01:00:00+00:00", "k2", "2"): (1, 1, 0.0),
    }
    since = datetime(2026, 3, 10, 1, tzinfo=UTC)
    assert [r.bucket for r in usage.usage(settings, bucket="day", since=since)] == [
        "2026-03-10T00:00:00+00:00",
        "2026-03-10T00:00:00+00:00",
    ]
    with pytest.raises(ConfigurationError, match="bucket 'week' is not one of: hour, day"):
        usage.usage(settings, bucket="week")


def test_usage_per_end_user_shows_pseudonyms_and_filters_by_the_raw_id(settings):
    alice, bob = _traffic(settings)
    rows = usage.usage(settings, by_end_user=True)
    assert {(r.key_id, r.version, r.end_user): r.requests for r in rows} == {
        ("k1", "1", alice): 2,
        ("k1", "2", bob): 1,
        ("k1", "2", None): 1,
        ("k2", "2", bob): 1,
    }
    assert all(r.end_user is None for r in usage.usage(settings))  # not grouped: not shown
    only_bob = usage.usage(settings, end_user="bob", bucket="day")
    assert [(r.key_id, r.requests) for r in only_bob] == [("k1", 1), ("k2", 1)]
    assert usage.usage(settings, end_user="carol") == []


def test_a_usage_chart_is_a_png_of_requests_and_cost_per_key(settings, tmp_path):
    _traffic(settings)
    rows = usage.usage(settings, bucket="day", by_end_user=True)
    series = usage_chart.per_key(rows)
    assert [(s.label, s.requests) for s in series] == [
        ("k1 (owner-k1)", [1, 3]),
        ("k2 (owner-k2)", [1]),
    ]
    assert series[0].cost == pytest.approx([0.25, 3.5])
    out = usage_chart.write_chart(rows, tmp_path / "charts" / "usage.png", bucket="day")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(ConfigurationError, match="needs a time series"):
        usage_chart.per_key(usage.usage(settings))
    empty = usage_chart.write_chart([], tmp_path / "empty.png", bucket="hour")
    assert empty.is_file()
