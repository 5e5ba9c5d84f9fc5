"""Serve every flow as a deployment, with the schedules the settings give.

``aipaas up`` runs this module as its runner process (``python -m
flows.deployments``, with ``PREFECT_API_URL`` pointing at the platform's
Prefect server): it registers the deployments, which then show in the UI
with their schedules, and executes their runs (scheduled, started from the
UI, or by ``run_deployment``). Deployment names equal flow names, so a run is
asked for as ``"lifecycle/lifecycle"``.

Flows written by other areas (train, drift, retrain) are served when their
module is installed; a module that exists but fails to import is an error.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from aipaas.settings import Settings, get_settings

TAGS = ["aipaas"]
# Concurrent flow runs this runner executes (a paused promotion holds one).
RUN_LIMIT = 4


def _flow(module: str, name: str) -> Any | None:
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), name)


def deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments to serve: name, schedule and default parameters of each."""
    model = settings.serving.default_model
    wanted: list[tuple[str, str, str | None, dict[str, Any]]] = [
        ("flows.data", "data_flow", None, {}),
        ("flows.train", "train_flow", None, {"model": model}),
        ("flows.promote", "promote_flow", None, {"model": model}),
        ("flows.lifecycle", "lifecycle_flow", settings.prefect.lifecycle_cron, {"model": model}),
        ("flows.drift", "drift_flow", settings.prefect.drift_cron, {"model": model}),
        ("flows.retrain", "retrain_flow", None, {"model": model}),
    ]
    out: list[RunnerDeployment] = []
    for module, attr, cron, parameters in wanted:
        flow = _flow(module, attr)
        if flow is None:
            continue
        out.append(
            flow.to_deployment(
                name=flow.name,
                cron=cron or None,
                parameters=parameters,
                tags=TAGS,
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return out


def main() -> None:
    serve(*deployments(get_settings()), limit=RUN_LIMIT, print_starting_message=True)


if __name__ == "__main__":
    main()
