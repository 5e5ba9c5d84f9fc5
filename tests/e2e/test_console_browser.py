"""The web console in a real browser: log in, keys, try it, usage chart, drift report, audit.

A real uvicorn on loopback serves the app with the real registry (a small
LightGBM champion promoted through gates in a temporary MLflow store) so
every page has something to show; headless Chromium can reach only
127.0.0.1. Each page is photographed into the test's directory, and into
``docs/images/console-*.png`` for the README when AIPAAS_UPDATE_SCREENSHOTS is set.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from playwright.sync_api import Page, Route, expect, sync_playwright

from aipaas.audit import AuditRecord, AuditWriter
from aipaas.inference import keys
from aipaas.inference.keys import ApiKey
from aipaas.settings import Settings
from serving.app import create_app
from tests.support.browser import ARGS, CHROMIUM
from tests.support.console import register_champion, write_drift_check
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "images"
ROW = {"mean_radius": 1.2, "mean_texture": -0.3, "mean_area": 0.8}


@dataclass(frozen=True)
class Platform:
    base: str
    version: str  # the champion
    admin: str  # an admin key
    app_key: str  # a predict key with a week of usage


def seed_usage(settings: Settings, version: str, keys_: dict[str, ApiKey]) -> None:
    """A week of requests on the trail, as serving would have recorded them (before it starts)."""
    writer = AuditWriter(settings)
    now = datetime.now(UTC)
    try:
        for days in range(7, 0, -1):
            for name, key in keys_.items():
                for i in range((days * 7 + len(name) * 3) % 11 + 2):
                    ts = (now - timedelta(days=days, minutes=i)).isoformat()
                    compute = 0.002 * (1 + i % 3) * (4 if name == "batch-scorer" else 1)
                    record = AuditRecord(
                        ts=ts,
                        key_id=key.id,
                        owner=key.name,
                        route="/predict",
                        model="diagnosis",
                        version=version,
                        status=200 if i % 9 else 429,
                        latency_ms=3.0,
                        compute_s=compute,
                        cost=compute * settings.serving.cost_per_compute_second,
                    )
                    writer.submit(record)
    finally:
        writer.close()


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    """The serving app on a free loopback port, its champion a real registered version."""
    version = register_champion(settings)
    admin = keys.create_key(settings, "ops", "admin")[1]
    clinic, app_key = keys.create_key(settings, "clinic-app", "predict", rate="100/s")
    batch = keys.create_key(settings, "batch-scorer", "predict")[0]
    seed_usage(settings, version, {"clinic-app": clinic, "batch-scorer": batch})
    server_app = create_app(settings, follow=False, key_cache_s=0.0)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(server_app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield Platform(f"http://127.0.0.1:{port}", version, admin, app_key)
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture
def page() -> Iterator[tuple[Page, list[str]]]:
    """A Chromium page that can reach only 127.0.0.1; the URLs it tried elsewhere."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    outside: list[str] = []

    def loopback_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            context.route("**/*", loopback_only)
            yield context.new_page(), outside
        finally:
            browser.close()


def snap(tab: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"console-{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    if os.environ.get("AIPAAS_UPDATE_SCREENSHOTS"):  # refresh the README's pictures
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, IMAGES / path.name)


