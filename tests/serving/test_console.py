"""The web console over TestClient: sessions, CSRF, keys, drift reports, the pages' contents.

The app is ``create_app`` with the fake model source; keys, the audit trail,
usage and drift history are the real ones on the test's home. Assertions are
on what a person sees (the page text, a redirect to the login) and on what
the trail records.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from fastapi.testclient import TestClient
from itsdangerous import URLSafeSerializer

from aipaas import audit
from aipaas.inference import keys
from aipaas.monitoring import drift_report
from aipaas.settings import Settings
from serving.console.auth import COOKIE, SESSION_S, LoginThrottle, SessionCodec
from tests.support.console import COMMIT, register_champion, write_drift_check
from tests.support.serving import ROW, bearer

PAGES = ("models", "drift", "usage", "usage.png", "keys", "audit", "try")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SECRET = re.compile(r'id="new-secret" readonly value="(aip_[^"]+)"')


def login(client: TestClient, key: str) -> str:
    """Log in; returns the session's CSRF token, read from a page as a browser would."""
    r = client.post("/console/login", data={"key": key}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/models", r.text
    page = client.get("/console/keys")  # the models page would ask the registry: slower
    assert page.status_code == 200, page.text
    return CSRF.search(page.text).group(1)  # type: ignore[union-attr]


def events(settings: Settings, name: str) -> list[dict]:
    return [r for r in audit.tail(settings, 200) if r["event"] == name]


@pytest.fixture
def console(make_client) -> TestClient:
    return make_client(key_cache_s=0.0)


def test_every_page_needs_a_session(console):
    for page in PAGES:
        r = console.get(f"/console/{page}", follow_redirects=False)
        assert r.status_code == 303, page
        assert r.headers["location"] == "/console/login"
    r = console.post(
        "/console/keys", data={"name": "x", "scope_admin": "1"}, follow_redirects=False
    )
    assert r.status_code == 303
    assert console.get("/console/drift/diagnosis/x.html", follow_redirects=False).status_code == 303
    assert console.get("/console").url.path == "/console/login"


def test_login_exchanges_an_admin_key_for_a_strict_cookie_and_is_audited(
    console, admin_key, settings
):
    r = console.post("/console/login", data={"key": admin_key}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/models"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/console", f"Max-Age={SESSION_S}"):
        assert attribute in cookie
    assert "Secure" not in cookie  # no TLS in this app
    secret = admin_key.split("_", 2)[2]  # aip_<id>_<secret>; the secret may hold "_"
    assert secret not in cookie  # the key's secret is not in the cookie
    key_id = admin_key.split("_")[1]
    (logged,) = events(settings, "console.login")
    assert logged["key_id"] == key_id and logged["owner"] == "ops"
    page = console.get("/console/keys")
    assert page.status_code == 200 and "ops · key " + key_id in page.text
    assert admin_key not in page.text


def test_the_cookie_is_secure_when_tls_is_on(make_client, settings, admin_key, tmp_path):
    tls = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"tls_certfile": tmp_path / "c"})}
    )
    r = make_client(tls).post("/console/login", data={"key": admin_key}, follow_redirects=False)
    assert "Secure" in r.headers["set-cookie"]


def test_a_bad_key_gets_the_login_page_with_a_reason(console, predict_key, settings):
    r = console.post("/console/login", data={"key": "not-a-key"})
    assert r.status_code == 401
    assert "Not accepted" in r.text and "Traceback" not in r.text
    assert 'name="key"' in r.text and COOKIE not in r.headers.get("set-cookie", "")
    r = console.post("/console/login", data={"key": predict_key})
    assert r.status_code == 403 and "has no admin scope" in r.text
    assert console.post("/console/login", content=b"\xff\xfe").status_code == 401
    assert events(settings, "console.login") == []
    assert console.get("/console/models", follow_redirects=False).status_code == 303


def test_logout_ends_the_session_even_if_the_cookie_is_replayed(console, admin_key, settings):
    csrf = login(console, admin_key)
    stolen = console.cookies.get(COOKIE)
    r = console.post("/console/logout", data={"csrf": csrf})
    assert r.url.path == "/console/login" and "You are logged out" in r.text
    assert console.get("/console/models", follow_redirects=False).status_code == 303
    console.cookies.set(COOKIE, stolen, path="/console")
    assert console.get("/console/models", follow_redirects=False).status_code == 303
    (out,) = events(settings, "console.logout")
    assert out["key_id"] == admin_key.split("_")[1]


