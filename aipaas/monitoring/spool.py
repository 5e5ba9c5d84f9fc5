"""The hand-off from serving to profiling: an append-only spool and its profiler.

Profiling a batch with whylogs holds the GIL for milliseconds, so it never
runs in the serving process. Serving appends each answered request to a
spool file (:class:`SpoolWriter`: one ``orjson.dumps`` and one ``write(2)``,
a few microseconds, before the response is sent); a separate profiler
process (:class:`Profiler`, ``aipaas profiler``) reads the spool in batches,
profiles them and merges them into the current window of each model
version. A window is written under
``profiles_dir/<model>/<version>/window-<seq>.bin``; closing it calls the
profiler's :class:`WindowTrigger` (the drift deployment, in production).

When a window closes, by rows and by time:

- once it holds ``monitoring.window_rows`` rows, if its model version may
  close one now: each version has a bucket of ``window_burst`` closes that
  refills by one every ``window_min_seconds``. Light traffic (fewer than
  ``window_rows`` rows per ``window_min_seconds``) never empties it, so its
  windows hold exactly ``window_rows`` rows as before; heavy traffic empties
  it after a burst, and then its window keeps growing until the next close
  is due. At 760 requests/s with the defaults that is one window of about
  45,000 rows a minute instead of 90 windows of 500: bigger windows, not
  more drift runs. A profile is a sketch of constant size, so a big window
  costs no more memory than a small one;
- ``monitoring.window_minutes`` after its first row, whatever it holds, so
  quiet traffic is still checked.

Durability, without a broker:

- A written line is in the kernel's page cache as soon as ``submit``
  returns, so it survives the serving process dying (not the machine
  losing power: that would need an fsync per request).
- Each writer holds an exclusive ``flock`` on its open segment. The profiler
  deletes a segment only once it can take that lock (the writer closed it or
  died) and has read it to the end; it never consumes a partial last line of a
  segment still being written.
- The profiler checkpoints its offsets, its open windows' profiles and the
  windows it is about to publish in one atomically replaced file. Windows
  are published from the checkpoint (an outbox), so a crash at any point
  neither loses nor double-counts a row.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import pandas as pd

from aipaas import files
from aipaas.datasets import profiles
from aipaas.exceptions import AlreadyRunningError, ConfigurationError
from aipaas.settings import Settings

log = logging.getLogger(__name__)

PREDICTION = "prediction"
_SEGMENT_SUFFIX = ".seg"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def spool_dir(settings: Settings) -> Path:
    return settings.home / "spool"


def window_dir(settings: Settings, model: str, version: str) -> Path:
    return settings.profiles_dir / _safe(model) / _safe(str(version))


def _safe(part: str) -> str:
    if not _SAFE.match(part) or ".." in part:
        raise ConfigurationError(f"{part!r} cannot name a profile directory")
    return part


def _json_default(obj: Any) -> Any:
    # numpy scalars and anything with item() (orjson handles arrays itself).
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot spool a {type(obj).__name__}")


class SpoolWriter:
    """Serving's side: append answered requests to the spool, cheaply and thread-safely.

    Implements serving's ``RowSink`` (``submit`` and ``close``). One writer per
    process; segments roll over at ``segment_bytes``.
    """

    def __init__(self, settings: Settings, *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self._dir = spool_dir(settings)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._open_segment()

    def _open_segment(self) -> None:
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self._dir / f"{name}.open"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        # Locked before it becomes visible as a segment, so the profiler can
        # never take an empty, just-created segment for an abandoned one.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, self._dir / f"{name}{_SEGMENT_SUFFIX}")
        self._fd, self._size = fd, 0

    def submit(self, model: str, version: str, rows: list[dict], outputs: list) -> None:
        """Hand one answered request's rows and outputs to profiling."""
        line = orjson.dumps(
            {"m": model, "v": str(version), "t": time.time(), "r": rows, "o": outputs},
            default=_json_default,
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
        )
        with self._lock:
            if self._fd is None:
                raise ConfigurationError("the spool writer is closed")
            view = memoryview(line)
            while view:  # a regular file takes it all in one write unless the disk is full
                view = view[os.write(self._fd, view) :]
            self._size += len(line)
            if self._size >= self._segment_bytes:
                os.close(self._fd)
                self._open_segment()

    def close(self) -> None:
        """Release the segment (the profiler may then delete it once read)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class WindowInfo:
    """A closed profile window of one model version."""

    model: str
    version: str
    seq: int
    rows: int
    started_at: float
    closed_at: float
    reason: str  # "rows" | "time"
    path: str  # the profile file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WindowTrigger(Protocol):
    """What the profiler calls when a window closes (the drift deployment, in production)."""

    def window_closed(self, window: WindowInfo) -> None: ...

    def tick(self) -> None:
        """Called once per profiler step: retry whatever could not be triggered."""
        ...


def list_windows(
    settings: Settings, model: str, version: str, *, after_seq: int = 0
) -> list[WindowInfo]:
    """Closed windows of a model version, oldest first, with ``seq > after_seq``."""
    directory = window_dir(settings, model, version)
    out = []
    for meta in sorted(directory.glob("window-*.json")):
        info = WindowInfo(**json.loads(meta.read_text()))
        if info.seq > after_seq and Path(info.path).is_file():
            out.append(info)
    return sorted(out, key=lambda w: w.seq)


def checkpoint_path(settings: Settings) -> Path:
    """The profiler's checkpoint: offsets, open windows and the outbox, replaced every step."""
    return spool_dir(settings) / "checkpoint.json"


