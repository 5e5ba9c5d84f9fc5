"""/docs and /redoc in a real browser on a machine without internet: the pages render.

A real uvicorn on loopback serves the app (fake model source); headless
Chromium loads the pages with every request to a host other than 127.0.0.1
aborted, as on an offline machine. Swagger UI must list the operations,
authorize with a key and send it from "Try it out"; ReDoc must render.
The screenshot of /docs goes to the test's directory and to
``docs/images/api-docs.png`` for the README when AIPAAS_UPDATE_SCREENSHOTS is set.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from playwright.sync_api import Page, Route, expect, sync_playwright

from aipaas.inference import keys
from serving.app import create_app
from tests.support.browser import ARGS, CHROMIUM
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "api-docs.png"
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # built into redoc.standalone.js


@pytest.fixture
def base_url(settings, source) -> Iterator[str]:
    app = create_app(settings, model_source=source, follow=False)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture
def page() -> Iterator[tuple[Page, list[str]]]:
    """A Chromium page that can reach only 127.0.0.1; the URLs it tried elsewhere."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    outside: list[str] = []

    def loopback_only(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", loopback_only)
            yield context.new_page(), outside
        finally:
            browser.close()


def test_swagger_ui_renders_offline_and_try_it_out_sends_the_key(
    base_url, page, settings, tmp_path
):
    tab, outside = page
    _, token = keys.create_key(settings, "docs-reader", "predict")
    tab.goto(f"{base_url}/docs")
    predict = tab.locator("#operations-predict-predict_predict_post")
    expect(predict).to_be_visible(timeout=20_000)
    # one block per operation the API documents (every route, none hidden)
    spec = httpx.get(f"{base_url}/openapi.json").json()
    operations = sum(len(ops) for ops in spec["paths"].values())
    assert operations >= 16, spec["paths"].keys()
    expect(tab.locator(".opblock")).to_have_count(operations)
    expect(tab.locator("button.authorize")).to_be_visible()
    tab.screenshot(path=str(tmp_path / "api-docs.png"), full_page=True)
    if os.environ.get("AIPAAS_UPDATE_SCREENSHOTS"):  # refresh the README's picture
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "api-docs.png", SCREENSHOT)

    tab.locator("button.authorize").first.click()
    tab.locator(".modal-ux input").first.fill(token)
    tab.locator(".modal-ux button.authorize").click()
    tab.locator(".modal-ux button.btn-done").click()
    model = tab.locator("#operations-predict-model_model_get")
    model.locator(".opblock-summary").click()
    model.locator("button.try-out__btn").click()
    model.locator("button.execute").click()
    status = model.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_have_text("200", timeout=20_000)
    expect(model.locator(".live-responses-table .microlight").first).to_contain_text('"diagnosis"')
    assert outside == []  # nothing was even asked of another host


def test_redoc_renders_offline(base_url, page):
    tab, outside = page
    tab.goto(f"{base_url}/redoc")
    expect(tab.locator(".api-content")).to_be_visible(timeout=20_000)
    expect(tab.locator(".api-info h1")).to_contain_text("aipaas serving")
    predict = tab.locator("[data-section-id='tag/predict/operation/predict_predict_post']")
    expect(predict).to_contain_text("/predict")
    for status in ("401", "403", "404", "413", "422", "429", "503"):  # the error table
        expect(predict).to_contain_text(status)
    # Only ReDoc's "API docs by Redocly" footer logo is asked of its CDN; it hides when that fails.
    assert set(outside) <= {REDOCLY_LOGO}
