"""Flow ``drift``: served profiles against the champion's reference, then the policy.

Runs on a schedule and whenever the profiler closes a window (see
:mod:`flows.triggers`). The comparison and the verdict are
:func:`aipaas.monitoring.drift.check`; this flow publishes them where people look (a
table artifact and a link to the HTML report in Prefect, a run with the scores
in MLflow) and starts the ``retrain`` flow as a subflow when the model's drift
policy is violated. Only MLflow I/O is retried, and only when the server did
not answer.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from aipaas.monitoring import drift
from aipaas.monitoring.drift import DriftReport
from aipaas.settings import get_settings
from flows._common import artifact_key, registry_unreachable


@task(name="compare with reference", retries=2, retry_delay_seconds=5,
      retry_condition_fn=registry_unreachable)  # fmt: skip
def compare_with_reference(model: str) -> DriftReport:
    return drift.check(get_settings(), model)


@task(name="publish report")
def publish_report(report: DriftReport) -> None:
    key = artifact_key("drift", report.model)
    verdict = (
        "retrain" if report.decision.retrain
        else "no retrain" if report.decision.decided else "no decision"
    )  # fmt: skip
    description = (
        f"Drift of {report.model} v{report.version} on {report.rows} served rows: {verdict}. "
        + " ".join(report.decision.reasons)
    )
    if report.features:
        create_table_artifact(table=report.table(), key=key, description=description)
    else:
        create_markdown_artifact(markdown=f"**{description}**", key=key, description=description)
    if report.html_path:
        create_link_artifact(
            link=f"file://{report.html_path}",
            link_text=f"drift report {report.model} v{report.version}",
            key=f"{key}-html",
            description="HTML report: one plot per feature, reference against current",
        )


@task(name="log to MLflow", retries=2, retry_delay_seconds=5,
      retry_condition_fn=registry_unreachable)  # fmt: skip
def log_to_mlflow(report: DriftReport) -> str:
    return drift.log_to_mlflow(get_settings(), report)


@flow(name="drift", persist_result=True, log_prints=True)
def drift_flow(model: str = "diagnosis") -> dict[str, Any]:
    """Compare the traffic served since the last check with the champion's training data."""
    report = compare_with_reference(model)
    publish_report(report)
    mlflow_run = log_to_mlflow(report)
    retrain: dict[str, Any] | None = None
    if report.decision.retrain:
        from flows.retrain import retrain_flow

        get_run_logger().info("drift policy violated: %s", " ".join(report.decision.reasons))
        retrain = retrain_flow(model, reason="drift: " + " ".join(report.decision.reasons))
    return {
        "model": model,
        "version": report.version,
        "rows": report.rows,
        "windows": list(report.windows),
        "decided": report.decision.decided,
        "retrain": report.decision.retrain,
        "reasons": list(report.decision.reasons),
        "drifting": report.drifting,
        "report": report.html_path,
        "mlflow_run": mlflow_run,
        "retrain_result": retrain,
    }
