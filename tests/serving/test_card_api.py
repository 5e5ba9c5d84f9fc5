"""``GET /models/{name}/card`` over TestClient, against a real MLflow store and audit chain.

One module-wide platform: ``tiny`` v1 promoted (its card stored by
:func:`aipaas.monitoring.card.publish`, as the promote flow does) and v2
rejected with no stored card, served by the real registry source. Assertions
are on what a client sees: status, media type, the card's text, the error
message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aipaas import audit
from aipaas.exceptions import GateFailedError
from aipaas.inference import keys
from aipaas.modeldef import load_definition
from aipaas.monitoring import card
from aipaas.settings import Settings
from aipaas.training.promote import promote
from serving.app import create_app
from serving.routers.cards import wants_html
from tests.support.net import free_port
from tests.support.registry import MODEL, register_tiny, tiny_settings
from tests.support.serving import FakeSource, bearer

slow = pytest.mark.slow  # a real MLflow store: a few seconds for the module

CHROME_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
)


@dataclass(frozen=True)
class Platform:
    settings: Settings
    client: TestClient
    promoted: str
    rejected: str
    key: str  # scope predict


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("cards")
    home = root / "home"
    home.mkdir()
    base = Settings(
        _env_file=None, home=home, mlflow={"tracking_uri": f"sqlite:///{home / 'mlflow.db'}"}
    )
    s = tiny_settings(base, root)
    s = s.model_copy(update={"serving": s.serving.model_copy(update={"default_model": MODEL})})
    definition = load_definition(MODEL, s.models_dir)
    v1 = register_tiny(s)
    promote(s, definition, decided_by="alice")
    card.publish(s, definition, v1)
    v2 = register_tiny(s, latency=900.0)
    with pytest.raises(GateFailedError):
        promote(s, definition, decided_by="bob")
    key = keys.create_key(s, "shop", "predict", rate="1000/s")[1]
    app = create_app(s, follow=False, key_cache_s=0.0)
    with TestClient(app) as client:
        yield Platform(s, client, v1, v2, key)


@slow
def test_the_champions_card_is_markdown_by_default(platform: Platform) -> None:
    r = platform.client.get(f"/models/{MODEL}/card", headers=bearer(platform.key))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/markdown; charset=utf-8"
    assert r.headers["x-aipaas-card"] == "stored" and "Accept" in r.headers["vary"]
    assert r.text.startswith(f"# Model card: tiny v{platform.promoted}\n")
    assert "| promote | promoted | alice |" in r.text and "min roc_auc" in r.text
    assert "| dvc_hash | abc123 |" in r.text and "## Known limits" in r.text


@slow
def test_a_browser_gets_the_html_page_sandboxed(platform: Platform) -> None:
    headers = {**bearer(platform.key), "Accept": CHROME_ACCEPT}
    r = platform.client.get(f"/models/{MODEL}/card", headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert f"<h1>Model card: tiny v{platform.promoted}</h1>" in r.text
    assert "<script" not in r.text
    assert r.headers["content-security-policy"].startswith("sandbox; default-src 'none'")
    assert r.headers["x-content-type-options"] == "nosniff"


@slow
def test_a_version_without_a_stored_card_is_rendered_from_the_records(platform: Platform) -> None:
    r = platform.client.get(
        f"/models/{MODEL}/card",
        params={"version": platform.rejected},
        headers={**bearer(platform.key), "Accept": "text/markdown, text/html;q=0.5"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-aipaas-card"] == "rendered"
    assert r.text.startswith(f"# Model card: tiny v{platform.rejected}\n")
    assert "| promote | rejected | bob |" in r.text
    assert "| p99 latency ms | 900.0 | <= 50.0 | FAIL |" in r.text
    # The request is on the audit trail with the version whose card was read.
    [record] = [
        x
        for x in audit.tail(platform.settings, 20)
        if x["route"] == f"/models/{MODEL}/card" and x["version"] == platform.rejected
    ]
    assert record["status"] == 200 and record["model"] == MODEL


@slow
@pytest.mark.parametrize(
    ("path", "message"),
    [
        (f"/models/{MODEL}/card?version=99", "has no registered version 99"),
        (f"/models/{MODEL}/card?version=latest", "versions are registry numbers"),
        (f"/models/{MODEL}/card?version=%C2%B2", "versions are registry numbers"),
        ("/models/nope/card", "model 'nope' is not served here"),
    ],
)
def test_unknown_models_and_versions_are_404_with_the_reason(
    platform: Platform, path: str, message: str
) -> None:
    r = platform.client.get(path, headers=bearer(platform.key))
    assert r.status_code == 404, r.text
    assert message in r.json()["detail"] and "Traceback" not in r.text


@slow
def test_the_card_is_keyed_like_the_model_route(platform: Platform) -> None:
    path = f"/models/{MODEL}/card"
    assert platform.client.get(path).status_code == 401
    labeller = keys.create_key(platform.settings, "labeller", "feedback")[1]
    r = platform.client.get(path, headers=bearer(labeller))
    assert r.status_code == 403 and "lacks scope 'predict'" in r.json()["detail"]
    other = keys.create_key(platform.settings, "other", "predict:diagnosis")[1]
    assert platform.client.get(path, headers=bearer(other)).status_code == 403


@slow
def test_the_route_is_in_the_api_schema_with_its_key_and_errors(platform: Platform) -> None:
    spec = platform.client.get("/openapi.json").json()
    op = spec["paths"]["/models/{name}/card"]["get"]
    assert op["security"] == [{"bearer": []}]
    assert {"200", "401", "403", "404", "429"} <= set(op["responses"])
    assert set(op["responses"]["200"]["content"]) >= {"text/markdown", "text/html"}


def test_a_registry_that_does_not_answer_is_a_503_not_a_traceback(
    settings: Settings, tmp_path: Path
) -> None:
    down = settings.model_copy(
        update={
            "mlflow": settings.mlflow.model_copy(
                update={
                    "tracking_uri": f"http://127.0.0.1:{free_port()}",
                    "http_max_retries": 0,
                }
            )
        }
    )
    key = keys.create_key(down, "shop", "predict")[1]
    app = create_app(down, model_source=FakeSource(), follow=False)
    with TestClient(app) as client:
        r = client.get("/models/diagnosis/card?version=1", headers=bearer(key))
    assert r.status_code == 503, r.text
    assert "did not answer" in r.json()["detail"] and "Traceback" not in r.text


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("*/*", False),
        ("text/markdown", False),
        ("text/html", True),
        (CHROME_ACCEPT, True),
        ("text/markdown, text/html;q=0.5", False),
        ("text/html;q=0.9, text/plain;q=0.2", True),
        ("text/html;q=0", False),
        ("text/html;q=oops", False),
        ("application/json", False),
    ],
)
def test_html_only_when_the_client_prefers_it(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html
