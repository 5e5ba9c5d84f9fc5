"""Canary and shadow releases, serving side: a real MLflow store, the real audit chain.

One app for the module (it follows the chain as a deployed one does: the
promotion signal a release's start and end bump), v1 champion, v2 the
challenger, never promoted. Each test starts its release with
:func:`aipaas.training.canary.start` (the gates passed: a passing assessment)
and ends it. The challenger's predict can be made to raise, and its load to
fail, through the ``ModelSource`` seam: the version is still the real one,
loaded from the registry after its signed start was checked.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from aipaas import audit, db
from aipaas.exceptions import ModelNotFoundError
from aipaas.inference import keys
from aipaas.inference.predictor import LoadedModel, Prediction
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import canary, promote, signals
from serving.app import create_app
from serving.holder import ModelHolder, RegistrySource, serve_model
from serving.shadow import Shadow, ShadowJob
from tests.conftest import make_settings
from tests.support.definitions import tiny_definition
from tests.support.models import FEATURES, log_lgbm
from tests.support.serving import bearer, fake_model

MODEL = "diagnosis"
ROW = {"mean_radius": 1.0, "mean_texture": 0.0, "mean_area": 1.0}
ROWS = [ROW, {"mean_radius": -1.2, "mean_texture": 0.4, "mean_area": -0.9}]
DEFINITION = tiny_definition(name=MODEL, features=tuple(FEATURES))
BROKEN = "the challenger broke"


class ChallengerSource(RegistrySource):
    """The registry, with a challenger whose predict can raise and whose load can fail."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.failing = False
        self.fail_load = False

    def load_canary(self, name: str, version: str) -> LoadedModel:
        if self.fail_load:
            raise ModelNotFoundError(f"cannot load models:/{name}/{version}: corrupt artifact")
        loaded = super().load_canary(name, version)  # checks the signed start, loads, warms
        real = loaded.predict_fn

        def predict(rows: list[list[Any]]) -> Prediction:
            if self.failing:
                raise RuntimeError(BROKEN)
            return real(rows)

        return replace(loaded, predict_fn=predict)


@dataclass
class World:
    settings: Settings
    client: TestClient
    source: ChallengerSource
    key: str
    v1: str  # champion
    v2: str  # challenger

    @property
    def holder(self) -> ModelHolder:
        return self.client.app.state.components.holder  # type: ignore[attr-defined,no-any-return]

    def post(self, path: str = "/predict", body: Any = ROW, key: str | None = None, **h: str):
        return self.client.post(path, json=body, headers={**bearer(key or self.key), **h})

    def answered(self, key: str | None = None, **h: str) -> str:
        r = self.post(key=key, **h)
        assert r.status_code == 200, r.text
        return str(r.json()["model_version"])

    def start(self, mode: canary.Mode = "canary", percent: float = 100.0) -> canary.CanaryState:
        gates = (GateResult("tests", True, 1.0, ">= 0"),)
        found = promote.Assessment(MODEL, self.v2, self.v1, gates)
        state = canary.start(
            self.settings, DEFINITION, self.v2, mode=mode, percent=percent, watch_s=600,
            assessment=found,
        )  # fmt: skip
        _wait(lambda: self.holder.canary(MODEL) is not None, "the challenger to be loaded")
        return state

    def end(self, outcome: canary.Outcome = "stopped") -> None:
        if canary.active(self.settings, MODEL) is not None:
            canary.end(self.settings, MODEL, outcome)
        _wait(lambda: self.holder.canary(MODEL) is None, "the challenger to be dropped")


