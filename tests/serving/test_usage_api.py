"""``GET /usage`` over time and ``GET /audit``: admin only, and every read is itself audited."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from aipaas import audit
from tests.support.serving import ROW, bearer


def _traffic(client, predict_key) -> None:
    h = bearer(predict_key)
    for user in ["ana", "ben", None]:
        extra = {"X-End-User": user} if user else {}
        client.post("/predict", json=ROW, headers={**h, **extra})
    client.post("/predict", json={"bad": 1}, headers=h)


@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_usage_over_time_sums_to_the_per_request_records(client, predict_key, admin_key, bucket):
    _traffic(client, predict_key)
    admin = bearer(admin_key)
    key_id = predict_key.split("_")[1]
    only = {"key_id": key_id}  # not the admin's own reads
    records = client.get("/audit", params={**only, "limit": 1000}, headers=admin).json()
    requests = [r for r in records if r["kind"] == "request"]
    assert len(requests) == 4
    series = client.get("/usage", params={**only, "bucket": bucket}, headers=admin).json()
    n = 13 if bucket == "hour" else 10
    expected = Counter((r["ts"][:n], r["key_id"], r["version"]) for r in requests)
    got = {(s["bucket"][:n], s["key_id"], s["version"]): s["requests"] for s in series}
    assert got == dict(expected)
    assert sum(s["cost"] for s in series) == pytest.approx(sum(r["cost"] for r in requests))
    assert sum(s["errors"] for s in series) == sum(r["status"] >= 400 for r in requests)
    assert all(s["bucket"].endswith(":00:00+00:00") for s in series)
    plain = client.get("/usage", headers=admin).json()  # the default: no time series
    assert all(p["bucket"] is None and p["end_user"] is None for p in plain)


def test_the_audit_route_filters_and_refuses_bad_parameters(
    client, settings, predict_key, admin_key
):
    _traffic(client, predict_key)
    admin = bearer(admin_key)
    key_id = predict_key.split("_")[1]
    mine = client.get("/audit", params={"key_id": key_id}, headers=admin).json()
    assert [(r["event"], r["status"]) for r in mine] == [
        ("key.created", None),
        (None, 200),
        (None, 200),
        (None, 200),
        (None, 422),
    ]
    assert (
        client.get("/audit", params={"key_id": key_id, "limit": 2}, headers=admin).json()
        == (mine[:2])
    )
    since = mine[1]["ts"]
    later = client.get("/audit", params={"key_id": key_id, "since": since}, headers=admin).json()
    assert [r["seq"] for r in later] == [r["seq"] for r in mine[1:]]
    until = client.get("/audit", params={"key_id": key_id, "until": since}, headers=admin).json()
    assert [r["seq"] for r in until] == [mine[0]["seq"]]
    kinds = client.get("/audit", params={"key_id": "nobody"}, headers=admin).json()
    assert kinds == []
    for params in [{"limit": 0}, {"limit": 1001}, {"since": "yesterday"}]:
        assert client.get("/audit", params=params, headers=admin).status_code == 422
    assert client.get("/usage", params={"bucket": "week"}, headers=admin).status_code == 422
    assert client.get("/audit", headers=bearer(predict_key)).status_code == 403
    assert client.get("/audit").status_code == 401


def test_reading_the_trail_or_usage_leaves_a_record_naming_the_reader(
    client, settings, predict_key, admin_key
):
    _traffic(client, predict_key)
    admin = bearer(admin_key)
    admin_id = admin_key.split("_")[1]
    r = client.get("/audit", params={"end_user": "ana", "limit": 5}, headers=admin)
    assert r.status_code == 200
    client.get("/usage", params={"bucket": "day"}, headers=admin)
    usage_read, audit_read = audit.query(settings, key_id=admin_id)[:2]
    assert (audit_read["route"], audit_read["status"], audit_read["owner"]) == (
        "/audit",
        200,
        "ops",
    )
    assert audit_read["request_id"] == r.headers["x-request-id"]
    assert json.loads(audit_read["detail"]) == {
        "read": {"end_user": audit.end_user_pseudonym(settings, "ana"), "limit": 5}
    }
    assert b"ana" not in audit_read["detail"].encode()
    assert usage_read["route"] == "/usage"
    assert json.loads(usage_read["detail"]) == {"read": {"bucket": "day"}}
    assert audit.verify(settings).ok
