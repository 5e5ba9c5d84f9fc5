"""The one table from core errors to HTTP: status, body, headers, and the audit record."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from aipaas import audit
from aipaas.exceptions import (
    AlreadyLabelledError,
    ConfigurationError,
    KeyRejectedError,
    ModelNotFoundError,
    QuotaExceededError,
    RateLimitedError,
    RegistryUnavailableError,
    ScopeDeniedError,
    UnknownRequestError,
    UnsignedVersionError,
)
from serving import errors
from serving.app import create_app


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (KeyRejectedError("unknown API key"), 401, {"www-authenticate": "Bearer"}),
        (ScopeDeniedError("API key k lacks scope 'admin'"), 403, {}),
        (ModelNotFoundError("model 'x' is not served here"), 404, {}),
        (UnsignedVersionError("diagnosis v3 has no promotion record"), 404, {}),
        (UnknownRequestError("no prediction with request_id 'r'"), 404, {}),
        (AlreadyLabelledError("request 'r' already has a label"), 409, {}),
        (RateLimitedError("rate limit of 2/m exceeded for key k", 0.2), 429, {"retry-after": "1"}),
        (
            RateLimitedError("rate limit of 2/m exceeded for key k", 29.5),
            429,
            {"retry-after": "30"},
        ),
        (RegistryUnavailableError("MLflow did not answer"), 503, {}),
        (errors.ModelNotReadyError("model 'd' has no champion loaded"), 503, {}),
    ],
)
def test_each_core_error_has_its_status_and_headers(make_client, settings, error, status, headers):
    client = make_client()

    async def boom() -> None:
        raise error

    client.app.add_api_route("/boom", boom)
    r = client.get("/boom")
    assert r.status_code == status
    assert r.json() == {"detail": str(error)}
    for name in ("www-authenticate", "retry-after"):
        assert r.headers.get(name) == headers.get(name)
    [record] = [rec for rec in audit.tail(settings, 10) if rec["kind"] == "request"]
    assert (record["route"], record["status"]) == ("/boom", status)


def test_a_quota_429_names_the_quota_and_when_it_resets(make_client):
    client = make_client()
    err = QuotaExceededError(
        "quota of 3/day exceeded for key k: 3 requests this day",
        quota="3/day",
        kind="requests",
        used=3,
        resets_at="2030-01-02T00:00:00+00:00",
        retry_after_s=3599.2,
    )

    async def boom() -> None:
        raise err

    client.app.add_api_route("/boom", boom)
    r = client.get("/boom")
    assert (r.status_code, r.headers["retry-after"]) == (429, "3600")
    assert r.json() == {
        "detail": str(err),
        "quota": "3/day",
        "kind": "requests",
        "used": 3,
        "resets_at": "2030-01-02T00:00:00+00:00",
    }
    plain = RateLimitedError("rate limit of 2/m exceeded for key k", 1.0)
    assert errors.body_for(plain) == {"detail": str(plain)}  # the plain 429 says only why


def test_an_error_outside_the_table_stays_a_500(settings, source):
    app = create_app(settings, model_source=source, follow=False)

    async def boom() -> None:
        raise ConfigurationError("a bug, not a client's mistake")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    assert "a bug" not in r.text
    assert [rec["status"] for rec in audit.tail(settings, 10) if rec["kind"] == "request"] == [500]


def test_status_follows_the_nearest_class_in_the_table():
    class Narrower(KeyRejectedError):
        pass

    assert errors.status_for(Narrower("x")) == 401


def test_retry_after_is_whole_seconds_and_at_least_one():
    assert [errors.retry_after(s) for s in (0.0, 0.01, 1.0, 1.01, 59.9)] == [
        "1",
        "1",
        "1",
        "2",
        "60",
    ]
