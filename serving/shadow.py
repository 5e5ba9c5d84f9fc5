"""The shadow: a challenger answers a copy of live requests, off the request path.

During a shadow release (``aipaas promote MODEL --shadow``) the champion
answers every request that pins no version, as it would anyway. Once its
answer is built, the request's rows and the champion's outputs go on a
bounded queue (:meth:`Shadow.submit`: it never blocks; when the queue is full
the copy is dropped and counted). One background thread runs the
challenger's predict on each copy and writes one ``shadow_outputs`` row per
request row, both outputs side by side (or the challenger's error), in
batches. So the challenger's failures and its slowness never reach a client;
they reach the table, which the canary flow's report reads.

The thread runs at a lower OS priority than the request path (Linux: a nice
value on the thread alone), and the model's compute thread is not shared
with it. At shutdown, what is queued gets a short bound (:data:`DRAIN_S`) to
be written; the rest is counted as dropped.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError

from aipaas import db
from aipaas.settings import Settings
from serving.holder import ServedModel

log = logging.getLogger(__name__)

QUEUE_JOBS = 1000  # requests waiting for the challenger; past it, copies are dropped
BATCH_ROWS = 200  # rows per insert
FLUSH_S = 0.5  # a partial batch waits at most this long
DRAIN_S = 2.0  # at shutdown, how long what is queued may take
NICE = 10  # the thread's priority below the request path's (Linux)
ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One answered request, for the challenger: rows in the champion's field order."""

    request_id: str
    challenger: ServedModel
    champion_version: str
    names: tuple[str, ...]  # the champion's fields: the order of ``rows``
    rows: list[list[Any]]
    champion_outputs: list[Any]
    at: float  # epoch seconds, when the champion answered


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


class Shadow:
    """The queue and its one worker thread (started with the first copy)."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_jobs: int = QUEUE_JOBS,
        batch_rows: int = BATCH_ROWS,
        flush_s: float = FLUSH_S,
    ) -> None:
        self._settings = settings
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(max_jobs)
        self._batch_rows = batch_rows
        self._flush_s = flush_s
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._drain_until: float | None = None  # set by close(): stop predicting past it
        self.submitted = 0  # requests queued
        self.dropped = 0  # requests not shadowed: the queue was full, or shutdown came first
        self.written = 0  # rows in shadow_outputs
        self.lost = 0  # rows the database did not take

    def submit(self, job: ShadowJob) -> bool:
        """Queue ``job`` for the challenger; False (and counted) when the queue is full."""
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("shadow queue full: %d request copies dropped so far", self.dropped)
            return False
        self.submitted += 1
        return True

    def pending(self) -> int:
        return self._queue.qsize()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and self._drain_until is None:
                self._thread = threading.Thread(
                    target=self._work, name="aipaas-shadow", daemon=True
                )
                self._thread.start()

    def close(self, timeout_s: float = DRAIN_S) -> None:
        """Write what is queued, within ``timeout_s``; drop (and count) the rest."""
        with self._start_lock:
            self._drain_until = time.monotonic() + timeout_s
            thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)  # the worker stops at it
        except queue.Full:
            pass  # the worker stops at the deadline anyway
        thread.join(timeout_s + 1.0)
        if thread.is_alive():
            log.warning("the shadow writer did not stop within %.1f s", timeout_s + 1.0)

    # --- the worker thread --------------------------------------------------------

    def _work(self) -> None:
        _lower_priority()
        pending: list[dict[str, Any]] = []
        first_at = 0.0
        while True:
            wait = max(0.0, first_at + self._flush_s - time.monotonic()) if pending else None
            try:
                job = self._queue.get(timeout=wait)
            except queue.Empty:
                pending = self._flush(pending)
                continue
            if job is None:
                self._flush(pending)
                return
            if self._drain_until is not None and time.monotonic() > self._drain_until:
                self.dropped += 1 + self._discard()
                self._flush(pending)
                return
            if not pending:
                first_at = time.monotonic()
            pending += self._shadow(job)
            if len(pending) >= self._batch_rows:
                pending = self._flush(pending)

    def _discard(self) -> int:
        n = 0
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return n
            n += job is not None

    def _shadow(self, job: ShadowJob) -> list[dict[str, Any]]:
        """The challenger on one request's rows: one ``shadow_outputs`` row per request row."""
        challenger = job.challenger
        rows = job.rows
        if challenger.names != job.names:  # its signature orders (or names) fields otherwise
            rows = [
                [dict(zip(job.names, r, strict=True)).get(n) for n in challenger.names]
                for r in rows
            ]
        outputs: list[str] | None = None
        error = None
        started = time.perf_counter()
        try:
            pred = challenger.loaded.predict(rows)
            if len(pred.outputs) != len(rows):
                raise ValueError(f"{len(pred.outputs)} outputs for {len(rows)} rows")
            outputs = [_json(o) for o in pred.outputs]
        except Exception as err:  # noqa: BLE001 - the challenger's failure is the evidence
            error = f"{type(err).__name__}: {err}"[:ERROR_CHARS]
        latency_ms = (time.perf_counter() - started) * 1000.0
        return [
            {
                "request_id": job.request_id,
                "row": i,
                "model": challenger.name,
                "version": challenger.version,
                "champion_version": job.champion_version,
                "champion_output": _json(job.champion_outputs[i]),
                "output": outputs[i] if outputs is not None else None,
                "error": error,
                "latency_ms": latency_ms,
                "at": job.at,
            }
            for i in range(len(rows))
        ]

    def _flush(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert ``rows`` in one transaction; a database that refuses them loses them (counted)."""
        if not rows:
            return []
        try:
            with db.reachable(), db.engine(self._settings).begin() as conn:
                conn.execute(insert(db.shadow_outputs), rows)
        except db.DatabaseUnavailableError as err:
            self.lost += len(rows)
            log.warning("%d shadow rows not written: %s", len(rows), err.reason)
        except SQLAlchemyError:
            self.lost += len(rows)
            log.exception("%d shadow rows not written", len(rows))
        else:
            self.written += len(rows)
        return []


def _lower_priority() -> None:
    """Make this thread (only it, on Linux) yield the CPU to the request path."""
    if not sys.platform.startswith("linux"):  # elsewhere it would renice the process
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except OSError as err:  # not allowed here: the queue and its bound still protect requests
        log.debug("shadow thread priority unchanged: %s", err)
