"""What every flow module shares: retry conditions, artifact keys, starting a deployment.

Importing this module does not import Prefect (the CLI imports it for
:func:`run_deployment_at`, and ``aipaas --help`` stays fast).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aipaas.exceptions import RegistryUnavailableError, RemoteError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings.legacy import Setting

    from aipaas.settings import Settings

TAGS = ("aipaas",)


def retry_only_on(*transient: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A ``retry_condition_fn`` retrying only ``transient`` errors.

    A failed validation or a failed gate is final: retrying it would only
    repeat the verdict, so anything else ends the task at once.
    """

    def condition(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except transient:
            return True
        except BaseException:  # noqa: BLE001 - any other failure is not transient
            return False
        return False

    return condition


registry_unreachable = retry_only_on(RegistryUnavailableError)
remote_unreachable = retry_only_on(RemoteError)


def artifact_key(prefix: str, name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{prefix}-" + "".join(c if c.isalnum() else "-" for c in name.lower())


def prefect_settings(settings: Settings) -> dict[Setting, str]:
    """The Prefect client settings that reach the platform's API: its URL and auth string.

    For ``prefect.settings.temporary_settings``: a client in this process then
    talks to ``settings.prefect_api_url`` and, in the team setup, sends the
    API auth string (the server answers 401 without it).
    """
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    updates: dict[Setting, str] = {PREFECT_API_URL: settings.prefect_api_url}
    auth = settings.prefect.auth_string.get_secret_value()
    if auth:
        updates[PREFECT_API_AUTH_STRING] = auth
    return updates


def run_deployment_at(
    api_url: str | None,
    name: str,
    parameters: Mapping[str, Any],
    *,
    wait_s: float = 0.0,
    poll_s: float = 2.0,
    tags: Sequence[str] = TAGS,
    idempotency_key: str | None = None,
    auth_string: str | None = None,
) -> FlowRun:
    """Ask the Prefect API at ``api_url`` for a run of deployment ``name``.

    The run is executed by a worker on the platform's work pool (the one
    ``aipaas up`` starts, or ``aipaas worker`` elsewhere), never in this
    process and never as a subflow, so it shows in the UI as a run of its own.

    Args:
        api_url: The platform's Prefect API (``settings.prefect_api_url``);
            None for the API this process is configured with (``PREFECT_API_URL``).
        name: ``"<flow>/<deployment>"``; deployment names equal flow names.
        parameters: The flow's parameters.
        wait_s: 0 creates the run and returns at once; otherwise the run is
            followed until it ends or ``wait_s`` passes (its state then says which).
        poll_s: How often a followed run's state is read.
        tags: Tags on the run, to find it in the UI.
        idempotency_key: The same key never creates a second run (a retried
            request whose answer was lost).
        auth_string: The API auth string (``settings.prefect.auth_string``) when
            the server has one; None for this process's ``PREFECT_API_AUTH_STRING``.

    Returns:
        The flow run as last read (``.state`` tells whether it completed).
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates: dict[Setting, str] = {}
    if api_url:
        updates[PREFECT_API_URL] = api_url
    if auth_string:
        updates[PREFECT_API_AUTH_STRING] = auth_string
    with temporary_settings(updates=updates or None):
        flow_run = run_deployment(
            name,
            parameters=dict(parameters),
            timeout=wait_s,
            poll_interval=poll_s,
            tags=list(tags),
            idempotency_key=idempotency_key,
            as_subflow=False,
        )
    assert isinstance(flow_run, FlowRun)  # run_deployment is sync outside async code
    return flow_run
