"""One Ray head node that ``aipaas up`` keeps running, so no flow run pays Ray's start.

A flow run on the worker joins it through ``AIPAAS_RAY__ADDRESS`` (connecting
a driver takes about a second; starting a node takes 5 to 25 s here, and Ray
2.60 gives a new node a hard-coded 30 s to register with its GCS, which a
busy machine sometimes misses). :func:`run_head` is ``aipaas ray-head``:
``ray start --head --block`` on loopback, started again (up to
:data:`START_ATTEMPTS` times) when it dies before it is ready, so that slow
start is paid, and retried, once per ``up`` instead of once per flow run.
When it prints :data:`READY_LINE`, ``up`` starts the worker.

Without ``up`` (``aipaas train`` in a terminal, the tests of training) a
process still starts Ray itself (:mod:`aipaas.training.raycluster`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from aipaas.settings import RaySettings

READY_LINE = "aipaas: ray head ready at"
START_ATTEMPTS = 5
RETRY_PAUSE_S = 5.0
# `ray start` prints this once the node has registered with its GCS.
_RAY_STARTED = "Ray runtime started."
_STOP_GRACE_S = 3.0


def head_command(ray_settings: RaySettings, host: str, port: int) -> list[str]:
    """``ray start --head --block`` bounded like a local Ray (CPUs, object store, no dashboard)."""
    ray_cli = Path(sys.executable).with_name("ray")
    argv = [str(ray_cli)] if ray_cli.is_file() else [sys.executable, "-m", "ray.scripts.scripts"]
    argv += [
        "start",
        "--head",
        "--block",
        f"--node-ip-address={host}",
        f"--port={port}",
        f"--object-store-memory={ray_settings.object_store_memory_mb * 1024 * 1024}",
        f"--include-dashboard={str(ray_settings.include_dashboard).lower()}",
        "--disable-usage-stats",
    ]
    if ray_settings.num_cpus is not None:
        argv.append(f"--num-cpus={ray_settings.num_cpus}")
    return argv


def run_head(ray_settings: RaySettings, host: str, port: int) -> int:
    """Run the head node in the foreground until SIGTERM/SIGINT; its exit code.

    A start that fails (``ray start`` exits before printing that the runtime
    started) is tried again after a pause; a head that dies after it was
    ready is not restarted here (the supervisor sees this process end).
    """
    stopping = False
    child: subprocess.Popen[str] | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        # `ray start` alone drains its node for up to 30 s, and longer once
        # its GCS is gone; its GCS, raylet and workers (all in this process
        # group when the supervisor started us) stop at once on their own
        # SIGTERM, and `ray start` gets a moment before it is killed.
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGTERM)
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            timer = threading.Timer(_STOP_GRACE_S, child.kill)
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    argv = head_command(ray_settings, host, port)
    for attempt in range(1, START_ATTEMPTS + 1):
        print(f"aipaas: starting the ray head (attempt {attempt}): {' '.join(argv)}", flush=True)
        child = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        ready = _relay_until_ready(child, host, port)
        if ready:
            _relay_rest(child)
        code = _wait(child)
        if ready or stopping:
            return 0 if stopping else code
        print(f"aipaas: the ray head exited with code {code} while starting", flush=True)
        if attempt < START_ATTEMPTS:
            time.sleep(RETRY_PAUSE_S * attempt)
    return 1


def _relay_until_ready(child: subprocess.Popen[str], host: str, port: int) -> bool:
    """Copy the child's output to ours; True once Ray says its runtime started."""
    assert child.stdout is not None
    for line in child.stdout:
        sys.stdout.write(line)
        if _RAY_STARTED in line:
            print(f"{READY_LINE} {host}:{port}", flush=True)
            return True
    return False


def _relay_rest(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        sys.stdout.write(line)
    sys.stdout.flush()


def _wait(child: subprocess.Popen[str]) -> int:
    try:
        return child.wait(_STOP_GRACE_S if child.poll() is None else None)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()
