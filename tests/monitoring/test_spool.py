"""The serving -> profiler hand-off: windows, triggers, and exactly-once across restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aipaas.datasets import profiles
from aipaas.exceptions import AlreadyRunningError
from aipaas.monitoring.spool import (
    Profiler,
    SpoolWriter,
    WindowInfo,
    list_windows,
    load_window,
    spool_dir,
)
from aipaas.settings import Settings


class RecordingTrigger:
    def __init__(self) -> None:
        self.closed: list[WindowInfo] = []
        self.ticks = 0

    def window_closed(self, window: WindowInfo) -> None:
        self.closed.append(window)

    def tick(self) -> None:
        self.ticks += 1


def _settings(
    home: Path, window_rows: int = 100, window_minutes: float = 10.0, **monitoring: float
) -> Settings:
    return Settings(
        _env_file=None,
        home=home,
        monitoring={"window_rows": window_rows, "window_minutes": window_minutes, **monitoring},
    )


def _row(i: int) -> dict:
    return {"radius": float(i % 17), "texture": 10.0 + (i % 5), "site": "abc"[i % 3]}


def _submit(writer: SpoolWriter, start: int, requests: int, per_request: int = 1) -> int:
    n = start
    for _ in range(requests):
        rows = [_row(n + k) for k in range(per_request)]
        writer.submit("diagnosis", "1", rows, [n % 2 for n in range(n, n + per_request)])
        n += per_request
    return n - start


def _total_rows(settings: Settings, profiler: Profiler) -> int:
    closed = list_windows(settings, "diagnosis", "1")
    return sum(w.rows for w in closed) + sum(profiler.open_windows().values())


def test_windows_close_every_n_rows_and_trigger(home: Path) -> None:
    settings = _settings(home, window_rows=100)
    trigger = RecordingTrigger()
    with SpoolWriter(settings) as writer:
        _submit(writer, 0, 50, per_request=5)  # 250 rows
    with Profiler(settings, trigger) as profiler:
        assert profiler.step() == 250
        assert [w.seq for w in trigger.closed] == [1, 2]
        assert all(w.rows == 100 and w.reason == "rows" for w in trigger.closed)
        assert profiler.open_windows() == {("diagnosis", "1"): 50}
        # The read segment is sealed (writer closed) and fully read: gone.
        assert list(spool_dir(settings).glob("*.seg")) == []

    windows = list_windows(settings, "diagnosis", "1")
    assert [w.seq for w in windows] == [1, 2]
    assert Path(windows[0].path).parent == settings.profiles_dir / "diagnosis" / "1"
    profile = load_window(windows[0])
    assert profile.num_rows == 100
    assert {"radius", "texture", "site", "prediction"} <= set(profile.columns)
    assert list_windows(settings, "diagnosis", "1", after_seq=1)[0].seq == 2


def test_window_closes_after_window_minutes_without_more_rows(home: Path) -> None:
    settings = _settings(home, window_rows=1000, window_minutes=1.0)
    now = [1000.0]
    trigger = RecordingTrigger()
    with SpoolWriter(settings) as writer, Profiler(settings, trigger, clock=lambda: now[0]) as p:
        _submit(writer, 0, 30)
        p.step()
        assert trigger.closed == []
        now[0] += 61.0
        assert p.step() == 0
        assert [(w.rows, w.reason) for w in trigger.closed] == [(30, "time")]
        # An empty window never closes.
        now[0] += 600.0
        p.step()
        assert len(trigger.closed) == 1


def test_heavy_traffic_makes_bigger_windows_not_more(home: Path) -> None:
    # 50 rows/s against 100-row windows: without a floor, a window every 2 s.
    settings = _settings(home, window_rows=100, window_min_seconds=60, window_burst=2)
    now = [0.0]
    trigger = RecordingTrigger()
    profiler = Profiler(settings, trigger, clock=lambda: now[0])
    with SpoolWriter(settings) as writer:
        sent = 0
        for step in range(25):  # two minutes, a step every 5 s
            sent += _submit(writer, sent, 25, per_request=10)
            if step == 6:  # the profiler restarts: its spent burst is in the checkpoint
                profiler.close()
                profiler = Profiler(settings, trigger, clock=lambda: now[0])
            profiler.step()
            now[0] += 5.0
    # The burst at full size; then one window a minute holding all that minute's rows.
    assert [w.rows for w in trigger.closed] == [100, 100, 2800, 3000]
    assert [w.closed_at for w in trigger.closed] == [0.0, 0.0, 60.0, 120.0]
    assert all(w.reason == "rows" for w in trigger.closed)
    assert _total_rows(settings, profiler) == sent == 6250
    assert load_window(list_windows(settings, "diagnosis", "1")[2]).num_rows == 2800
    profiler.close()


def test_light_traffic_windows_hold_exactly_window_rows(home: Path) -> None:
    # 1 row/s against 100-row windows and a 60 s floor: the floor never bites.
    settings = _settings(home, window_rows=100, window_min_seconds=60, window_burst=2)
    now = [0.0]
    trigger = RecordingTrigger()
    with SpoolWriter(settings) as writer, Profiler(settings, trigger, clock=lambda: now[0]) as p:
        for step in range(30):
            _submit(writer, step * 10, 1, per_request=10)
            p.step()
            now[0] += 10.0
    assert [w.rows for w in trigger.closed] == [100] * 3
    assert [w.closed_at for w in trigger.closed] == [90.0, 190.0, 290.0]


def test_only_one_profiler_per_home(home: Path) -> None:
    settings = _settings(home)
    with Profiler(settings):
        with pytest.raises(AlreadyRunningError, match="already running"):
            Profiler(settings)
    Profiler(settings).close()  # released with the first


def test_open_segment_is_read_but_never_deleted(home: Path) -> None:
    settings = _settings(home, window_rows=1000)
    writer = SpoolWriter(settings)
    with Profiler(settings) as profiler:
        _submit(writer, 0, 10)
        assert profiler.step() == 10
        assert len(list(spool_dir(settings).glob("*.seg"))) == 1
        _submit(writer, 10, 5)
        assert profiler.step() == 5  # only the new rows
        writer.close()
        assert profiler.step() == 0
        assert list(spool_dir(settings).glob("*.seg")) == []
        assert profiler.open_windows() == {("diagnosis", "1"): 15}


_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from aipaas.settings import Settings
    from aipaas.monitoring.spool import SpoolWriter

    settings = Settings(_env_file=None, home=Path(sys.argv[1]),
                        monitoring={"window_rows": 100})
    writer = SpoolWriter(settings)
    for i in range(int(sys.argv[2])):
        writer.submit("diagnosis", "1", [{"radius": float(i), "texture": 1.0, "site": "a"}], [1])
    # Dies mid-write of one more request, which never got a response.
    (segment,) = Path(sys.argv[1], "spool").glob("*.seg")
    with open(segment, "ab") as fh:
        fh.write(b'{"m":"diagnosis","v":"1","r":[{"rad')
    print("written", flush=True)
    os.kill(os.getpid(), 9)
    """
)


