"""``aipaas demo`` (``make demo``): the whole loop, on the embedded defaults.

For each demo model in turn (``diagnosis``, the tabular one, then ``topic``,
the text one; ``--model`` picks):

1. lifecycle: data -> train -> promote, so champion v1 serves;
2. simulated clients, each with its own API key, send ordinary traffic:
   the profiler closes windows, each close starts the drift flow, and no drift
   is reported;
3. a shifted population with labels sent to ``/feedback`` (scaled size
   measurements for ``diagnosis``; quotes about Linux and Perl, a kind of text
   it never saw, for ``topic``): drift is detected, the drift flow starts retraining (data
   with the feedback rows, train, promote through the same gates), and
   serving swaps to the new champion while a client keeps calling it;
4. a summary: versions and their gates, drift scores, requests served and
   failed, and the audit chain verified.

If ``aipaas up`` already runs on this home the demo uses it; otherwise it
starts the same services, through the same start-up sequence
(:func:`aipaas.ops.up.run`), and stops them at the end (``--stay`` keeps them).
Everything it leaves (MLflow runs, Prefect flow runs, drift reports, the audit
trail) stays under ``AIPAAS_HOME`` for a look in the UIs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
# and a cooldown shorter than the production default (30 min), so that running
# the demo again soon after retrains again. The worker looks for new flow runs
# (a closed window's drift check, the retrain) every 2 s rather than Prefect's
# 10 s, so each step shows its effect at once.
DEMO_ENV = {
    "AIPAAS_MONITORING__WINDOW_ROWS": "150",
    "AIPAAS_TUNE__NUM_SAMPLES": "4",
    "AIPAAS_RETRAIN__COOLDOWN_MINUTES": "5",
    "AIPAAS_RETRAIN__MAX_PER_DAY": "50",
    "PREFECT_WORKER_QUERY_SECONDS": "2",
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
# How often the demo looks at files and endpoints while it waits.
POLL_S = 1.0


class DemoFailed(AipaasError):
    exit_code = 20


def say(msg: str) -> None:
    typer.echo(f"[{time.strftime('%H:%M:%S')}] {msg}")


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
) -> None:
    """Run the whole loop: lifecycle, traffic, drift, retraining, hot swap, summary."""
    models = model or list(SCENARIOS)
    unknown = [m for m in models if m not in SCENARIOS]
    if unknown:
        raise DemoFailed(f"no demo scenario for {unknown}; the demo models are {list(SCENARIOS)}")
    s = demo_settings()
    base = f"http://{s.serving.host}:{s.serving.port}"

    def loops(stop: threading.Event | None = None) -> None:
        for name in models:
            Demo(s, name, timeout_min * 60, stop=stop).run()

    if up.http_ok(f"{base}/healthz") and up.http_ok(f"{s.prefect_api_url}/health"):
        say(f"aipaas is already up on this home; using it ({base})")
        loops()
        return

    def on_ready(sup: up.Supervisor) -> None:
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
    ) -> None:
        from aipaas.modeldef import load_definition
        from aipaas.training import registry

        self.s = settings
        self.model = model
        self.timeout_s = timeout_s
        self.stop = stop or threading.Event()  # set by Ctrl-C under `up.run`
        self.base = f"http://{settings.serving.host}:{settings.serving.port}"
        self.prefect_ui = settings.prefect_api_url.removesuffix("/api")
        self.definition: ModelDefinition = load_definition(model, settings.models_dir)
        self.scenario = SCENARIOS[model]
        self.path = f"/models/{model}/predict"
        self.started = time.time()
        self.totals = simulate.ClientStats("all")
        self.learnt_from = 0  # labelled rows the retrain added to the data
        self.clients: list[tuple[str, str]] = []
        registry.connect(settings)

    def run(self) -> None:
        """The four steps; the summary says whether the loop closed."""
        champion = self.lifecycle()
        self.create_clients()
        frame = self.training_frame()
        self.ordinary_traffic(frame)
        decisive = self.shifted_traffic(frame)
        decision = self.retrain_and_swap(frame, champion)
        self.summary(decisive, decision)

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
                poll_s=POLL_S,
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
        version = champion.version
        loaded = self.wait(lambda: self.serving_version() == version)
        say(f"  champion v{version} serving at {self.base}{self.path} ({loaded:.0f} s to load)")
        return version

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

    def training_frame(self) -> pd.DataFrame:
        """The training split the champion learnt from: traffic is sampled from it."""
        import pandas as pd

        from aipaas.datasets import ingest

        version = ingest.recorded_version(self.definition.dataset, self.s)
        return pd.read_csv(version.train_path)

    # -- steps 2 and 3 -------------------------------------------------------------

    def ordinary_traffic(self, frame: pd.DataFrame) -> None:
        """Two windows of ordinary traffic; the drift checks they start should find nothing."""
        n = 2 * self.s.monitoring.window_rows
        say(
            f"{self.model} step 2/4: {len(CLIENTS)} clients send {n} ordinary requests "
            f"({self.s.monitoring.window_rows}-row windows)"
        )
        with self.new_checks(n) as checks:
            traffic = self.traffic(frame, n, seed=int(self.started))
            self.send(traffic, feedback=False)
        if any(c.decision.retrain for c in checks):
            say("  ! the ordinary traffic was reported as drift (a false alarm)")
        else:
            say("  no drift reported on ordinary traffic")

    def shifted_traffic(self, frame: pd.DataFrame) -> DriftCheckRecord:
        """Two windows of shifted, labelled traffic; the drift check that asked for a retrain."""
        n = 2 * self.s.monitoring.window_rows
        say(
            f"{self.model} step 3/4: shifted traffic ({self.scenario.description}), "
            "with each answer labelled through /feedback"
        )
        with self.new_checks(n) as checks:
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
        sample = self.scenario.shifted if shifted else self.scenario.ordinary
        return sample(frame, d.features, d.target, n, seed)

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
    def new_checks(self, rows: int) -> Iterator[list[DriftCheckRecord]]:
        """The drift checks started by the traffic sent inside, once they cover its ``rows``."""
        from aipaas.monitoring.drift_report import drift_history

        before = len(drift_history(self.s, self.model))
        checks: list[DriftCheckRecord] = []
        yield checks

        def covered() -> bool:
            checks[:] = drift_history(self.s, self.model)[before:]
            return sum(c.rows for c in checks) >= rows

        self.wait(covered)
        for check in (c for c in checks if c.rows):
            say("  drift check: " + check_line(check))

    # -- retraining ----------------------------------------------------------------

    def retrain_and_swap(self, frame: pd.DataFrame, champion: str) -> PromotionRecord:
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
            decision = self.promotion_decision(champion)
            time.sleep(2.0)  # a few requests on the new version
        finally:
            stop.set()
            caller.join(timeout=30)
        for stats in background:
            self.totals.add(stats)
        return decision

    def promotion_decision(self, champion: str) -> PromotionRecord:
        """The first decision on a version other than ``champion``; waits for serving to swap."""
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
            self.wait(lambda: self.serving_version() == decision.version)
            say(f"  v{decision.version} passed its gates; serving swapped to it ({waited:.0f} s)")
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
        while not done():
            if self.stop.is_set():
                raise DemoFailed("interrupted")
            if time.monotonic() - start > self.timeout_s:
                raise DemoFailed(
                    f"gave up after {self.timeout_s:.0f} s (logs in the run/logs folder)"
                )
            if progress is not None:
                note = progress()
                if note and note != last:
                    say(f"  {note}")
                    last = note
            time.sleep(POLL_S)
        return time.monotonic() - start


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