def test_logout_on_one_serving_process_ends_the_session_on_every_other(
    make_client, admin_key, settings
):
    """Two apps on one platform database stand for two serving processes (replicas)."""
    here, there = make_client(key_cache_s=0.0), make_client(key_cache_s=0.0)
    csrf = login(here, admin_key)
    cookie = here.cookies.get(COOKIE)
    there.cookies.set(COOKIE, cookie, path="/console")
    assert there.get("/console/audit", follow_redirects=False).status_code == 200
    here.post("/console/logout", data={"csrf": csrf})
    assert there.get("/console/audit", follow_redirects=False).status_code == 303
    # Another session of the same key, still logged in, is not affected.
    login(there, admin_key)
    assert there.get("/console/audit", follow_redirects=False).status_code == 200


def test_failed_logins_are_throttled_per_client_then_allowed_again(console, admin_key):
    for _ in range(5):
        assert console.post("/console/login", data={"key": "guess"}).status_code == 401
    r = console.post("/console/login", data={"key": admin_key})  # even the right key waits
    assert r.status_code == 429 and "Too many failed logins" in r.text
    assert 0 < int(r.headers["retry-after"]) <= 300
    assert console.get("/console/models", follow_redirects=False).status_code == 303


def test_the_login_throttle_forgets_failures_after_its_window():
    now = [0.0]
    throttle = LoginThrottle(failures=2, window_s=60, clock=lambda: now[0])
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 0
    now[0] = 10.0
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 50.0  # the first failure leaves the window at 60
    assert throttle.retry_after("10.0.0.2") == 0  # per client
    now[0] = 60.0
    assert throttle.retry_after("10.0.0.1") == 0


def test_an_expired_or_forged_session_goes_back_to_login(console, admin_key, settings):
    key_id = admin_key.split("_")[1]
    past = SessionCodec(settings, clock=lambda: time.time() - SESSION_S - 1)
    _, expired = past.issue(key_id, "ops")
    console.cookies.set(COOKIE, expired, path="/console")
    assert console.get("/console/models", follow_redirects=False).status_code == 303
    forged = URLSafeSerializer(b"not the audit key", salt="aipaas.console.session").dumps(
        {"s": "x", "k": key_id, "o": "ops", "c": "x", "e": time.time() + 3600}
    )
    console.cookies.set(COOKIE, forged, path="/console")
    assert console.get("/console/models", follow_redirects=False).status_code == 303
    _, fresh = SessionCodec(settings).issue(key_id, "ops")
    console.cookies.set(COOKIE, fresh, path="/console")
    assert console.get("/console/audit", follow_redirects=False).status_code == 200


def test_revoking_the_admin_key_ends_its_sessions(console, admin_key, settings):
    login(console, admin_key)
    keys.revoke_key(settings, admin_key.split("_")[1])
    assert console.get("/console/models", follow_redirects=False).status_code == 303
    page = console.get("/console/models")  # to the login form, not round in circles
    assert page.url.path == "/console/login" and 'name="key"' in page.text


def test_forms_without_the_sessions_csrf_token_change_nothing(console, admin_key, settings):
    login(console, admin_key)
    target = keys.create_key(settings, "victim", "predict")[0]
    before = len(keys.list_keys(settings))
    for data in ({}, {"csrf": "guessed"}):
        r = console.post("/console/keys", data={"name": "evil", "scope_admin": "1", **data})
        assert r.status_code == 403 and "CSRF" in r.text
        r = console.post(f"/console/keys/{target.id}/revoke", data=data)
        assert r.status_code == 403
        assert console.post("/console/logout", data=data).status_code == 403
    assert len(keys.list_keys(settings)) == before
    assert keys.get_key(settings, target.id).active  # type: ignore[union-attr]
    assert console.get("/console/keys", follow_redirects=False).status_code == 200


