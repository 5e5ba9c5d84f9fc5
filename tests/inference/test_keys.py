from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from aipaas import audit
from aipaas.exceptions import (
    ConfigurationError,
    KeyRejectedError,
    ModelNotFoundError,
    RateLimitedError,
    RegistryUnavailableError,
    RetiredSecretError,
    ScopeDeniedError,
    UnsignedVersionError,
)
from aipaas.inference import keys
from aipaas.training import attestation
from tests.support.net import free_port
from tests.support.postgres import stored_bytes


@pytest.fixture
def settings(platform_settings):
    """Every test here that touches the platform database runs on SQLite and on PostgreSQL."""
    return platform_settings


def test_key_is_shown_once_and_only_its_hash_is_stored(settings):
    record, plaintext = keys.create_key(settings, "app", "predict,feedback", rate="5/s")
    assert plaintext.startswith(f"aip_{record.id}_")
    db_bytes = stored_bytes(settings)
    secret = plaintext.split("_", 2)[2]
    assert secret.encode() not in db_bytes
    assert [k.id for k in keys.list_keys(settings)] == [record.id]


def test_authenticate_accepts_the_key_and_refuses_others(settings):
    record, plaintext = keys.create_key(settings, "app", "predict")
    store = keys.KeyStore(settings, ttl_s=0)
    assert store.authenticate(f"Bearer {plaintext}").id == record.id
    for header, needle in [
        (None, "missing"),
        ("Basic abc", "Bearer"),
        ("Bearer nope", "malformed"),
        (f"Bearer {plaintext[:-2]}xx", "unknown"),
        (f"Bearer aip_{'0' * 12}_{'a' * 32}", "unknown"),
    ]:
        with pytest.raises(KeyRejectedError, match=needle):
            store.authenticate(header)


def test_revoked_and_expired_keys_are_refused(settings):
    record, plaintext = keys.create_key(settings, "app", "predict")
    _, old = keys.create_key(settings, "old", "predict", expires="2020-01-01")
    store = keys.KeyStore(settings, ttl_s=0)
    with pytest.raises(KeyRejectedError, match="expired"):
        store.authenticate(f"Bearer {old}")
    keys.revoke_key(settings, record.id)
    with pytest.raises(KeyRejectedError, match="revoked"):
        store.authenticate(f"Bearer {plaintext}")
    with pytest.raises(ConfigurationError, match="no key"):
        keys.revoke_key(settings, "feedfeedfeed")


def test_the_cache_answers_until_it_must_ask_the_database(settings):
    record, plaintext = keys.create_key(settings, "app", "predict")
    store = keys.KeyStore(settings, ttl_s=60)
    header = f"Bearer {plaintext}"
    assert store.authenticate_cached(header) is None  # never looked up: ask the database
    assert store.authenticate(header).id == record.id
    keys.revoke_key(settings, record.id)
    assert store.authenticate_cached(header).id == record.id  # within ttl_s: still trusted
    with pytest.raises(KeyRejectedError, match="revoked"):
        keys.KeyStore(settings, ttl_s=0).authenticate(header)


def test_scopes():
    k = keys.ApiKey("i", "n", ("predict:diagnosis", "feedback"), None, "", None, None)
    assert k.allows("predict", "diagnosis") and not k.allows("predict", "other")
    assert k.allows("feedback") and not k.allows("admin")
    admin = keys.ApiKey("i", "n", ("admin",), None, "", None, None)
    assert admin.allows("predict", "x") and admin.allows("admin")
    with pytest.raises(ConfigurationError, match="unknown scope"):
        keys.parse_scopes("predict,write")


def test_require_names_the_missing_scope_and_model():
    k = keys.ApiKey("abc", "n", ("predict:diagnosis",), None, "", None, None)
    k.require("predict", "diagnosis")
    with pytest.raises(ScopeDeniedError, match="API key abc lacks scope 'predict' on model 'x'"):
        k.require("predict", "x")
    with pytest.raises(ScopeDeniedError, match="lacks scope 'admin'$"):
        k.require("admin")


def test_token_bucket_refuses_past_the_burst_and_says_when_to_retry():
    limiter = keys.RateLimiter("50/s")
    assert all(limiter.acquire("k", "3/s") == 0.0 for _ in range(3))
    wait = limiter.acquire("k", "3/s")
    assert 0 < wait <= 1 / 3 + 0.01
    assert limiter.acquire("other", "3/s") == 0.0  # buckets are per key
    assert keys.parse_rate("600/m") == (10.0, 10.0)
    with pytest.raises(ConfigurationError):
        keys.parse_rate("fast")


