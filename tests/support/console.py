"""What the console tests read: a registered champion with lineage, a drift check on disk."""

from __future__ import annotations

import time

from aipaas import files
from aipaas.monitoring import drift_report
from aipaas.monitoring.drift_report import DriftCheckRecord
from aipaas.monitoring.drift_stats import DriftDecision
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import promote, registry, tags
from aipaas.training.promotion_log import PromotionRecord
from tests.support.models import tabular_data

COMMIT = "4f2a9c1e77d0b3a5c6e8f9012345678901abcdef"


def write_drift_check(settings: Settings, model: str = "diagnosis", version: str = "1") -> str:
    """A drift check as the drift flow leaves it: an HTML report and a line of history."""
    folder = drift_report.drift_dir(settings, model)
    name = f"v{version}-20261203T120000.html"
    files.atomic_write(folder / name, "<html><body><h1>Drift: mean_radius moved</h1></body></html>")
    record = DriftCheckRecord(
        at=time.time(),
        model=model,
        version=version,
        rows=640,
        windows=(1, 2),
        drifting=("mean_radius",),
        decision=DriftDecision(decided=True, retrain=True, reasons=("1 feature drifting",)),
        html=str(folder / name),
    )
    files.append_jsonl(drift_report.history_path(settings, model), record.to_dict())
    return name


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
