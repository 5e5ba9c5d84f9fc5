"""Every flow as a deployment on the platform's Prefect process work pool.

``aipaas up`` calls :func:`register` once the Prefect server answers: it
creates the process work pool ``prefect.work_pool`` if missing and creates or
updates the eight deployments on it (idempotent: a second ``up`` changes
nothing), which then show in the UI with their schedules. Runs (scheduled,
started from the UI, or by :func:`flows._common.run_deployment_at`) are
executed by whichever worker polls the pool: the one ``up`` starts, or
``aipaas worker`` on another machine. Deployment names equal flow names, so a
run is asked for as ``"lifecycle/lifecycle"``.

How a worker finds the code, without a Docker image: entrypoints are module
paths (``flows.lifecycle.lifecycle_flow``), importable wherever the aipaas
package is installed, so no code is pulled or copied. The one pull step moves
the flow run into the worker's project directory (``{{ $AIPAAS_PROJECT_DIR }}``,
resolved from the worker's own environment when the run starts, which
``aipaas worker`` sets), so ``.env`` and ``params.yaml`` there configure the
run as they configure every other ``aipaas`` process on that machine: the
path is the worker's, not the one of the machine that registered it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.deployments.runner import EntrypointType, RunnerDeployment

from aipaas.settings import Settings, get_settings
from flows._common import TAGS, prefect_settings
from flows.batch import batch_flow
from flows.canary import canary_flow
from flows.data import data_flow
from flows.drift import drift_flow
from flows.lifecycle import lifecycle_flow
from flows.promote import promote_flow
from flows.retrain import retrain_flow
from flows.train import train_flow

PROJECT_DIR_VAR = "AIPAAS_PROJECT_DIR"
PULL_STEPS: list[dict[str, Any]] = [
    {
        "prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $" + PROJECT_DIR_VAR + " }}"
        }
    }
]


def deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments: name, schedule and default parameters of each, on the work pool.

    Lifecycle and drift run on the crons the settings give (none when empty);
    every other flow runs when asked (the UI, ``run_deployment_at``, a
    closed profile window, ``aipaas promote --canary ... --detach``).
    """
    model = {"model": settings.serving.default_model}
    table: list[tuple[Any, str, dict[str, Any]]] = [
        (data_flow, "", {}),
        (train_flow, "", model),
        (promote_flow, "", model),
        (lifecycle_flow, settings.prefect.lifecycle_cron, model),
        (drift_flow, settings.prefect.drift_cron, model),
        (retrain_flow, "", model),
        (batch_flow, "", model),
        (canary_flow, "", model),
    ]
    return [
        flow.to_deployment(
            name=flow.name,
            cron=cron or None,
            parameters=parameters,
            tags=list(TAGS),
            entrypoint_type=EntrypointType.MODULE_PATH,
            work_pool_name=settings.prefect.work_pool,
        )
        for flow, cron, parameters in table
    ]


def ensure_work_pool(settings: Settings) -> None:
    """Create the process work pool if it does not exist (its settings are left alone)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = settings.prefect.work_pool
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:  # another `up` created it meanwhile
                pass
            return
    if pool.type != "process":
        from aipaas.exceptions import ConfigurationError

        raise ConfigurationError(
            f"Prefect work pool {name!r} exists with type {pool.type!r}, not 'process'; "
            "delete it in the Prefect UI or set AIPAAS_PREFECT__WORK_POOL to another name"
        )


def register(settings: Settings) -> list[str]:
    """Create the work pool and create or update every deployment on it; their names.

    Talks to ``settings.prefect_api_url`` with ``prefect.auth_string``, whatever
    this process's Prefect settings say.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.settings import temporary_settings

    names = []
    with temporary_settings(updates=prefect_settings(settings)):
        ensure_work_pool(settings)
        with get_client(sync_client=True) as client:
            for deployment in deployments(settings):
                deployment_id = deployment.apply(work_pool_name=settings.prefect.work_pool)
                assert isinstance(deployment_id, UUID)  # apply() is sync outside async code
                client.update_deployment(deployment_id, DeploymentUpdate(pull_steps=PULL_STEPS))
                names.append(deployment.name)
    return names


def main() -> None:
    """``python -m flows.deployments``: register the pool and deployments, then exit."""
    names = register(get_settings())
    print(f"registered on work pool {get_settings().prefect.work_pool!r}: {', '.join(names)}")


if __name__ == "__main__":
    main()