def test_check_raises_with_the_wait_and_the_rate_that_applies():
    limiter = keys.RateLimiter("1/m")
    own = keys.ApiKey("own", "n", ("predict",), "2/m", "", None, None)
    default = keys.ApiKey("dflt", "n", ("predict",), None, "", None, None)
    limiter.check(own)
    with pytest.raises(RateLimitedError, match="rate limit of 2/m exceeded for key own") as err:
        limiter.check(own)
    assert 0 < err.value.retry_after_s <= 30.01
    limiter.check(default)
    with pytest.raises(RateLimitedError, match="rate limit of 1/m exceeded for key dflt") as err:
        limiter.check(default)
    assert 59 < err.value.retry_after_s <= 60.01


# --- pins ---------------------------------------------------------------------


def _signed(settings, model: str, version: str) -> dict[str, str]:
    """The tags promotion leaves on a version it promoted."""
    att = attestation.sign(
        settings,
        model=model,
        version=version,
        action="promote",
        result="promoted",
        decided_by="alice",
        at="2026-01-01T00:00:00+00:00",
    )
    return attestation.tag_for(att)


def _fake_registry(versions: dict[tuple[str, str], dict[str, str]]):
    """A ``VersionTags`` over an in-memory registry: unknown versions are ModelNotFoundError."""

    def tags_of(model: str, version: str) -> dict[str, str]:
        if (model, version) not in versions:
            raise ModelNotFoundError(f"model {model!r} has no registered version {version}")
        return versions[(model, version)]

    return tags_of


def _events(settings, event: str) -> list[dict]:
    return [r for r in audit.tail(settings, 1000) if r["event"] == event]


def test_a_key_pins_only_versions_that_were_promoted(settings):
    registry = _fake_registry(
        {
            ("diagnosis", "3"): _signed(settings, "diagnosis", "3"),
            ("diagnosis", "4"): {},  # registered, never promoted
            ("diagnosis", "5"): _signed(settings, "diagnosis", "3"),  # a copied record
        }
    )
    record, _ = keys.create_key(
        settings, "app", "predict", pins=["diagnosis=3"], version_tags=registry
    )
    assert record.pins == {"diagnosis": "3"}
    assert keys.get_key(settings, record.id).pins == {"diagnosis": "3"}
    (created,) = _events(settings, "key.created")
    assert json.loads(created["detail"])["pins"] == {"diagnosis": "3"}

    for pins, error, needle in [
        ({"diagnosis": "4"}, UnsignedVersionError, "cannot pin diagnosis=4: only a version that"),
        ({"diagnosis": "5"}, UnsignedVersionError, "is for diagnosis v3"),
        ({"diagnosis": "9"}, ModelNotFoundError, "cannot pin diagnosis=9: model 'diagnosis' has"),
        ({"other": "3"}, ModelNotFoundError, "cannot pin other=3"),
        (["diagnosis=three"], ConfigurationError, "is not like 'diagnosis=3'"),
        (["diagnosis=3", "diagnosis=4"], ConfigurationError, "pinned twice"),
    ]:
        with pytest.raises(error, match=needle):
            keys.create_key(settings, "bad", "predict", pins=pins, version_tags=registry)
    # nothing written for any refusal
    assert [k.id for k in keys.list_keys(settings)] == [record.id]
    assert len(_events(settings, "key.created")) == 1


def test_pins_are_checked_in_the_real_registry(settings):
    from mlflow import MlflowClient

    from aipaas.training import registry

    registry.connect(settings)
    client = MlflowClient()
    client.create_registered_model("diagnosis")
    for _ in range(2):
        client.create_model_version("diagnosis", source=str(settings.home / "artifact"))
    registry.set_tags("diagnosis", "1", _signed(settings, "diagnosis", "1"))

    record, _ = keys.create_key(settings, "app", "predict", pins={"diagnosis": 1})
    assert record.pins == {"diagnosis": "1"}
    with pytest.raises(UnsignedVersionError, match="diagnosis v2 has no promotion record"):
        keys.create_key(settings, "app", "predict", pins={"diagnosis": "2"})
    with pytest.raises(ModelNotFoundError, match="no registered version 7"):
        keys.create_key(settings, "app", "predict", pins={"diagnosis": "7"})
    assert len(keys.list_keys(settings)) == 1


def test_an_unreachable_registry_refuses_the_pin_and_writes_nothing(settings, monkeypatch):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "0")  # restored afterwards: connect() sets them process-wide
    s = settings.model_copy(
        update={
            "mlflow": settings.mlflow.model_copy(
                update={"tracking_uri": f"http://127.0.0.1:{free_port()}", "http_max_retries": 0}
            )
        }
    )
    with pytest.raises(RegistryUnavailableError, match="cannot check the pins diagnosis=3"):
        keys.create_key(s, "app", "predict", pins={"diagnosis": "3"})
    assert keys.list_keys(s) == []


