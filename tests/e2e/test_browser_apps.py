"""Browser apps in headless Chromium: a page on another origin, and the same-origin snippet.

The API runs in a real uvicorn on loopback with a text model (a fake source
whose one input is ``text``). A shop page is served by a plain HTTP server
on another port, so it is another origin; it calls ``/predict`` with a
publishable key for that origin and shows ``output`` and ``model_version``.
A refusal (an unknown key's 401) is readable by the page, with its reason.
The same page from a third port (an origin the key does not name) gets no
CORS grant, so the browser rejects the ``fetch``. The issue's snippet,
served from ``serving.static_dir``, calls ``fetch("/predict")`` as written
(same origin, no CORS): with auth off exactly as written, with auth on with
a publishable key for the API's own origin added. Screenshots go to the
test's temporary folder.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from aipaas import audit
from aipaas.inference import keys
from aipaas.inference.predictor import FieldSpec, LoadedModel, Prediction, VersionMeta
from aipaas.settings import Settings
from serving.app import create_app
from tests.support.browser import ARGS, CHROMIUM
from tests.support.net import free_port
from tests.support.serving import FakeSource

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MODEL = "reviews"

SHOP_PAGE = """<!doctype html>
<meta charset="utf-8"><title>shop</title>
<input id="text" value="a great little shop"> <button id="ask">Ask</button>
<p>output: <b id="output"></b></p>
<p>model version: <b id="version"></b></p>
<p id="error"></p>
<script>
const API = "{api}";
const KEY = "{key}";  // publishable: fine to ship in a page
document.getElementById("ask").onclick = () =>
  fetch(API + "/predict", {{
    method: "POST",
    headers: {{ "Content-Type": "application/json", "Authorization": "Bearer " + KEY }},
    body: JSON.stringify({{ text: document.getElementById("text").value }})
  }})
    .then(res => res.json().then(data => {{
      if (!res.ok) throw new Error(res.status + " " + data.detail);
      document.getElementById("output").textContent = data.output;
      document.getElementById("version").textContent = data.model_version;
    }}))
    .catch(err => {{ document.getElementById("error").textContent = "failed: " + err.message; }});
</script>
"""

# The snippet as written, around an input box; {auth} is empty when auth is off.
SNIPPET_PAGE = """<!doctype html>
<meta charset="utf-8"><title>same origin</title>
<input id="userInput" value="what a lovely day"> <button id="ask">Ask</button>
<script>
document.getElementById("ask").onclick = () => {{
const userInput = document.getElementById("userInput").value;
fetch("/predict", {{
  method: "POST",
  headers: {{ "Content-Type": "application/json"{auth} }},
  body: JSON.stringify({{ text: userInput }})
}}).then(res => res.json()).then(data => console.log(data.output));
}};
</script>
"""


def _sentiment(rows: list[list[Any]]) -> Prediction:
    """``positive`` for a text with a kind word in it."""
    kind = [any(w in str(r[0]) for w in ("great", "lovely")) for r in rows]
    return Prediction(
        ["positive" if k else "negative" for k in kind],
        [{"negative": 0.1, "positive": 0.9} if k else {"negative": 0.9, "positive": 0.1}
         for k in kind],
    )  # fmt: skip


def _text_source() -> FakeSource:
    source = FakeSource()
    source.champions = {MODEL: "4"}
    source.models[(MODEL, "4")] = LoadedModel(
        name=MODEL,
        version="4",
        fields=(FieldSpec("text", "str"),),
        flavor="fake",
        classes=("negative", "positive"),
        meta=VersionMeta(run_id="run-4", data_version="abc"),
        predict_fn=_sentiment,
    )
    return source


def _settings(settings: Settings, **serving: Any) -> Settings:
    update = {"default_model": MODEL, "models": [MODEL], **serving}
    return settings.model_copy(update={"serving": settings.serving.model_copy(update=update)})


@contextmanager
def _api(settings: Settings, port: int) -> Iterator[str]:
    app = create_app(settings, model_source=_text_source(), follow=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def _files(directory: Path) -> Iterator[str]:
    """A plain static file server (not aipaas) on its own loopback port: another origin."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def browser_page() -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser.new_context(viewport={"width": 900, "height": 500}).new_page()
        finally:
            browser.close()


