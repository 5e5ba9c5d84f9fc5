from __future__ import annotations

import pytest

from aipaas.exceptions import (
    ConfigurationError,
    KeyRejectedError,
    RateLimitedError,
    ScopeDeniedError,
)
from aipaas.inference import keys


def test_key_is_shown_once_and_only_its_hash_is_stored(settings):
    record, plaintext = keys.create_key(settings, "app", "predict,feedback", rate="5/s")
    assert plaintext.startswith(f"aip_{record.id}_")
    db_bytes = (settings.home / "platform.db").read_bytes()
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