def test_quota_and_budget_are_checked_stored_and_audited(settings):
    record, _ = keys.create_key(settings, "app", "predict", quota="100/day", budget="5/month")
    stored = keys.get_key(settings, record.id)
    assert (stored.quota, stored.budget, stored.limited) == ("100/day", "5/month", True)
    detail = json.loads(_events(settings, "key.created")[0]["detail"])
    assert (detail["quota"], detail["budget"]) == ("100/day", "5/month")
    for kwargs, needle in [
        ({"quota": "100/week"}, "quota '100/week' is not like '10000/day'"),
        ({"quota": "1.5/day"}, "whole number"),
        ({"budget": "0/month"}, "must be positive"),
        ({"budget": "lots"}, "budget 'lots' is not like '50/month'"),
    ]:
        with pytest.raises(ConfigurationError, match=needle):
            keys.create_key(settings, "bad", "predict", **kwargs)
    assert len(keys.list_keys(settings)) == 1


# --- rotation -------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_rotation_keeps_the_previous_secret_only_for_its_grace_period(settings):
    record, old = keys.create_key(settings, "app", "predict")
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    rotation = keys.rotate_key(settings, record.id, "30m", now=t0)
    assert rotation.previous_valid_until == "2026-05-01T12:30:00.000000+00:00"
    assert rotation.plaintext.startswith(f"aip_{record.id}_") and rotation.plaintext != old

    clock = Clock(t0 + timedelta(minutes=29))
    store = keys.KeyStore(settings, ttl_s=60, clock=clock)
    new_key = store.authenticate(f"Bearer {rotation.plaintext}")
    assert new_key.id == record.id and not new_key.previous_secret
    during = store.authenticate(f"Bearer {old}")
    assert during.id == record.id and during.previous_secret
    assert during.prev_valid_until == rotation.previous_valid_until

    clock.now = t0 + timedelta(minutes=30)  # from the cache: the deadline still holds
    with pytest.raises(RetiredSecretError, match="stopped working at 2026-05-01T12:30") as err:
        store.authenticate(f"Bearer {old}")
    assert err.value.key_id == record.id
    assert isinstance(err.value, KeyRejectedError)
    assert store.authenticate(f"Bearer {rotation.plaintext}").id == record.id

    (rotated,) = _events(settings, "key.rotated")
    assert rotated["key_id"] == record.id
    assert json.loads(rotated["detail"]) == {
        "name": "app",
        "grace": "30m",
        "previous_secret_valid_until": "2026-05-01T12:30:00.000000+00:00",
    }
    assert audit.verify(settings).ok


def test_a_second_rotation_ends_the_first_secret_at_once(settings):
    record, first = keys.create_key(settings, "app", "predict")
    second = keys.rotate_key(settings, record.id, "2d").plaintext
    third = keys.rotate_key(settings, record.id, "1h").plaintext
    store = keys.KeyStore(settings, ttl_s=0)
    assert store.authenticate(f"Bearer {third}").id == record.id
    assert store.authenticate(f"Bearer {second}").previous_secret
    with pytest.raises(KeyRejectedError, match="unknown API key"):
        store.authenticate(f"Bearer {first}")


def test_a_rotation_takes_effect_within_the_cache_ttl(settings):
    record, old = keys.create_key(settings, "app", "predict")
    cached = keys.KeyStore(settings, ttl_s=60)
    assert cached.authenticate(f"Bearer {old}").id == record.id
    new = keys.rotate_key(settings, record.id, "0s").plaintext
    # Within ttl_s the cached row still answers: the old secret as current, the new one unknown.
    assert not cached.authenticate(f"Bearer {old}").previous_secret
    with pytest.raises(KeyRejectedError, match="unknown API key"):
        cached.authenticate(f"Bearer {new}")
    fresh = keys.KeyStore(settings, ttl_s=0)  # past ttl_s: the database's word
    assert fresh.authenticate(f"Bearer {new}").id == record.id
    with pytest.raises(RetiredSecretError):
        fresh.authenticate(f"Bearer {old}")


def test_rotation_refuses_unknown_revoked_and_expired_keys_and_bad_graces(settings):
    record, _ = keys.create_key(settings, "app", "predict")
    for grace in ["1w", "", "soon", "-1h"]:
        with pytest.raises(ConfigurationError, match="is not like '1h', '30m', '2d'"):
            keys.rotate_key(settings, record.id, grace)
    assert keys.parse_grace("2d") == timedelta(days=2)
    with pytest.raises(ConfigurationError, match="no key with id 'feedfeedfeed'"):
        keys.rotate_key(settings, "feedfeedfeed")
    _, old = keys.create_key(settings, "old", "predict", expires="2020-01-01")
    with pytest.raises(ConfigurationError, match="expired at 2020-01-01"):
        keys.rotate_key(settings, old.split("_")[1])
    keys.revoke_key(settings, record.id)
    with pytest.raises(ConfigurationError, match="was revoked"):
        keys.rotate_key(settings, record.id)
    assert _events(settings, "key.rotated") == []


