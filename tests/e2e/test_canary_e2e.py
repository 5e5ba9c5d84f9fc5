"""Canary releases end to end: a real uvicorn, live traffic, ``aipaas promote --canary``.

One serving process on loopback and the registry and platform database it
reads; clients call it with their own keys, half of which fall in the
canary's share. The release is started by the command a user types, its
flow runs in that command (on the session's Prefect server) and judges what
serving recorded: a challenger as accurate as the champion but slow is rolled
back before its window ends, a good one is promoted at the end, and no
request fails in either.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from aipaas import audit
from aipaas.inference import keys
from aipaas.settings import Settings
from aipaas.training import canary, registry, tags
from tests.conftest import settings_env
from tests.support.models import make_champion
from tests.support.net import free_port
from tests.support.registry import HOLDOUT, TRAIN, tiny_metrics
from tests.support.slow import SlowLogistic

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
AIPAAS = str(Path(sys.executable).parent / "aipaas")
MODEL = "tiny"
FEATURES = ("a", "b")

DEFINITION = """
from sklearn.linear_model import LogisticRegression
from aipaas.modeldef import Canary, Gates, ModelDefinition, Uniform

definition = ModelDefinition(
    name="tiny",
    dataset="tiny",
    target="y",
    features=("a", "b"),
    build_estimator=lambda p: LogisticRegression(**p),
    search_space={"C": Uniform(0.1, 1.0)},
    metrics=("roc_auc", "accuracy"),
    gates=Gates(min_metrics={"roc_auc": 0.7}, p99_latency_ms=50.0),
    canary=Canary(
        min_requests=20, check_every_s=1.0, max_p99_ratio=3.0, max_error_rate=0.01,
        max_accuracy_drop=None,
    ),
)
"""


def register(s: Settings, estimator: object) -> str:
    """Fit and register a version of ``tiny`` as training would (metrics, latency, lineage)."""
    registry.connect(s)
    registry.ensure_experiment(s)
    x = TRAIN[list(FEATURES)].astype("float64")
    model = estimator.fit(x, TRAIN["y"])  # type: ignore[attr-defined]
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(
            model,
            name=tags.MODEL_ARTIFACT,
            signature=infer_signature(x, model.predict(x)),
            pip_requirements=["scikit-learn"],
            # MLflow 3 saves with skops, which loads only the types it is told to trust.
            skops_trusted_types=[f"{type(model).__module__}.{type(model).__qualname__}"],
        )
        scored = tiny_metrics(model, HOLDOUT, FEATURES)
        mlflow.log_metrics({tags.holdout_metric(k): v for k, v in scored.items()})
        mlflow.log_metric(tags.LATENCY_P99_MS, 3.0)  # what training measured: within the gate
    mv = mlflow.register_model(f"runs:/{run.info.run_id}/{tags.MODEL_ARTIFACT}", MODEL)
    registry.set_tags(MODEL, mv.version, {tags.SUITE_PASSED: "true", tags.DATA_HASH: "abc123"})
    registry.set_alias(MODEL, tags.CHALLENGER, mv.version)
    return str(mv.version)


@dataclass
class Traffic:
    """Clients calling ``/models/tiny/predict`` with their own keys until stopped."""

    base: str
    keys: list[str]
    answers: list[tuple[float, str, str]] = field(default_factory=list)  # (time, key, version)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        row = {"a": 0.3, "b": -0.2}
        with httpx.Client(base_url=self.base) as c:
            i = 0
            while not self.stop.is_set():
                key = self.keys[i % len(self.keys)]
                i += 1
                try:
                    r = c.post(
                        f"/models/{MODEL}/predict",
                        json=row,
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=10,
                    )
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text}")
                else:
                    self.answers.append((time.monotonic(), key, r.json()["model_version"]))

    def versions_since(self, at: float) -> set[str]:
        return {v for t, _, v in list(self.answers) if t > at}


@dataclass
class Served:
    settings: Settings
    base: str
    traffic: Traffic
    by_key: dict[str, str]  # secret -> key id


@pytest.fixture
def served(
    settings: Settings, tmp_path: Path, use_settings: Callable[..., Settings]
) -> Iterator[Served]:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.py").write_text(textwrap.dedent(DEFINITION))
    s = use_settings(settings.model_copy(update={"models_dir": models}))
    make_champion(s, MODEL, register(s, LogisticRegression()))
    # Keys until four fall in the canary's half and four outside it.
    inside: list[tuple[str, str]] = []
    outside: list[tuple[str, str]] = []
    while len(inside) < 4 or len(outside) < 4:
        name = f"app-{len(inside) + len(outside)}"
        record, secret = keys.create_key(s, name, "predict", rate="10000/s")
        side = inside if canary.bucket(record.id, MODEL) < 50 else outside
        if len(side) < 4:
            side.append((secret, record.id))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPAAS_")}
    env.update(
        settings_env(s),
        AIPAAS_SERVING__DEFAULT_MODEL=MODEL,
        AIPAAS_SERVING__RELOAD_POLL_S="600",  # only the signals of start and end move it
        OMP_NUM_THREADS="1",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, "serving exited"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serving never became ready"
            time.sleep(0.3)
        traffic = Traffic(base, [k for k, _ in inside + outside])
        threads = [threading.Thread(target=traffic.run) for _ in range(2)]
        for t in threads:
            t.start()
        yield Served(s, base, traffic, dict(inside + outside))
        traffic.stop.set()
        for t in threads:
            t.join(20)
    finally:
        server.terminate()
        server.wait(20)


def promote_canary(s: Settings, version: str, watch: str) -> tuple[int, str, float]:
    """``aipaas promote tiny --canary 50 --watch W``, as a user runs it: its exit code, output."""
    from prefect.settings import get_current_settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPAAS_")}
    env.update(settings_env(s), PREFECT_API_URL=str(get_current_settings().api.url))
    started = time.monotonic()
    done = subprocess.run(
        [AIPAAS, "promote", MODEL, "--version", version, "--canary", "50", "--watch", watch],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_a_slow_challenger_is_rolled_back_live_and_a_good_one_promoted(
    served: Served, prefect_harness: None
) -> None:
    s, traffic = served.settings, served.traffic
    slow = register(s, SlowLogistic())
    code, out, took = promote_canary(s, slow, "60s")
    assert code == 23, out  # rolled back
    print(f"slow challenger rolled back {took:.1f} s after `aipaas promote --canary` started")
    assert took < 60, f"the slow challenger was watched for its whole window ({took:.0f} s)"
    assert "rolled-back" in out and "canary_p99_ratio" in out, out
    assert registry.get_alias(MODEL, tags.CHAMPION).version == "1"  # type: ignore[union-attr]
    assert canary.active(s, MODEL) is None
    served_by = {v for _, _, v in traffic.answers}
    assert served_by == {"1", slow}, served_by  # the challenger did take its share
    time.sleep(1.0)  # the end's signal reaches serving within a tick
    back = time.monotonic()
    time.sleep(1.5)
    assert traffic.versions_since(back) == {"1"}

    good = register(s, LogisticRegression())
    code, out, took = promote_canary(s, good, "12s")
    assert code == 0, out
    assert registry.get_alias(MODEL, tags.CHAMPION).version == good  # type: ignore[union-attr]
    time.sleep(1.0)
    promoted = time.monotonic()
    time.sleep(1.5)
    assert traffic.versions_since(promoted) == {good}

    # One client, one version, all through each release; nothing failed.
    assert traffic.failures == []
    during = [(k, v) for _, k, v in traffic.answers if v in (slow,)]
    assert {served.by_key[k] for k, _ in during} <= {
        i for i in served.by_key.values() if canary.bucket(i, MODEL) < 50
    }
    ended = [e for e in canary.history(s, MODEL) if e["event"] == canary.ENDED]
    assert [e["outcome"] for e in ended] == ["promoted", "rolled-back"]  # newest first
    report = audit.verify(s)  # while the traffic still runs: the trail grows as it is walked
    assert report.ok, report.problems
