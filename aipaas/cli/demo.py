"""``aipaas demo`` (``make demo``): the whole loop, on the embedded defaults.

For each demo model in turn (``diagnosis``, the tabular one, then ``topic``,
the text one; ``--model`` picks):

1. lifecycle: data -> train -> promote, so champion v1 serves; then a clean
   start of its own (:meth:`Demo.start_clean`), so that a second demo on the
   same home tells the same story: the champion goes back to the model's
   first one (the lifecycle's, learnt from the shipped data) through a signed
   rollback on the audit trail, and the profile window an earlier run left
   open is closed before this run's traffic;
2. simulated clients, each with its own API key, send ordinary traffic:
   the profiler closes windows, each close starts the drift flow, and no drift
   is reported;
3. a shifted population with labels sent to ``/feedback`` (scaled size
   measurements for ``diagnosis``; quotes about Linux and Perl, a kind of text
   it never saw, for ``topic``): drift is detected, the drift flow starts retraining (data
   with the feedback rows, train, promote through the same gates), and
   serving swaps to the new champion while a client keeps calling it;
4. a summary: versions and their gates, drift scores, requests served and
   failed, the audit chain verified, and how long each step took.

Traffic is sampled from the dataset's shipped source, what the first champion
learnt from, never from data a retrain added. The timings (:class:`Timings`)
go to ``<home>/demo/timings.json`` (and ``--timings FILE``): per model, the
lifecycle, the clean start, the ordinary step, the shifted traffic until drift
was detected, and drift detected -> new champion serving with where that time
went; and the whole demo.

If ``aipaas up`` already runs on this home the demo uses it; otherwise it
starts the same services, through the same start-up sequence
(:func:`aipaas.ops.up.run`), and stops them at the end (``--stay`` keeps them).
Everything it leaves (MLflow runs, Prefect flow runs, drift reports, the audit
trail) stays under ``AIPAAS_HOME`` for a look in the UIs.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer

from aipaas.cli._app import app
from aipaas.exceptions import AipaasError
from aipaas.ops import simulate, up
from aipaas.settings import Settings, get_settings

if TYPE_CHECKING:
    import pandas as pd

    from aipaas.modeldef import ModelDefinition
    from aipaas.monitoring.drift_report import DriftCheckRecord
    from aipaas.training.promotion_log import PromotionRecord

# The demo's own defaults, used only when the environment does not set them:
# small profile windows so drift checks come within seconds, a short search,
# and a cooldown shorter than the production default (30 min): long enough
# that one shift starts one retrain (the later windows of the same shift ask
# again while it runs), short enough that a demo run again soon after retrains
# again (it waits out what is left of it, and says so). The worker looks for
# new flow runs (a closed window's drift check, the retrain) every second
# rather than Prefect's 10 s, so each step shows its effect at once.
DEMO_ENV = {
    "AIPAAS_MONITORING__WINDOW_ROWS": "150",
    "AIPAAS_TUNE__NUM_SAMPLES": "4",
    "AIPAAS_RETRAIN__COOLDOWN_MINUTES": "2",
    "AIPAAS_RETRAIN__MAX_PER_DAY": "50",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
}
CLIENTS = ("clinic-north", "clinic-south", "research-app")
# A recalibrated imaging device: every size measurement reads 45% larger.
SHIFT = {f"{kind}_{m}": 1.45 for kind in ("mean", "worst") for m in ("radius", "perimeter", "area")}
SHIFT |= {f"{m}_error": 1.45 for m in ("radius", "perimeter", "area")}


def _linux_and_perl_quotes() -> list[str]:
    from aipaas.datasets import ingest

    return list(ingest.load_fortunes(["linux", "perl"], "topic", ingest.FORTUNES_DIR).text)


# What each demo model is shown: its ordinary traffic and its shifted population.
SCENARIOS: dict[str, simulate.Scenario] = {
    "diagnosis": simulate.ScaledFeatures(
        SHIFT, f"{len(SHIFT)} size measurements read 45% larger (a recalibrated device)"
    ),
    # Measured: 150 of these quotes score text.oov 0.09-0.10 against the
    # training vocabulary (threshold 0.05; held-out quotes at most 0.012).
    "topic": simulate.NewTexts(
        _linux_and_perl_quotes,
        "computers",
        "quotes about Linux and Perl (fortunes' linux and perl files), labelled computers",
    ),
}
RATE_PER_CLIENT = 30.0
# The client that keeps calling while the retrain runs: enough to see the swap
# fail no request, slow enough that its windows (each close starts a drift
# flow run, a process of its own) leave the CPU to the retrain.
BACKGROUND_RATE = 3.0
# How often the demo looks at files and endpoints while it waits: each look is
# a query on the platform database or a /readyz, cheap; a step's time is
# measured to this resolution.
POLL_S = 0.25
# What the progress line reads (the registry's versions) is dearer: this often.
PROGRESS_S = 2.0
# Who the clean start's rollback is signed by, on the audit trail.
DECIDER = "aipaas demo (a clean start)"


class DemoFailed(AipaasError):
    exit_code = 20


def say(msg: str) -> None:
    typer.echo(f"[{time.strftime('%H:%M:%S')}] {msg}")


@dataclass
class Timings:
    """How long one model's loop took, step by step (seconds; None: not reached).

    ``drift_to_serving_s`` runs from the drift check that asked for the
    retrain to serving answering with the new champion; ``drift_to_serving``
    says where that went: the check's report stored and the retrain started
    (``check_to_retrain_start_s``), the new rows exported and versioned and
    the challenger trained and registered (``retrain_start_to_registered_s``),
    its gates (``registered_to_decision_s``), and serving's reload
    (``decision_to_serving_s``). ``window_closed_to_check_s`` is the drift
    run's start and check, before that.
    """

    model: str
    lifecycle_s: float | None = None
    clean_start_s: float | None = None
    ordinary_s: float | None = None
    cooldown_wait_s: float | None = None
    shifted_to_drift_s: float | None = None
    drift_to_serving_s: float | None = None
    drift_to_serving: dict[str, float] = field(default_factory=dict)
    total_s: float | None = None
    new_version: str | None = None

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        parts = ", ".join(
            f"{k.removesuffix('_s')} {f(v)}" for k, v in self.drift_to_serving.items()
        )
        return (
            f"lifecycle {f(self.lifecycle_s)}, clean start {f(self.clean_start_s)}, "
            f"ordinary traffic {f(self.ordinary_s)}, cooldown wait {f(self.cooldown_wait_s)}, "
            f"shifted traffic -> drift detected {f(self.shifted_to_drift_s)}, "
            f"drift detected -> v{self.new_version or '?'} serving {f(self.drift_to_serving_s)}"
            f"{f' ({parts})' if parts else ''}; the model's whole loop {f(self.total_s)}"
        )


@dataclass
class DemoTimings:
    """The whole demo's timings, as ``timings.json`` holds them."""

    started_at: float
    platform_start_s: float | None = None  # None: the platform was already up
    total_s: float | None = None
    ok: bool = False
    error: str | None = None
    models: list[Timings] = field(default_factory=list)

    def write(self, *paths: Path | None) -> None:
        body = asdict(self) | {"load_average": list(os.getloadavg())}
        text = json.dumps(body, indent=1) + "\n"
        for path in paths:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)


