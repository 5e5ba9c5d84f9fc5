"""Serve every flow as a deployment, with the schedules the settings give.

``aipaas up`` runs this module as its runner process (``python -m
flows.deployments``, with ``PREFECT_API_URL`` pointing at the platform's
Prefect server): it registers the deployments, which then show in the UI
with their schedules, and executes their runs (scheduled, started from the
UI, or by :func:`flows._common.run_deployment_at`). Deployment names equal
flow names, so a run is asked for as ``"lifecycle/lifecycle"``.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from aipaas.settings import Settings, get_settings
from flows._common import TAGS
from flows.data import data_flow
from flows.drift import drift_flow
from flows.lifecycle import lifecycle_flow
from flows.promote import promote_flow
from flows.retrain import retrain_flow
from flows.train import train_flow

# Concurrent flow runs this runner executes (a paused promotion holds one).
RUN_LIMIT = 4


def deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments to serve: name, schedule and default parameters of each.

    Lifecycle and drift run on the crons the settings give (none when empty);
    every other flow runs when asked (the UI, ``run_deployment_at``, a
    closed profile window).
    """
    model = {"model": settings.serving.default_model}
    table: list[tuple[Any, str, dict[str, Any]]] = [
        (data_flow, "", {}),
        (train_flow, "", model),
        (promote_flow, "", model),
        (lifecycle_flow, settings.prefect.lifecycle_cron, model),
        (drift_flow, settings.prefect.drift_cron, model),
        (retrain_flow, "", model),
    ]
    return [
        flow.to_deployment(
            name=flow.name,
            cron=cron or None,
            parameters=parameters,
            tags=list(TAGS),
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for flow, cron, parameters in table
    ]


def main() -> None:
    serve(*deployments(get_settings()), limit=RUN_LIMIT, print_starting_message=True)


if __name__ == "__main__":
    main()
