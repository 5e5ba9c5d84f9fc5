"""Replicas of one server, forked from a supervisor that imported their code once.

``aipaas serve --replicas N`` runs N processes on one listening socket. A
replica that dies (``kill -9``, the OOM killer) must be back within seconds
while the others keep answering. Started afresh, as uvicorn's own workers
are (spawned), a replica spends most of its start importing: FastAPI,
pandas, SQLAlchemy, MLflow and, through MLflow's skops loader, scikit-learn
and SciPy, about 9 s of this 2-core machine and 15 s while the other
replica serves traffic (18-21 s from the kill until it answered, measured).
Here the supervisor imports those modules once (:func:`preload`) and forks
each replica from itself, so a replica only builds its app, opens its
database and loads its model.

What fork demands of the supervisor: it starts no thread and opens nothing
a replica would share by accident before forking. It imports libraries
(not the app's own modules, whose import-time state, such as serving's
request-id prefix, must differ per process) and binds the listening
socket; the app, its database connections, files and threads are made in
each replica, after the fork. (A fork copies only the
forking thread: a lock another thread held would stay locked in the child
forever.)

Deaths are seen at once: the supervisor blocks on every replica's sentinel
(a pipe the kernel closes when the process ends) and on a wake-up pipe for
its own signals, never on a poll interval. A replica's first crash in a row
is restarted at once; the next ones after a pause that doubles. A replica
that fails its very first start with ``startup_failure`` (its app cannot be
built: it would fail the same way again), or crashes ``max_in_a_row`` times
in a row with no run lasting ``stable_s``, stops the supervisor with exit
code 1 (``aipaas up`` then restarts serving as a whole, with its own
backoff). SIGTERM or SIGINT stops every replica (SIGTERM, then SIGKILL
after a grace period) and returns 0.
"""

from __future__ import annotations

import gc
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

LOG = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class ReplicaPolicy:
    """When a replica that died is started again, and when the supervisor gives up."""

    backoff_s: float = 1.0  # the pause before the second crash in a row is restarted
    max_backoff_s: float = 30.0
    max_in_a_row: int = 5
    stable_s: float = 60.0  # a run this long resets the count
    stop_grace_s: float = 30.0  # SIGTERM, then SIGKILL after this

    def delay(self, in_a_row: int) -> float:
        """No pause for a one-off crash; then ``backoff_s``, doubling, capped."""
        if in_a_row <= 1:
            return 0.0
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (in_a_row - 2)))


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    starts: int = 0
    in_a_row: int = 0
    due: float | None = None  # time.monotonic() of a pending restart


def preload(modules: Iterable[str], log: logging.Logger = LOG) -> float:
    """Import ``modules`` here, before forking; returns the seconds it took.

    A module that is not installed is skipped (an optional model flavour);
    any other import error is raised: the replicas would meet it too.
    """
    started = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):
                raise
            log.info("preload: %s is not installed; skipped", name)
    return time.perf_counter() - started


def supervise(
    count: int,
    target: Callable[[int], None],
    *,
    policy: ReplicaPolicy | None = None,
    startup_failure: int | None = None,
    log: logging.Logger = LOG,
) -> int:
    """Run ``target(slot)`` in ``count`` forked processes and keep them running.

    Args:
        count: the number of replicas.
        target: a replica's body; its process exits when it returns (0) or
            raises ``SystemExit`` (that code).
        policy: restarts and stop; default :class:`ReplicaPolicy`.
        startup_failure: the exit code of a replica whose app could not start.
        log: where starts, deaths and restarts are said.

    Returns:
        0 after SIGTERM or SIGINT, 1 when a replica cannot start or keeps crashing.
    """
    policy = policy or ReplicaPolicy()
    context = multiprocessing.get_context("fork")
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    stop: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop.append(signum)

    old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    old_handlers = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}

    def body(slot: int) -> None:
        # The supervisor's signal plumbing is not the replica's: its server sets its own.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        wake_r.close()
        wake_w.close()
        target(slot)

    def start(slot: _Slot) -> BaseProcess:
        process = context.Process(target=body, args=(slot.index,), name=f"replica-{slot.index}")
        process.start()
        slot.process, slot.started, slot.due = process, time.monotonic(), None
        slot.starts += 1
        return process

    slots = [_Slot(i) for i in range(count)]
    code = 0
    gc.freeze()  # what was imported stays out of the replicas' collections (fewer copied pages)
    try:
        pids = [start(slot).pid for slot in slots]
        log.info("replicas started: pids %s", ", ".join(map(str, pids)))
        while not stop:
            _wait(slots, wake_r)
            if stop:
                break
            now = time.monotonic()
            for slot in slots:
                process = slot.process
                if process is not None and process.exitcode is not None:
                    slot.process = None
                    if not _died(slot, process, now, policy, startup_failure, log):
                        return 1
                if slot.process is None and slot.due is not None and now >= slot.due:
                    pid = start(slot).pid
                    log.warning("replica %d started again: pid %s", slot.index, pid)
        return code
    finally:
        _stop_all(slots, policy.stop_grace_s, log)
        for s, handler in old_handlers.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(old_wakeup)
        wake_r.close()
        wake_w.close()
        gc.unfreeze()


def _wait(slots: list[_Slot], wake: socket.socket) -> None:
    """Block until a replica ends, a signal arrives or a pending restart is due."""
    sentinels = [s.process.sentinel for s in slots if s.process is not None]
    dues = [s.due for s in slots if s.due is not None]
    timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
    multiprocessing.connection.wait([*sentinels, wake], timeout)
    try:
        while wake.recv(64):
            pass
    except BlockingIOError:
        pass


def _died(
    slot: _Slot,
    process: BaseProcess,
    now: float,
    policy: ReplicaPolicy,
    startup_failure: int | None,
    log: logging.Logger,
) -> bool:
    """Schedule a dead replica's restart; False when the supervisor must stop instead."""
    code, pid = process.exitcode, process.pid
    assert code is not None
    what = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    process.close()
    if code == startup_failure and slot.starts == 1:
        log.error("replica %d (pid %s) %s: its app cannot start; stopping", slot.index, pid, what)
        return False
    slot.in_a_row = 1 if now - slot.started >= policy.stable_s else slot.in_a_row + 1
    if slot.in_a_row > policy.max_in_a_row:
        log.error(
            "replica %d %s; it crashed %d times in a row, no run lasting %g s: stopping",
            slot.index,
            what,
            slot.in_a_row,
            policy.stable_s,
        )
        return False
    delay = policy.delay(slot.in_a_row)
    slot.due = now + delay
    log.warning(
        "replica %d (pid %s) %s after %.1f s; starting it again%s",
        slot.index,
        pid,
        what,
        now - slot.started,
        f" in {delay:g} s ({slot.in_a_row} crashes in a row)" if delay else "",
    )
    return True


def _stop_all(slots: list[_Slot], grace_s: float, log: logging.Logger) -> None:
    """SIGTERM to every live replica, SIGKILL to any still running after ``grace_s``."""
    live = [s.process for s in slots if s.process is not None and s.process.exitcode is None]
    for process in live:
        process.terminate()
    deadline = time.monotonic() + grace_s
    for process in live:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            log.warning("replica pid %s ignored SIGTERM for %g s; killing it", process.pid, grace_s)
            process.kill()
            process.join(10)
