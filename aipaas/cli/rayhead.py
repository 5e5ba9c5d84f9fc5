"""``aipaas ray-head``: the Ray head node ``aipaas up`` keeps for its flow runs."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from aipaas.cli._app import app, settings


@app.command("ray-head")
def ray_head_cmd(
    port: Annotated[int, typer.Option(min=1, max=65535, help="The head's GCS port.")],
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    num_cpus: Annotated[
        int | None, typer.Option(min=1, help="CPUs the head offers (default ray.num_cpus).")
    ] = None,
    object_store_mb: Annotated[
        int | None,
        typer.Option(min=80, help="Object store size (default ray.object_store_memory_mb)."),
    ] = None,
) -> None:
    """Run one Ray head node in the foreground until Ctrl-C (``up`` starts it).

    A start that times out (Ray gives a node 30 s to register) is tried
    again, up to five times. Flow runs join it with
    AIPAAS_RAY__ADDRESS=HOST:PORT; sized by the ray settings (CPUs, object
    store, dashboard).
    """
    from aipaas.ops.rayhead import run_head

    ray = settings().ray
    sized = ray.model_copy(
        update={
            "num_cpus": num_cpus or ray.num_cpus,
            "object_store_memory_mb": object_store_mb or ray.object_store_memory_mb,
        }
    )
    sys.exit(run_head(sized, host, port))