def _wait(done: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("canary") / "home"
    home.mkdir()
    s = make_settings(home)
    v1 = log_lgbm(s, MODEL)
    v2 = log_lgbm(s, MODEL, champion=False, seed=7)
    key = keys.create_key(s, "app", "predict", rate="10000/s")[1]
    source = ChallengerSource(s)
    client = TestClient(create_app(s, model_source=source, key_cache_s=600.0))
    client.__enter__()  # the lifespan: champion loaded, the follower running
    try:
        yield World(s, client, source, key, v1, v2)
    finally:
        client.__exit__(None, None, None)


@pytest.fixture
def w(world: World) -> Iterator[World]:
    """The module's world; whatever a test started is ended, and the challenger mended."""
    yield world
    world.source.failing = world.source.fail_load = False
    world.end()


def _records(settings: Settings, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    wanted = set(request_ids)
    return {r["request_id"]: r for r in audit.tail(settings, 5000) if r["request_id"] in wanted}


def _prediction_versions(settings: Settings, request_ids: list[str]) -> dict[str, set[str]]:
    t = db.predictions
    with db.engine(settings).connect() as conn:
        rows = conn.execute(
            select(t.c.request_id, t.c.version).where(t.c.request_id.in_(request_ids))
        )
        out: dict[str, set[str]] = {}
        for request_id, version in rows:
            out.setdefault(request_id, set()).add(version)
    return out


def _shadow_rows(settings: Settings, request_ids: list[str]) -> list[dict[str, Any]]:
    t = db.shadow_outputs
    with db.engine(settings).connect() as conn:
        query = select(t).where(t.c.request_id.in_(request_ids)).order_by(t.c.id)
        return [dict(r._mapping) for r in conn.execute(query)]


def _infer_body(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": f, "shape": [len(rows)], "datatype": "FP64", "data": [r[f] for r in rows]}
            for f in FEATURES
        ]
    }


# --- canary ------------------------------------------------------------------------


def test_the_split_is_stable_per_key_and_takes_about_the_share(w: World) -> None:
    w.start(percent=20)
    created = [
        keys.create_key(w.settings, f"client-{i}", "predict", rate="1000/s") for i in range(200)
    ]
    answered: dict[str, set[str]] = {}
    request_ids: dict[str, str] = {}
    for record, secret in created:
        for _ in range(2):
            r = w.post(key=secret)
            assert r.status_code == 200, r.text
            answered.setdefault(record.id, set()).add(r.json()["model_version"])
            request_ids[r.json()["request_id"]] = r.json()["model_version"]
    assert all(len(v) == 1 for v in answered.values()), "a client saw both versions"
    to_challenger = {k for k, v in answered.items() if v == {w.v2}}
    # Exactly the keys whose bucket falls in the share, and about 20% of them.
    assert to_challenger == {r.id for r, _ in created if canary.bucket(r.id, MODEL) < 20}
    assert 20 <= len(to_challenger) <= 60, len(to_challenger)
    # What the canary flow reads: each request's record and rows name the version that answered.
    records = _records(w.settings, list(request_ids))
    assert {rid: r["version"] for rid, r in records.items()} == request_ids
    assert all(r["status"] == 200 and r["event"] is None for r in records.values())
    rows = _prediction_versions(w.settings, list(request_ids))
    assert rows == {rid: {v} for rid, v in request_ids.items()}


def test_pinned_requests_never_go_to_the_canary(w: World) -> None:
    w.start(percent=100)
    _, pinned = keys.create_key(w.settings, "legacy", "predict", rate="1000/s", pins={MODEL: w.v1})
    assert w.answered() == w.v2  # everyone unpinned takes the challenger
    assert w.answered(key=pinned) == w.v1
    assert w.answered(**{"X-Model-Version": w.v1}) == w.v1
    r = w.post(f"/models/{MODEL}/versions/{w.v1}/predict")
    assert r.status_code == 200 and r.json()["model_version"] == w.v1
    # The Open Inference Protocol routes the same way.
    infer = w.post(f"/v2/models/{MODEL}/infer", _infer_body(ROWS))
    assert infer.status_code == 200 and infer.json()["model_version"] == w.v2
    infer = w.post(f"/v2/models/{MODEL}/versions/{w.v1}/infer", _infer_body(ROWS))
    assert infer.status_code == 200 and infer.json()["model_version"] == w.v1
    infer = w.post(f"/v2/models/{MODEL}/infer", _infer_body(ROWS), key=pinned)
    assert infer.status_code == 200 and infer.json()["model_version"] == w.v1
    # ... and MLflow's scoring protocol: the record says which version answered.
    unpinned = w.post("/invocations", {"dataframe_records": ROWS})
    kept = w.post("/invocations", {"dataframe_records": ROWS}, key=pinned)
    assert unpinned.status_code == kept.status_code == 200
    ids = [r.headers["x-request-id"] for r in (unpinned, kept)]
    assert [_records(w.settings, ids)[i]["version"] for i in ids] == [w.v2, w.v1]
    # The challenger is never addressable by itself: it was never promoted.
    assert w.post(**{"X-Model-Version": w.v2}).status_code == 404


def test_a_failing_challenger_never_fails_a_request(w: World) -> None:
    w.start(percent=100)
    w.source.failing = True
    answers = [w.post() for _ in range(10)]
    answers += [w.post(body=ROWS), w.post("/invocations", {"dataframe_records": ROWS})]
    answers.append(w.post(f"/v2/models/{MODEL}/infer", _infer_body(ROWS)))
    assert [r.status_code for r in answers] == [200] * len(answers)
    assert {r.json()["model_version"] for r in answers if "model_version" in r.json()} == {w.v1}
    ids = [r.headers["x-request-id"] for r in answers]
    records = _records(w.settings, ids)
    for rid in ids:
        record = records[rid]
        assert record["event"] == "canary.fallback" and record["version"] == w.v1
        assert json.loads(record["detail"])["canary"] == {
            "version": w.v2,
            "error": f"RuntimeError: {BROKEN}",
        }
    assert _prediction_versions(w.settings, ids) == dict.fromkeys(ids, {w.v1})
    w.source.failing = False  # mended: the challenger answers again, no event
    r = w.post()
    assert r.json()["model_version"] == w.v2
    assert (
        _records(w.settings, [r.headers["x-request-id"]])[r.headers["x-request-id"]]["event"]
        is None
    )


def test_the_end_of_a_canary_sends_everyone_back_within_a_second(w: World) -> None:
    w.start(percent=100)
    assert w.answered() == w.v2
    canary.end(w.settings, MODEL, "rolled-back")
    ended = time.monotonic()
    while w.answered() != w.v1:
        assert time.monotonic() - ended < 1.0, "still on the challenger a second after the end"
        time.sleep(0.01)
    assert [w.answered() for _ in range(20)] == [w.v1] * 20
    assert w.holder.canaries() == {}


def test_a_challenger_that_fails_to_load_takes_no_traffic(w: World) -> None:
    w.source.fail_load = True
    gates = (GateResult("tests", True, 1.0, ">= 0"),)
    found = promote.Assessment(MODEL, w.v2, w.v1, gates)
    canary.start(w.settings, DEFINITION, w.v2, percent=100, watch_s=600, assessment=found)
    _wait(lambda: MODEL in w.holder.canaries(), "the load to fail")
    assert [w.answered() for _ in range(5)] == [w.v1] * 5
    ready = w.client.get("/readyz")
    assert ready.status_code == 200
    status = ready.json()["canary"][MODEL]
    assert status["version"] == w.v2 and status["serving"] is False
    assert "corrupt artifact" in status["error"]
    failed = [r for r in audit.tail(w.settings, 200) if r["event"] == "model.load_failed"]
    assert failed and failed[-1]["version"] == w.v2
    assert json.loads(failed[-1]["detail"])["canary"] == "canary"
    canary.end(w.settings, MODEL, "stopped")
    _wait(lambda: MODEL not in w.holder.canaries(), "the failed release to be forgotten")


# --- shadow ------------------------------------------------------------------------


def _shadowed(w: World, answers: list[Any], rows_each: list[int]) -> list[dict[str, Any]]:
    ids = [r.json()["request_id"] for r in answers]
    expected = sum(rows_each)
    _wait(lambda: len(_shadow_rows(w.settings, ids)) >= expected, "the shadow's rows", 10.0)
    found = _shadow_rows(w.settings, ids)
    assert len(found) == expected
    return found


def test_a_shadow_answers_with_the_champion_and_keeps_both_outputs(w: World) -> None:
    w.start(mode="shadow")
    answers = [w.post() for _ in range(5)] + [w.post(body=ROWS)]
    assert {r.json()["model_version"] for r in answers} == {w.v1}
    found = _shadowed(w, answers, [1] * 5 + [2])
    outputs = {r.json()["request_id"]: r.json()["output"] for r in answers}
    for row in found:
        answer = outputs[row["request_id"]]
        champion_said = answer[row["row"]] if isinstance(answer, list) else answer
        assert row["model"] == MODEL and row["version"] == w.v2
        assert row["champion_version"] == w.v1
        assert orjson.loads(row["champion_output"]) == champion_said
        assert orjson.loads(row["output"]) in ("benign", "malignant") and row["error"] is None
        assert row["latency_ms"] > 0 and abs(row["at"] - time.time()) < 60
    batch = [r for r in found if r["request_id"] == answers[-1].json()["request_id"]]
    assert [r["row"] for r in batch] == [0, 1]
    # The audit records are the champion's, with no event: the shadow is invisible there.
    records = _records(w.settings, list(outputs))
    assert {(r["version"], r["event"]) for r in records.values()} == {(w.v1, None)}


def test_a_failing_shadow_challenger_is_recorded_and_not_felt(w: World) -> None:
    w.start(mode="shadow")
    w.source.failing = True
    answers = [w.post() for _ in range(4)]
    assert [(r.status_code, r.json()["model_version"]) for r in answers] == [(200, w.v1)] * 4
    for row in _shadowed(w, answers, [1] * 4):
        assert row["output"] is None and row["error"] == f"RuntimeError: {BROKEN}"
        assert orjson.loads(row["champion_output"]) in ("benign", "malignant")


def test_a_shadow_does_not_slow_the_response(w: World, capsys: pytest.CaptureFixture[str]) -> None:
    """p50 of /predict copied to the shadow against the same requests pinned to the champion.

    Pinned, a request skips the shadow and takes the same path otherwise; blocks of each
    alternate, so the machine's load (other processes) weighs on both alike.
    """
    w.start(mode="shadow")
    pinned = {"X-Model-Version": w.v1}
    took: dict[bool, list[float]] = {True: [], False: []}
    for block in range(16):
        shadowed = block % 2 == 0
        for _ in range(20):
            t = time.perf_counter()
            r = w.post() if shadowed else w.post(**pinned)
            took[shadowed].append(time.perf_counter() - t)
            assert r.status_code == 200 and r.json()["model_version"] == w.v1
    plain, copied = (statistics.median(took[k]) * 1000 for k in (False, True))
    with capsys.disabled():
        print(
            f"\n/predict p50: {plain:.2f} ms pinned (no copy), {copied:.2f} ms copied to the shadow"
        )
    shadow = w.client.app.state.components.shadow  # type: ignore[attr-defined]
    assert shadow.dropped == 0 and shadow.submitted >= 160
    assert copied <= plain * 1.25 + 0.5, (plain, copied)


def test_the_shadow_queue_drops_rather_than_waits_and_drains_at_close(world: World) -> None:
    release = threading.Event()

    def slow(rows: list[list[Any]]) -> Prediction:
        release.wait(10)
        return Prediction(["benign"] * len(rows), None)

    challenger = serve_model(fake_model(MODEL, "99", predict=slow))
    shadow = Shadow(world.settings, max_jobs=2)
    names = challenger.names

    def job(i: int) -> ShadowJob:
        return ShadowJob(
            f"queue-{i}", challenger, "1", names, [[1.0, 2.0]], ["benign"], time.time()
        )

    started = time.perf_counter()
    taken = [shadow.submit(job(i)) for i in range(6)]
    assert time.perf_counter() - started < 0.05  # never blocked on the slow challenger
    assert not all(taken) and shadow.dropped == taken.count(False) >= 3
    release.set()
    shadow.close(timeout_s=5)
    ids = [f"queue-{i}" for i, ok in enumerate(taken) if ok]
    assert sorted(r["request_id"] for r in _shadow_rows(world.settings, ids)) == sorted(ids)
    assert shadow.written == len(ids) and shadow.lost == 0


# --- the chain decides --------------------------------------------------------------


def test_a_forged_canary_event_is_ignored(w: World) -> None:
    attestation = {
        "model": MODEL,
        "version": w.v2,
        "action": canary.ACTION,
        "result": "canary",
        "decided_by": "mallory",
        "at": "2026-01-01T00:00:00+00:00",
        "gates_sha256": "0" * 64,
        "signature": "f" * 64,
    }
    now = time.time()
    detail = {
        "mode": "canary",
        "percent": 100.0,
        "champion": w.v1,
        "started_at": now,
        "until": now + 600,
        "limits": {},
        "gates": [],
    }
    try:
        forgeries = [
            ({**detail, "attestation": attestation}, "no valid signature"),
            (detail, "malformed"),
        ]
        for forgery, why in forgeries:
            audit.append_event(w.settings, canary.STARTED, forgery, model=MODEL, version=w.v2)
            signals.notify_champion_changed(w.settings, MODEL)  # as a real start would
            _wait(lambda: MODEL in w.holder.canaries(), "the forged event to be read")
            status = w.holder.canaries()[MODEL]
            assert status.serving is False and why in (status.error or ""), status
            assert [w.answered() for _ in range(10)] == [w.v1] * 10
            assert w.client.get("/readyz").status_code == 200
            # The forgery is the latest canary event: cleared by an end, so the module goes on.
            audit.append_event(w.settings, canary.ENDED, {"outcome": "stopped"}, model=MODEL)
            signals.notify_champion_changed(w.settings, MODEL)
            _wait(lambda: MODEL not in w.holder.canaries(), "the forgery to be cleared")
    finally:
        if w.holder.follower_error:
            pytest.fail(w.holder.follower_error)
