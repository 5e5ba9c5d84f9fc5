"""Flow ``drift``: served profiles against the champion's reference, then the policy.

Runs on a schedule and whenever the profiler closes a window (see
:mod:`flows.triggers`). The comparison and the verdict are
:func:`aipaas.monitoring.drift.check_model`; this flow publishes them where
people look (a table artifact and a link to the HTML report in Prefect; the
check itself stores its run, report and profile in MLflow) and starts the
``retrain`` flow as a subflow when the model's drift policy is violated.
After a check, the checked version's model card is published again, so its
drift history is current wherever the card is read.
Only MLflow I/O is retried, and only when the server did not answer; a check
MLflow could not store still decides (its verdict is in the history).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from aipaas.modeldef import ModelDefinition
from aipaas.monitoring import drift
from aipaas.monitoring.drift import DriftOutcome
from aipaas.monitoring.drift_stats import DriftReport
from aipaas.settings import get_settings
from flows._common import artifact_key, registry_unreachable
from flows.tasks import load_model_definition, refresh_card


@task(name="compare with reference", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=registry_unreachable)  # fmt: skip
def compare_with_reference(definition: ModelDefinition) -> DriftReport:
    return drift.check_model(get_settings(), definition)


@task(name="publish report", cache_policy=NO_CACHE)
def publish_report(report: DriftReport) -> None:
    key = artifact_key("drift", report.model)
    description = (
        f"Drift of {report.model} v{report.version} on {report.rows} served rows: "
        f"{report.decision.verdict}. " + " ".join(report.decision.reasons)
    )
    if report.features:
        create_table_artifact(table=report.table(), key=key, description=description)
    else:
        create_markdown_artifact(markdown=f"**{description}**", key=key, description=description)
    if report.report_uri or report.html_path:
        create_link_artifact(
            link=report.report_uri or f"file://{report.html_path}",
            link_text=f"drift report {report.model} v{report.version}",
            key=f"{key}-html",
            description="HTML report: one plot per feature, reference against current",
        )


@flow(name="drift", persist_result=True, log_prints=True)
def drift_flow(model: str = "diagnosis") -> DriftOutcome:
    """Compare the traffic served since the last check with the champion's training data."""
    definition = load_model_definition(model)
    report = compare_with_reference(definition)
    publish_report(report)
    if report.rows:  # a check on record: the version's card shows it (a warning if it cannot)
        refresh_card(definition, report.version)
    mlflow_run = report.mlflow_run
    if not report.decision.retrain:
        return DriftOutcome(report, mlflow_run)
    from flows.retrain import retrain_flow

    get_run_logger().info("drift policy violated: %s", " ".join(report.decision.reasons))
    return DriftOutcome(report, mlflow_run, retrain_flow(model, reason=report.retrain_reason))
