"""Flow ``batch``: the champion (or a pinned version) scores a dataset version or a file.

The steps are :mod:`aipaas.inference.batch`'s, one task each, so the Prefect
UI shows where a job is and where it failed: load the model, read the input,
check it against the signature, score it on Ray (``up``'s head when the run
is on the platform's worker), publish the output with its lineage (MLflow run
and audit record). Only registry I/O is retried, and only when MLflow did not
answer: a bad input is final. Who asked is this flow run unless ``who`` names
someone.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from aipaas.inference import batch
from aipaas.inference.batch import BatchInput, BatchResult, Prepared, Scored
from aipaas.inference.predictor import LoadedModel
from aipaas.modeldef import load_definition
from aipaas.settings import get_settings
from flows._common import artifact_key, registry_unreachable


def this_run() -> str:
    """Who asked, when nobody is named: this flow run, as the audit trail names it."""
    return f"flow-run {flow_run.id} ({flow_run.flow_name})"


@task(name="load model", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=5, retry_condition_fn=registry_unreachable)  # fmt: skip
def load_model(model: str, version: str | None) -> LoadedModel:
    return batch.load_scorer(get_settings(), model, version)


@task(name="read input", cache_policy=NO_CACHE, persist_result=False)
def read_input(model: str, dataset: str | None, input_file: str | None) -> BatchInput:
    s = get_settings()
    if dataset is None and input_file is None:  # a run with no input: the model's own dataset
        dataset = load_definition(model, s.models_dir).dataset
    path = Path(input_file) if input_file else None
    return batch.read_input(s, dataset=dataset, input_file=path)


@task(name="choose output", cache_policy=NO_CACHE)
def choose_output(scorer: LoadedModel, batch_input: BatchInput, output: str | None) -> Path:
    return batch.output_path(get_settings(), Path(output) if output else None, scorer, batch_input)


@task(name="check against signature", cache_policy=NO_CACHE, persist_result=False)
def check_input(scorer: LoadedModel, batch_input: BatchInput) -> Prepared:
    return batch.prepare(scorer, batch_input)


@task(name="score on Ray", cache_policy=NO_CACHE, persist_result=False)
def score(scorer: LoadedModel, prepared: Prepared, workers: int | None) -> Scored:
    return batch.score(get_settings(), scorer, prepared, workers=workers)


@task(name="publish", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=registry_unreachable)  # fmt: skip
def publish(
    scorer: LoadedModel, batch_input: BatchInput, scored: Scored, output: Path, who: str
) -> BatchResult:
    return batch.publish(get_settings(), scorer, batch_input, scored, output, who=who)


@task(name="report", cache_policy=NO_CACHE)
def report(result: BatchResult) -> None:
    create_table_artifact(
        table=[{"field": k, "value": str(v)} for k, v in result.to_dict().items()],
        key=artifact_key("batch", result.model),
        description=(
            f"{result.model} v{result.model_version} scored {result.rows} rows of "
            f"{result.input} -> {result.output}"
        ),
    )


@flow(name="batch", persist_result=True, log_prints=True)
def batch_flow(
    model: str = "diagnosis",
    dataset: str | None = None,
    input_file: str | None = None,
    output: str | None = None,
    version: str | None = None,
    who: str | None = None,
    workers: int | None = None,
) -> BatchResult:
    """Score ``dataset`` (NAME or NAME@VERSION) or ``input_file`` with ``model``'s champion.

    With neither, the model's own dataset at the version this checkout records.
    """
    scorer = load_model(model, version)
    batch_input = read_input(model, dataset, input_file)
    destination = choose_output(scorer, batch_input, output)
    prepared = check_input(scorer, batch_input)
    scored = score(scorer, prepared, workers)
    result = publish(scorer, batch_input, scored, destination, who or this_run())
    report(result)
    return result
