"""Flow ``lifecycle``: data, then train, then promote, as one run in the UI.

Each step is its own flow (a subflow here), so each is also runnable and
schedulable alone. A failed suite stops the run before training; a failed
gate ends it Failed with the gates table on the promote subflow, and the
champion untouched.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from aipaas.modeldef import load_definition
from aipaas.settings import get_settings


@task(name="dataset of model")
def dataset_of(model: str) -> str:
    settings = get_settings()
    return load_definition(model, settings.models_dir).dataset


@flow(name="lifecycle", persist_result=True, log_prints=True)
def lifecycle_flow(model: str = "diagnosis") -> dict[str, Any]:
    """Version the model's dataset, train a challenger on it, and promote it if it earns it."""
    from flows.data import data_flow
    from flows.promote import promote_flow
    from flows.train import train_flow

    dataset = data_flow(dataset_of(model))
    trained = train_flow(model)
    promoted = promote_flow(model, str(trained["version"]))
    return {"model": model, "dataset": dataset, "train": trained, "promote": promoted}
