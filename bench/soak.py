"""Soak: the whole platform, as ``aipaas up`` runs it, under sustained load for minutes.

``aipaas up`` on free ports in a temporary home with a private data project
(:func:`tests.support.platform.running_up`: the demo's defaults, so 150-row
profile windows, profiling and drift triggers on), its first lifecycles
awaited, then one-row ``POST /models/<model>/predict`` requests from keep-alive
clients on loopback, spread over the served models (rows sampled from each
model's training data, as the demo's ordinary traffic is), for ``--minutes``.
Each client sends its next request when the last one is answered (the
highest rate serving sustains at that many connections) or, with ``--rate``,
paced to a total rate. What is checked, and written down:

1. no queue of flow runs grows: the Prefect API's unfinished runs of every
   flow, sampled every few seconds. The drift runs closed windows ask for
   are never more than one unfinished at a time per model (the trigger
   coalesces, see flows/triggers.py), so with the cron's at most one queued
   and one running beside it; and the queue drains once traffic stops;
2. memory stays flat: the RSS of every process of the platform (each child
   of ``up`` listed in ``<home>/run/up.json`` and all its descendants, from
   /proc), before traffic, after the warm-up, every ``--sample-seconds``,
   and at the end. A process that lives from the warm-up to the end is held
   to a bounded growth; a flow run or a Ray worker (its memory is its
   task's), or a process that came or went, is listed apart; a child whose
   pid changed was restarted;
3. no request fails: responses counted by status (a connection error by its
   exception's name), and the audit trail's records of the soak's key by
   status (every answered request has its record);
4. every row is profiled once: once the profiler has caught up with the
   spool (its checkpoint's offsets at the end of every segment), the rows in
   the models' profile windows (closed ones plus the open one in the
   checkpoint) grew by exactly the rows answered with 200; window numbers
   run without gap or repeat, and the trigger saw every closed window once;
5. the audit chain verifies (:func:`aipaas.audit.verify`, what ``aipaas
   audit verify`` runs).

:func:`soak` measures a platform that is already up (tests/e2e/test_up.py
runs a short one); :func:`main` starts one, soaks it and stops it with
SIGINT, then prints a table and writes ``bench/results/soak.json`` and a
chart, ``bench/results/soak.png``. Exit code 1 when a check failed.

Run: ``uv run --locked python -m bench.soak --minutes 10`` (``make soak``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import RESULTS_DIR, write_results

if TYPE_CHECKING:
    from aipaas.settings import Settings
    from tests.support.platform import Platform

PAGE = 200  # the Prefect API's largest page
ACTIVE = ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING"]
# Growth of a long-lived process's RSS from the warm-up to the end that still
# counts as flat: either bound suffices (a small process may double by a few MB).
MAX_GROWTH_MB = 50.0
MAX_GROWTH_PCT = 30.0
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
Progress = Callable[[str], None]


# --- the load ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One model's route and the request bodies its clients cycle through."""

    model: str
    path: str
    bodies: list[bytes]


class _Client(threading.Thread):
    """One keep-alive connection: a request, its answer, the next (paced when asked)."""

    def __init__(
        self,
        load: Load,
        target: Target,
        offset: int,
        interval_s: float,
    ) -> None:
        super().__init__(name=f"soak-{target.model}-{offset}", daemon=True)
        self.load, self.target, self.offset, self.interval_s = load, target, offset, interval_s
        self.done: list[int] = []  # answered requests per second since the start
        self.bad: list[int] = []  # of which not 200
        self.latency = array("d")
        self.statuses: Counter[str] = Counter()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.load.port, timeout=30)

    def run(self) -> None:
        load, bodies = self.load, self.target.bodies
        conn = self._connect()
        i = self.offset
        next_at = time.monotonic()
        while not load.stopping.is_set():
            if self.interval_s:
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                next_at = max(next_at + self.interval_s, time.monotonic())
            body = bodies[i % len(bodies)]
            i += 1
            t = time.perf_counter()
            try:
                conn.request("POST", self.target.path, body=body, headers=load.headers)
                resp = conn.getresponse()
                resp.read()
                status = str(resp.status)
            except (OSError, http.client.HTTPException) as err:
                status = f"error:{type(err).__name__}"
                conn.close()
                conn = self._connect()
                time.sleep(0.1)  # a server that is away is not hammered
            self.latency.append(time.perf_counter() - t)
            second = int(time.monotonic() - load.t0)
            while len(self.done) <= second:
                self.done.append(0)
                self.bad.append(0)
            self.done[second] += 1
            self.bad[second] += status != "200"
            self.statuses[status] += 1
        conn.close()


