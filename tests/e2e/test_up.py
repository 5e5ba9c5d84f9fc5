"""``aipaas up`` and ``aipaas demo`` for real: one platform on free ports in a temporary home.

The ``make up`` first run, checked as a person sees it: the servers answer and
say where they are, a second ``up`` refuses and names the first, the lifecycle
runs through Prefect because no champion exists and serving answers with the
promoted version (both demo models). Then ``aipaas demo`` closes the text
model's loop on that platform (the tabular model's loop runs on PostgreSQL in
test_team_postgres.py): ordinary traffic from keyed clients -> no drift;
shifted traffic with feedback -> drift -> retrain (feedback rows become a new
DVC version) -> gates -> champion v2 served, with no failed request and the
audit chain verified. Then a short soak (``make soak``'s, for 25 s): traffic
as fast as serving answers, on both models, with no failed request, drift runs
coalesced, memory bounded, every row profiled once and the chain verified.
Finally, after SIGINT every child process is gone and the ports are free again.

One platform serves all six tests (it takes a minute to start, the lifecycle
another one and a half); they run in the order written, each building on the
state the previous one left, the last one stopping it. The platform runs with
the demo's defaults (:data:`aipaas.cli.demo.DEMO_ENV`: small profile windows, a
short retrain cooldown), which the profiler and the worker read at start-up.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator

import pandas as pd
import pytest

from aipaas.exceptions import AlreadyRunningError
from aipaas.inference import keys
from aipaas.ops.up import port_free
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import promotion_log
from bench.soak import soak
from models.topic import TOPICS
from tests.support.platform import CLI, Platform, alive, get, get_json, running_up

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """``aipaas up`` on a private data project (a fresh clone: nothing reproduced yet)."""
    with running_up(tmp_path_factory.mktemp("up")) as up:
        yield up


def test_up_starts_every_service_and_says_where(platform: Platform) -> None:
    text = platform.output()
    assert platform.url("prefect") in text and platform.url("mlflow") in text
    assert platform.url("serving", "/docs") in text
    deployments = (
        "data, train, promote, lifecycle, drift (cron */15 * * * *), retrain, batch, canary"
    )
    assert f"deployments: {deployments}" in text, text
    assert get(platform.url("prefect", "/api/health"))[0] == 200
    assert get(platform.url("mlflow", "/health"))[0] == 200
    assert get(platform.url("serving", "/healthz"))[0] == 200
    deployment = platform.url("prefect", "/api/deployments/name/lifecycle/lifecycle")
    assert get(deployment)[0] == 200
    children = platform.children()
    assert set(children) == {"prefect", "mlflow", "ray", "worker", "serving", "profiler"}
    assert "work pool: 'aipaas'; another machine joins it with `aipaas worker`" in text
    assert all(alive(pid) for pid in children.values())
    assert platform.ray_address().startswith("127.0.0.1:")


def test_a_second_up_refuses_and_names_the_first(platform: Platform) -> None:
    second = subprocess.run(
        [*CLI, "up", "--no-lifecycle"],
        cwd=PROJECT_ROOT,
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == AlreadyRunningError.exit_code, second.stderr
    assert "already running" in second.stderr and str(platform.proc.pid) in second.stderr


def test_up_runs_the_lifecycle_when_no_champion_serves(platform: Platform) -> None:
    """Every defined model (the tabular ``diagnosis``, the text ``topic``) gets its champion."""
    # Both lifecycles at once: 3-4 min on a quiet machine, over 10 at a load of 15.
    platform.wait_served({"diagnosis": "1", "topic": "1"}, timeout_s=1200)
    text = platform.output()
    assert "diagnosis: no champion yet; started the lifecycle" in text
    assert "topic: no champion yet; started the lifecycle" in text
    assert platform.url("prefect", "/runs/flow-run/") in text
    decisions = promotion_log.read(Settings(_env_file=None, home=platform.home))
    assert sorted((r.model, r.version, r.result) for r in decisions) == [
        ("diagnosis", "1", "promoted"),
        ("topic", "1", "promoted"),
    ]
    assert all(d.decided_by.startswith("flow-run ") for d in decisions)
    # The lifecycle's training joined up's Ray head instead of starting its own.
    for model in ("diagnosis", "topic"):
        assert _training_param(platform, model, "setting.ray.address") == platform.ray_address()
    # The text model takes the browser snippet's body, {text}, and nothing else.
    _, key = keys.create_key(Settings(_env_file=None, home=platform.home), "e2e-text", "predict")
    request = urllib.request.Request(
        platform.url("serving", "/models/topic/predict"),
        data=json.dumps({"text": "The compiler crashed and the kernel dumped core."}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["model_version"] == "1" and body["output"] in TOPICS, body


def test_demo_closes_the_loop_on_the_running_platform(platform: Platform) -> None:
    """``aipaas demo`` finds the platform up, with champion v1 (the test above), and uses it.

    The text model's loop runs here, twice: the second run, on the state the
    first left (v2 serving, a retrain minutes ago), tells the same story from
    a clean start of its own. The tabular one's runs in the PostgreSQL e2e
    (tests/e2e/test_team_postgres.py): the same demo code for both, and each
    loop is several minutes on this machine.
    """
    out = platform.demo("--model", "topic")
    assert "aipaas is already up on this home; using it" in out
    assert "topic step 1/4" in out and "diagnosis step" not in out
    assert "a clean start: v1 is its first champion (nothing to undo)" in out
    _tells_the_story(out, "2")
    assert "/models/topic/predict" in out and "text.oov" in out

    # The feedback became training data: a new dataset version with more rows.
    incoming = list((platform.repo / "data" / "incoming" / "quotes").glob("feedback-*.csv"))
    assert incoming, "no feedback exported for quotes"
    # The labelled Linux and Perl quotes are in (the four topics' files hold 19 "perl").
    quotes = pd.read_csv(platform.repo / "data" / "quotes" / "raw.csv")
    assert len(quotes) > 3630 and quotes.text.str.contains("perl", case=False).sum() > 40

    # Again on the same home: back to v1 by a signed rollback, then the same four steps.
    again = platform.demo("--model", "topic", "--timings", str(platform.home / "again.json"))
    assert "a clean start: champion v2 (an earlier retrain's) rolled back to v1" in again, again
    _tells_the_story(again, "3")
    decisions = promotion_log.read(Settings(_env_file=None, home=platform.home), "topic")
    assert [(r.action, r.result, r.version) for r in decisions] == [
        ("promote", "promoted", "1"),
        ("promote", "promoted", "2"),
        ("rollback", "rolled-back", "1"),
        ("promote", "promoted", "3"),
    ]
    assert decisions[2].decided_by == "aipaas demo (a clean start)" and decisions[2].signature
    timings = json.loads((platform.home / "again.json").read_text())
    assert timings == json.loads((platform.home / "demo" / "timings.json").read_text())
    [topic] = timings["models"]
    assert timings["ok"] and timings["platform_start_s"] is None  # it was up already
    assert topic["model"] == "topic" and topic["new_version"] == "3"
    assert 0 < topic["drift_to_serving_s"] < timings["total_s"]
    assert set(topic["drift_to_serving"]) >= {
        "retrain_start_to_registered_s",
        "decision_to_serving_s",
    }


def _tells_the_story(out: str, new_version: str) -> None:
    """No false alarm, drift, a retrain, the swap, no failed request, the chain verified."""
    assert "champion v1 serving" in out
    assert "no drift reported on ordinary traffic" in out, out
    assert "a false alarm" not in out
    assert "drift detected" in out
    assert f"v{new_version} passed its gates; serving swapped to it" in out, out
    assert "the retrain learnt from 300 labelled rows" in out, out
    assert ", failed 0," in out
    chains = [line.split("audit chain:")[1] for line in out.splitlines() if "audit chain:" in line]
    assert len(chains) == 1 and "verified" in chains[0], chains
    assert f"drift detected -> v{new_version} serving " in out


def test_the_platform_holds_under_sustained_load(platform: Platform) -> None:
    """``make soak`` in short: 25 s at the highest rate serving sustains, both models.

    The demo above left topic v2 and diagnosis v1 served, their profile
    windows of 150 rows. At any rate this machine sustains the windows close
    faster than a drift run ends, so the drift trigger has to coalesce them.
    """
    report = soak(platform, 25, warmup_s=5, sample_s=5, drain_s=180, progress=None)
    table = report.table()
    print(table)
    # No request failed, and every one has its audit record.
    assert report.requests >= 600 and report.statuses == {"200": report.requests}, table
    assert report.audited == {"200": report.requests}, table
    assert report.audit_ok and report.audit_records > report.requests, table
    # Every answered row was profiled once; every closed window went to the trigger once.
    for model in ("diagnosis", "topic"):
        assert report.profiled[model] == report.answered[model] > 0, table
        assert report.windows[model] >= 1, table
        assert report.windows_triggered[model] == report.windows[model], table
    assert not report.window_problems, table
    # Drift runs were asked for, never more than one at a time per model
    # (plus the cron's, had it fired), and none was left behind.
    assert report.runs_since_start.get("drift"), table
    drift = [q for q in report.queues if q.flow == "drift"]
    assert drift and all(q.max_window <= 1 for q in drift), table
    assert all(q.max_queued <= 2 and q.max_running <= 2 for q in drift), table
    assert report.drained_s is not None, table
    # Every process of the platform: alive throughout, memory bounded.
    services = {p.service for p in report.long_lived()}
    assert services >= {"up", "prefect", "mlflow", "ray", "worker", "serving", "profiler"}, table
    assert all(p.flat(max_mb=50, max_pct=30) for p in report.long_lived()), table
    assert not report.restarts, table
    assert report.problems() == [], table


def test_ctrl_c_stops_every_child_and_frees_the_ports(platform: Platform) -> None:
    children = platform.children()
    platform.proc.send_signal(signal.SIGINT)
    assert platform.proc.wait(90) == 0, platform.output()
    text = platform.output()
    assert "stopped prefect" in text and "ignored SIGTERM" not in text, text
    assert not [name for name, pid in children.items() if alive(pid)], text
    assert not (platform.home / "run" / "up.json").exists()
    assert all(port_free("127.0.0.1", p) for p in platform.ports.values())


def _training_param(platform: Platform, model: str, param: str) -> str:
    """A param of the run that trained ``model`` v1, from the MLflow API."""
    mlflow = platform.url("mlflow", "/api/2.0/mlflow")
    version = get_json(f"{mlflow}/model-versions/get?name={model}&version=1")["model_version"]
    run = get_json(f"{mlflow}/runs/get?run_id={version['run_id']}")["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    return str(params[param])
