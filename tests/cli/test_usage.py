"""``aipaas usage``: totals, a time series by hour or day, per end user, and a chart."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aipaas import audit
from aipaas.cli import app
from aipaas.exceptions import ConfigurationError


@pytest.fixture
def traffic(settings, use_settings):
    """Two keys over two days; alice's requests carry her pseudonym."""
    use_settings(settings)
    alice = audit.end_user_pseudonym(settings, "alice")
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    for ts, key, user, cost in [
        ("2026-03-09T10:00:00.000000+00:00", "k1", alice, 0.5),
        ("2026-03-10T10:00:00.000000+00:00", "k1", alice, 1.0),
        ("2026-03-10T11:00:00.000000+00:00", "k1", None, 2.0),
        ("2026-03-10T11:30:00.000000+00:00", "k2", None, 4.0),
    ]:
        rec = audit.AuditRecord(
            ts=ts, key_id=key, owner=f"o-{key}", model="diagnosis", version="1", status=200,
            compute_s=cost, cost=cost, end_user=user,
        )  # fmt: skip
        writer.submit(rec).result(10)
    writer.close()
    return alice


def run(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result


def test_usage_by_day_is_a_table_per_day_key_and_version(traffic):
    result = run("usage", "--by", "day")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:3] == ["start", "(UTC)", "key"]
    assert [row.split()[:2] + [row.split()[5]] for row in rows] == [
        ["2026-03-09T00:00:00+00:00", "k1", "1"],
        ["2026-03-10T00:00:00+00:00", "k1", "2"],
        ["2026-03-10T00:00:00+00:00", "k2", "1"],
    ]


def test_usage_by_hour_as_json_sums_to_the_total(traffic):
    series = json.loads(run("usage", "--by", "hour", "--json").output)
    total = json.loads(run("usage", "--json").output)
    assert [s["bucket"] for s in series] == [
        "2026-03-09T10:00:00+00:00",
        "2026-03-10T10:00:00+00:00",
        "2026-03-10T11:00:00+00:00",
        "2026-03-10T11:00:00+00:00",
    ]
    assert sum(s["requests"] for s in series) == sum(t["requests"] for t in total) == 4
    assert sum(s["cost"] for s in series) == pytest.approx(sum(t["cost"] for t in total))


def test_usage_of_one_end_user(traffic):
    rows = json.loads(run("usage", "--end-user", "alice", "--by-end-user", "--json").output)
    assert [(r["key_id"], r["end_user"], r["requests"]) for r in rows] == [("k1", traffic, 2)]
    table = run("usage", "--by-end-user").output
    assert traffic[:14] in table and "end user" in table


def test_usage_chart_is_written(traffic, tmp_path):
    out = tmp_path / "usage.png"
    result = run("usage", "--chart", str(out))  # a chart implies --by day
    assert result.exit_code == 0, result.output
    assert f"chart: {out}" in result.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_an_unknown_bucket_is_refused(traffic):
    result = run("usage", "--by", "week")
    assert isinstance(result.exception, ConfigurationError)
    assert "bucket 'week' is not one of: hour, day" in str(result.exception)