class Load:
    """``connections`` clients on loopback, spread over the targets; counts what they got.

    ``rate`` 0: closed loop, each client as fast as its answers come (the
    highest rate serving sustains at that many connections). Otherwise each
    client is paced to ``rate / connections`` requests per second.
    """

    def __init__(
        self,
        port: int,
        targets: Sequence[Target],
        key: str,
        *,
        connections: int = 8,
        rate: float = 0.0,
    ) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.stopping = threading.Event()
        self.t0 = time.monotonic()
        interval = connections / rate if rate > 0 else 0.0
        self.clients = [
            _Client(self, targets[i % len(targets)], i * 7919, interval) for i in range(connections)
        ]

    def start(self) -> None:
        self.t0 = time.monotonic()
        for c in self.clients:
            c.start()

    def stop(self) -> None:
        self.stopping.set()
        for c in self.clients:
            c.join(60)

    def per_second(self, bad: bool = False) -> list[int]:
        """Requests answered (or not answered 200) in each second since the start."""
        rows = [list(c.bad if bad else c.done) for c in self.clients]
        out = [0] * max((len(r) for r in rows), default=0)
        for r in rows:
            for i, n in enumerate(r):
                out[i] += n
        return out

    def statuses(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for c in self.clients:
            total.update(c.statuses)
        return dict(total)

    def ok_by_model(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for c in self.clients:
            out[c.target.model] += c.statuses.get("200", 0)
        return dict(out)

    def percentiles(self) -> tuple[float, float]:
        lat = sorted(x for c in self.clients for x in c.latency)
        if not lat:
            return 0.0, 0.0
        return lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def targets(platform: Platform, models: Sequence[str], rows: int = 5000) -> list[Target]:
    """Each model's ordinary traffic (the demo's), sampled from its training data."""
    import pandas as pd

    from aipaas.cli.demo import SCENARIOS
    from aipaas.modeldef import load_definition
    from aipaas.settings import PROJECT_ROOT

    out = []
    for model in models:
        d = load_definition(model, PROJECT_ROOT / "models")
        frame = pd.read_csv(platform.repo / "data" / d.dataset / "train.csv")
        sample = SCENARIOS[model].ordinary(frame, d.features, d.target, rows, 20261207)
        bodies = [json.dumps(row).encode() for row, _label in sample]
        out.append(Target(model, f"/models/{model}/predict", bodies))
    return out


def served_models(platform: Platform) -> list[str]:
    """The models ``/readyz`` shows with a loaded version."""
    from tests.support.platform import get_json

    ready = get_json(platform.url("serving", "/readyz"))
    return sorted(m for m, v in ready["models"].items() if v is not None)


# --- processes -----------------------------------------------------------------


def _ppids() -> dict[int, int]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _rss_mb(pid: int) -> float | None:
    try:
        return int((Path(f"/proc/{pid}/statm")).read_text().split()[1]) * PAGE_KB / 1024
    except (OSError, IndexError, ValueError):
        return None


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its children it has reaped (utime+stime+cutime+cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _label(pid: int) -> str:
    """What a process is, from its command line: a module, a script or a program's name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in argv if a]
    if not args:
        return "?"
    prog = Path(args[0]).name
    if prog.startswith("python"):
        if "-m" in args[1:-1]:
            module, *rest = args[args.index("-m") + 1 :]
            # `python -m prefect server start`: the command and its subcommand
            if module in ("aipaas", "prefect", "mlflow") and rest and not rest[0].startswith("-"):
                return f"{module} {rest[0]}"
            return module
        if "-c" in args[1:-1]:
            # `python -c "from aipaas.cli import main; main()" serve ...`: the subcommand
            rest = args[args.index("-c") + 2 :]
            return f"aipaas {rest[0]}" if rest else "python -c"
        rest = [a for a in args[1:] if not a.startswith("-")]
        if not rest:
            return prog
        name = Path(rest[0]).name
        # `.venv/bin/aipaas serve`, `prefect server start`: the command and its subcommand
        if name in ("aipaas", "prefect", "mlflow") and len(rest) > 1:
            return f"{name} {rest[1]}"
        return name
    return prog[:40]


def platform_processes(platform: Platform) -> dict[int, tuple[str, str]]:
    """pid -> (service, what it is): ``up``, each of its children and their descendants."""
    roots = {"up": platform.proc.pid, **platform.children()}
    ppids = _ppids()
    kids: dict[int, list[int]] = defaultdict(list)
    for pid, ppid in ppids.items():
        kids[ppid].append(pid)
    children = set(roots.values())
    out: dict[int, tuple[str, str]] = {}
    for service, root in roots.items():
        stack = [root] if root in ppids else []
        while stack:
            pid = stack.pop()
            out[pid] = (service, _label(pid))
            # up's own subtree stops at its children: each is walked as its own service
            stack += [k for k in kids.get(pid, []) if k not in children]
    return out


@dataclass
class ProcessMemory:
    """One process's RSS (MB) over the soak."""

    service: str
    pid: int
    label: str
    first_s: float  # seconds into the soak it was first seen
    last_s: float
    start_mb: float | None  # before traffic (None: not yet running)
    base_mb: float | None  # after the warm-up
    end_mb: float | None  # when traffic stopped (None: gone by then)
    peak_mb: float
    series: list[tuple[float, float]] = field(default_factory=list)  # (s, MB)

    @property
    def job(self) -> bool:
        """A flow run or a Ray worker: its memory is its task's, not the platform's."""
        ray_worker = self.label.startswith("ray::") and not self.label.endswith("Agent")
        return self.label == "prefect.engine" or ray_worker

    @property
    def long_lived(self) -> bool:
        """A process of the platform itself, alive from the warm-up to the end."""
        return not self.job and self.base_mb is not None and self.end_mb is not None

    @property
    def growth_mb(self) -> float:
        return (self.end_mb or 0.0) - (self.base_mb or 0.0)

    @property
    def growth_pct(self) -> float:
        return 100.0 * self.growth_mb / self.base_mb if self.base_mb else 0.0

    def flat(self, max_mb: float = MAX_GROWTH_MB, max_pct: float = MAX_GROWTH_PCT) -> bool:
        return self.growth_mb <= max_mb or self.growth_pct <= max_pct


# --- flow runs -----------------------------------------------------------------


def _post(url: str, body: Any) -> Any:
    from tests.support.platform import get_json

    return get_json(url, body)


class FlowRuns:
    """The platform's flow runs from the Prefect REST API, by flow name."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.flows: dict[str, str] = {}

    def _flow(self, flow_id: str) -> str:
        if flow_id not in self.flows:
            self.flows = {f["id"]: f["name"] for f in _post(f"{self.api}/flows/filter", {})}
        return self.flows.get(flow_id, "?")

    def _runs(self, flow_runs: dict[str, Any]) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        while True:
            body = {"flow_runs": flow_runs, "limit": PAGE, "offset": len(runs)}
            page = _post(f"{self.api}/flow_runs/filter", body)
            runs += page
            if len(page) < PAGE:
                return runs

    def active(self) -> dict[str, dict[str, dict[str, int]]]:
        """flow -> model -> queued (due or pending), running, window (of which a trigger's).

        A scheduled run counts from a minute before it is due, as the drift
        trigger counts it (``flows.triggers.DUE_WITHIN_S``): a window that
        closes just before the drift cron fires is left to that run, so the
        drain waits for it.
        """
        from flows.triggers import DUE_WITHIN_S

        due = (datetime.now(UTC) + timedelta(seconds=DUE_WITHIN_S)).isoformat()
        runs = self._runs(
            {"state": {"type": {"any_": ACTIVE}}, "expected_start_time": {"before_": due}}
        )
        out: dict[str, dict[str, dict[str, int]]] = {}
        for run in runs:
            model = str(run["parameters"].get("model", "-"))
            cell = out.setdefault(self._flow(run["flow_id"]), {}).setdefault(
                model, {"queued": 0, "running": 0, "window": 0}
            )
            queued = run["state_type"] in ("SCHEDULED", "PENDING")
            cell["queued" if queued else "running"] += 1
            cell["window"] += "window-closed" in run["tags"]
        return out

    def since(self, start: datetime) -> dict[str, dict[str, int]]:
        """flow -> final (or current) state name -> runs expected to start since ``start``."""
        from flows.triggers import DUE_WITHIN_S

        now = (datetime.now(UTC) + timedelta(seconds=DUE_WITHIN_S)).isoformat()
        runs = self._runs({"expected_start_time": {"after_": start.isoformat(), "before_": now}})
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for run in runs:
            out[self._flow(run["flow_id"])][run["state_name"] or run["state_type"]] += 1
        return {flow: dict(states) for flow, states in out.items()}


@dataclass
class RunQueue:
    """The most runs of one flow for one model seen unfinished at once."""

    flow: str
    model: str
    max_queued: int = 0
    max_running: int = 0
    max_window: int = 0  # runs a closed window asked for, queued or running


# --- profiling -----------------------------------------------------------------


@dataclass
class Profiling:
    """Rows profiled per model (closed windows + the open one), and the profiler's lag."""

    rows: dict[str, int]
    windows: dict[str, int]  # closed windows
    triggered: dict[str, int]  # closed windows the trigger was told about
    backlog_bytes: int  # spooled, not yet read by the profiler
    problems: list[str]  # window numbers with a gap or a repeat


def profiling_state(home: Path) -> Profiling:
    from aipaas.files import read_json

    spool = home / "spool"
    checkpoint = read_json(spool / "checkpoint.json", default={})
    offsets = checkpoint.get("offsets", {})
    backlog = 0
    for seg in spool.glob("*.seg"):
        try:
            backlog += seg.stat().st_size - int(offsets.get(seg.name, 0))
        except FileNotFoundError:  # read to its end and deleted meanwhile
            continue
    closed: dict[tuple[str, str, int], int] = {}
    for meta in (home / "profiles").glob("*/*/window-*.json"):
        w = json.loads(meta.read_text())
        closed[(w["model"], str(w["version"]), int(w["seq"]))] = int(w["rows"])
    for w in checkpoint.get("pending", []):  # closed, not yet published
        closed[(w["model"], str(w["version"]), int(w["seq"]))] = int(w["rows"])
    rows: Counter[str] = Counter()
    windows: Counter[str] = Counter()
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for (model, version, seq), n in closed.items():
        rows[model] += n
        windows[model] += 1
        seqs[(model, version)].append(seq)
    for w in checkpoint.get("windows", []):  # open
        rows[w["model"]] += int(w["rows"])
    problems = [
        f"{m} v{v}: windows {sorted(s)} are not 1..{len(s)}"
        for (m, v), s in seqs.items()
        if sorted(s) != list(range(1, len(s) + 1))
    ]
    stats = read_json(home / "run" / "triggers" / "stats.json", default={})
    triggered = {m: int(s.get("windows", 0)) for m, s in stats.items()}
    return Profiling(dict(rows), dict(windows), triggered, backlog, problems)


def unchecked_windows(settings: Settings, models: Sequence[str]) -> dict[str, int]:
    """Per model, closed windows (of any version) after the last one a drift check consumed."""
    from aipaas.monitoring import drift, spool

    out = {}
    for model in models:
        out[model] = 0
        for d in (settings.profiles_dir / model).glob("*"):
            if d.is_dir():
                seen = drift.last_checked(settings, model, d.name)
                out[model] += len(spool.list_windows(settings, model, d.name, after_seq=seen))
    return out


def wait_profiled(home: Path, timeout_s: float) -> tuple[Profiling, float]:
    """Until the profiler has read the whole spool and its counts hold still; and how long."""
    t0 = time.monotonic()
    last = profiling_state(home)
    while time.monotonic() - t0 < timeout_s:
        time.sleep(2)
        now = profiling_state(home)
        if now.backlog_bytes == 0 and (now.rows, now.windows) == (last.rows, last.windows):
            return now, time.monotonic() - t0
        last = now
    return last, time.monotonic() - t0


# --- the report ----------------------------------------------------------------


@dataclass
class SoakReport:
    """What a soak measured; :meth:`problems` lists the checks that failed."""

    seconds: float
    connections: int
    rate: float  # 0: closed loop
    models: list[str]
    warmup_s: float
    statuses: dict[str, int]  # "200", "429", "error:RemoteDisconnected", ...
    per_second: list[int]  # answered requests in each second
    failed_per_second: list[int]
    p50_ms: float
    p99_ms: float
    processes: list[ProcessMemory]
    restarts: dict[str, list[int]]  # child -> its pids, when it changed
    queues: list[RunQueue]
    queue_series: list[dict[str, Any]]  # {"t", "flow", "model", "queued", "running"}
    runs_since_start: dict[str, dict[str, int]]  # flow -> state -> runs
    drained_s: float | None  # traffic stopped -> no flow run queued or running (None: never)
    prefect_errors: list[str]  # samples the Prefect API did not answer
    answered: dict[str, int]  # 200s per model
    profiled: dict[str, int]  # rows profiled per model during the soak
    windows: dict[str, int]  # windows closed per model during the soak
    windows_triggered: dict[str, int]  # of which the trigger was told (must be all)
    window_problems: list[str]
    profiler_backlog_mb: list[tuple[float, float]]  # (s, MB spooled and unread)
    catch_up_s: float  # traffic stopped -> the profiler caught up
    unchecked: dict[str, int]  # closed windows no drift check has consumed, once drained
    audit_ok: bool
    audit_records: int
    audit_problems: list[str]
    audited: dict[str, int]  # the soak key's request records by status
    memory_series: list[tuple[float, float]] = field(default_factory=list)  # (s, total MB)
    # Per child of `up`, the CPU seconds of it and its descendants (flow runs included)
    # at each sample; and what the load generator and the whole machine used.
    cpu_series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    client_cpu_pct: float = 0.0  # of one core
    machine_busy_pct: float = 0.0  # of all cores, everything on the machine

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def long_lived(self) -> list[ProcessMemory]:
        return [p for p in self.processes if p.long_lived]

    def transient(self) -> list[ProcessMemory]:
        return [p for p in self.processes if not p.long_lived]

    def service_rss(self) -> dict[str, dict[float, float]]:
        """Per child of ``up``, the RSS of it and its descendants (no job) at each sample."""
        totals: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for p in self.processes:
            if not p.job:
                for t, mb in p.series:
                    totals[p.service][t] += mb
        return {service: dict(by_t) for service, by_t in totals.items()}

    def cpu_pct(self) -> dict[str, float]:
        """Per child of ``up`` with its descendants, % of one core while traffic ran."""
        out = {}
        for service, series in self.cpu_series.items():
            (t0, c0), (t1, c1) = series[0], series[-1]
            out[service] = 100.0 * (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
        return out

    def minutes_table(self) -> list[str]:
        """RSS (MB) of each child of ``up`` with its descendants: start, every minute, end."""
        by_service = self.service_rss()
        cpu = self.cpu_pct()
        times = sorted({t for by_t in by_service.values() for t in by_t})
        if not times:
            return []
        marks = [60.0 * m for m in range(int(self.seconds // 60) + 1)] + [times[-1]]
        picked = [_nearest(times, m) for m in marks]
        heads = [f"{int(m // 60)}'" for m in marks[:-1]] + ["end"]
        lines = ["  " + f"{'RSS MB':9}" + "".join(f"{h:>7}" for h in heads) + "   CPU %"]
        for service, by_t in sorted(by_service.items()):
            cells = "".join(f"{by_t[t]:7.0f}" if t in by_t else f"{'-':>7}" for t in picked)
            lines.append(f"  {service:9}{cells}{cpu.get(service, 0.0):8.0f}")
        lines.append(
            f"  CPU % of one core while traffic ran: the load generator "
            f"{self.client_cpu_pct:.0f}; the whole machine was "
            f"{self.machine_busy_pct:.0f}% busy ({os.cpu_count()} cores)"
        )
        return lines

    def problems(
        self, max_growth_mb: float = MAX_GROWTH_MB, max_growth_pct: float = MAX_GROWTH_PCT
    ) -> list[str]:
        """Each property the soak checks that did not hold, in words."""
        out = []
        if self.failed:
            out.append(f"{self.failed} of {self.requests} requests failed: {self.statuses}")
        for q in self.queues:
            if q.flow == "drift" and q.max_window > 1:
                out.append(f"{q.model}: {q.max_window} triggered drift runs unfinished at once")
            if q.flow == "drift" and (q.max_queued > 2 or q.max_running > 2):
                out.append(
                    f"{q.model}: drift runs piled up ({q.max_queued} queued, "
                    f"{q.max_running} running at once; the cron adds one at most)"
                )
        if self.drained_s is None:
            out.append("flow runs were still queued or running when the soak stopped waiting")
        for p in self.long_lived():
            if not p.flat(max_growth_mb, max_growth_pct):
                out.append(
                    f"{p.service} {p.label} (pid {p.pid}) grew {p.growth_mb:.0f} MB "
                    f"({p.growth_pct:.0f}%): {p.base_mb:.0f} -> {p.end_mb:.0f} MB"
                )
        if self.restarts:
            out.append(f"children restarted during the soak: {self.restarts}")
        for model in self.models:
            answered, profiled = self.answered.get(model, 0), self.profiled.get(model, 0)
            if answered != profiled:
                out.append(f"{model}: {answered} rows answered, {profiled} profiled")
            if self.windows.get(model, 0) != self.windows_triggered.get(model, 0):
                out.append(
                    f"{model}: {self.windows.get(model, 0)} windows closed, the trigger "
                    f"was told of {self.windows_triggered.get(model, 0)}"
                )
        out += self.window_problems
        if self.audited.get("200", 0) != self.ok:
            out.append(f"{self.ok} requests answered 200, {self.audited} audit records")
        if not self.audit_ok:
            out.append(f"audit chain broken: {self.audit_problems[:3]}")
        return out

    def table(self) -> str:
        lines = [
            f"soak: {self.seconds:.0f} s, {self.connections} connections "
            f"({'closed loop' if not self.rate else f'{self.rate:.0f} req/s'}), "
            f"models {', '.join(self.models)}",
            f"  requests {self.requests}  ({self.rps:.0f}/s; per second min "
            f"{min(self.per_second[1:-1] or self.per_second or [0])}, max "
            f"{max(self.per_second or [0])})  p50 {self.p50_ms:.1f} ms  p99 {self.p99_ms:.1f} ms",
            f"  by status {self.statuses}   audit records of the soak's key {self.audited}",
            f"  audit chain {'verified' if self.audit_ok else 'BROKEN'} "
            f"({self.audit_records} records)",
            "",
            f"  {'model':10} {'answered':>9} {'profiled':>9} {'windows':>8} {'told':>5}",
        ]
        for m in self.models:
            lines.append(
                f"  {m:10} {self.answered.get(m, 0):9} {self.profiled.get(m, 0):9} "
                f"{self.windows.get(m, 0):8} {self.windows_triggered.get(m, 0):5}"
            )
        lines.append(
            f"  the profiler caught up {self.catch_up_s:.0f} s after traffic stopped; "
            f"windows no drift check has consumed yet: {self.unchecked}"
        )
        lines += ["", f"  {'flow':10} {'model':10} {'max queued':>10} {'running':>8} {'window':>7}"]
        for q in self.queues:
            lines.append(
                f"  {q.flow:10} {q.model:10} {q.max_queued:10} {q.max_running:8} {q.max_window:7}"
            )
        drained = "never" if self.drained_s is None else f"{self.drained_s:.0f} s"
        lines.append(f"  runs since the start: {self.runs_since_start}; drained after: {drained}")
        if self.prefect_errors:
            lines.append(
                f"  the Prefect API did not answer {len(self.prefect_errors)} samples: "
                f"{self.prefect_errors[:2]}"
            )
        lines += [
            "",
            f"  {'service':9} {'process':28} {'pid':>7} {'start':>7} {'warm':>7} "
            f"{'end':>7} {'peak':>7} {'growth':>8}",
        ]

        def mb(x: float | None) -> str:
            return "-" if x is None else f"{x:.0f}"

        for p in sorted(self.long_lived(), key=lambda p: (p.service, -p.peak_mb)):
            lines.append(
                f"  {p.service:9} {p.label[:28]:28} {p.pid:7} {mb(p.start_mb):>7} "
                f"{mb(p.base_mb):>7} {mb(p.end_mb):>7} {mb(p.peak_mb):>7} "
                f"{p.growth_mb:+7.0f}M"
            )
        lines += ["", *self.minutes_table()]
        brief = self.transient()
        if brief:
            by: Counter[str] = Counter(f"{p.service}:{p.label}" for p in brief)
            peak = max(p.peak_mb for p in brief)
            lines.append(
                f"  flow runs, Ray workers, and processes not alive from the warm-up to the end: "
                f"{len(brief)} processes {dict(by)}, the largest {peak:.0f} MB"
            )
        if self.restarts:
            lines.append(f"  restarted: {self.restarts}")
        problems = self.problems()
        lines += ["", "  all checks hold" if not problems else "  FAILED:"]
        lines += [f"    - {p}" for p in problems]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["processes"] = [
            {**asdict(p), "growth_mb": p.growth_mb, "long_lived": p.long_lived}
            for p in self.processes
        ]
        out.update(
            requests=self.requests, ok=self.ok, failed=self.failed, rps=self.rps,
            problems=self.problems(),
        )  # fmt: skip
        return out


# --- the soak ------------------------------------------------------------------


def soak(
    platform: Platform,
    seconds: float,
    *,
    models: Sequence[str] | None = None,
    connections: int = 8,
    rate: float = 0.0,
    warmup_s: float | None = None,
    sample_s: float = 10.0,
    queue_s: float = 2.0,
    catch_up_s: float = 300.0,
    drain_s: float = 300.0,
    progress: Progress | None = print,
) -> SoakReport:
    """Traffic for ``seconds`` through a running platform, measured; see the module's docstring.

    Args:
        platform: An ``aipaas up`` that serves ``models`` (default: all it serves).
        warmup_s: RSS growth is judged from this far in (default: a tenth, at most 60 s).
        sample_s: How often the RSS of every process is read.
        queue_s: How often the Prefect API's unfinished runs are read.
        catch_up_s: How long the profiler may take to read the spool after traffic.
        drain_s: How long to wait after traffic for no flow run to be queued or running.
    """
    from sqlalchemy import func, select

    from aipaas import audit, db
    from aipaas.inference import keys

    say = progress or (lambda _msg: None)
    settings = platform.settings()
    models = list(models or served_models(platform))
    warmup_s = min(60.0, seconds / 10) if warmup_s is None else warmup_s
    record, key = keys.create_key(settings, f"soak-{int(time.time())}", "predict", rate="1000000/s")
    load = Load(
        platform.ports["serving"], targets(platform, models), key,
        connections=connections, rate=rate,
    )  # fmt: skip
    runs = FlowRuns(platform.url("prefect", "/api"))
    before, _ = wait_profiled(platform.home, catch_up_s)  # earlier traffic profiled first
    children0 = platform.children()

    procs: dict[int, ProcessMemory] = {}
    memory_series: list[tuple[float, float]] = []
    backlog_series: list[tuple[float, float]] = []
    queues: dict[tuple[str, str], RunQueue] = {}
    queue_series: list[dict[str, Any]] = []
    prefect_errors: list[str] = []

    cpu_series: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def sample_memory(t: float, phase: str) -> None:
        total = 0.0
        cpu: dict[str, float] = defaultdict(float)
        for pid, (service, label) in platform_processes(platform).items():
            cpu[service] += _cpu_s(pid)
            rss = _rss_mb(pid)
            if rss is None:
                continue
            total += rss
            p = procs.get(pid)
            if p is None:
                p = procs[pid] = ProcessMemory(service, pid, label, t, t, None, None, None, rss)
            # A Ray worker's title names its task of the moment.
            p.label, p.last_s, p.peak_mb = label, t, max(p.peak_mb, rss)
            p.series.append((round(t, 1), round(rss, 1)))
            if phase == "start":
                p.start_mb = rss
            elif phase == "warm" and p.base_mb is None:
                p.base_mb = rss
            elif phase == "end":
                p.end_mb = rss
        memory_series.append((round(t, 1), round(total, 1)))
        for service, used in cpu.items():
            cpu_series[service].append((round(t, 1), round(used, 2)))
        backlog = profiling_state(platform.home).backlog_bytes / 1e6
        backlog_series.append((round(t, 1), round(backlog, 2)))

    def sample_queues(t: float) -> dict[str, dict[str, dict[str, int]]] | None:
        try:
            active = runs.active()
        except (OSError, ValueError) as err:  # a Prefect server too busy to answer in 10 s
            prefect_errors.append(f"{t:.0f} s: {type(err).__name__}: {err}")
            return None
        for flow, by_model in active.items():
            for model, n in by_model.items():
                q = queues.setdefault((flow, model), RunQueue(flow, model))
                q.max_queued = max(q.max_queued, n["queued"])
                q.max_running = max(q.max_running, n["running"])
                q.max_window = max(q.max_window, n["window"])
                queue_series.append({"t": round(t, 1), "flow": flow, "model": model, **n})
        if not active:  # the sample's time, for the chart's zeros
            queue_series.append({"t": round(t, 1), "flow": "", "model": "", "queued": 0,
                                 "running": 0, "window": 0})  # fmt: skip
        return active

    started_at = datetime.now(UTC) - timedelta(seconds=1)
    sample_memory(0.0, "start")
    client0, machine0 = _client_cpu_s(), _machine_busy()
    say(f"soak: {len(load.clients)} connections to {', '.join(models)} for {seconds:.0f} s")
    load.start()
    warm_done = False
    next_memory, next_queue, next_say = sample_s, 0.0, 60.0
    while (t := time.monotonic() - load.t0) < seconds:
        if t >= next_queue:
            sample_queues(t)
            next_queue = t + queue_s
        if not warm_done and t >= warmup_s:
            sample_memory(t, "warm")
            warm_done = True
            next_memory = t + sample_s
        elif t >= next_memory:
            sample_memory(t, "mid")
            next_memory += sample_s
        if t >= next_say:
            per_s = load.per_second()
            last = per_s[-61:-1] or [0]
            say(
                f"  {t / 60:4.1f} min: {sum(last) / len(last):5.0f} req/s over the last "
                f"minute, {sum(load.per_second(bad=True))} failed, RSS "
                f"{memory_series[-1][1]:.0f} MB in {len(procs)} processes"
            )
            next_say += 60.0
        time.sleep(min(0.5, max(0.01, seconds - t)))
    load.stop()
    seconds = time.monotonic() - load.t0  # the last answers included
    client_cpu = _client_cpu_s() - client0
    machine1 = _machine_busy()
    machine_busy = (machine1[0] - machine0[0]) / max(1, machine1[1] - machine0[1])
    if not warm_done:
        sample_memory(seconds, "warm")
    sample_memory(seconds, "end")
    sample_queues(seconds)
    say(f"soak: traffic stopped after {seconds:.0f} s; waiting for the profiler and flow runs")

    after, caught_up = wait_profiled(platform.home, catch_up_s)
    drained: float | None = None
    t_stop = time.monotonic()
    while time.monotonic() - t_stop < drain_s:
        active = sample_queues(time.monotonic() - load.t0)
        cells = [n for by in (active or {}).values() for n in by.values()]
        if active is not None and not any(n["queued"] + n["running"] for n in cells):
            drained = time.monotonic() - t_stop
            break
        time.sleep(queue_s)
    try:
        since = runs.since(started_at)
    except (OSError, ValueError) as err:
        since = {}
        prefect_errors.append(f"runs since the start: {type(err).__name__}: {err}")
    unchecked = unchecked_windows(settings, models)

    chain = audit.verify(settings)
    log = db.audit_log
    with db.engine(settings).connect() as conn:
        audited = conn.execute(
            select(log.c.status, func.count())
            .where(log.c.key_id == record.id, log.c.kind == "request")
            .group_by(log.c.status)
        ).all()
    children1 = platform.children()
    restarts = {
        name: [children0[name], pid]
        for name, pid in children1.items()
        if name in children0 and children0[name] != pid
    }
    p50, p99 = load.percentiles()
    return SoakReport(
        seconds=seconds,
        connections=connections,
        rate=rate,
        models=models,
        warmup_s=warmup_s,
        statuses=load.statuses(),
        per_second=load.per_second(),
        failed_per_second=load.per_second(bad=True),
        p50_ms=p50,
        p99_ms=p99,
        processes=sorted(procs.values(), key=lambda p: (p.service, p.first_s, p.pid)),
        restarts=restarts,
        queues=sorted(queues.values(), key=lambda q: (q.flow, q.model)),
        queue_series=queue_series,
        runs_since_start=since,
        drained_s=drained,
        prefect_errors=prefect_errors,
        answered=load.ok_by_model(),
        profiled={m: after.rows.get(m, 0) - before.rows.get(m, 0) for m in models},
        windows={m: after.windows.get(m, 0) - before.windows.get(m, 0) for m in models},
        windows_triggered={
            m: after.triggered.get(m, 0) - before.triggered.get(m, 0) for m in models
        },
        window_problems=after.problems,
        profiler_backlog_mb=backlog_series,
        catch_up_s=caught_up,
        unchecked=unchecked,
        audit_ok=chain.ok,
        audit_records=chain.records,
        audit_problems=list(chain.problems),
        audited={str(status): int(n) for status, n in audited},
        memory_series=memory_series,
        cpu_series=dict(cpu_series),
        client_cpu_pct=100.0 * client_cpu / seconds,
        machine_busy_pct=100.0 * machine_busy,
    )


def _client_cpu_s() -> float:
    """CPU seconds this process (the load generator's threads, the sampling) has used."""
    t = os.times()
    return t.user + t.system


# --- the chart -----------------------------------------------------------------


def chart(report: SoakReport, path: Path) -> Path:
    """RSS per process, requests/s and unfinished drift runs over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_rps, ax_runs) = plt.subplots(
        3, 1, figsize=(11, 10), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.3]}
    )
    big = sorted(
        (p for p in report.long_lived() if p.peak_mb >= 40),
        key=lambda p: -p.peak_mb,
    )
    for p in big:
        xs, ys = [x for x, _ in p.series], [y for _, y in p.series]
        ax_mem.plot(xs, ys, label=f"{p.service}: {p.label[:30]}")
    rest: dict[float, float] = defaultdict(float)
    shown = {p.pid for p in big}
    for p in report.processes:
        if p.pid not in shown:
            for x, y in p.series:
                rest[x] += y
    if rest:
        at = sorted(rest)
        ax_mem.plot(at, [rest[x] for x in at], "k--", label="flow runs + small processes, summed")
    ax_mem.axvline(report.warmup_s, color="grey", lw=0.8, ls=":")
    ax_mem.set_ylabel("RSS (MB)")
    ax_mem.set_title(
        f"aipaas up under {_duration(report.seconds)} of load: {report.requests} requests, "
        f"{report.failed} failed"
    )
    ax_mem.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))

    per_s = report.per_second
    ax_rps.plot(range(len(per_s)), per_s, lw=0.5, color="tab:blue", alpha=0.5, label="per second")
    k = 10
    if len(per_s) >= k:
        smooth = [sum(per_s[i - k : i]) / k for i in range(k, len(per_s) + 1)]
        ax_rps.plot(range(k, len(per_s) + 1), smooth, color="tab:blue", label="10 s mean")
    if any(report.failed_per_second):
        bad = report.failed_per_second
        ax_rps.plot(range(len(bad)), bad, color="tab:red", label="not 200")
    ax_rps.set_ylabel("requests/s")
    ax_rps.legend(fontsize=7, loc="lower right")

    for (flow, model), points in _series_by(report.queue_series).items():
        if flow != "drift":
            continue
        ts = [pt["t"] for pt in points]
        ax_runs.step(ts, [pt["queued"] for pt in points], where="post", label=f"{model} queued")
        ax_runs.step(ts, [pt["running"] for pt in points], where="post", label=f"{model} running")
    ax_runs.set_ylabel("drift runs")
    ax_runs.set_xlabel("seconds since traffic started (drift runs: until they drained)")
    ax_runs.set_xlim(0, max([report.seconds, 1.0] + [pt["t"] for pt in report.queue_series]))
    if ax_runs.lines:
        ax_runs.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nearest(times: Sequence[float], mark: float) -> float:
    return min(times, key=lambda t: abs(t - mark))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _series_by(series: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per (flow, model) points, with zeros where a sample saw none of its runs."""
    times = sorted({pt["t"] for pt in series})
    keys = {(pt["flow"], pt["model"]) for pt in series if pt["flow"]}
    at = {(pt["flow"], pt["model"], pt["t"]): pt for pt in series}
    zero = {"queued": 0, "running": 0, "window": 0}
    return {(f, m): [at.get((f, m, t), {"t": t, **zero}) for t in times] for f, m in sorted(keys)}


# --- main ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    from tests.support.platform import running_up, stop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="traffic for this long")
    parser.add_argument(
        "--rate", type=float, default=0.0,
        help="total requests/s (default 0: as fast as serving answers)",
    )  # fmt: skip
    parser.add_argument("--connections", type=int, default=8, help="concurrent clients")
    parser.add_argument("--replicas", type=int, default=1, help="serving replicas")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.connections < 1 or args.rate < 0:
        parser.error("--minutes and --connections must be positive, --rate at least 0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = Path(tempfile.mkdtemp(prefix="aipaas-soak-"))
    extra = {"AIPAAS_SERVING__REPLICAS": str(args.replicas)}
    t0 = time.monotonic()
    try:
        with running_up(root, extra) as up:
            print(f"aipaas up in {up.up_s:.0f} s ({root}); waiting for the first champions")
            up.wait_served({"diagnosis": "1", "topic": "1"}, timeout_s=1800)
            print(f"champions served after {time.monotonic() - t0:.0f} s")
            report = soak(
                up, args.minutes * 60, connections=args.connections, rate=args.rate,
                sample_s=args.sample_seconds,
            )  # fmt: skip
            t_stop = time.monotonic()
            code = stop(up, grace_s=120)
            print(f"Ctrl-C: aipaas up exited {code} after {time.monotonic() - t_stop:.0f} s")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(report.table())
    results = {
        **report.to_json(),
        "up_exit_code": code,
        "replicas": args.replicas,
        "note": "the load generator (Python threads) shares the machine's cores with the platform",
    }
    path = write_results("soak", results)
    png = chart(report, RESULTS_DIR / "soak.png")
    print(f"wrote {path} and {png}")
    return 0 if not report.problems() and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