def test_console_login_keys_try_it_usage_drift_audit_logout(platform, page, settings, tmp_path):
    base, version, admin, app_key = (
        platform.base,
        platform.version,
        platform.admin,
        platform.app_key,
    )
    tab, outside = page
    for _ in range(5):  # some traffic for the usage chart
        r = httpx.post(f"{base}/predict", json=ROW, headers={"Authorization": f"Bearer {app_key}"})
        assert r.status_code == 200, r.text
    report = write_drift_check(settings, version=version)

    tab.goto(f"{base}/console/models")  # no session: the login page
    expect(tab.locator("h1")).to_have_text("Log in")
    tab.fill("#key", "aip_000000000000_wrongwrongwrongwrongwrong")
    tab.click("text=Log in >> nth=-1")
    expect(tab.locator(".error")).to_contain_text("Not accepted")
    snap(tab, tmp_path, "login")
    tab.fill("#key", admin)
    tab.locator("form button[type=submit]").click()
    expect(tab.locator("h1")).to_have_text("Models")
    expect(tab.locator("tr.champion")).to_contain_text(f"v{version}")
    expect(tab.locator("tr.champion")).to_contain_text("min roc_auc")
    snap(tab, tmp_path, "models")
    tab.click("tr.champion a.card")
    expect(tab.locator("article.model-card h1")).to_have_text(f"Model card: diagnosis v{version}")
    expect(tab.locator("article.model-card")).to_contain_text("min roc_auc")
    snap(tab, tmp_path, "card")

    _create_and_revoke_a_key(tab, base, tmp_path)
    _try_it(tab, base, app_key, version, tmp_path)

    tab.goto(f"{base}/console/usage")
    chart = tab.locator("img.chart")
    expect(chart).to_be_visible()
    assert chart.evaluate("img => img.complete && img.naturalWidth") > 0  # the PNG rendered
    expect(tab.locator("main table")).to_contain_text("clinic-app")
    snap(tab, tmp_path, "usage")

    tab.goto(f"{base}/console/drift")
    expect(tab.locator("tr.drifting")).to_contain_text("mean_radius")
    snap(tab, tmp_path, "drift")
    tab.click(f"a.report:has-text('{report}')")
    expect(tab.locator("h1")).to_contain_text("Drift")
    assert tab.url == f"{base}/console/drift/diagnosis/{report}"  # over HTTP, not file://
    expect(tab.locator("h2").first).to_have_text("Decision: retrain")
    plot = tab.locator("img[alt='mean_radius']")
    assert plot.evaluate("img => img.complete && img.naturalWidth") > 0  # the plot rendered
    snap(tab, tmp_path, "drift-report")

    tab.goto(f"{base}/console/audit")
    expect(tab.locator(".verify-ok")).to_contain_text("Chain verified")
    expect(tab.locator("main table")).to_contain_text("key.revoked")
    snap(tab, tmp_path, "audit")

    tab.click("header button:has-text('Log out')")
    expect(tab.locator(".notice")).to_have_text("You are logged out.")
    tab.goto(f"{base}/console/keys")
    expect(tab.locator("h1")).to_have_text("Log in")
    assert outside == []  # the console asked nothing of another host


def _create_and_revoke_a_key(tab: Page, base: str, tmp_path: Path) -> None:
    tab.goto(f"{base}/console/keys")
    tab.fill("input[name=name]", "shop-web")
    tab.fill("input[name=rate]", "5/s")
    tab.click("form.inline button[type=submit]")
    secret = tab.locator("#new-secret").input_value()
    assert secret.startswith("aip_")
    key_id = secret.split("_")[1]
    model = httpx.get(f"{base}/model", headers={"Authorization": f"Bearer {secret}"})
    assert model.status_code == 200  # the new key works at once
    snap(tab, tmp_path, "keys")
    tab.locator(f"#key-{key_id} button:has-text('Revoke')").click()
    expect(tab.locator(".notice")).to_contain_text(f"Key {key_id} revoked")
    expect(tab.locator(f"#key-{key_id} td.state")).to_contain_text("revoked")
    model = httpx.get(f"{base}/model", headers={"Authorization": f"Bearer {secret}"})
    assert model.status_code == 401


def _try_it(tab: Page, base: str, app_key: str, version: str, tmp_path: Path) -> None:
    tab.goto(f"{base}/console/try")
    tab.fill("#try-form input[name=key]", app_key)
    tab.fill(
        "#try-form textarea[name=body]",
        '{"mean_radius": 1.2, "mean_texture": -0.3, "mean_area": 0.8}',
    )
    tab.click("#try-form button[type=submit]")
    expect(tab.locator("#try-status")).to_have_text("200 OK")
    expect(tab.locator("#try-version")).to_have_text(version)
    expect(tab.locator("#try-output")).to_have_text('"malignant"')
    snap(tab, tmp_path, "try")
