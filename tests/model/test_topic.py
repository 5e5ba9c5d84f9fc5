"""The text demo model ``topic``: behavioural tests, then the whole lifecycle.

The behavioural tests (minimum functionality, invariance, direction) run on
the estimator its definition builds, on the real quotes. The slow test trains
it through the real pipeline (Ray Tune, MLflow on SQLite), promotes it
through its gates and asks the serving app built by ``create_app`` with
``{"text": "..."}``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from aipaas.datasets import ingest
from aipaas.exceptions import GateFailedError
from aipaas.inference import keys
from aipaas.modeldef import load_definition
from aipaas.schemas import DatasetVersion
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import registry, tags
from aipaas.training.metrics import compute_metrics, predict_outputs
from aipaas.training.promote import promote
from aipaas.training.train import train_model

TOPIC = load_definition("topic", PROJECT_ROOT / "models")
TOPICS = ["computers", "people", "politics", "science"]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    spec = ingest.spec("quotes", Settings(_env_file=None))
    frame = ingest.load_source(spec, Settings(_env_file=None))
    return train_test_split(frame, test_size=0.2, random_state=42, stratify=frame["topic"])


@pytest.fixture(scope="module")
def model(data):
    train, _ = data
    return TOPIC.build_estimator({"C": 10.0}).fit(train[["text"]], train["topic"])


def test_definition_is_a_text_model() -> None:
    assert TOPIC.is_text and TOPIC.dataset == "quotes" and TOPIC.target == "topic"
    assert TOPIC.metric in TOPIC.metrics
    assert TOPIC.log_inputs  # public quotes: labelled inputs become training data on retrain


def test_minimum_functionality_clears_the_promotion_floors(model, data) -> None:
    _, holdout = data
    pred, proba, classes = predict_outputs(model, holdout[["text"]])
    got = compute_metrics("classification", TOPIC.metrics, holdout["topic"], pred, proba, classes)
    for metric, floor in TOPIC.gates.min_metrics.items():
        assert got[metric] >= floor, (metric, got[metric])


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("The compiler crashed and the program dumped core on the Unix system.", "computers"),
        ("The senator promised lower taxes before the election, then the government voted.",
         "politics"),
        ("The physicist measured the energy of the atom in the laboratory experiment.", "science"),
    ],
)  # fmt: skip
def test_minimum_functionality_on_plain_sentences(model, text: str, topic: str) -> None:
    assert model.predict(pd.DataFrame({"text": [text]}))[0] == topic


def test_invariance_to_case_and_spacing_and_batching(model, data) -> None:
    texts = data[1]["text"].head(30)
    shouted = texts.str.upper().str.replace(" ", "   ")
    same = model.predict(pd.DataFrame({"text": shouted})) == model.predict(
        pd.DataFrame({"text": texts})
    )
    assert same.mean() >= 0.95
    one_by_one = np.vstack([model.predict_proba(pd.DataFrame({"text": [t]})) for t in texts[:10]])
    np.testing.assert_allclose(one_by_one, model.predict_proba(pd.DataFrame({"text": texts[:10]})))


def test_direction_computer_words_raise_the_computers_probability(model, data) -> None:
    texts = data[1]["text"].head(40)
    col = list(model.classes_).index("computers")
    before = model.predict_proba(pd.DataFrame({"text": texts}))[:, col]
    after = model.predict_proba(pd.DataFrame({"text": texts + " software bug in the kernel"}))[
        :, col
    ]
    assert (after > before).mean() > 0.9


def test_empty_text_is_answered_not_raised(model) -> None:
    proba = model.predict_proba(pd.DataFrame({"text": ["", "   "]}))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


# -- the lifecycle -------------------------------------------------------------------


def _version(where: Path, data) -> DatasetVersion:
    train, holdout = data
    where.mkdir(parents=True, exist_ok=True)
    train.to_csv(where / "train.csv", index=False)
    holdout.to_csv(where / "holdout.csv", index=False)
    return DatasetVersion(
        name="quotes",
        hash="9e0f" * 8,
        rows=len(train) + len(holdout),
        suite_passed=True,
        train_path=where / "train.csv",
        holdout_path=where / "holdout.csv",
        target="topic",
        git_commit="abc1234",
    )


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, data, ray_session: None):
    """``topic`` trained by the real pipeline (2 trials, 2-fold CV) and promoted."""
    root = tmp_path_factory.mktemp("topic")
    home = root / "home"
    home.mkdir()
    settings = Settings(
        _env_file=None,
        home=home,
        mlflow={"tracking_uri": f"sqlite:///{home / 'mlflow.db'}"},
        tune={"num_samples": 2, "max_concurrent": 2, "cv_folds": 2},
        serving={"models": ["topic"], "default_model": "topic"},
    )
    started = time.perf_counter()
    result = train_model(TOPIC, _version(root / "data", data), settings)
    seconds = time.perf_counter() - started
    print(f"topic: trained in {seconds:.1f} s; holdout", {
        k: round(v, 3) for k, v in result.metrics.items() if k.startswith(tags.HOLDOUT_PREFIX)
    })  # fmt: skip
    try:
        record = promote(settings, TOPIC, decided_by="tests")
    except GateFailedError as err:
        pytest.fail(f"gates failed: {[g for g in err.gates if not g.passed]}")
    return settings, result, record


@pytest.mark.slow
def test_trained_through_the_pipeline_and_promoted(champion) -> None:
    _, result, record = champion
    assert result.trials_ok == 2
    assert result.metrics[tags.holdout_metric("f1")] >= TOPIC.gates.min_metrics["f1"]
    assert registry.input_schema(result.model_uri) == {"text": "string"}
    assert record.result == "promoted" and record.version == result.version


@pytest.mark.slow
def test_served_answers_a_text_body(champion) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app

    settings, result, _ = champion
    token = keys.create_key(settings, "app", "predict", rate="100/s")[1]
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/predict",
            json={"text": "The compiler crashed and the kernel dumped core."},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == result.version
    assert body["output"] == "computers"
    assert set(body["probabilities"]) == {"computers", "people", "politics", "science"}