def start_lifecycles(s: Settings, models: list[str]) -> dict[str, str]:
    """Start at once the lifecycle of every model with no champion; the run's key for each.

    With two models, the second one's lifecycle (a minute of data, training
    and gates) then runs while the first one's loop mostly waits for windows
    and drift checks, instead of after it; each loop's step 1 follows its own
    run (the same idempotency key finds it, never a second one).
    """
    from aipaas.training import registry, tags
    from flows._common import run_deployment_at

    if len(models) < 2:
        return {}
    registry.connect(s)
    keys: dict[str, str] = {}
    for name in models:
        if registry.get_alias(name, tags.CHAMPION) is None:
            keys[name] = f"demo-lifecycle-{name}-{uuid.uuid4().hex[:12]}"
            run_deployment_at(
                s.prefect_api_url,
                "lifecycle/lifecycle",
                {"model": name},
                idempotency_key=keys[name],
                auth_string=s.prefect.auth_string.get_secret_value() or None,
            )
    if keys:
        say(f"started the lifecycles of {', '.join(keys)} now: they run side by side")
    return keys


def timings_path(s: Settings) -> Path:
    """Where every demo writes its timings (``--timings FILE`` writes a copy)."""
    return s.home / "demo" / "timings.json"


@app.command("demo")
def demo_cmd(
    stay: Annotated[
        bool, typer.Option("--stay", help="Keep the platform running after the demo (Ctrl-C).")
    ] = False,
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Run the loop on this model only (repeatable); default: every demo model."
        ),
    ] = None,
    timeout_min: Annotated[
        float, typer.Option(help="Give up on a step after this many minutes.")
    ] = 8.0,
    timings: Annotated[
        Path | None,
        typer.Option(
            "--timings",
            metavar="FILE",
            help="Also write the timings (JSON) here; they always go to <home>/demo/timings.json.",
        ),
    ] = None,
) -> None:
    """Run the whole loop: lifecycle, traffic, drift, retraining, hot swap, summary."""
    begun = time.monotonic()
    models = model or list(SCENARIOS)
    unknown = [m for m in models if m not in SCENARIOS]
    if unknown:
        raise DemoFailed(f"no demo scenario for {unknown}; the demo models are {list(SCENARIOS)}")
    s = demo_settings()
    base = f"http://{s.serving.host}:{s.serving.port}"
    record = DemoTimings(started_at=time.time())

    def loops(stop: threading.Event | None = None) -> None:
        try:
            keys = start_lifecycles(s, models)
            for name in models:
                demo = Demo(s, name, timeout_min * 60, stop=stop, lifecycle_key=keys.get(name))
                record.models.append(demo.timings)
                demo.run()
            record.ok = True
        except AipaasError as err:
            record.error = str(err)
            raise
        finally:
            record.total_s = round(time.monotonic() - begun, 2)
            record.write(timings_path(s), timings)
        if len(models) > 1:
            say(f"the demo took {record.total_s:.0f} s")
        say(f"timings: {timings_path(s)}" + (f" and {timings}" if timings else ""))

    if up.http_ok(f"{base}/healthz") and up.http_ok(f"{s.prefect_api_url}/health"):
        say(f"aipaas is already up on this home; using it ({base})")
        loops()
        return

    def on_ready(sup: up.Supervisor) -> None:
        record.platform_start_s = round(time.monotonic() - begun, 2)
        say(f"the platform started in {record.platform_start_s:.0f} s")
        loops(stop=sup.stop_requested)
        if stay:
            say("the demo is done; the platform keeps running (Ctrl-C stops it).")
        else:
            say(
                "the demo is done and stops the services it started; everything it made "
                f"stays under {s.home}: `make up` (`aipaas up`) shows the same state in the "
                "Prefect and MLflow UIs, and `aipaas demo --stay` keeps them running."
            )

    raise typer.Exit(up.run(s, up.plan(s), on_ready=on_ready, echo=say, stay=stay))


