"""Ray, started or joined once per process.

Local Ray by default, bounded so it fits beside the rest of the platform on a
small machine (the object store is capped by ``settings.ray``). With
``RAY_ADDRESS`` (or ``AIPAAS_RAY__ADDRESS``) the same code joins a cluster
instead: nothing else changes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from aipaas.exceptions import ConfigurationError
from aipaas.settings import RaySettings

MIB = 1024 * 1024


@dataclass(frozen=True)
class RayInfo:
    """What this process is connected to, for logs and MLflow params."""

    address: str
    nodes: int
    cpus: float
    joined_cluster: bool


def ensure_ray(ray_settings: RaySettings) -> RayInfo:
    """Start local Ray or join the configured cluster; a no-op when already up.

    ``ray.init()`` costs seconds and a second call in the same process would
    fail, so every caller goes through here.
    """
    # Under `uv run`, Ray would package the whole project as a runtime env for
    # every worker (seconds per start); workers here share this environment.
    # Read when ray is first imported, so set before importing it.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    address = ray_settings.address or os.environ.get("RAY_ADDRESS", "")
    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ConfigurationError(
                    f"cannot join the Ray cluster at {address!r} ({err}); start it "
                    "(`ray start --head`) or unset RAY_ADDRESS / AIPAAS_RAY__ADDRESS "
                    "to use local Ray"
                ) from err
        else:
            _start_local(ray_settings)
    return ray_info()


# Ray 2.60 gives a new node 30 s (hard-coded) to register with its GCS; on a
# machine busy with other work (load average 10 on 2 cores, several Ray
# instances starting at once) it sometimes needs longer, and raises a bare
# Exception with this text; twice in a row was seen. Start again, a few
# seconds later, up to three times in all.
_SLOW_START = "timed out during startup"
START_ATTEMPTS = 3
RETRY_PAUSE_S = 5.0


def _start_local(ray_settings: RaySettings) -> None:
    import ray

    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            # "local": always a new instance of our own. Without it ray.init()
            # joins whatever Ray another program left on this machine
            # (/tmp/ray/ray_current_cluster), e.g. a test's two-node cluster.
            ray.init(
                address="local",
                num_cpus=ray_settings.num_cpus,
                object_store_memory=ray_settings.object_store_memory_mb * MIB,
                include_dashboard=ray_settings.include_dashboard,
                log_to_driver=False,
            )
            return
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception; only this one is retried
            if _SLOW_START not in str(err) or attempt == START_ATTEMPTS:
                raise
            ray.shutdown()
            time.sleep(RETRY_PAUSE_S * attempt)


def ray_info() -> RayInfo:
    """The connected Ray's size; call after :func:`ensure_ray`."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    ctx = ray.get_runtime_context()
    return RayInfo(
        address=str(getattr(ctx, "gcs_address", "") or ""),
        nodes=len(nodes),
        cpus=float(ray.cluster_resources().get("CPU", 0.0)),
        joined_cluster=bool(os.environ.get("RAY_ADDRESS")) or len(nodes) > 1,
    )


def shutdown_ray() -> None:
    """Disconnect (and stop local Ray); for benchmarks and tests that need a fresh one."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
