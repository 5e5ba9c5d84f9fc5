from __future__ import annotations

import pytest

from aipaas import predictor
from aipaas.exceptions import ModelNotFoundError
from tests.serving._models import FEATURES, log_lgbm, log_text


def test_lightgbm_version_loads_natively_with_signature_fields(settings):
    version = log_lgbm(settings)
    assert predictor.champion_version(settings, "diagnosis") == version
    model = predictor.load_version(settings, "diagnosis", version)
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
    model = predictor.load_version(settings, "sentiment", version)
    assert model.is_text
    assert model.fields[0].type == "str"
    assert model.predict([["great product"]]).outputs == ["pos"]


def test_unknown_version_and_alias(settings):
    log_lgbm(settings, champion=False)
    assert predictor.champion_version(settings, "diagnosis") is None
    with pytest.raises(ModelNotFoundError, match="no registered version 7"):
        predictor.load_version(settings, "diagnosis", "7")
