"""Quotas and budgets over HTTP: a 429 naming the limit, counted from the trail, reset by time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aipaas import audit
from aipaas.inference import keys
from aipaas.inference.quotas import Quotas
from tests.support.serving import ROW, bearer


class Clock:
    def __init__(self, at: datetime) -> None:
        self.t = at.timestamp()

    def __call__(self) -> float:
        return self.t


def _next_midnight(now: datetime) -> str:
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC).isoformat()


def _statuses(settings, key_id: str) -> list[int]:
    return [
        r["status"]
        for r in audit.query(settings, key_id=key_id, newest_first=False)
        if r["kind"] == "request"
    ]


def test_past_its_quota_a_key_gets_429_naming_the_quota_even_after_a_restart(make_client, settings):
    record, token = keys.create_key(settings, "metered", "predict", rate="1000/s", quota="3/day")
    client = make_client()
    h = bearer(token)
    assert client.post("/predict", json={"bad": 1}, headers=h).status_code == 422  # counts
    assert [client.post("/predict", json=ROW, headers=h).status_code for _ in range(2)] == [
        200,
        200,
    ]
    resets = _next_midnight(datetime.now(UTC))
    for _ in range(2):  # refusals for the quota do not count
        r = client.post("/predict", json=ROW, headers=h)
        assert r.status_code == 429
        assert r.json() == {
            "detail": f"quota of 3/day exceeded for key {record.id}: 3 requests this day; "
            f"resets at {resets}",
            "quota": "3/day",
            "kind": "requests",
            "used": 3,
            "resets_at": resets,
        }
        assert 1 <= int(r.headers["retry-after"]) <= 86_400
    assert _statuses(settings, record.id) == [422, 200, 200, 429, 429]

    restarted = make_client()  # a new process: the count comes from the trail
    assert restarted.post("/predict", json=ROW, headers=h).status_code == 429
    _, other = keys.create_key(settings, "other", "predict", rate="1000/s", quota="3/day")
    assert restarted.post("/predict", json=ROW, headers=bearer(other)).status_code == 200


def test_the_quota_resets_when_the_day_changes(make_client, settings):
    _, token = keys.create_key(settings, "metered", "predict", rate="1000/s", quota="2/day")
    client = make_client()
    clock = Clock(datetime.now(UTC))
    client.app.state.components.quotas = Quotas(settings, clock=clock)  # the clock it reads
    h = bearer(token)
    assert [client.post("/predict", json=ROW, headers=h).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    clock.t = datetime.fromisoformat(_next_midnight(datetime.now(UTC))).timestamp()
    assert client.post("/predict", json=ROW, headers=h).status_code == 200


def test_past_its_budget_a_key_gets_429_naming_the_budget(make_client, settings):
    expensive = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"cost_per_compute_second": 1e9})}
    )
    record, token = keys.create_key(settings, "spender", "predict", rate="1000/s", budget="1/month")
    client = make_client(expensive)
    h = bearer(token)
    assert client.post("/predict", json=ROW, headers=h).status_code == 200
    r = client.post("/predict", json=ROW, headers=h)
    assert r.status_code == 429
    body = r.json()
    now = datetime.now(UTC)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    resets = (first + timedelta(days=32)).replace(day=1).isoformat()
    assert (body["quota"], body["kind"], body["resets_at"]) == ("1/month", "cost", resets)
    answered, refused = [
        r["cost"] for r in audit.query(settings, key_id=record.id, newest_first=False)
    ][1:]  # after key.created
    assert body["used"] == pytest.approx(answered) and answered > 1 and refused == 0
    assert body["detail"].startswith(f"budget of 1/month exceeded for key {record.id}: ")
