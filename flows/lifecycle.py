"""Flow ``lifecycle``: data, then train, then promote, as one run in the UI.

Each step is its own flow (a subflow here), so each is also runnable and
schedulable alone; each subflow loads the model definition once for its
run, and this one reads only the dataset's name from it. A failed suite
stops the run before training; a failed gate ends it Failed with the gates
table on the promote subflow, and the champion untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prefect import flow

from aipaas.schemas import DatasetVersion
from aipaas.training.promotion_log import PromotionRecord
from aipaas.training.train import TrainResult
from flows.data import data_flow
from flows.promote import promote_flow
from flows.tasks import load_model_definition
from flows.train import train_flow


@dataclass(frozen=True)
class LifecycleResult:
    """What one lifecycle run produced: the data version, the training, the decision."""

    model: str
    dataset: DatasetVersion
    train: TrainResult
    promote: PromotionRecord

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@flow(name="lifecycle", persist_result=True, log_prints=True)
def lifecycle_flow(model: str = "diagnosis") -> LifecycleResult:
    """Version the model's dataset, train a challenger on it, and promote it if it earns it."""
    dataset = data_flow(load_model_definition(model).dataset)
    trained = train_flow(model)
    promoted = promote_flow(model, trained.version)
    return LifecycleResult(model, dataset, trained, promoted)
