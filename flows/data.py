"""Prefect flow ``data``: reproduce a dataset's DVC stages, push them, return its version.

DVC owns the DAG (ingest -> validate -> split, in dvc.yaml); this flow owns
when it runs, retries and the report people read in the Prefect UI. A failed
suite fails the run with the validation report attached as a markdown
artifact (published by the reproduce task's failure hook); only the push to
the DVC remote is retried, and only for errors that may pass
(:class:`aipaas.exceptions.RemoteError`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from aipaas.datasets import ingest
from aipaas.datasets.validation import render_markdown
from aipaas.exceptions import DataValidationError
from aipaas.schemas import DatasetVersion, ValidationReport
from aipaas.settings import get_settings
from flows._common import artifact_key, remote_unreachable


@flow(name="data")
def data_flow(dataset: str = "breast_cancer") -> DatasetVersion:
    """Ingest, validate and split ``dataset`` with DVC, push it, return its version."""
    reproduce_stages(dataset)
    publish_validation(dataset)
    push_outputs(dataset)
    return read_version(dataset)


def publish_failed_suite(task: Any, task_run: Any, state: Any) -> None:
    """Failure hook of the reproduce task: attach the report a failed suite carries."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, DataValidationError) and error.report is not None:
        publish_report(error.report)


@task(name="reproduce stages", on_failure=[publish_failed_suite])
def reproduce_stages(dataset: str) -> None:
    ingest.reproduce(dataset, get_settings())


@task(name="publish validation report")
def publish_validation(dataset: str) -> None:
    publish_report(ingest.read_report(dataset, get_settings()))


@task(
    name="push outputs",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=remote_unreachable,
)
def push_outputs(dataset: str) -> None:
    ingest.push_dataset(dataset, get_settings())


@task(name="read version")
def read_version(dataset: str) -> DatasetVersion:
    return ingest.recorded_version(dataset, get_settings())


def publish_report(report: ValidationReport) -> None:
    create_markdown_artifact(
        markdown=render_markdown(report),
        key=artifact_key("data-validation", report.dataset),
        description=f"Great Expectations suite result for {report.dataset}",
    )