def test_create_a_key_shows_its_secret_once_and_revoke_refuses_it(console, admin_key, settings):
    csrf = login(console, admin_key)
    r = console.post(
        "/console/keys",
        data={"csrf": csrf, "name": "shop", "scope_predict": "1", "rate": "5/s"},
    )
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    secret = SECRET.search(r.text).group(1)  # type: ignore[union-attr]
    key_id = secret.split("_")[1]
    assert "shown only once" in r.text
    assert console.get("/model", headers=bearer(secret)).status_code == 200
    page = console.get("/console/keys").text
    assert f"key-{key_id}" in page and secret not in page  # listed, the secret not again
    (created,) = [e for e in events(settings, "key.created") if e["key_id"] == key_id]
    assert json.loads(created["detail"])["scopes"] == ["predict"]
    (post,) = [r for r in audit.tail(settings, 50) if r["route"] == "/console/keys" and r["detail"]]
    assert post["key_id"] == admin_key.split("_")[1] and post["status"] == 200  # who did it
    assert json.loads(post["detail"]) == {"console": "key.created", "key": key_id}

    r = console.post(f"/console/keys/{key_id}/revoke", data={"csrf": csrf})
    assert r.url.path == "/console/keys" and f"Key <code>{key_id}</code> revoked" in r.text
    assert console.get("/model", headers=bearer(secret)).status_code == 401
    assert [e["key_id"] for e in events(settings, "key.revoked")] == [key_id]


def test_key_form_mistakes_are_shown_on_the_page(console, admin_key):
    csrf = login(console, admin_key)
    r = console.post(
        "/console/keys", data={"csrf": csrf, "name": "x", "scope_predict": "1", "rate": "fast"}
    )
    assert r.status_code == 400 and "fast" in r.text and 'class="error"' in r.text
    r = console.post("/console/keys", data={"csrf": csrf, "name": "x"})
    assert r.status_code == 400 and "at least one scope" in r.text
    r = console.post("/console/keys/000000000000/revoke", data={"csrf": csrf})
    assert r.status_code == 404 and "no key with id" in r.text


def test_drift_history_lists_reports_served_from_the_drift_folder(console, admin_key, settings):
    name = write_drift_check(settings)
    login(console, admin_key)
    page = console.get("/console/drift")
    assert "version 1" in page.text and "retrain" in page.text and "mean_radius" in page.text
    assert f'href="/console/drift/diagnosis/{name}"' in page.text
    report = console.get(f"/console/drift/diagnosis/{name}")
    assert report.status_code == 200 and "Decision: retrain" in report.text
    assert "alt='mean_radius'" in report.text and "data:image/png;base64," in report.text
    assert report.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in report.headers["content-security-policy"]


def test_drift_reports_refuse_anything_outside_the_drift_folder(console, admin_key, settings):
    write_drift_check(settings)
    folder = drift_report.drift_dir(settings, "diagnosis")
    (settings.home / "secret.html").write_text("<p>not a report</p>")
    (folder / "link.html").symlink_to(settings.home / "secret.html")
    login(console, admin_key)
    for path in (
        "diagnosis/..%2F..%2F..%2Fsecret.html",
        "diagnosis/%2E%2E%2Fsecret.html",
        "..%2F..%2F..%2F/secret.html",
        "..%2F..%2F..%2Fhome/secret.html",
        "diagnosis/history.jsonl",
        "diagnosis/link.html",
        "diagnosis/missing.html",
        "%2E%2E/secret.html",
    ):
        r = console.get(f"/console/drift/{path}")
        assert r.status_code == 404, path
        assert "not a report" not in r.text and "Traceback" not in r.text


def test_usage_page_and_chart_per_day_and_hour(console, admin_key, predict_key):
    assert console.post("/predict", json=ROW, headers=bearer(predict_key)).status_code == 200
    login(console, admin_key)
    for bucket in ("day", "hour"):
        page = console.get(f"/console/usage?bucket={bucket}")
        assert page.status_code == 200
        assert predict_key.split("_")[1] in page.text and "app-one" in page.text
        assert f'src="/console/usage.png?bucket={bucket}"' in page.text
        chart = console.get(f"/console/usage.png?bucket={bucket}")
        assert chart.headers["content-type"] == "image/png"
        assert chart.content.startswith(b"\x89PNG") and len(chart.content) > 10_000


