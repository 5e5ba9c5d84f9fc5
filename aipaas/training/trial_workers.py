"""Long-lived, warm Ray actors that run the search's trials: one per CPU Ray sees.

Why not a new process per search: starting a Ray worker that imports
LightGBM and scikit-learn costs 2-4 s on a small machine, and Ray Tune starts
new trial actors on every ``Tuner.fit()`` (measured here: a Tune search
whose trials do nothing costs 3.5-6.9 s; 8 calls to an already warm actor
take 4 ms in all). A worker here imports the libraries once, when it starts,
and then runs one trial per method call for as long as Ray lives.

Invariants:

* **They reserve no CPU** (``num_cpus=0``): idle between searches, they must
  not starve Ray's other work (evaluation tasks, batch scoring, Serve). The
  search bounds its concurrency in the driver instead.
* **Placed per node**: slot ``i`` of node ``n`` is pinned to ``n``, one slot
  per CPU of an alive node, and slots are handed out round
  robin over the nodes, so two trials at once on a two-node cluster use both.
  Only as many workers start as a search runs trials at once.
* **Found by name** in the ``aipaas`` namespace. When this process joined a
  Ray it did not start (``aipaas up``'s head node, a cluster), the workers
  are ``detached``: the next flow run, another process, finds them warm.
  When this process started its own Ray, they belong to it and die with it.
* **Never stale**: the names carry a fingerprint of the code they run
  (:func:`fingerprint`); building a session's pool kills this namespace's
  workers with another fingerprint, so a long-lived head never scores with
  the code of an older aipaas.
* **A dead worker is replaced**: the trial it was running fails (the caller
  sees :class:`ray.exceptions.RayActorError`), :meth:`Pool.replace` starts a
  new one under the same name for the next trial.

Handles are cached per Ray session (GCS address and session name): a
process that shuts Ray down and starts it again looks them up afresh.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

NAMESPACE = "aipaas"
PREFIX = "trial-worker-"
# Imported by each worker when it starts, so no trial pays for them.
WARM_MODULES = (
    "numpy",
    "pandas",
    "sklearn.model_selection",
    "sklearn.metrics",
    "lightgbm",
    "aipaas.training.metrics",
    "aipaas.training.tune",
)
# The code a worker runs: a change to any of these makes its workers stale.
_CODE = (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "modeldef.py")
PING_TIMEOUT_S = 1.0  # a warm worker answers in a millisecond
_REPLACE_WAIT_S = 10.0  # for the GCS to release a dead worker's name

# Workers this process started (not found warm), for tests and the benchmark.
started = 0


@cache
def fingerprint() -> str:
    """A short hash of aipaas/training/*.py and aipaas/modeldef.py (about a millisecond)."""
    digest = hashlib.sha256()
    files = sorted(_CODE[0].glob("*.py")) + [_CODE[1]]
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def lifetime(started_here: bool) -> str | None:
    """``detached`` on a Ray this process joined (the next process reuses the workers).

    On a Ray this process started, the workers are its own (None: Ray's
    default) and stop with it: nothing else could reuse them.
    """
    return None if started_here else "detached"


def ray_started_here() -> bool:
    """Whether this process's ``ray.init`` started the Ray it is connected to.

    Ray keeps this on its private node object; if that moves, the answer is
    True (workers owned by this process: nothing outlives it).
    """
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return bool(getattr(node, "ray_init_cluster", True))


class TrialWorker:
    """One warm process; runs ``fn(*args)`` per call (object refs in args resolved by Ray)."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        # Trials run side by side, one per CPU: one OpenMP thread each,
        # unless the environment says otherwise (Ray does the same).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:  # a library only some models use
                pass

    def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def run(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


@dataclass
class Worker:
    """A worker as the driver holds it."""

    name: str
    node_id: str
    handle: Any  # ray.actor.ActorHandle


@dataclass
class Pool:
    """This Ray session's workers, by name."""

    key: tuple[str, str]
    detached: bool
    workers: dict[str, Worker] = field(default_factory=dict)

    def take(self, count: int) -> list[Worker]:
        """``count`` live workers (started if missing), spread over the alive nodes.

        Workers this pool already held are pinged first (a millisecond when
        warm): one killed while idle is replaced now, not found dead by a trial.
        """
        out, held = [], []
        for name, node_id in _slots(count):
            worker = self.workers.get(name)
            if worker is None:
                handle = _find_or_start(name, node_id, self.detached)
                worker = self.workers[name] = Worker(name, node_id, handle)
            else:
                held.append(worker)
            out.append(worker)
        for dead in _dead(held):
            fresh = self.replace(dead)
            out = [w for w in out if w is not dead] + ([fresh] if fresh else [])
        return out

    def replace(self, dead: Worker) -> Worker | None:
        """A new worker under a dead one's name; None if its node is gone or its name is kept."""
        import ray

        self.workers.pop(dead.name, None)
        ray.kill(dead.handle, no_restart=True)  # a no-op when it is already dead
        if dead.node_id not in {n["NodeID"] for n in ray.nodes() if n.get("Alive")}:
            return None  # its node is gone: the next search spreads over the others
        deadline = time.monotonic() + _REPLACE_WAIT_S
        while time.monotonic() < deadline:
            try:
                found = ray.get_actor(dead.name, namespace=NAMESPACE)
            except ValueError:
                break  # the name is free
            if found._actor_id != dead.handle._actor_id:  # another process replaced it
                worker = Worker(dead.name, dead.node_id, found)
                self.workers[dead.name] = worker
                return worker
            time.sleep(0.05)
        else:
            return None
        worker = Worker(dead.name, dead.node_id, _start(dead.name, dead.node_id, self.detached))
        self.workers[dead.name] = worker
        return worker


_POOLS: dict[tuple[str, str], Pool] = {}


def pool() -> Pool:
    """The connected Ray session's pool; built (and stale workers killed) on first use."""
    import ray

    ctx = ray.get_runtime_context()
    key = (str(ctx.gcs_address or ""), str(ctx.get_session_name() or ""))
    found = _POOLS.get(key)
    if found is None:
        _POOLS.clear()  # handles of an earlier session mean nothing now
        kill_stale()
        found = _POOLS[key] = Pool(key, detached=lifetime(ray_started_here()) == "detached")
    return found


def kill_stale() -> list[str]:
    """Kill this namespace's workers whose code fingerprint is not ours; their names."""
    import ray

    mine = f"{PREFIX}{fingerprint()}-"
    killed = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = str(entry["name"])
        if entry["namespace"] != NAMESPACE or not name.startswith(PREFIX) or name.startswith(mine):
            continue
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            continue  # gone meanwhile
        killed.append(name)
    return killed


def _dead(workers: list[Worker]) -> list[Worker]:
    """The workers whose ping fails; one still busy (another process's trial) counts as alive."""
    import ray
    from ray.exceptions import RayActorError

    if not workers:
        return []
    pings = {w.handle.info.remote(): w for w in workers}
    ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=PING_TIMEOUT_S)
    dead = []
    for ref in ready:
        try:
            ray.get(ref)
        except RayActorError:
            dead.append(pings[ref])
    return dead


def _slots(count: int) -> list[tuple[str, str]]:
    """The first ``count`` (name, node id) slots: one per CPU per alive node, round robin."""
    import ray

    per_node = [
        (n["NodeID"], int(n.get("Resources", {}).get("CPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]
    per_node.sort()
    slots: list[tuple[str, str]] = []
    for i in range(max((cpus for _, cpus in per_node), default=0)):
        slots += [(node, f"{i}") for node, cpus in per_node if i < cpus]
    if not slots:  # no CPUs at all: one worker on the driver's node
        slots = [(ray.get_runtime_context().get_node_id(), "0")]
    return [(f"{PREFIX}{fingerprint()}-{node[:12]}-{i}", node) for node, i in slots[:count]]


@cache
def _actor_class() -> Any:
    import ray

    return ray.remote(TrialWorker)


def _find_or_start(name: str, node_id: str, detached: bool) -> Any:
    import ray

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return _start(name, node_id, detached)


def _start(name: str, node_id: str, detached: bool) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    global started
    started += 1
    return (
        _actor_class()
        .options(
            name=name,
            namespace=NAMESPACE,
            get_if_exists=True,  # another process may be starting it at this moment
            lifetime="detached" if detached else None,
            num_cpus=0,
            max_restarts=0,
            # Hard: Ray 2.60 placed detached actors with soft affinity on another
            # node (seen on a two-node cluster). Only alive nodes get slots.
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote(WARM_MODULES)
    )
