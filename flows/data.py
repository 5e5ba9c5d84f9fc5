"""Prefect flow ``data``: reproduce a dataset's DVC stages, push them, return its version.

DVC owns the DAG (ingest -> validate -> split, in dvc.yaml); this flow owns
when it runs, retries and the report people read in the Prefect UI. A failed
suite fails the run with the validation report attached as a markdown
artifact; only the push to the DVC remote is retried, and only for errors
that may pass (:class:`aipaas.exceptions.RemoteError`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from aipaas.datasets import ingest as data
from aipaas.datasets.validation import render_markdown
from aipaas.exceptions import DataValidationError
from aipaas.schemas import ValidationReport
from aipaas.settings import get_settings
from flows._common import artifact_key, remote_unreachable


@task(name="reproduce stages")
def reproduce_stages(dataset: str) -> None:
    try:
        data.reproduce(dataset, get_settings())
    except DataValidationError as err:
        if isinstance(err.report, ValidationReport):
            publish_report(err.report)
        raise


@task(
    name="push outputs",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=remote_unreachable,
)
def push_outputs(dataset: str) -> None:
    data.push_dataset(dataset, get_settings())


@task(name="read version")
def read_version(dataset: str) -> dict[str, Any]:
    return data.recorded_version(dataset, get_settings()).to_dict()


@task(name="publish validation report")
def publish_validation(dataset: str) -> None:
    publish_report(data.read_report(dataset, get_settings()))


def publish_report(report: ValidationReport) -> None:
    create_markdown_artifact(
        markdown=render_markdown(report),
        key=artifact_key("data-validation", report.dataset),
        description=f"Great Expectations suite result for {report.dataset}",
    )


@flow(name="data")
def data_flow(dataset: str = "breast_cancer") -> dict[str, Any]:
    """Ingest, validate and split ``dataset`` with DVC, push it, return its version."""
    reproduce_stages(dataset)
    publish_validation(dataset)
    push_outputs(dataset)
    return read_version(dataset)
