"""Tiny real models logged into a test's temporary MLflow store.

``version_tags`` are set on the registered version, as training does (e.g.
``{tags.LOG_INPUTS: "true"}``), so a test can prove what serving reads of them.
``champion=True`` makes the version champion as a promotion does, through
:func:`make_champion` (signed, on the audit chain): serving loads nothing else.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aipaas.settings import Settings
from aipaas.training import promote, registry, tags
from aipaas.training.promotion_log import PromotionRecord

FEATURES = ["mean_radius", "mean_texture", "mean_area"]


def tabular_data(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, len(FEATURES))), columns=FEATURES)
    y = np.where(x["mean_radius"] + 0.5 * x["mean_area"] > 0, "malignant", "benign")
    return x, y


def log_lgbm(
    settings: Settings,
    name: str = "diagnosis",
    *,
    champion: bool = True,
    seed: int = 0,
    version_tags: dict[str, str] | None = None,
) -> str:
    """Log a small LightGBM classifier; returns its registered version."""
    import lightgbm as lgb
    import mlflow
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    registry.connect(settings)
    registry.ensure_experiment(settings)
    x, y = tabular_data(seed=seed)
    model = lgb.LGBMClassifier(n_estimators=10, num_leaves=4, min_child_samples=5, verbose=-1)
    model.fit(x, y)
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(
            model,
            name=tags.MODEL_ARTIFACT,
            signature=infer_signature(x, y),
            registered_model_name=name,
        )
    return _registered(settings, name, str(info.registered_model_version), champion, version_tags)


def log_text(
    settings: Settings,
    name: str = "sentiment",
    *,
    champion: bool = True,
    version_tags: dict[str, str] | None = None,
) -> str:
    """Log a small scikit-learn text classifier (signature: one string column ``text``)."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    registry.connect(settings)
    registry.ensure_experiment(settings)
    texts = ["great product", "awful service", "love it", "hate it", "great", "awful"] * 3
    labels = ["pos", "neg", "pos", "neg", "pos", "neg"] * 3
    model = make_pipeline(TfidfVectorizer(), LogisticRegression())
    model.fit(texts, labels)
    frame = pd.DataFrame({"text": texts})
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name=tags.MODEL_ARTIFACT,
            signature=infer_signature(frame, np.array(labels)),
            registered_model_name=name,
        )
    return _registered(settings, name, str(info.registered_model_version), champion, version_tags)


def _registered(
    settings: Settings,
    name: str,
    version: str,
    champion: bool,
    version_tags: dict[str, str] | None,
) -> str:
    if version_tags:
        registry.set_tags(name, version, version_tags)
    if champion:
        make_champion(settings, name, version)
    return version


def make_champion(
    settings: Settings, name: str, version: str, *, by: str = "tests (support)"
) -> PromotionRecord:
    """The test equivalent of a promotion with no gates: signed, tagged, on the chain."""
    decision = PromotionRecord(name, version, "promote", "promoted", decided_by=by)
    return promote.record_decision(settings, decision)