def test_audit_page_shows_recent_records_and_the_verified_chain(console, admin_key):
    login(console, admin_key)
    page = console.get("/console/audit")
    assert "Chain verified" in page.text and "console.login" in page.text
    assert "/console/models" in page.text  # the console's own requests are on the trail


def test_audit_page_says_when_the_chain_is_broken(console, admin_key, settings):
    login(console, admin_key)
    from aipaas import db

    with db.engine(settings).begin() as conn:
        conn.execute(db.audit_log.update().where(db.audit_log.c.seq == 1).values(owner="mallory"))
    page = console.get("/console/audit")
    assert "The chain is broken" in page.text and "seq 1: contents do not match" in page.text


@pytest.mark.slow  # a real MLflow store: ~10 s here
def test_models_page_shows_versions_champion_gates_lineage_and_history(
    console, admin_key, settings
):
    version = register_champion(settings)
    login(console, admin_key)
    page = console.get("/console/models").text
    assert "serving v1" in page  # the fake source serves v1
    champion = re.search(r'<tr class="champion">(.*?)</tr>', page, re.S).group(1)  # type: ignore[union-attr]
    assert f"v{version}" in champion and "promoted" in champion and "ana (cli)" in champion
    assert "breast_cancer" in champion and COMMIT[:12] in champion
    assert "min roc_auc: 0.981 (&gt;= 0.95)" in champion
    assert "History (from the audit chain)" in page and "promote" in page
    assert 'href="http://127.0.0.1:4200/deployments"' in page  # the Prefect UI


def test_models_page_says_when_the_registry_has_nothing(console, admin_key):
    login(console, admin_key)
    page = console.get("/console/models")
    assert page.status_code == 200
    assert "serving v1" in page.text and "has no registered version" in page.text


def test_try_it_posts_to_predict_without_the_admin_key_in_the_page(console, admin_key):
    login(console, admin_key)
    page = console.get("/console/try")
    assert 'data-url="/predict"' in page.text and "mean_radius" in page.text
    assert "/console/static/try.js" in page.text
    assert admin_key not in page.text and admin_key.split("_", 2)[2] not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert console.get("/console/static/try.js").status_code == 200
    assert console.get("/console/static/console.css").status_code == 200
    assert console.get("/console/static/auth.py").status_code == 404


def test_the_console_is_not_in_the_api_schema(console):
    paths = console.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/console")]


def test_the_console_can_be_turned_off(make_client, settings, admin_key):
    off = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"console_enabled": False})}
    )
    client = make_client(off)
    assert client.get("/console/login").status_code == 404
    assert client.post("/console/login", data={"key": admin_key}).status_code == 404


@pytest.mark.slow  # a real MLflow store: ~10 s here
def test_each_version_links_to_its_model_card_shown_in_the_console(console, admin_key, settings):
    from aipaas.modeldef import load_definition
    from aipaas.monitoring import card

    version = register_champion(settings)
    path = f"/console/models/diagnosis/card?version={version}"
    assert console.get(path, follow_redirects=False).status_code == 303  # behind the login
    login(console, admin_key)
    models = console.get("/console/models").text
    assert f'href="{path}"' in models

    page = console.get(path)
    assert page.status_code == 200, page.text
    assert f"<h1>Model card: diagnosis v{version}</h1>" in page.text
    assert "min roc_auc" in page.text and "ana (cli)" in page.text and "breast_cancer" in page.text
    assert "Rendered now from the platform" in page.text  # nothing stored with the run yet
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script" not in page.text

    card.publish(settings, load_definition("diagnosis", settings.models_dir), version)
    page = console.get("/console/models/diagnosis/card")  # the champion by default
    assert f"<h1>Model card: diagnosis v{version}</h1>" in page.text
    assert "Stored with the version's training run" in page.text

    for missing, reason in (
        ("/console/models/diagnosis/card?version=77", "has no registered version 77"),
        ("/console/models/diagnosis/card?version=..%2F1", "No model card for"),
        ("/console/models/nope/card", "has no registered version"),
    ):
        r = console.get(missing)
        assert r.status_code == 404 and reason in r.text, missing
        assert "Traceback" not in r.text