# --- publishable keys (browser apps) ----------------------------------------------


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://shop.example", "https://shop.example"),
        ("HTTPS://Shop.Example:443/", "https://shop.example"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://127.0.0.1:80", "http://127.0.0.1"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_origins_are_normalized_as_a_browser_sends_them(given, origin):
    assert keys.normalize_origin(given) == origin
    assert keys.parse_origins(f" {given} , {origin}") == (origin,)


@pytest.mark.parametrize(
    "bad",
    [
        "*",
        "https://*.shop.example",
        "shop.example",
        "https://shop.example/app",
        "https://shop.example?x=1",
        "https://user@shop.example",
        "ftp://shop.example",
        "https://shop.example:99999",
        "null",
    ],
)
def test_an_origin_with_a_path_a_wildcard_or_another_scheme_is_refused(bad):
    assert keys.normalize_origin(bad) is None
    with pytest.raises(ConfigurationError, match="no path, no wildcard"):
        keys.parse_origins(["https://ok.example", bad])


def test_a_publishable_key_is_recognisable_stored_audited_and_listed(settings):
    record, plaintext = keys.create_key(
        settings,
        "shop-web",
        "predict",
        rate="5/s",
        quota="1000/day",
        publishable=True,
        origins="https://shop.example, http://localhost:3000/",
    )
    assert plaintext.startswith(f"aip_pub_{record.id}_")
    stored = keys.get_key(settings, record.id)
    assert (stored.kind, stored.publishable) == ("publishable", True)
    assert stored.origins == ("https://shop.example", "http://localhost:3000")
    assert (stored.rate, stored.quota) == ("5/s", "1000/day")
    assert keys.KeyStore(settings, ttl_s=0).authenticate(f"Bearer {plaintext}").id == record.id
    detail = json.loads(_events(settings, "key.created")[0]["detail"])
    assert detail["kind"] == "publishable" and tuple(detail["origins"]) == stored.origins
    secret, _ = keys.create_key(settings, "server", "predict")
    assert (secret.kind, secret.origins) == ("secret", ())
    assert keys.publishable_origins(settings) == {"https://shop.example", "http://localhost:3000"}
    keys.revoke_key(settings, record.id)
    assert keys.publishable_origins(settings) == frozenset()


def test_rotating_a_publishable_key_keeps_it_publishable(settings):
    record, _ = keys.create_key(
        settings, "shop-web", "predict", publishable=True, origins="https://shop.example"
    )
    assert keys.rotate_key(settings, record.id, "0s").plaintext.startswith("aip_pub_")


@pytest.mark.parametrize(
    ("scopes", "origins", "needle"),
    [
        ("predict,feedback", "https://shop.example", "only hold predict scopes .* not feedback"),
        ("admin", "https://shop.example", "not admin"),
        ("feedback:diagnosis", "https://shop.example", "not feedback:diagnosis"),
        ("predict", None, "needs --origins"),
        ("predict", "", "needs --origins"),
        ("predict", "https://shop.example/checkout", "no path, no wildcard"),
    ],
)
def test_a_publishable_key_beyond_predict_or_without_origins_is_refused(
    settings, scopes, origins, needle
):
    with pytest.raises(ConfigurationError, match=needle):
        keys.create_key(settings, "web", scopes, publishable=True, origins=origins)
    assert keys.list_keys(settings) == []


def test_origins_on_a_secret_key_are_refused(settings):
    with pytest.raises(ConfigurationError, match="add --publishable"):
        keys.create_key(settings, "web", "predict", origins="https://shop.example")


def test_a_publishable_key_works_only_from_its_origins(settings):
    record, _ = keys.create_key(
        settings, "web", "predict:diagnosis", publishable=True, origins="https://shop.example"
    )
    record.check_origin("https://shop.example")
    record.check_origin("https://SHOP.example:443")
    for origin, needle in [
        (None, "no Origin header"),
        ("", "no Origin header"),
        ("https://evil.example", "not from 'https://evil.example'"),
        ("null", "works only from https://shop.example"),
    ]:
        with pytest.raises(KeyRejectedError, match=needle):
            record.check_origin(origin)
    secret, _ = keys.create_key(settings, "server", "predict")
    secret.check_origin(None)  # a server's key is not tied to an origin
    secret.check_origin("https://anything.example")
