"""What the console tests read: a registered champion with lineage, a real drift check."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aipaas.datasets import profiles
from aipaas.modeldef import DriftPolicy
from aipaas.monitoring import drift
from aipaas.monitoring.drift import Champion
from aipaas.monitoring.spool import Profiler, SpoolWriter
from aipaas.schemas import GateResult
from aipaas.settings import MonitoringSettings, Settings
from aipaas.training import promote, registry, tags
from aipaas.training.promotion_log import PromotionRecord
from tests.support.definitions import tiny_definition
from tests.support.models import FEATURES, tabular_data

COMMIT = "4f2a9c1e77d0b3a5c6e8f9012345678901abcdef"


def write_drift_check(settings: Settings, model: str = "diagnosis", version: str = "1") -> str:
    """A drift check as the drift flow makes it; the name of its HTML report.

    Served rows (the training rows with ``mean_radius`` moved by three standard
    deviations) go through the real spool and profiler into two windows, and
    :func:`aipaas.monitoring.drift.check_model` compares them with the training
    data's profile, writes the report with its plots and records the check.
    """
    x, _ = tabular_data(240, seed=1)
    served = x.assign(mean_radius=x["mean_radius"] + 3.0)
    with SpoolWriter(settings) as writer:
        for row in served.to_dict("records"):
            writer.submit(model, version, [row], ["malignant"])
    windows = settings.model_copy(update={"monitoring": MonitoringSettings(window_rows=120)})
    with Profiler(windows) as profiler:
        profiler.step()
    reference = profiles.profile_frame(tabular_data(240, seed=2)[0])
    definition = tiny_definition(
        name=model, features=tuple(FEATURES), target="diagnosis",
        drift=DriftPolicy(max_drifting_features=1),
    )  # fmt: skip
    report = drift.check_model(
        windows,
        definition,
        champion_loader=lambda s, m: Champion(version, reference, holdout_accuracy=None),
        labelled_rows=lambda s, m, *, target: pd.DataFrame(),
    )
    assert report.decision.retrain and "mean_radius" in report.drifting, report.decision
    return Path(report.html_path or "").name


def register_champion(settings: Settings) -> str:
    """A real MLflow version with lineage tags, promoted through gates (signed, on the chain).

    A small scikit-learn model with its requirements given, so MLflow does not
    spend seconds inferring them.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    registry.connect(settings)
    registry.ensure_experiment(settings)
    x, y = tabular_data()
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit(x, y),
            name=tags.MODEL_ARTIFACT,
            signature=infer_signature(x, y),
            registered_model_name="diagnosis",
            pip_requirements=["scikit-learn"],
        )
    version = str(info.registered_model_version)
    lineage = {tags.DATASET: "breast_cancer", tags.DATA_HASH: "9f1c0e7a2b3d4c5e6f708192a3b4c5d6"}
    registry.set_tags("diagnosis", version, {**lineage, tags.GIT_COMMIT: COMMIT})
    gates = [
        GateResult("min roc_auc", True, 0.981, ">= 0.95"),
        GateResult("p99 latency ms", True, 2.4, "<= 50"),
    ]
    decision = PromotionRecord(
        "diagnosis", version, "promote", "promoted", decided_by="ana (cli)", gates=gates
    )
    promote.record_decision(settings, decision)
    return version