def demo_settings() -> Settings:
    """The settings, with the demo's defaults (:data:`DEMO_ENV`) under the environment's."""
    for key, value in DEMO_ENV.items():
        os.environ.setdefault(key, value)
    get_settings.cache_clear()
    return get_settings()


class Demo:
    """The loop, step by step, against a running platform; raises DemoFailed on a wrong turn."""

    def __init__(
        self,
        settings: Settings,
        model: str,
        timeout_s: float,
        *,
        stop: threading.Event | None = None,
        lifecycle_key: str | None = None,
    ) -> None:
        from aipaas.modeldef import load_definition
        from aipaas.training import registry

        self.s = settings
        self.model = model
        self.timeout_s = timeout_s
        self.stop = stop or threading.Event()  # set by Ctrl-C under `up.run`
        self.lifecycle_key = lifecycle_key  # of a run start_lifecycles created
        self.base = f"http://{settings.serving.host}:{settings.serving.port}"
        self.prefect_ui = settings.prefect_api_url.removesuffix("/api")
        self.definition: ModelDefinition = load_definition(model, settings.models_dir)
        self.scenario = SCENARIOS[model]
        self.path = f"/models/{model}/predict"
        self.started = time.time()
        self.timings = Timings(model)
        self.totals = simulate.ClientStats("all")
        self.learnt_from = 0  # labelled rows the retrain added to the data
        self.clients: list[tuple[str, str]] = []
        registry.connect(settings)

    def run(self) -> None:
        """The four steps; the summary says whether the loop closed."""
        t = self.timings
        with self.timed("lifecycle_s"):
            champion = self.lifecycle()
        with self.timed("clean_start_s"):
            first = self.start_clean(champion)
            self.create_clients()
            frame = self.source_frame()
            self.close_open_window(first, frame)
        with self.timed("ordinary_s"):
            self.ordinary_traffic(frame, first)
        with self.timed("cooldown_wait_s"):
            self.wait_out_cooldown()
        shifted_at = time.time()
        decisive = self.shifted_traffic(frame, first)
        t.shifted_to_drift_s = round(decisive.at - shifted_at, 2)
        decision = self.retrain_and_swap(frame, first, decisive)
        t.total_s = round(time.time() - self.started, 2)
        self.summary(decisive, decision)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        setattr(self.timings, name, round(time.monotonic() - start, 2))

    # -- step 1 ------------------------------------------------------------------

    def lifecycle(self) -> str:
        """Champion v1: the lifecycle deployment runs when no champion exists; its version."""
        from aipaas.training import registry, tags
        from flows._common import run_deployment_at

        ui = self.prefect_ui
        say(f"{self.model} step 1/4: lifecycle (watch it in the Prefect UI: {ui})")
        if registry.get_alias(self.model, tags.CHAMPION) is None:
            flow_run = run_deployment_at(
                self.s.prefect_api_url,
                "lifecycle/lifecycle",
                {"model": self.model},
                wait_s=self.timeout_s,
                poll_s=1.0,
                idempotency_key=self.lifecycle_key,
                auth_string=self.s.prefect.auth_string.get_secret_value() or None,
            )
            state = flow_run.state
            if state is None or not state.is_completed():
                raise DemoFailed(
                    f"the lifecycle ended {getattr(state, 'name', 'unknown')}: {state}"
                )
            say(f"  lifecycle run {flow_run.name}: completed")
        champion = registry.get_alias(self.model, tags.CHAMPION)
        if champion is None:
            raise DemoFailed("the lifecycle ended with no champion (see `aipaas models show`)")
        return champion.version

    def start_clean(self, champion: str) -> str:
        """Serve the model's first champion, as a first demo does; its version.

        A champion a retrain made (an earlier demo's) learnt from that demo's
        shifted rows: ordinary traffic would read as drift against its
        reference. Going back is a signed rollback decision on the audit
        trail, like any move of ``champion``, and only to a version that was
        promoted (:func:`aipaas.training.promote.rollback`).
        """
        from aipaas.training import promote

        first = first_champion(self.s, self.model) or champion
        if first == champion:
            say(f"  a clean start: v{first} is its first champion (nothing to undo)")
        else:
            promote.rollback(self.s, self.model, to_version=first, decided_by=DECIDER)
            say(
                f"  a clean start: champion v{champion} (an earlier retrain's) rolled back to "
                f"v{first}, its first champion, learnt from the shipped data (a signed "
                "rollback, on the audit trail)"
            )
        loaded = self.wait(lambda: self.serving_version() == first)
        say(f"  champion v{first} serving at {self.base}{self.path} ({loaded:.0f} s to load)")
        return first

    def create_clients(self) -> None:
        """One API key per simulated client application."""
        from aipaas.inference import keys

        for name in CLIENTS:
            _, key = keys.create_key(
                self.s, f"demo-{self.model}-{name}", "predict,feedback", rate="60/s"
            )
            self.clients.append((name, key))
        names = ", ".join(f"demo-{self.model}-{c}" for c in CLIENTS)
        say(f"  created an API key per client: {names}")

    def source_frame(self) -> pd.DataFrame:
        """The dataset's shipped source, what the first champion learnt from: traffic's sample.

        Not the current dataset version: a retrain added the shifted rows of
        earlier demos to it.
        """
        from aipaas.datasets import ingest

        dataset = self.definition.dataset
        return ingest.load_source(ingest.spec(dataset, self.s), self.s, dataset)

    def close_open_window(self, version: str, frame: pd.DataFrame) -> None:
        """Have what an earlier run left of ``version``'s traffic judged before this run's.

        An earlier run may leave rows in the open profile window (they would
        join this run's first window) and closed windows no decided check
        consumed (a check after its swap judged the new version's): they
        would join this run's first check. Ordinary rows top the open window
        up until it closes, and its drift check consumes all of them; this
        run's steps then count only later windows.
        """
        from aipaas.monitoring import drift, spool
        from aipaas.monitoring.drift_report import drift_history

        mark = time.time()
        checkpoint = spool.checkpoint_path(self.s)
        # The profiler replaces its checkpoint every step: once it is newer than
        # now, whatever serving spooled before now is in it.
        self.wait(lambda: checkpoint.is_file() and checkpoint.stat().st_mtime > mark)
        seq, rows = spool.open_windows(self.s).get((self.model, version), (0, 0))
        closed = spool.list_windows(self.s, self.model, version)
        judged = drift.last_checked(self.s, self.model, version)
        left = [w for w in closed if w.seq > judged]
        if not rows and not left:
            return
        target = seq if rows else max(w.seq for w in closed) + 1
        fill = max(0, self.s.monitoring.window_rows - rows)
        self.send(self.traffic(frame, fill, seed=int(self.started) + 3), feedback=False)

        def consumed() -> bool:
            return any(
                c.version == version and target in c.windows and c.decision.decided
                for c in drift_history(self.s, self.model)
            )

        self.wait(consumed)
        earlier = rows + sum(w.rows for w in left)
        say(
            f"  {earlier} rows of v{version} an earlier run left unjudged were topped up with "
            f"{fill} ordinary rows and judged by one drift check: this run's traffic starts "
            "windows of its own"
        )

    # -- steps 2 and 3 -------------------------------------------------------------

    def ordinary_traffic(self, frame: pd.DataFrame, version: str) -> None:
        """Two windows of ordinary traffic; the drift checks they start should find nothing."""
        n = 2 * self.s.monitoring.window_rows
        say(
            f"{self.model} step 2/4: {len(CLIENTS)} clients send {n} ordinary requests "
            f"({self.s.monitoring.window_rows}-row windows)"
        )
        with self.new_checks(version, n) as checks:
            traffic = self.traffic(frame, n, seed=int(self.started))
            self.send(traffic, feedback=False)
        if any(c.decision.retrain for c in checks):
            say("  ! the ordinary traffic was reported as drift (a false alarm)")
        else:
            say("  no drift reported on ordinary traffic")

    def wait_out_cooldown(self) -> None:
        """Wait until the retrain guardrails would let this run's shift retrain.

        An earlier demo's retrain, minutes ago, may still hold the cooldown.
        """
        from aipaas.monitoring import retrain

        verdict = retrain.guardrail_verdict(self.s, self.model)
        if verdict.allowed or verdict.next_allowed_at is None:
            return
        wait = verdict.next_allowed_at - time.time()
        why = "; ".join(verdict.reasons)
        if wait > self.timeout_s:
            raise DemoFailed(
                f"retraining is held for {wait / 60:.0f} more minutes ({why}); the demo "
                "sets a 2 min cooldown unless the environment sets "
                "AIPAAS_RETRAIN__COOLDOWN_MINUTES"
            )
        if wait > 0:
            say(f"  waiting {wait:.0f} s for the retrain guardrails ({why})")
            self.wait(lambda: time.time() >= (verdict.next_allowed_at or 0.0))

    def shifted_traffic(self, frame: pd.DataFrame, version: str) -> DriftCheckRecord:
        """Two windows of shifted, labelled traffic; the drift check that asked for a retrain."""
        n = 2 * self.s.monitoring.window_rows
        say(
            f"{self.model} step 3/4: shifted traffic ({self.scenario.description}), "
            "with each answer labelled through /feedback"
        )
        with self.new_checks(version, n) as checks:
            traffic = self.traffic(frame, n, seed=int(self.started) + 1, shifted=True)
            self.send(traffic, feedback=True)
        decisive = next((c for c in checks if c.decision.retrain), None)
        if decisive is None:
            raise DemoFailed("the shifted traffic was not reported as drift")
        say(f"  drift detected: {'; '.join(decisive.decision.reasons)}")
        say(f"  report: {decisive.html}")
        say("  the drift flow started retraining (data -> train -> promote)")
        return decisive

    def traffic(
        self, frame: pd.DataFrame, n: int, *, seed: int, shifted: bool = False
    ) -> simulate.Traffic:
        d = self.definition
        if not shifted:
            return self.scenario.ordinary(frame, d.features, d.target, n, seed)
        if isinstance(self.scenario, simulate.NewTexts):
            learnt = self.learnt_texts()
            return self.scenario.shifted(frame, d.features, d.target, n, seed, exclude=learnt)
        return self.scenario.shifted(frame, d.features, d.target, n, seed)

    def learnt_texts(self) -> set[str]:
        """The texts earlier retrains added to the dataset (its labelled incoming files)."""
        import pandas as pd

        from aipaas.datasets import ingest

        column = self.definition.features[0]
        texts: set[str] = set()
        for file in ingest.incoming_files(self.definition.dataset, self.s):
            rows = pd.read_csv(file)
            if column in rows:
                texts.update(rows[column].astype(str))
        return texts

    def send(self, traffic: simulate.Traffic, *, feedback: bool) -> None:
        for stats in simulate.run_clients(
            self.base,
            self.clients,
            traffic,
            rate_per_s=RATE_PER_CLIENT,
            feedback=feedback,
            path=self.path,
        ):
            self.totals.add(stats)

    @contextmanager
    def new_checks(self, version: str, rows: int) -> Iterator[list[DriftCheckRecord]]:
        """The drift checks of windows closed by the traffic sent inside, once they cover ``rows``.

        Windows that closed before (an earlier run's) do not count, nor do the
        checks that judged only them.
        """
        from aipaas.monitoring import spool
        from aipaas.monitoring.drift_report import drift_history

        before = max((w.seq for w in spool.list_windows(self.s, self.model, version)), default=0)
        checks: list[DriftCheckRecord] = []
        yield checks

        def covered() -> bool:
            windows = spool.list_windows(self.s, self.model, version, after_seq=before)
            checks[:] = [
                c
                for c in drift_history(self.s, self.model)
                if c.version == version and any(w > before for w in c.windows)
            ]
            judged = {w for c in checks for w in c.windows}
            new = [w for w in windows if w.seq in judged]
            return sum(w.rows for w in new) >= rows and len(new) == len(windows)

        self.wait(covered)
        for check in (c for c in checks if c.rows):
            say("  drift check: " + check_line(check))

    # -- retraining ----------------------------------------------------------------

    def retrain_and_swap(
        self, frame: pd.DataFrame, champion: str, decisive: DriftCheckRecord
    ) -> PromotionRecord:
        """Wait for the retrain's promotion decision while a client keeps calling the API.

        The swap to the new champion must fail no request: one client sends
        throughout, and its requests count in the summary.
        """
        stop = threading.Event()
        background: list[simulate.ClientStats] = []
        endless = self.traffic(frame, 100_000, seed=int(self.started) + 2)

        def keep_calling() -> None:
            name, key = self.clients[0]
            background.append(
                simulate.run_client(
                    self.base,
                    name,
                    key,
                    endless,
                    rate_per_s=BACKGROUND_RATE,
                    stop=stop,
                    path=self.path,
                )
            )

        caller = threading.Thread(target=keep_calling, daemon=True)
        caller.start()
        try:
            decision = self.promotion_decision(champion, decisive)
            time.sleep(1.0)  # a few requests on the new version
        finally:
            stop.set()
            caller.join(timeout=30)
        for stats in background:
            self.totals.add(stats)
        return decision

    def promotion_decision(self, champion: str, decisive: DriftCheckRecord) -> PromotionRecord:
        """The first decision on a version other than ``champion``; waits for serving to swap."""
        from datetime import datetime

        found: list[PromotionRecord] = []

        def decided() -> bool:
            rec = promotion_after(self.s, self.model, self.started, champion)
            found.extend([rec] if rec else [])
            return rec is not None

        def progress() -> str | None:
            return retrain_progress(self.s, self.model, self.started)

        waited = self.wait(decided, progress=progress)
        decision = found[-1]
        rows: list[int] = []

        def recorded() -> bool:  # the retrain records its outcome just after the decision
            found_rows = learnt_from(self.s, self.model, decision.version)
            rows[:] = [] if found_rows is None else [found_rows]
            return bool(rows)

        if decision.result == "promoted":
            self.wait(lambda: self.serving_version() == decision.version)
            serving_at = time.time()
            t = self.timings
            t.new_version = decision.version
            t.drift_to_serving_s = round(serving_at - decisive.at, 2)
            decided_at = datetime.fromisoformat(decision.at).timestamp()
            t.drift_to_serving = breakdown(self.s, decisive, decision, decided_at, serving_at)
        self.wait(recorded)
        self.learnt_from = rows[0]
        if self.learnt_from:
            say(
                f"  the retrain learnt from {self.learnt_from} labelled rows of the shifted traffic"
            )
        else:
            say(
                "  ! the retrain had no new rows to learn from: is log_inputs off in "
                f"models/{self.model}.py? (only inputs kept with their predictions can)"
            )
        if decision.result == "promoted":
            say(
                f"  v{decision.version} passed its gates; serving swapped to it ({waited:.0f} s; "
                f"drift detected -> v{decision.version} serving "
                f"{self.timings.drift_to_serving_s:.0f} s)"
            )
        else:
            say(f"  v{decision.version} was {decision.result}: {'; '.join(decision.reasons)}")
        return decision

    # -- step 4 ------------------------------------------------------------------

    def summary(self, decisive: DriftCheckRecord, decision: PromotionRecord) -> None:
        """Versions and gates, drift checks, requests and the audit chain; fails a wrong end."""
        from aipaas import audit
        from aipaas.monitoring.drift_report import drift_history
        from aipaas.training import promotion_log

        say(f"{self.model} step 4/4: summary")
        typer.echo(f"\n{self.model}: model versions and their gates")
        for rec in promotion_log.read(self.s, self.model):
            typer.echo(f"  v{rec.version:<3} {rec.action:<9} {rec.result:<9} {gates_line(rec)}")
        typer.echo("\ndrift checks")
        for check in [c for c in drift_history(self.s, self.model) if c.rows][-6:]:
            typer.echo("  " + check_line(check))
        verdict = audit.verify(self.s)
        t = self.totals
        typer.echo("\nrequests")
        typer.echo(
            f"  sent {t.sent}, answered {t.ok}, failed {t.failed}, "
            f"labelled {t.labelled}; by version {dict(t.versions)}"
        )
        for err in t.errors[:5]:
            typer.echo(f"    {err}")
        typer.echo(
            f"  audit chain: {verdict.records} records, "
            + ("verified" if verdict.ok else "BROKEN: " + "; ".join(verdict.problems[:3]))
        )
        typer.echo(f"\ntimings (s)\n  {self.timings.line()}")
        typer.echo(
            f"\nlook: Prefect {self.prefect_ui}, MLflow http://{self.s.mlflow.host}:"
            f"{self.s.mlflow.port}, the drift report that started retraining {decisive.html}"
        )
        say(f"{self.model}: demo finished in {time.time() - self.started:.0f} s")
        if t.failed or not verdict.ok or decision.result != "promoted" or not self.learnt_from:
            raise DemoFailed("the demo did not end as expected (see above)")

    # -- waiting -----------------------------------------------------------------

    def serving_version(self) -> str | None:
        """The version serving reports for the model on /readyz; None until it has one."""
        try:
            resp = httpx.get(f"{self.base}/readyz", timeout=5)
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        return resp.json().get("models", {}).get(self.model)

    def wait(
        self, done: Callable[[], bool], *, progress: Callable[[], str | None] | None = None
    ) -> float:
        """Poll ``done`` until true; the seconds it took. Ctrl-C or the timeout ends the demo."""
        start = time.monotonic()
        last = None
        noted = start - PROGRESS_S
        while not done():
            if self.stop.is_set():
                raise DemoFailed("interrupted")
            now = time.monotonic()
            if now - start > self.timeout_s:
                raise DemoFailed(
                    f"gave up after {self.timeout_s:.0f} s (logs in the run/logs folder)"
                )
            if progress is not None and now - noted >= PROGRESS_S:
                noted = now
                note = progress()
                if note and note != last:
                    say(f"  {note}")
                    last = note
            time.sleep(POLL_S)
        return time.monotonic() - start


