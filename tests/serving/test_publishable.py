"""A publishable key through the API: only from its origins, only predict, limited and audited."""

from __future__ import annotations

import json

import pytest

from aipaas import audit
from aipaas.inference import keys
from tests.support.serving import ROW, bearer

SHOP = "https://shop.example"


@pytest.fixture
def pub(settings):
    record, token = keys.create_key(
        settings, "shop-web", "predict", publishable=True, origins=SHOP, rate="1000/s"
    )
    return record, token


def _records(settings):
    return [r for r in audit.tail(settings, 1000) if r["kind"] == "request"]


def test_a_publishable_key_answers_from_its_origin_only(client, settings, pub):
    record, token = pub
    r = client.post("/predict", json=ROW, headers={**bearer(token), "Origin": SHOP})
    assert r.status_code == 200, r.text
    assert (r.json()["output"], r.json()["model_version"]) == ("malignant", "1")
    # allowed by CORS through the key's own origin, with no cors_origins setting
    assert r.headers["access-control-allow-origin"] == SHOP

    r = client.post("/predict", json=ROW, headers=bearer(token))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"] == (
        f"API key {record.id} is publishable: it works only from a web page on {SHOP} "
        "(the request has no Origin header)"
    )
    r = client.post(
        "/predict", json=ROW, headers={**bearer(token), "Origin": "https://evil.example"}
    )
    assert r.status_code == 401
    assert "works only from https://shop.example, not from 'https://evil.example'" in r.text
    assert "access-control-allow-origin" not in r.headers

    records = _records(settings)
    assert [(x["status"], x["key_id"]) for x in records] == [
        (200, record.id),
        (401, record.id),  # refusals are audited under the key
        (401, record.id),
    ]
    assert json.loads(records[2]["detail"]) == {"origin": "https://evil.example"}


def test_a_publishable_key_reaches_only_its_predict_scopes(client, settings):
    _, token = keys.create_key(settings, "web", "predict:diagnosis", publishable=True, origins=SHOP)
    h = {**bearer(token), "Origin": SHOP}
    assert client.post("/models/diagnosis/predict", json=ROW, headers=h).status_code == 200
    assert client.get("/model", headers=h).status_code == 200
    for method, path, status in [
        ("POST", "/models/churn/predict", 403),
        ("POST", "/feedback", 403),
        ("GET", "/usage", 403),
        ("GET", "/audit", 403),
        ("POST", "/admin/reload", 403),
    ]:
        body = {"request_id": "x", "label": "benign"} if path == "/feedback" else ROW
        r = client.request(method, path, json=body, headers=h)
        assert r.status_code == status, (path, r.text)
        assert "lacks scope" in r.json()["detail"]


def test_a_publishable_key_has_its_own_rate_and_quota(client, settings):
    _, token = keys.create_key(
        settings, "web", "predict", publishable=True, origins=SHOP, rate="1/m"
    )
    h = {**bearer(token), "Origin": SHOP}
    assert client.post("/predict", json=ROW, headers=h).status_code == 200
    r = client.post("/predict", json=ROW, headers=h)
    assert r.status_code == 429 and r.headers["access-control-allow-origin"] == SHOP
    _, quota = keys.create_key(
        settings, "web2", "predict", publishable=True, origins=SHOP, quota="1/day"
    )
    h = {**bearer(quota), "Origin": SHOP}
    assert client.post("/predict", json=ROW, headers=h).status_code == 200
    r = client.post("/predict", json=ROW, headers=h)
    assert r.status_code == 429 and r.json()["quota"] == "1/day"


def test_a_wrong_origin_spends_no_rate_tokens(client, settings):
    _, token = keys.create_key(
        settings, "web", "predict", publishable=True, origins=SHOP, rate="1/m"
    )
    for _ in range(3):
        r = client.post("/predict", json=ROW, headers={**bearer(token), "Origin": "https://x.y"})
        assert r.status_code == 401
    assert client.post("/predict", json=ROW, headers={**bearer(token), "Origin": SHOP}).is_success


def test_secret_keys_keep_working_from_servers_and_browsers(client, predict_key):
    assert client.post("/predict", json=ROW, headers=bearer(predict_key)).status_code == 200
    r = client.post("/predict", json=ROW, headers={**bearer(predict_key), "Origin": SHOP})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
