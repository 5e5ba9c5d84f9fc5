"""CORS as a browser meets it: preflights, and the headers on answers and refusals.

Allowed origins come from ``serving.cors_origins`` and from active
publishable keys; anything else gets no CORS header at all, so the browser
blocks the page from reading the answer.
"""

from __future__ import annotations

import pytest

from aipaas import audit
from aipaas.exceptions import ConfigurationError
from aipaas.inference import keys
from tests.support.serving import ROW, bearer

SHOP = "https://shop.example"
EVIL = "https://evil.example"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}
APP_ROUTES = [
    ("POST", "/predict"),
    ("POST", "/models/diagnosis/predict"),
    ("POST", "/models/diagnosis/versions/1/predict"),
    ("POST", "/invocations"),
    ("POST", "/feedback"),
    ("GET", "/model"),
    ("GET", "/models/diagnosis"),
]


@pytest.fixture
def cors_settings(settings):
    return settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"cors_origins": [SHOP]})}
    )


@pytest.fixture
def cors_client(make_client, cors_settings):
    return make_client(cors_settings)


def _records(settings):
    return [r for r in audit.tail(settings, 1000) if r["kind"] == "request"]


def _cors(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith("access-control-")}


@pytest.mark.parametrize(("method", "path"), APP_ROUTES)
def test_a_preflight_from_an_allowed_origin_is_granted_for_the_app_routes(
    cors_client, cors_settings, method, path
):
    r = cors_client.options(
        path, headers={"Origin": SHOP, **PREFLIGHT, "Access-Control-Request-Method": method}
    )
    assert r.status_code == 204 and r.content == b""
    assert _cors(r.headers) == {
        "access-control-allow-origin": SHOP,  # the exact origin, never *
        "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": (
            "authorization, content-type, x-model, x-model-version, x-end-user"
        ),
        "access-control-max-age": "600",
    }
    assert r.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in r.headers
    assert _records(cors_settings) == []  # preflights are not audited, never reach auth


@pytest.mark.parametrize(
    ("origin", "path"),
    [
        (EVIL, "/predict"),
        ("null", "/predict"),
        ("https://shop.example.evil.example", "/predict"),
        ("http://shop.example", "/predict"),  # another scheme is another origin
        (SHOP, "/usage"),  # admin reads are never cross-origin
        (SHOP, "/audit"),
        (SHOP, "/admin/reload"),
    ],
)
def test_a_preflight_from_elsewhere_or_for_admin_routes_gets_403_without_cors_headers(
    cors_client, cors_settings, origin, path
):
    r = cors_client.options(path, headers={"Origin": origin, **PREFLIGHT})
    assert r.status_code == 403
    assert _cors(r.headers) == {}
    assert "cross-origin calls to" in r.json()["detail"]
    assert _records(cors_settings) == []


def test_answers_carry_cors_headers_for_an_allowed_origin_only(
    cors_client, cors_settings, predict_key
):
    h = bearer(predict_key)
    r = cors_client.post("/predict", json=ROW, headers={**h, "Origin": SHOP})
    assert r.status_code == 200 and r.json()["output"] == "malignant"
    assert r.headers["access-control-allow-origin"] == SHOP
    assert set(r.headers["access-control-expose-headers"].split(", ")) >= {
        "x-request-id",
        "retry-after",
    }
    assert r.headers["vary"] == "Origin"

    r = cors_client.post("/predict", json=ROW, headers={**h, "Origin": EVIL})
    assert r.status_code == 200  # a server answers; the browser hides it from the page
    assert _cors(r.headers) == {} and r.headers["vary"] == "Origin"
    r = cors_client.post("/predict", json=ROW, headers=h)  # no Origin: a server's call
    assert _cors(r.headers) == {}
    r = cors_client.get("/usage", headers={"Origin": SHOP})
    assert r.status_code == 401 and _cors(r.headers) == {}  # admin reads: never


def test_refusals_carry_cors_headers_so_a_page_can_read_them(cors_client, settings, predict_key):
    _, slow = keys.create_key(settings, "slow", "predict", rate="1/m")
    cases = [
        ({}, ROW, 401),  # no key
        ({"Authorization": "Bearer nope"}, ROW, 401),
        (bearer(slow), ROW, 200),
        (bearer(slow), ROW, 429),
        (bearer(predict_key), {"mean_radius": "x"}, 422),
        (
            {**bearer(predict_key), "X-End-User": "x" * 200},
            ROW,
            422,
        ),  # refused by the audit middleware
    ]
    for headers, body, status in cases:
        r = cors_client.post("/predict", json=body, headers={**headers, "Origin": SHOP})
        assert r.status_code == status, r.text
        assert r.headers["access-control-allow-origin"] == SHOP, status
        assert status == 200 or "detail" in r.json()
        if status == 429:
            assert int(r.headers["retry-after"]) >= 1  # readable: it is an exposed header
    r = cors_client.post("/predict", json=ROW, headers={**bearer(slow), "Origin": EVIL})
    assert r.status_code == 429 and _cors(r.headers) == {}


def test_a_publishable_keys_origins_are_allowed_within_the_key_cache(make_client, settings):
    c = make_client(key_cache_s=0)
    page = "http://localhost:3000"
    assert c.options("/predict", headers={"Origin": page, **PREFLIGHT}).status_code == 403
    record, _ = keys.create_key(settings, "web", "predict", publishable=True, origins=page)
    r = c.options("/predict", headers={"Origin": page, **PREFLIGHT})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == page
    keys.revoke_key(settings, record.id)
    assert c.options("/predict", headers={"Origin": page, **PREFLIGHT}).status_code == 403


def test_an_options_request_that_is_not_a_preflight_is_left_to_the_app(cors_client):
    r = cors_client.options("/predict", headers={"Origin": SHOP})
    assert r.status_code == 405  # the route's answer, with the grant for the page
    assert r.headers["access-control-allow-origin"] == SHOP


def test_a_malformed_configured_origin_stops_the_app_with_a_message(settings, source):
    from serving.app import create_app

    bad = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"cors_origins": ["https://*.x"]})}
    )
    with pytest.raises(ConfigurationError, match="origin 'https://\\*.x' is not like"):
        create_app(bad, model_source=source, follow=False)
