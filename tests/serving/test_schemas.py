"""Request schemas generated from real MLflow signatures: a tabular and a text model."""

from __future__ import annotations

from fastapi.testclient import TestClient

from aipaas.inference import keys
from serving.app import create_app
from tests.support.models import FEATURES, log_lgbm, log_text


def test_tabular_and_text_models_from_the_registry(settings):
    log_lgbm(settings, "diagnosis")
    log_text(settings, "sentiment")
    s = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(update={"models": ["diagnosis", "sentiment"]})
        }
    )
    _, key = keys.create_key(s, "app", "predict")
    h = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(s, follow=False)) as c:
        row = dict.fromkeys(FEATURES, 2.0)
        r = c.post("/predict", json=row, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["output"] == "malignant"
        assert set(r.json()["probabilities"]) == {"benign", "malignant"}
        r = c.post("/predict", json={**row, "mean_area": None}, headers=h)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "mean_area"]
        assert [f["type"] for f in c.get("/model", headers=h).json()["inputs"]] == ["float"] * 3

        r = c.post("/models/sentiment/predict", json={"text": "great product"}, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["output"] == "pos"
        for bad, loc in [({"text": 5}, ["body", "text"]), ({"txt": "a"}, ["body", "text"])]:
            r = c.post("/models/sentiment/predict", json=bad, headers=h)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc
        r = c.post(
            "/models/sentiment/invocations",
            json={"dataframe_split": {"columns": ["text"], "data": [["awful service"]]}},
            headers=h,
        )
        assert r.json() == {"predictions": ["neg"]}