def open_windows(settings: Settings) -> dict[tuple[str, str], tuple[int, int]]:
    """Each model version's open window as ``(seq, rows)``, from the profiler's last checkpoint.

    For another process (``aipaas demo``): the profiler replaces the checkpoint
    after every step, so this lags it by one step at most.
    """
    try:
        state = json.loads(checkpoint_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {
        (str(w["model"]), str(w["version"])): (int(w["seq"]), int(w["rows"]))
        for w in state.get("windows", [])
    }


def load_window(window: WindowInfo) -> profiles.Profile:
    return profiles.read_profile(Path(window.path))


def records_to_frame(records: list[tuple[dict, Any]]) -> pd.DataFrame:
    """Rows with their model output as a ``prediction`` column (dict outputs flattened)."""
    flat = []
    for row, output in records:
        r = dict(row)
        if isinstance(output, dict):
            for key, value in output.items():
                if not isinstance(value, (list, dict)):
                    r[f"{PREDICTION}_{key}"] = value
            for key in ("prediction", "label", "class", "output"):
                if key in output and not isinstance(output[key], (list, dict)):
                    r[PREDICTION] = output[key]
                    break
        elif isinstance(output, list):
            for i, value in enumerate(output):
                r[f"{PREDICTION}_{i}"] = value
        else:
            r[PREDICTION] = output
        flat.append(r)
    return pd.DataFrame.from_records(flat)


@dataclass
class _OpenWindow:
    model: str
    version: str
    seq: int
    rows: int
    started_at: float
    profile: profiles.Profile | None


@dataclass
class _CloseBudget:
    """A token bucket of window closes for one model version.

    ``tokens`` as of ``at``; it refills by one every ``per_s`` seconds up to
    ``burst``. ``per_s`` 0 means no limit.
    """

    tokens: float
    at: float

    def available(self, now: float, burst: int, per_s: float) -> float:
        if per_s <= 0:
            return float(burst)
        return min(float(burst), self.tokens + max(0.0, now - self.at) / per_s)

    def spend(self, now: float, burst: int, per_s: float) -> None:
        self.tokens = max(0.0, self.available(now, burst, per_s) - 1.0)
        self.at = now


class Profiler:
    """The profiler process: spool -> whylogs -> windows, exactly once.

    Call :meth:`step` repeatedly (or :meth:`run`). Only one profiler may run
    per home: it holds ``spool/profiler.lock``. ``write`` publishes a closed
    window's files (atomically; a test passes one that crashes, to check
    that the checkpoint's outbox survives it).
    """

    def __init__(
        self,
        settings: Settings,
        trigger: WindowTrigger | None = None,
        *,
        batch_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        write: Callable[[Path, bytes], object] = files.atomic_write,
    ) -> None:
        self._settings = settings
        self._trigger = trigger
        self._batch_bytes = batch_bytes
        self._clock = clock
        self._write = write
        self._dir = spool_dir(settings)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._checkpoint = checkpoint_path(settings)
        self._window_rows = max(1, settings.monitoring.window_rows)
        self._window_s = settings.monitoring.window_minutes * 60.0
        self._min_interval_s = settings.monitoring.window_min_seconds
        self._burst = settings.monitoring.window_burst
        self._lock_fd = os.open(self._dir / "profiler.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._lock_fd)
            raise AlreadyRunningError(
                f"a profiler is already running on {settings.home} (lock {self._dir}/profiler.lock)"
            ) from err
        self.skipped_lines = 0
        self._offsets: dict[str, int] = {}
        self._windows: dict[tuple[str, str], _OpenWindow] = {}
        self._pending: list[tuple[WindowInfo, bytes]] = []
        self._budgets: dict[tuple[str, str], _CloseBudget] = {}
        self._load()
        self._publish_pending()

    # -- state ---------------------------------------------------------------

    def _load(self) -> None:
        if not self._checkpoint.is_file():
            return
        state = json.loads(self._checkpoint.read_text())
        self._offsets = {k: int(v) for k, v in state.get("offsets", {}).items()}
        for w in state.get("windows", []):
            prof = profiles.Profile.from_bytes(base64.b64decode(w["profile"]))
            self._windows[(w["model"], w["version"])] = _OpenWindow(
                w["model"], w["version"], int(w["seq"]), int(w["rows"]), w["started_at"], prof
            )
        for p in state.get("pending", []):
            data = base64.b64decode(p.pop("profile"))
            self._pending.append((WindowInfo(**p), data))
        for b in state.get("budgets", []):
            self._budgets[(b["model"], b["version"])] = _CloseBudget(b["tokens"], b["at"])

    def _save(self) -> None:
        windows = [
            {
                "model": w.model,
                "version": w.version,
                "seq": w.seq,
                "rows": w.rows,
                "started_at": w.started_at,
                "profile": base64.b64encode(w.profile.to_bytes()).decode(),
            }
            for w in self._windows.values()
            if w.profile is not None and w.rows > 0
        ]
        pending = [
            {**info.to_dict(), "profile": base64.b64encode(data).decode()}
            for info, data in self._pending
        ]
        now = self._clock()
        for key, budget in list(self._budgets.items()):
            if budget.available(now, self._burst, self._min_interval_s) >= self._burst:
                del self._budgets[key]  # full again: the same as none
        budgets = [
            {"model": m, "version": v, "tokens": b.tokens, "at": b.at}
            for (m, v), b in self._budgets.items()
        ]
        state = {
            "offsets": self._offsets,
            "windows": windows,
            "pending": pending,
            "budgets": budgets,
        }
        files.atomic_write(self._checkpoint, orjson.dumps(state), fsync=True)

    def open_windows(self) -> dict[tuple[str, str], int]:
        """Rows in each model version's window that has not closed yet."""
        return {k: w.rows for k, w in self._windows.items() if w.rows}

    # -- the loop ------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, poll_s: float = 1.0) -> None:
        """Step until ``stop`` is set; sleep ``poll_s`` when the spool is idle."""
        stop = stop or threading.Event()
        while not stop.is_set():
            if self.step() == 0:
                stop.wait(poll_s)

    def step(self) -> int:
        """Read what the spool holds now, profile it, close due windows. Returns rows read."""
        records, sealed_done = self._read()
        for (model, version), recs in records.items():
            self._add(model, version, recs)
        now = self._clock()
        for w in list(self._windows.values()):
            if w.rows > 0 and now - w.started_at >= self._window_s:
                self._close(w, "time")
            elif w.rows >= self._window_rows and self._may_close(w):
                self._close(w, "rows")  # grown under heavy traffic; its close is due now
        self._save()
        self._publish_pending()
        for name in sealed_done:
            (self._dir / name).unlink(missing_ok=True)
            self._offsets.pop(name, None)
        if sealed_done:
            self._save()
        if self._trigger is not None:
            self._trigger.tick()
        return sum(len(r) for r in records.values())

    def close(self) -> None:
        """Release the profiler lock; open windows stay in the checkpoint."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Profiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> tuple[dict[tuple[str, str], list[tuple[dict, Any]]], list[str]]:
        records: dict[tuple[str, str], list[tuple[dict, Any]]] = defaultdict(list)
        sealed_done: list[str] = []
        budget = self._batch_bytes
        for path in sorted(self._dir.glob(f"*{_SEGMENT_SUFFIX}")):
            if budget <= 0:
                break
            name = path.name
            offset = self._offsets.get(name, 0)
            with open(path, "rb") as fh:
                # Sealed = no writer holds it; checked before reading, so
                # everything up to EOF is then final.
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                    sealed = True
                except BlockingIOError:
                    sealed = False
                fh.seek(offset)
                chunk = fh.read(budget)
                at_eof = fh.read(1) == b""
            end = chunk.rfind(b"\n") + 1
            complete, tail = chunk[:end], chunk[end:]
            for line in complete.splitlines():
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                    pairs = list(zip(rec["r"], rec["o"], strict=True))
                    key = (str(rec["m"]), str(rec["v"]))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    # A corrupt record cannot become valid by retrying it.
                    self.skipped_lines += 1
                    continue
                records[key].extend(pairs)
            offset += end
            budget -= len(chunk)
            if sealed and at_eof:
                if tail:
                    # A writer died mid-write: that request never got a response.
                    log.warning("spool %s ends with %d bytes of a partial record", name, len(tail))
                    self.skipped_lines += 1
                    offset += len(tail)
                sealed_done.append(name)
            self._offsets[name] = offset
        return records, sealed_done

    def _add(self, model: str, version: str, recs: list[tuple[dict, Any]]) -> None:
        i = 0
        while i < len(recs):
            w = self._windows.get((model, version)) or self._open(model, version)
            may_close = self._may_close(w)
            if may_close and w.rows >= self._window_rows:
                self._close(w, "rows")  # grown while closes were rationed
                continue
            # A window that may close takes exactly what fills it; one that may
            # not takes everything (it grows).
            left = len(recs) - i
            take = min(self._window_rows - w.rows, left) if may_close else left
            frame = records_to_frame(recs[i : i + take])
            prof = profiles.profile_frame(frame)
            w.profile = prof if w.profile is None else w.profile.merge(prof)
            w.rows += take
            i += take
            if may_close and w.rows >= self._window_rows:
                self._close(w, "rows")

    def _may_close(self, w: _OpenWindow) -> bool:
        budget = self._budgets.get((w.model, w.version))
        if budget is None:
            return True
        return budget.available(self._clock(), self._burst, self._min_interval_s) >= 1.0

    def _open(self, model: str, version: str) -> _OpenWindow:
        seqs = [w.seq for w in list_windows(self._settings, model, version)]
        seqs += [
            info.seq for info, _ in self._pending if (info.model, info.version) == (model, version)
        ]
        w = _OpenWindow(model, version, max(seqs, default=0) + 1, 0, self._clock(), None)
        self._windows[(model, version)] = w
        return w

    def _close(self, w: _OpenWindow, reason: str) -> None:
        assert w.profile is not None
        path = window_dir(self._settings, w.model, w.version) / f"window-{w.seq:06d}.bin"
        info = WindowInfo(
            model=w.model,
            version=w.version,
            seq=w.seq,
            rows=w.rows,
            started_at=w.started_at,
            closed_at=self._clock(),
            reason=reason,
            path=str(path),
        )
        self._pending.append((info, w.profile.to_bytes()))
        del self._windows[(w.model, w.version)]
        key = (w.model, w.version)
        budget = self._budgets.setdefault(key, _CloseBudget(float(self._burst), info.closed_at))
        budget.spend(info.closed_at, self._burst, self._min_interval_s)

    def _publish_pending(self) -> None:
        if not self._pending:
            return
        published = []
        for info, data in self._pending:
            path = Path(info.path)
            self._write(path, data)
            # The metadata last: a window is listed only once its profile is whole.
            self._write(path.with_suffix(".json"), json.dumps(info.to_dict(), indent=1).encode())
            published.append(info)
        self._pending = []
        self._save()
        for info in published:
            log.info(
                "window %s/%s #%d closed (%d rows)", info.model, info.version, info.seq, info.rows
            )
            if self._trigger is not None:
                self._trigger.window_closed(info)
