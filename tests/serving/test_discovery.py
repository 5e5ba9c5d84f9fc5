"""Serving discovers every model with a champion; a model that fails to load stops no other."""

from __future__ import annotations

from aipaas import audit
from aipaas.settings import Settings
from tests.support.serving import ROW, FakeSource, bearer


def _two_models(source: FakeSource) -> FakeSource:
    source.champions = {"diagnosis": "1", "sentiment": "3"}
    return source


def test_every_model_with_a_champion_is_served_without_a_setting(make_client, source, predict_key):
    client = make_client(model_source=_two_models(source))
    ready = client.get("/readyz").json()
    assert ready["models"] == {"diagnosis": "1", "sentiment": "3"}
    r = client.post("/models/sentiment/predict", json=ROW, headers=bearer(predict_key))
    assert r.status_code == 200 and r.json()["model_version"] == "3"


def test_a_model_promoted_later_is_discovered_at_the_next_check(
    make_client, source, predict_key, admin_key
):
    client = make_client()
    assert (
        client.post("/models/late/predict", json=ROW, headers=bearer(predict_key)).status_code
        == 404
    )
    source.champions["late"] = "1"
    outcomes = client.post("/admin/reload", headers=bearer(admin_key)).json()["outcomes"]
    assert outcomes["late"] == "loaded"
    r = client.post("/models/late/predict", json=ROW, headers=bearer(predict_key))
    assert r.status_code == 200 and r.json()["model"] == "late"


def test_an_allow_list_serves_only_the_models_it_names(
    make_client, settings: Settings, source, predict_key
):
    allowed = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"models": ["diagnosis"]})}
    )
    client = make_client(allowed, model_source=_two_models(source))
    assert client.get("/readyz").json()["models"] == {"diagnosis": "1"}
    r = client.post("/models/sentiment/predict", json=ROW, headers=bearer(predict_key))
    assert r.status_code == 404


def test_a_model_that_fails_to_warm_up_answers_503_while_the_others_serve(
    make_client, settings: Settings, source, predict_key
):
    _two_models(source).crashing.add(("sentiment", "3"))
    client = make_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200  # the default model serves
    assert ready.json()["models"] == {"diagnosis": "1", "sentiment": None}
    assert "could not convert string to float" in ready.json()["failed"]["sentiment"]
    r = client.post("/models/sentiment/predict", json=ROW, headers=bearer(predict_key))
    assert r.status_code == 503 and "failed to load" in r.json()["detail"]
    ok = client.post("/models/diagnosis/predict", json=ROW, headers=bearer(predict_key))
    assert ok.status_code == 200
    failed = [r for r in audit.tail(settings, 50) if r["event"] == "model.load_failed"]
    assert [(r["model"], r["version"]) for r in failed] == [("sentiment", "3")]