def first_champion(s: Settings, model: str) -> str | None:
    """The model's first champion: the first version promoted on its audit trail."""
    from aipaas.training import promotion_log

    for rec in promotion_log.read(s, model):
        if rec.action == "promote" and rec.result == "promoted":
            return rec.version
    return None


def breakdown(
    s: Settings,
    decisive: DriftCheckRecord,
    decision: PromotionRecord,
    decided_at: float,
    serving_at: float,
) -> dict[str, float]:
    """Where drift detected -> new champion serving went (seconds, see :class:`Timings`)."""
    from aipaas.monitoring import retrain, spool
    from aipaas.training import registry

    out: dict[str, float] = {}
    closed = [
        w.closed_at
        for w in spool.list_windows(s, decisive.model, decisive.version)
        if w.seq in decisive.windows
    ]
    if closed:
        out["window_closed_to_check_s"] = decisive.at - max(closed)
    starts = [t for t in retrain.started_at(s, decisive.model) if t >= decisive.at - 5]
    registered = registry.get_version(decisive.model, decision.version).created_ms / 1000
    if starts:
        out["check_to_retrain_start_s"] = min(starts) - decisive.at
        out["retrain_start_to_registered_s"] = registered - min(starts)
    out["registered_to_decision_s"] = decided_at - registered
    out["decision_to_serving_s"] = serving_at - decided_at
    return {k: round(v, 2) for k, v in out.items()}


