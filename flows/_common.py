"""What every flow module shares: transient-error retry conditions and artifact keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aipaas.exceptions import RegistryUnavailableError, RemoteError


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
