"""Progress of a long run, as events a caller renders: the core never prints.

A training or a data run takes from seconds to minutes. The core
(``aipaas.training``, ``aipaas.datasets``) reports where it is through a
:class:`Progress` it is handed: a :class:`StageEvent` when a named stage
starts and ends (with its elapsed time), a :class:`TrialEvent` when a search
trial finishes (trials done of total, the best score so far). Each edge
decides what to do with them: the CLI draws a progress bar on a terminal and
plain lines elsewhere, the Prefect flow updates a progress artifact, a test
records them. The core stays free of terminals and of Prefect, and one
training reports the same events whoever runs it.

Events are delivered in the driver process, in order, from the thread that
runs the step, so a renderer needs no locking. A renderer that raises stops
the run: a broken progress display is a bug to see, not to hide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

StageStatus = Literal["started", "finished", "failed"]


@dataclass(frozen=True)
class StageEvent:
    """A named stage started, finished or failed, ``elapsed_s`` after it started."""

    stage: str
    status: StageStatus
    elapsed_s: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class TrialEvent:
    """One search trial finished (or failed); ``best`` is the best score so far."""

    done: int
    total: int
    best: float | None
    trial_id: str
    ok: bool
    score: float | None = None
    duration_s: float | None = None
    error: str | None = None
    metric: str = "score"


class Progress(Protocol):
    """What the core reports to; every method returns quickly."""

    def on_stage(self, event: StageEvent) -> None: ...

    def on_trial(self, event: TrialEvent) -> None: ...


class NoProgress:
    """Reports to no one: the default of every core function."""

    def on_stage(self, event: StageEvent) -> None:
        return None

    def on_trial(self, event: TrialEvent) -> None:
        return None


NO_PROGRESS: Progress = NoProgress()


@dataclass
class Recorder:
    """Keeps every event, in order: for tests, and for a caller that reads them after."""

    events: list[StageEvent | TrialEvent] = field(default_factory=list)

    def on_stage(self, event: StageEvent) -> None:
        self.events.append(event)

    def on_trial(self, event: TrialEvent) -> None:
        self.events.append(event)

    @property
    def stages(self) -> list[StageEvent]:
        return [e for e in self.events if isinstance(e, StageEvent)]

    @property
    def trials(self) -> list[TrialEvent]:
        return [e for e in self.events if isinstance(e, TrialEvent)]


class Fanout:
    """Several renderers fed the same events (a terminal and a recorder, say)."""

    def __init__(self, *targets: Progress) -> None:
        self.targets = targets

    def on_stage(self, event: StageEvent) -> None:
        for t in self.targets:
            t.on_stage(event)

    def on_trial(self, event: TrialEvent) -> None:
        for t in self.targets:
            t.on_trial(event)


@contextmanager
def stage(progress: Progress, name: str, detail: str = "") -> Iterator[None]:
    """Report ``name`` started, then finished (or failed, and re-raise) with its time."""
    t0 = time.perf_counter()
    progress.on_stage(StageEvent(name, "started", 0.0, detail))
    try:
        yield
    except BaseException:
        progress.on_stage(StageEvent(name, "failed", time.perf_counter() - t0, detail))
        raise
    progress.on_stage(StageEvent(name, "finished", time.perf_counter() - t0, detail))


def format_stage(event: StageEvent) -> str:
    """One plain line per stage event, for logs and output that is not a terminal."""
    what = f"{event.stage} ({event.detail})" if event.detail else event.stage
    if event.status == "started":
        return f"{what} ..."
    return f"{what} {event.status} in {event.elapsed_s:.1f} s"


def format_trial(event: TrialEvent) -> str:
    """One plain line per finished trial: where the search is and the best so far."""
    width = len(str(event.total))
    head = f"trial {event.done:>{width}}/{event.total}"
    if event.ok and event.score is not None:
        took = f" in {event.duration_s:.1f} s" if event.duration_s is not None else ""
        body = f"{event.metric} {event.score:.4f}{took}"
    else:
        body = f"FAILED: {(event.error or 'no score reported').splitlines()[0][:200]}"
    best = f"best {event.best:.4f}" if event.best is not None else "no score yet"
    return f"{head}  {body}  ({best})"
