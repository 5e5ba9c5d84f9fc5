"""An app's static files at "/": served next to the API, which keeps every one of its answers."""

from __future__ import annotations

import pytest

from aipaas import audit
from aipaas.exceptions import ConfigurationError
from serving.app import create_app
from tests.support.serving import ROW, bearer

INDEX = "<!doctype html><title>shop</title><script src='app.js'></script>"


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    (site / "img").mkdir(parents=True)
    (site / "index.html").write_text(INDEX)
    (site / "app.js").write_text("console.log('hi')")
    (site / "predict").write_text("a file named like a route never shadows it")
    (site / "img" / "index.html").write_text("images")
    return site


@pytest.fixture
def static_settings(settings, site):
    return settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"static_dir": site})}
    )


def _audited(settings):
    return [(r["route"], r["status"]) for r in audit.tail(settings, 1000) if r["kind"] == "request"]


def test_files_are_served_at_the_root_and_the_api_still_answers(
    make_client, static_settings, predict_key
):
    c = make_client(static_settings)
    r = c.get("/")
    assert r.status_code == 200 and r.text == INDEX
    assert r.headers["content-type"].startswith("text/html")
    assert c.get("/index.html").text == INDEX
    r = c.get("/app.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert c.get("/img/").text == "images"
    assert c.head("/app.js").status_code == 200

    r = c.post("/predict", json=ROW, headers=bearer(predict_key))
    assert r.status_code == 200 and r.json()["output"] == "malignant"
    assert c.get("/predict").status_code == 405  # the route's answer, not the file
    assert c.get("/readyz").status_code == 200
    assert c.get("/model", headers=bearer(predict_key)).json()["name"] == "diagnosis"
    r = c.get("/nothing-here.js")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert c.post("/nothing-here", json={}).status_code == 404
    assert c.get("/../secrets.txt").status_code == 404

    # files served are not audited; API calls and misses are
    assert _audited(static_settings) == [
        ("/predict", 200),
        ("/predict", 405),
        ("/model", 200),
        ("/nothing-here.js", 404),
        ("/nothing-here", 404),
        ("/secrets.txt", 404),
    ]


def test_without_a_static_dir_the_root_is_not_found(client):
    assert client.get("/").status_code == 404


def test_a_missing_static_dir_stops_the_app_with_a_message(settings, source, tmp_path):
    s = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"static_dir": tmp_path / "nope"})}
    )
    with pytest.raises(ConfigurationError, match="serving.static_dir .* is not a folder"):
        create_app(s, model_source=source, follow=False)
