"""Window close -> drift flow -> retrain decision, on the Prefect harness and a real MLflow store.

Serving's side is the real spool writer and profiler; the champion is a
registered version whose run carries the reference profile and holdout
metrics exactly as training logs them. Retraining runs in suggest-only mode
here: the retrain flow's own path (data, train, promote) belongs to the
end-to-end test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from aipaas.datasets import profiles
from aipaas.modeldef import load_definition
from aipaas.monitoring import card, drift, retrain
from aipaas.monitoring.drift import DriftOutcome
from aipaas.monitoring.drift_report import drift_history
from aipaas.monitoring.drift_stats import build_report
from aipaas.monitoring.spool import Profiler, SpoolWriter, WindowInfo
from aipaas.settings import Settings
from aipaas.training import registry, tags

pytestmark = pytest.mark.slow

MODEL = "diagnosis"
DATA = load_breast_cancer(as_frame=True).frame.rename(
    columns=lambda c: "diagnosis" if c == "target" else c.replace(" ", "_")
)
FEATURES = [c for c in DATA.columns if c != "diagnosis"]
TRAIN = DATA.sample(455, random_state=0)


@pytest.fixture
def flow_settings(
    settings: Settings, use_settings: Callable[..., Settings], prefect_harness: None
) -> Settings:
    """Settings the flows read through get_settings(), on a temporary home."""
    return use_settings(
        settings,
        {
            "AIPAAS_MONITORING__WINDOW_ROWS": "150",
            "AIPAAS_RETRAIN__SUGGEST_ONLY": "true",
            "AIPAAS_DATA__DIR": str(settings.home / "data"),
        },
    )


def _register_champion(s: Settings) -> str:
    """A registered version carrying what training logs: reference profile, holdout metrics."""
    import mlflow
    from mlflow import MlflowClient

    registry.connect(s)
    registry.ensure_experiment(s)
    with mlflow.start_run(run_name="train-diagnosis") as run:
        mlflow.log_metrics(
            {tags.holdout_metric("accuracy"): 0.95, tags.holdout_metric("roc_auc"): 0.99}
        )
        profile = profiles.write_profile(TRAIN, s.home / "tmp" / "profile.bin")
        mlflow.log_artifact(str(profile), artifact_path=tags.REFERENCE_PROFILE_DIR)
    client = MlflowClient()
    client.create_registered_model(MODEL)
    mv = client.create_model_version(
        MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    registry.set_alias(MODEL, tags.CHAMPION, mv.version)
    return str(mv.version)


def _serve(s: Settings, version: str, n: int, *, shift: float, seed: int) -> None:
    """What serving hands off: the features of each request and its prediction."""
    rows = DATA.sample(n, replace=True, random_state=seed)
    rng = np.random.default_rng(seed)
    with SpoolWriter(s) as writer:
        for _, r in rows.iterrows():
            row = {f: float(r[f]) * (1 + rng.normal(0, 0.01)) for f in FEATURES}
            for f in FEATURES[:10]:
                row[f] += shift * float(TRAIN[f].std())
            writer.submit(MODEL, version, [row], [int(r["diagnosis"])])


def _artifact(key: str) -> list[dict]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = [a for a in client.read_latest_artifacts() if a.key == key]  # type: ignore[call-arg]
    assert found, f"no artifact {key}"
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def test_window_close_triggers_drift_then_a_retrain_decision(flow_settings: Settings) -> None:
    from flows.drift import drift_flow
    from flows.triggers import DeploymentTrigger

    s = flow_settings
    version = _register_champion(s)
    results: list[DriftOutcome] = []
    prefect_up = [False]

    def runner(model: str, window: WindowInfo) -> None:
        # Stands in for run_deployment: refuses while "Prefect" is away.
        if not prefect_up[0]:
            raise httpx.ConnectError("connection refused")
        results.append(drift_flow(model))

    now = [1_000.0]
    trigger = DeploymentTrigger(s, runner, clock=lambda: now[0], base_backoff_s=5.0)
    _serve(s, version, 150, shift=0.7, seed=1)
    with Profiler(s, trigger) as profiler:
        profiler.step()  # the window closes; Prefect is unreachable
        assert results == []
        pending = trigger.pending()
        assert pending[MODEL]["attempts"] == 1 and "ConnectError" in pending[MODEL]["error"]

        prefect_up[0] = True
        profiler.step()  # still backing off
        assert results == []
        now[0] += 6.0
        profiler.step()  # retried: the drift flow runs
    assert trigger.pending() == {}
    (result,) = results
    report = result.report

    assert report.version == version and report.rows == 150
    assert report.decision.decided and report.decision.retrain
    assert len(report.drifting) >= 3
    assert report.html_path is not None and Path(report.html_path).is_file()
    assert report.html_path.startswith(str(s.reports_dir))
    # Retraining was decided, and the guardrails (suggest-only) recorded it.
    assert result.retrain is not None and result.retrain.action == "suggested"
    (decision,) = retrain.retrain_history(s, MODEL)
    assert decision == result.retrain and decision.reason.startswith("drift:")

    table = _artifact("drift-diagnosis")
    assert {r["feature"] for r in table if r["drifting"]} == set(report.drifting)

    import mlflow

    run = mlflow.get_run(result.mlflow_run)
    assert run.data.tags[tags.DRIFT_VERSION] == version
    assert run.data.tags[tags.KIND] == tags.KIND_DRIFT_CHECK
    assert run.data.metrics["drift_retrain"] == 1.0
    assert run.data.metrics["drift_rows"] == 150

    # The window is consumed: the next check has nothing to decide on.
    again = drift_flow(MODEL)
    assert again.report.rows == 0 and not again.report.decision.decided
    assert again.retrain is None


def test_unshifted_traffic_reports_no_drift(flow_settings: Settings) -> None:
    from flows.drift import drift_flow

    s = flow_settings
    version = _register_champion(s)
    _serve(s, version, 300, shift=0.0, seed=2)
    with Profiler(s) as profiler:
        profiler.step()
    result = drift_flow(MODEL)
    decision = result.report.decision
    assert result.report.rows == 300 and result.report.windows == (1, 2)
    assert decision.decided and not decision.retrain, decision.reasons
    assert result.retrain is None
    assert retrain.retrain_history(s, MODEL) == []
    (entry,) = drift_history(s, MODEL)
    assert entry.decision == decision
    # The version's card, stored again after the check, shows it.
    stored = card.stored(s, MODEL, version)
    assert stored is not None and entry.summary in stored.markdown, stored


def test_feedback_accuracy_enters_the_check(flow_settings: Settings) -> None:
    """The real reference from MLflow: an accuracy drop alone asks for a retrain."""
    s = flow_settings
    version = _register_champion(s)
    _serve(s, version, 150, shift=0.0, seed=3)
    with Profiler(s) as profiler:
        profiler.step()
    labels = pd.DataFrame(
        {"diagnosis": [1, 0] * 20, "prediction": [1] * 40, "model_version": version}
    )
    champion = drift.load_champion(s, MODEL)
    assert champion.version == version and champion.holdout_accuracy == 0.95
    assert set(FEATURES) <= set(champion.reference.columns)
    current, seqs = drift.collect_windows(s, MODEL, version)
    definition = load_definition(MODEL, s.models_dir)
    report, _ = build_report(
        version, champion.reference, current, definition, windows=seqs,
        feedback=labels, holdout_accuracy=champion.holdout_accuracy,
    )  # fmt: skip
    assert report.accuracy is not None and report.accuracy.accuracy == 0.5
    assert report.decision.retrain and not report.drifting


def test_drift_command_prints_the_decision_and_report(flow_settings: Settings) -> None:
    from typer.testing import CliRunner

    from aipaas.cli import app

    s = flow_settings
    version = _register_champion(s)
    _serve(s, version, 150, shift=0.8, seed=4)
    with Profiler(s) as profiler:
        profiler.step()
    out = CliRunner().invoke(app, ["drift", MODEL, "--no-mlflow"])
    assert out.exit_code == 0, out.output
    assert f"{MODEL} v{version}: 150 served rows (windows 1)" in out.output
    assert "decision: RETRAIN" in out.output
    report = out.output.split("report: ")[1].split()[0]
    assert Path(report).is_file()


def test_retrain_flow_refused_by_the_cooldown_runs_nothing(
    flow_settings: Settings, use_settings: Callable[..., Settings]
) -> None:
    from flows.retrain import retrain_flow

    s = use_settings(
        env={"AIPAAS_RETRAIN__SUGGEST_ONLY": "false", "AIPAAS_RETRAIN__COOLDOWN_MINUTES": "30"}
    )
    retrain.record_start(s, MODEL)  # a retrain started just now
    result = retrain_flow(MODEL, reason="test")
    assert result.action == "skipped" and result.reason == "test"
    assert any("cooldown" in r for r in result.guardrails)
    assert retrain.retrain_history(s, MODEL) == [result]
    assert len(retrain.started_at(s, MODEL)) == 1  # not counted again
