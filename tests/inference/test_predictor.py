from __future__ import annotations

import pytest

from aipaas.exceptions import ModelNotFoundError
from aipaas.inference import predictor
from tests.support.models import FEATURES, log_lgbm, log_text


def test_lightgbm_version_loads_natively_with_signature_fields(settings):
    version = log_lgbm(settings)
    assert predictor.champion_version(settings, "diagnosis") == version
    model = predictor.load_model(settings, "diagnosis", version)
    assert model.flavor == "lightgbm"
    assert [f.name for f in model.fields] == FEATURES
    assert {f.type for f in model.fields} == {"float"}
    pred = model.predict([[3.0, 0.0, 3.0], [-3.0, 0.0, -3.0]])
    assert pred.outputs == ["malignant", "benign"]
    assert pred.probabilities is not None
    assert set(pred.probabilities[0]) == {"benign", "malignant"}
    assert pred.probabilities[0]["malignant"] > 0.5 > pred.probabilities[1]["malignant"]


def test_text_model_takes_one_string_column(settings):
    version = log_text(settings)
    model = predictor.load_model(settings, "sentiment", version)
    assert model.is_text
    assert model.fields[0].type == "str"
    assert model.predict([["great product"]]).outputs == ["pos"]


def test_unknown_version_and_alias(settings):
    log_lgbm(settings, champion=False)
    assert predictor.champion_version(settings, "diagnosis") is None
    with pytest.raises(ModelNotFoundError, match="no registered version 7"):
        predictor.load_model(settings, "diagnosis", "7")


def test_an_unreachable_registry_is_reported_as_such(settings, monkeypatch):
    import os

    from aipaas.exceptions import RegistryUnavailableError
    from tests.support.net import free_port

    # connect() sets MLflow's HTTP env vars; give them back as they were.
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)

    down = settings.model_copy(
        update={
            "mlflow": settings.mlflow.model_copy(
                update={
                    "tracking_uri": f"http://127.0.0.1:{free_port()}",
                    "http_max_retries": 0,
                    "http_timeout_s": 2,
                }
            )
        }
    )
    with pytest.raises(RegistryUnavailableError):
        predictor.champion_version(down, "diagnosis")
