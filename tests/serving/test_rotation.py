"""Key rotation over HTTP: the old secret works for its grace period only, both audited."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from aipaas import audit
from aipaas.inference import keys
from tests.support.serving import ROW, bearer


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at

    def __call__(self) -> datetime:
        return self.now


def _last_request(settings) -> dict:
    return [r for r in audit.query(settings) if r["kind"] == "request"][0]


def test_the_old_secret_works_only_until_the_grace_period_ends(make_client, settings):
    record, old = keys.create_key(settings, "app", "predict", rate="1000/s")
    start = datetime.now(UTC)
    rotation = keys.rotate_key(settings, record.id, "1h", now=start)
    client = make_client(key_cache_s=0)
    clock = Clock(start + timedelta(minutes=59))
    client.app.state.components.keys = keys.KeyStore(settings, ttl_s=0, clock=clock)

    assert client.post("/predict", json=ROW, headers=bearer(rotation.plaintext)).status_code == 200
    assert _last_request(settings)["detail"] is None
    assert client.post("/predict", json=ROW, headers=bearer(old)).status_code == 200
    during = _last_request(settings)
    assert during["key_id"] == record.id and during["status"] == 200
    assert json.loads(during["detail"]) == {
        "secret": "previous",
        "valid_until": rotation.previous_valid_until,
    }

    clock.now = start + timedelta(hours=1)
    r = client.post("/predict", json=ROW, headers=bearer(old))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {
        "detail": f"API key {record.id}: this secret was replaced by a rotation and stopped "
        f"working at {rotation.previous_valid_until}; use the new secret"
    }
    after = _last_request(settings)
    assert (after["status"], after["key_id"]) == (401, None)
    assert json.loads(after["detail"]) == {
        "secret": "previous",
        "key_id": record.id,
        "ended_at": rotation.previous_valid_until,
    }
    assert client.post("/predict", json=ROW, headers=bearer(rotation.plaintext)).status_code == 200

    (rotated,) = [r for r in audit.query(settings) if r["event"] == "key.rotated"]
    assert json.loads(rotated["detail"])["previous_secret_valid_until"] == (
        rotation.previous_valid_until
    )
    assert audit.verify(settings).ok


def test_a_rotation_past_its_grace_refuses_the_old_secret_with_the_real_clock(
    make_client, settings
):
    record, old = keys.create_key(settings, "app", "predict", rate="1000/s")
    client = make_client(key_cache_s=0)
    assert client.post("/predict", json=ROW, headers=bearer(old)).status_code == 200
    new = keys.rotate_key(settings, record.id, "0s").plaintext
    assert client.post("/predict", json=ROW, headers=bearer(old)).status_code == 401
    assert client.post("/predict", json=ROW, headers=bearer(new)).status_code == 200