def test_writer_killed_then_restarted_loses_and_duplicates_nothing(home: Path) -> None:
    settings = _settings(home, window_rows=100)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(home), "137"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "written" in proc.stdout

    # Serving restarts: a new writer appends its own segment.
    trigger = RecordingTrigger()
    with SpoolWriter(settings) as writer:
        _submit(writer, 0, 40)
    with Profiler(settings, trigger) as profiler:
        profiler.step()
        assert _total_rows(settings, profiler) == 137 + 40
        assert profiler.skipped_lines == 1  # the half-written record
        assert list(spool_dir(settings).glob("*.seg")) == []
    assert [w.rows for w in trigger.closed] == [100]


def crash(path: Path, data: bytes) -> None:
    """A window publisher that dies before writing: the windows exist only in the checkpoint."""
    raise SystemExit("crash")


def test_profiler_restarts_lose_and_duplicate_nothing(home: Path) -> None:
    settings = _settings(home, window_rows=100)
    with SpoolWriter(settings) as writer:
        written = _submit(writer, 0, 120, per_request=3)  # 360 rows, many small reads
        # A profiler that reads a little at a time and is stopped between steps.
        for _ in range(3):
            with Profiler(settings, batch_bytes=2000) as p:
                p.step()
        # A profiler that crashes between its checkpoint and publishing windows.
        crashing = Profiler(settings, batch_bytes=20_000, write=crash)
        with pytest.raises(SystemExit):
            crashing.step()
        crashing.close()
        written += _submit(writer, 1000, 25)

    trigger = RecordingTrigger()
    with Profiler(settings, trigger) as profiler:  # publishes the outbox, then reads on
        while profiler.step():
            pass
        closed = list_windows(settings, "diagnosis", "1")
        assert _total_rows(settings, profiler) == written == 385
        assert [w.seq for w in closed] == [1, 2, 3]
        assert all(w.rows == 100 for w in closed)
        merged = profiles.merge_profiles(load_window(w) for w in closed)
        assert merged is not None and merged.num_rows == 300


def test_submit_accepts_numpy_values_and_dict_outputs(home: Path) -> None:
    import numpy as np

    settings = _settings(home, window_rows=2)
    with SpoolWriter(settings) as writer:
        writer.submit(
            "diagnosis",
            "3",
            [{"radius": np.float64(1.5), "n": np.int64(2)}, {"radius": 2.5, "n": 3}],
            [{"label": 1, "proba": np.array([0.2, 0.8])}, {"label": 0, "proba": [0.9, 0.1]}],
        )
    with Profiler(settings) as profiler:
        profiler.step()
    (window,) = list_windows(settings, "diagnosis", "3")
    profile = load_window(window)
    assert profile.summary("prediction").frequent == {"0": 1, "1": 1}
    assert profile.summary("radius").mean == pytest.approx(2.0)
    assert os.path.getsize(window.path) > 0
