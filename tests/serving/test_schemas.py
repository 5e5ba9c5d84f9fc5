"""Real MLflow versions: request schemas from their signatures, ``log_inputs`` from their tags."""

from __future__ import annotations

from fastapi.testclient import TestClient

from aipaas.inference import keys
from aipaas.inference.feedback import labelled_rows
from aipaas.training import tags
from serving.app import create_app
from tests.support.models import FEATURES, log_lgbm, log_text


def test_tabular_and_text_models_from_the_registry(settings):
    # Training writes the definition's log_inputs on the version; the text
    # model's version has no tag, so its raw inputs are never stored.
    log_lgbm(settings, "diagnosis", version_tags={tags.LOG_INPUTS: "true"})
    log_text(settings, "sentiment")
    s = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(update={"models": ["diagnosis", "sentiment"]})
        }
    )
    _, key = keys.create_key(s, "app", "predict,feedback")
    h = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(s, follow=False)) as c:
        row = dict.fromkeys(FEATURES, 2.0)
        r = c.post("/predict", json=row, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["output"] == "malignant"
        tabular_id = r.json()["request_id"]
        assert set(r.json()["probabilities"]) == {"benign", "malignant"}
        r = c.post("/predict", json={**row, "mean_area": None}, headers=h)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "mean_area"]
        assert [f["type"] for f in c.get("/model", headers=h).json()["inputs"]] == ["float"] * 3

        r = c.post("/models/sentiment/predict", json={"text": "great product"}, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["output"] == "pos"
        text_id = r.json()["request_id"]
        for bad, loc in [({"text": 5}, ["body", "text"]), ({"txt": "a"}, ["body", "text"])]:
            r = c.post("/models/sentiment/predict", json=bad, headers=h)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc
        r = c.post(
            "/models/sentiment/invocations",
            json={"dataframe_split": {"columns": ["text"], "data": [["awful service"]]}},
            headers=h,
        )
        assert r.json() == {"predictions": ["neg"]}
        for rid in (tabular_id, text_id):
            r = c.post("/feedback", json={"request_id": rid, "label": "x"}, headers=h)
            assert r.status_code == 201, r.text

    tabular = labelled_rows(s, "diagnosis", target="diagnosis")
    assert tabular.loc[0, FEATURES].tolist() == [2.0, 2.0, 2.0]
    text = labelled_rows(s, "sentiment", target="sentiment")
    assert list(text["request_id"]) == [text_id] and "text" not in text
