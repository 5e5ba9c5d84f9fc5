from __future__ import annotations

import pytest

from aipaas.exceptions import ModelNotFoundError, UnsignedVersionError
from aipaas.inference import predictor
from aipaas.inference.predictor import VersionMeta
from aipaas.training import tags
from aipaas.training.registry import ModelVersionInfo
from tests.support.models import FEATURES, log_lgbm, log_text, make_champion


def test_lightgbm_version_loads_natively_with_signature_fields(settings):
    version = log_lgbm(settings, version_tags={tags.LOG_INPUTS: "true", tags.DATASET: "cancer"})
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
    assert (model.meta.log_inputs, model.meta.dataset) == (True, "cancer")
    assert model.meta.aliases == (tags.CHAMPION,)


def test_text_model_takes_one_string_column(settings):
    version = log_text(settings)
    model = predictor.load_model(settings, "sentiment", version)
    assert model.is_text
    assert model.fields[0].type == "str"
    assert model.predict([["great product"]]).outputs == ["pos"]
    assert model.flavor == "sklearn"
    assert not model.meta.log_inputs  # no tag: inputs are never stored


def test_unknown_version_and_alias(settings):
    log_lgbm(settings, champion=False)
    assert predictor.champion_version(settings, "diagnosis") is None
    with pytest.raises(ModelNotFoundError, match="no registered version 7"):
        predictor.load_model(settings, "diagnosis", "7")


def test_a_version_must_show_its_promotion_record_to_be_loaded_for_serving(settings):
    version = log_lgbm(settings, champion=False)
    with pytest.raises(UnsignedVersionError, match="only a version that was promoted"):
        predictor.load_model(settings, "diagnosis", version, require="promoted")
    with pytest.raises(UnsignedVersionError, match="no promotion record"):
        predictor.load_model(settings, "diagnosis", version, require="champion")
    make_champion(settings, "diagnosis", version)
    for require in ("champion", "promoted"):
        loaded = predictor.load_model(settings, "diagnosis", version, require=require)
        assert loaded.version == version


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


@pytest.mark.parametrize(
    ("tag", "expected"), [("true", True), ("True", True), ("false", False), (None, False)]
)
def test_log_inputs_comes_from_the_version_tag(tag, expected):
    version_tags = {tags.DATA_HASH: "md5", tags.PROMOTED_AT: "2026-01-01T00:00:00+00:00"}
    if tag is not None:
        version_tags[tags.LOG_INPUTS] = tag
    info = ModelVersionInfo("m", "3", "run", "src", 0, version_tags, (tags.CHAMPION,))
    meta = VersionMeta.from_version(info)
    assert meta.log_inputs is expected
    assert (meta.run_id, meta.data_version, meta.promoted_at, meta.aliases) == (
        "run",
        "md5",
        "2026-01-01T00:00:00+00:00",
        (tags.CHAMPION,),
    )