def check_line(check: DriftCheckRecord) -> str:
    """One drift check as a line: windows, rows, drifting features, verdict and its cause."""
    return check.summary


def gates_line(rec: PromotionRecord) -> str:
    """A decision's gates as ``name=value``, failed ones marked."""
    return ", ".join(f"{g.name}={_fmt(g.value)}{'' if g.passed else ' FAIL'}" for g in rec.gates)


def promotion_after(s: Settings, model: str, since: float, champion: str) -> PromotionRecord | None:
    """The newest promote decision since ``since`` about a version other than ``champion``."""
    from datetime import datetime

    from aipaas.training import promotion_log

    for rec in reversed(promotion_log.read(s, model)):
        when = datetime.fromisoformat(rec.at).timestamp()
        if when >= since - 1 and rec.version != champion and rec.action == "promote":
            return rec
    return None


def learnt_from(s: Settings, model: str, version: str) -> int | None:
    """Labelled rows the retrain that trained ``version`` exported; None until it is recorded."""
    from aipaas.monitoring import retrain

    done = [e for e in retrain.retrain_history(s, model) if e.version == version and e.outcome]
    return done[-1].feedback_rows if done else None


def retrain_progress(s: Settings, model: str, since: float) -> str | None:
    """What retraining is doing; raises when it ended, or was refused, with no decision.

    Later drift checks may ask again while the retrain runs; the cooldown
    skips those, which is expected and not a failure.
    """
    from aipaas.monitoring import retrain
    from aipaas.training import registry

    entries = [e for e in retrain.retrain_history(s, model) if e.at >= since]
    failed = [e for e in entries if e.outcome == "failed"]
    if failed:
        raise DemoFailed(f"retraining failed: {failed[-1].error}")
    if not any(t >= since for t in retrain.started_at(s, model)):
        refused = [e for e in entries if e.action in ("skipped", "suggested")]
        if refused:
            raise DemoFailed(f"retraining was not started: {list(refused[-1].guardrails)}")
        return "waiting for the retrain flow to start"
    versions = registry.list_versions(model)
    newest = versions[0].version if versions else "?"
    return f"retraining ... newest registered version v{newest}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
