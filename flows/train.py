"""Prefect flow ``train``: the model's recorded data -> Ray search -> MLflow -> challenger.

A table of contents over :mod:`aipaas.training.train`: one task per named
step (prepare data, search, refit, evaluate, log and register), so the
Prefect UI shows where a training is and where it failed, then a summary
people read in the UI. The model definition is loaded once and passed down.

Nothing here is retried: a failed suite, an invalid search space or a search
where every trial crashed would fail the same way again; the tracking
server's unreachability is already retried (bounded) in
``aipaas.training.registry.connect``. The steps pass DataFrames and a fitted
model between them in this process: their results are never persisted.

While the search runs, a progress artifact (``train-progress-<model>``) moves
as trials finish, its description saying trials done of total and the best
score so far, and each finished trial is a line in the search task's log:
the flow hands :class:`ArtifactProgress` to the core, which reports to it.

Once registered, the version gets its model card (:mod:`aipaas.monitoring.card`),
stored with its run; the promote flow refreshes it after each decision. A card
is documentation, not a gate: when it cannot be made, its task fails (red in
the UI, with the reason) and the flow logs a warning and goes on
(:func:`flows.tasks.refresh_card`).
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from aipaas.datasets.ingest import recorded_version
from aipaas.modeldef import ModelDefinition
from aipaas.progress import StageEvent, TrialEvent, format_stage, format_trial, stage
from aipaas.schemas import DatasetVersion
from aipaas.settings import get_settings
from aipaas.training import tags
from aipaas.training import train as steps
from aipaas.training.train import FittedModel, ModelEvaluation, PreparedData, TrainResult
from aipaas.training.tune import SearchResult
from flows._common import artifact_key
from flows.tasks import load_model_definition, refresh_card

SHOWN_METRICS = (tags.HOLDOUT_PREFIX, tags.LATENCY_PREFIX, tags.CV_PREFIX)


class ArtifactProgress:
    """The search's progress as a Prefect progress artifact, and its trials as log lines.

    The artifact is created when the search starts (0 %) and updated as each
    trial finishes; it is reached through the task run's client, from the
    thread the search runs in.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.artifact_id: UUID | None = None

    def on_stage(self, event: StageEvent) -> None:
        get_run_logger().info(format_stage(event))
        if event.stage == steps.SEARCH and event.status == "started":
            self.artifact_id = self._create(f"search started: {event.detail}")

    def on_trial(self, event: TrialEvent) -> None:
        get_run_logger().info(format_trial(event))
        artifact_id = self.artifact_id or self._create("search started")
        self.artifact_id = artifact_id
        best = f"best {event.metric} {event.best:.4f}" if event.best is not None else "no score"
        update_progress_artifact(
            artifact_id,
            progress=100.0 * event.done / max(event.total, 1),
            description=f"{event.done}/{event.total} trials, {best}",
        )

    def _create(self, description: str) -> UUID:
        artifact_id = create_progress_artifact(progress=0.0, key=self.key, description=description)
        assert isinstance(artifact_id, UUID)  # sync outside async code
        return artifact_id


@task(name="read dataset version", cache_policy=NO_CACHE, persist_result=False)
def read_dataset_version(definition: ModelDefinition) -> DatasetVersion:
    return recorded_version(definition.dataset, get_settings())


@task(name="prepare data", cache_policy=NO_CACHE, persist_result=False)
def prepare_data(definition: ModelDefinition, version: DatasetVersion) -> PreparedData:
    return steps.prepare_data(definition, version, get_settings())


@task(name="search", cache_policy=NO_CACHE, persist_result=False)
def search(
    definition: ModelDefinition, data: PreparedData, progress: ArtifactProgress
) -> SearchResult:
    s = get_settings()
    with stage(progress, steps.SEARCH, f"{s.tune.num_samples} trials"):
        return steps.search(definition, data, s, progress)


@task(name="refit", cache_policy=NO_CACHE, persist_result=False)
def refit(definition: ModelDefinition, data: PreparedData, result: SearchResult) -> FittedModel:
    return steps.refit(definition, data, result)


@task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate(
    definition: ModelDefinition, data: PreparedData, fitted: FittedModel
) -> ModelEvaluation:
    return steps.evaluate(definition, data, fitted, get_settings())


@task(name="log and register", cache_policy=NO_CACHE, persist_result=False)
def log_and_register(
    definition: ModelDefinition, data: PreparedData, fitted: FittedModel
) -> TrainResult:
    return steps.log_and_register(definition, data, fitted)


@task(name="publish training summary", cache_policy=NO_CACHE, persist_result=False)
def publish_summary(result: TrainResult) -> None:
    create_markdown_artifact(
        markdown=summary_markdown(result), key=artifact_key("train", result.model)
    )


def summary_markdown(result: TrainResult) -> str:
    lines = [
        f"# {result.model} v{result.version} (alias {tags.CHALLENGER})",
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
        if k.startswith(SHOWN_METRICS)
    ]
    return "\n".join(lines) + "\n"


@flow(name="train")
def train_flow(model: str = "diagnosis") -> TrainResult:
    """Train ``model`` on its dataset's recorded version; register it as challenger."""
    definition = load_model_definition(model)
    data = prepare_data(definition, read_dataset_version(definition))
    progress = ArtifactProgress(artifact_key("train-progress", model))
    fitted = refit(definition, data, search(definition, data, progress))
    evaluate(definition, data, fitted)
    result = log_and_register(definition, data, fitted)
    publish_summary(result)
    refresh_card(definition, result.version)
    return result
