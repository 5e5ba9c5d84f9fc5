"""Prefect flow ``train``: the model's recorded data -> Ray search -> MLflow -> challenger.

A table of contents over ``aipaas.training.train``: find the data version, train and
register, publish a summary people read in the Prefect UI. Nothing here is
retried: a failed suite, an invalid search space or a search where every
trial crashed would fail the same way again; the tracking server's
unreachability is already retried (bounded) in ``aipaas.training.registry.connect``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from aipaas.modeldef import ModelDefinition, load_definition
from aipaas.schemas import DatasetVersion
from aipaas.settings import get_settings
from aipaas.training.train import TrainResult, train_model
from flows._common import artifact_key


@task(name="load model definition", cache_policy=NO_CACHE)
def load_model_definition(model: str) -> ModelDefinition:
    return load_definition(model, get_settings().models_dir)


@task(name="read dataset version", cache_policy=NO_CACHE)
def read_dataset_version(dataset: str) -> DatasetVersion:
    from aipaas.datasets.ingest import recorded_version

    return recorded_version(dataset, get_settings())


@task(name="search, evaluate, register", cache_policy=NO_CACHE)
def train_and_register(definition: ModelDefinition, version: DatasetVersion) -> TrainResult:
    return train_model(definition, version, get_settings())


@task(name="publish training summary", cache_policy=NO_CACHE)
def publish_summary(result: TrainResult) -> None:
    create_markdown_artifact(
        markdown=summary_markdown(result), key=artifact_key("train", result.model)
    )


def summary_markdown(result: TrainResult) -> str:
    lines = [
        f"# {result.model} v{result.version} (alias challenger)",
        "",
        f"Data: `{result.dataset}` @ `{result.data_hash}`; MLflow run `{result.run_id}`.",
        f"Trials: {result.trials_ok} ok, {result.trials_failed} failed.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [
        f"| {k} | {v:.4f} |"
        for k, v in sorted(result.metrics.items())
        if k.startswith(("holdout_", "latency_", "cv_"))
    ]
    return "\n".join(lines) + "\n"


@flow(name="train")
def train_flow(model: str = "diagnosis") -> dict[str, Any]:
    """Train ``model`` on its dataset's recorded version; register it as challenger."""
    definition = load_model_definition(model)
    version = read_dataset_version(definition.dataset)
    result = train_and_register(definition, version)
    publish_summary(result)
    return result.to_dict()
