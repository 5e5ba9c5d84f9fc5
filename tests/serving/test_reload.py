"""Hot reload: swap, failed load, registry down, promotion signal, in-flight requests."""

from __future__ import annotations

import json
import threading
import time

from aipaas import audit
from aipaas.training import signals
from tests.support.serving import ROW, bearer, fake_model, fake_predict


def _events(settings):
    rows = audit.tail(settings, 1000)
    return [(r["event"], r["version"]) for r in rows if (r["event"] or "").startswith("model.")]


def _reload(c, settings):
    from aipaas.inference import keys

    _, admin = keys.create_key(settings, "ops", "admin")
    return c.post("/admin/reload", headers=bearer(admin)).json()["outcomes"]["diagnosis"]


def test_swap_failed_load_and_registry_down(client, source, settings, predict_key):
    h = bearer(predict_key)
    assert client.post("/predict", json=ROW, headers=h).json()["model_version"] == "1"
    source.champions["diagnosis"] = "2"
    assert _reload(client, settings) == "swapped"
    assert client.post("/predict", json=ROW, headers=h).json()["model_version"] == "2"

    source.champions["diagnosis"] = "3"
    source.broken.add(("diagnosis", "3"))
    assert _reload(client, settings) == "failed"
    assert client.post("/predict", json=ROW, headers=h).json()["model_version"] == "2"
    failed = [r for r in audit.tail(settings, 100) if r["event"] == "model.load_failed"]
    assert json.loads(failed[0]["detail"])["serving"] == "2"
    assert "corrupt artifact" in json.loads(failed[0]["detail"])["error"]

    source.down = True
    assert _reload(client, settings) == "registry-unavailable"
    assert client.post("/predict", json=ROW, headers=h).status_code == 200
    source.down = False
    source.broken.clear()
    assert _reload(client, settings) == "swapped"
    assert _events(settings) == [
        ("model.loaded", "1"),
        ("model.swapped", "2"),
        ("model.load_failed", "3"),
        ("model.swapped", "3"),
    ]
    assert audit.verify(settings).ok


def test_promotion_signal_reloads_without_waiting_for_the_poll(make_client, source, settings):
    s = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"reload_poll_s": 3600})}
    )
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(s, model_source=source)) as c:  # follow=True
        assert c.get("/readyz").json()["models"]["diagnosis"] == "1"
        source.champions["diagnosis"] = "2"
        signals.notify_champion_changed(s, "diagnosis")
        deadline = time.monotonic() + 10
        while c.get("/readyz").json()["models"]["diagnosis"] != "2":
            assert time.monotonic() < deadline, "the signal did not trigger a reload"
            time.sleep(0.1)


def test_in_flight_request_finishes_on_its_version(make_client, source, settings, predict_key):
    gate = threading.Event()
    entered = threading.Event()

    def blocking(rows):
        entered.set()
        assert gate.wait(10)
        return fake_predict(rows)

    source.models[("diagnosis", "1")] = fake_model(version="1", predict=blocking)
    c = make_client()
    result: dict[str, object] = {}

    def call() -> None:
        r = c.post("/predict", json=ROW, headers=bearer(predict_key))
        result["body"] = r.json()

    t = threading.Thread(target=call)
    t.start()
    assert entered.wait(10)
    source.champions["diagnosis"] = "2"
    assert _reload(c, settings) == "swapped"
    gate.set()
    t.join(10)
    body = result["body"]
    assert body["model_version"] == "1"  # started on v1, finished on v1
    rec = [r for r in audit.tail(settings, 100) if r["request_id"] == body["request_id"]][0]
    assert rec["version"] == "1"
    r = c.post("/predict", json=ROW, headers=bearer(predict_key))
    assert r.json()["model_version"] == "2"


def test_a_crashed_follower_makes_readyz_fail(source, settings):
    from fastapi.testclient import TestClient

    from serving.app import create_app

    class Exploding(type(source)):
        calls = 0

        def champion(self, name):
            self.calls += 1
            if self.calls > 1:  # startup works, the first poll hits a bug
                raise ZeroDivisionError("bug in the source")
            return super().champion(name)

    s = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"reload_poll_s": 0.1})}
    )
    with TestClient(create_app(s, model_source=Exploding())) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert "ZeroDivisionError" in c.get("/readyz").json()["error"]
