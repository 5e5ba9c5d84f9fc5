"""The deployments are registered on the platform's process work pool, with their schedules.

Registration is what ``aipaas up`` (``aipaas worker --register``) does against
the session's Prefect harness server: the pool is created, each flow is a
deployment named after it on that pool, with the crons set below, its
default parameters, a module-path entrypoint (importable wherever aipaas is
installed) and the pull step that moves a run into the worker's project.
A second registration changes nothing. A worker executing the runs is
``tests/e2e/test_worker.py``.
"""

from __future__ import annotations

import pytest

from aipaas.settings import Settings
from tests.support.registry import MODEL

pytestmark = pytest.mark.slow

# Every flow is a deployment named after it; lifecycle and drift carry the crons set below.
EXPECTED_CRONS = {
    "data": [],
    "train": [],
    "promote": [],
    "lifecycle": ["0 3 * * *"],
    "drift": ["*/5 * * * *"],
    "retrain": [],
    "batch": [],
    "canary": [],
}


@pytest.fixture
def harness_settings(settings: Settings, prefect_harness: None) -> Settings:
    from prefect.settings import PREFECT_API_URL

    prefect = settings.prefect.model_copy(
        update={
            "api_url": str(PREFECT_API_URL.value()),
            "work_pool": "aipaas-test",
            "lifecycle_cron": EXPECTED_CRONS["lifecycle"][0],
            "drift_cron": EXPECTED_CRONS["drift"][0],
        }
    )
    serving = settings.serving.model_copy(update={"default_model": MODEL})
    return settings.model_copy(update={"prefect": prefect, "serving": serving})


def test_deployments_are_registered_on_the_work_pool_with_their_schedules(
    harness_settings: Settings,
) -> None:
    from prefect.client.orchestration import get_client

    from flows.deployments import register

    s = harness_settings
    assert register(s) == list(EXPECTED_CRONS)
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(s.prefect.work_pool)
        found = {d.name: d for d in client.read_deployments() if d.name in EXPECTED_CRONS}
    assert pool.type == "process"
    assert set(found) == set(EXPECTED_CRONS)
    assert {d.work_pool_name for d in found.values()} == {s.prefect.work_pool}
    crons = {name: [sch.schedule.cron for sch in d.schedules] for name, d in found.items()}
    assert crons == EXPECTED_CRONS
    assert found["data"].parameters == {}
    for name in EXPECTED_CRONS.keys() - {"data"}:
        assert found[name].parameters == {"model": MODEL}, name
    assert all("aipaas" in d.tags for d in found.values())
    # The code comes from the installed package; the run works in the worker's project.
    assert found["lifecycle"].entrypoint == "flows.lifecycle.lifecycle_flow"
    assert found["lifecycle"].pull_steps == [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": "{{ $AIPAAS_PROJECT_DIR }}"
            }
        }
    ]

    # Idempotent: the same deployments, one schedule each, nothing added.
    assert register(s) == list(EXPECTED_CRONS)
    with get_client(sync_client=True) as client:
        again = {d.name: d for d in client.read_deployments() if d.name in EXPECTED_CRONS}
    assert {n: d.id for n, d in again.items()} == {n: d.id for n, d in found.items()}
    assert {n: len(d.schedules) for n, d in again.items()} == {
        n: len(c) for n, c in EXPECTED_CRONS.items()
    }
    # A cron emptied in the settings unschedules the deployment at the next `up`.
    unscheduled = s.model_copy(
        update={"prefect": s.prefect.model_copy(update={"lifecycle_cron": ""})}
    )
    register(unscheduled)
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("lifecycle/lifecycle").schedules == []
        assert len(client.read_deployment_by_name("drift/drift").schedules) == 1


def test_a_pool_of_another_type_is_refused_with_the_setting_to_change(
    harness_settings: Settings,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from aipaas.exceptions import ConfigurationError
    from flows.deployments import register

    s = harness_settings.model_copy(
        update={"prefect": harness_settings.prefect.model_copy(update={"work_pool": "k8s-pool"})}
    )
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="k8s-pool", type="kubernetes"))
    with pytest.raises(ConfigurationError, match="AIPAAS_PREFECT__WORK_POOL"):
        register(s)