def _requests(settings: Settings) -> list[tuple[str, int, str | None]]:
    return [
        (r["route"], r["status"], r["key_id"])
        for r in audit.tail(settings, 1000)
        if r["kind"] == "request"
    ]


def test_a_page_on_another_origin_calls_predict_with_a_publishable_key(
    settings, browser_page, tmp_path
):
    site = tmp_path / "shop"
    site.mkdir()
    with _files(site) as shop, _files(site) as elsewhere:
        s = _settings(settings)
        record, token = keys.create_key(
            s, "shop-web", "predict", publishable=True, origins=shop, rate="5/s"
        )
        with _api(s, free_port()) as api:
            (site / "index.html").write_text(SHOP_PAGE.format(api=api, key=token))
            tab = browser_page
            tab.goto(f"{shop}/index.html")
            tab.click("#ask")
            expect(tab.locator("#output")).to_have_text("positive", timeout=15_000)
            expect(tab.locator("#version")).to_have_text("4")
            expect(tab.locator("#error")).to_be_empty()
            tab.screenshot(path=str(tmp_path / "cross-origin-page.png"))

            # a refusal is readable by the page too (CORS headers on the 401)
            unknown = "aip_pub_000000000000_" + "x" * 32
            (site / "unknown.html").write_text(SHOP_PAGE.format(api=api, key=unknown))
            tab.goto(f"{shop}/unknown.html")
            tab.click("#ask")
            expect(tab.locator("#error")).to_have_text(
                "failed: 401 unknown API key", timeout=15_000
            )

            tab.goto(f"{elsewhere}/index.html")  # the same page and key, from another origin
            tab.click("#ask")
            expect(tab.locator("#error")).to_have_text("failed: Failed to fetch", timeout=15_000)
            expect(tab.locator("#output")).to_be_empty()
            tab.screenshot(path=str(tmp_path / "disallowed-origin-page.png"))
    # the preflight from the other origin was refused before auth: only one call was made
    assert _requests(s) == [("/predict", 200, record.id), ("/predict", 401, None)]
    assert (tmp_path / "cross-origin-page.png").stat().st_size > 0


def _ask_and_read_console(tab: Page, url: str) -> str:
    tab.goto(url)
    with tab.expect_console_message(lambda m: m.type == "log", timeout=15_000) as message:
        tab.click("#ask")
    return message.value.text


def test_the_same_origin_snippet_works_as_written_from_static_dir(settings, browser_page, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(SNIPPET_PAGE.format(auth=""))
    (site / "favicon.ico").write_bytes(b"")
    s = _settings(settings, static_dir=site, auth_enabled=False)
    with _api(s, free_port()) as api:
        assert _ask_and_read_console(browser_page, f"{api}/") == "positive"
        browser_page.screenshot(path=str(tmp_path / "same-origin-open.png"))

    # With auth on, the page adds a publishable key for the API's own origin.
    port = free_port()
    _, token = keys.create_key(
        settings, "site", "predict", publishable=True, origins=f"http://127.0.0.1:{port}"
    )
    auth = f', "Authorization": "Bearer {token}"'
    (site / "index.html").write_text(SNIPPET_PAGE.format(auth=auth))
    s = _settings(settings, static_dir=site)
    with _api(s, port) as api:
        assert _ask_and_read_console(browser_page, f"{api}/") == "positive"
    # the files served (page, favicon) are not audited; the two predictions are
    assert [(route, status) for route, status, _ in _requests(s)] == [
        ("/predict", 200),
        ("/predict", 200),
    ]
