"""A tiny scikit-learn model ``tiny`` registered in a real MLflow store, as training would.

Promotion, the promote flow and the deployments tests share it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from aipaas.modeldef import ModelDefinition
from aipaas.settings import Settings
from aipaas.training import registry, tags

MODEL = "tiny"


DEFINITION_FILE = """
from sklearn.linear_model import LogisticRegression
from aipaas.modeldef import Gates, ModelDefinition, Uniform

definition = ModelDefinition(
    name="tiny",
    dataset="tiny",
    target="y",
    features=("a", "b"),
    build_estimator=lambda p: LogisticRegression(**p),
    search_space={{"C": Uniform(0.1, 1.0)}},
    metrics=("roc_auc", "accuracy"),
    gates=Gates(
        min_metrics={{"roc_auc": 0.7}},
        champion_tolerance=0.01,
        p99_latency_ms=50.0,
        require_approval={approval},
    ),
)
"""


def tiny_settings(settings: Settings, tmp_path: Path, *, approval: bool = False) -> Settings:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "tiny.py").write_text(textwrap.dedent(DEFINITION_FILE.format(approval=approval)))
    return settings.model_copy(update={"models_dir": models})


def tiny_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = np.where(a + 0.5 * b + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "y": y})


TRAIN, HOLDOUT = tiny_frame(300, 1), tiny_frame(200, 2)


def tiny_metrics(model: object, frame: pd.DataFrame, features: tuple[str, ...]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, roc_auc_score

    X = frame[list(features)].astype("float64")
    proba = model.predict_proba(X)[:, 1]  # type: ignore[attr-defined]
    return {
        "roc_auc": float(roc_auc_score(frame["y"] == "yes", proba)),
        "accuracy": float(accuracy_score(frame["y"], model.predict(X))),  # type: ignore[attr-defined]
    }


def score_tiny(uri: str, definition: ModelDefinition, frame: pd.DataFrame) -> dict[str, float]:
    """Scores a registered version on a holdout, as ``evaluate.score_version`` does."""
    import mlflow

    model = mlflow.sklearn.load_model(uri)
    return tiny_metrics(model, frame, tuple(model.feature_names_in_))


def register_tiny(
    s: Settings,
    *,
    shuffle: bool = False,
    latency: float = 3.0,
    suite: str = "true",
    features: tuple[str, ...] = ("a", "b"),
    data_hash: str = "abc123",
) -> str:
    """Train and register one version as training would; returns its version."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    registry.connect(s)
    registry.ensure_experiment(s)
    X = TRAIN[list(features)].astype("float64")
    y = TRAIN["y"].sample(frac=1.0, random_state=3).to_numpy() if shuffle else TRAIN["y"]
    model = LogisticRegression().fit(X, y)
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(
            model,
            name=tags.MODEL_ARTIFACT,
            signature=infer_signature(X, model.predict(X)),
            pip_requirements=["scikit-learn"],
        )
        scored = tiny_metrics(model, HOLDOUT, features)
        mlflow.log_metrics({tags.holdout_metric(k): v for k, v in scored.items()})
        mlflow.log_metric(tags.LATENCY_P99_MS, latency)
    mv = mlflow.register_model(f"runs:/{run.info.run_id}/{tags.MODEL_ARTIFACT}", MODEL)
    registry.set_tags(MODEL, mv.version, {tags.SUITE_PASSED: suite, tags.DATA_HASH: data_hash})
    registry.set_alias(MODEL, tags.CHALLENGER, mv.version)
    return str(mv.version)


def tiny_champion() -> str | None:
    found = registry.get_alias(MODEL, tags.CHAMPION)
    return found.version if found else None
