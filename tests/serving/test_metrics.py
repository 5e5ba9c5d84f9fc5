"""/metrics: bounded labels whatever clients send, one registry per app, multiprocess mode."""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aipaas.exceptions import UnsignedVersionError
from aipaas.inference import keys
from aipaas.inference.predictor import LoadedModel
from tests.support.serving import ROW, FakeSource, bearer

ROOT = Path(__file__).resolve().parents[2]
Sample = tuple[str, tuple[tuple[str, str], ...]]


class SignedSource(FakeSource):
    """The fake registry, where only the versions in ``promoted`` may be pinned."""

    def __init__(self) -> None:
        super().__init__()
        self.promoted = {("diagnosis", "1")}

    def load_pinned(self, name: str, version: str) -> LoadedModel:
        if (name, version) not in self.promoted:
            raise UnsignedVersionError(f"{name} v{version} has no promotion record")
        return self.load(name, version)


@pytest.fixture
def source() -> SignedSource:
    return SignedSource()


def _samples(client) -> dict[Sample, float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("aipaas_")
    }


def _value(samples: dict[Sample, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _quiet(settings):
    """No audit writes: a thousand requests in a couple of seconds."""
    serving = settings.serving.model_copy(update={"audit_enabled": False})
    return settings.model_copy(update={"serving": serving})


def _junk(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "-_.") for _ in range(n))


def test_random_paths_and_model_names_add_no_series(make_client, settings, predict_key):
    client = make_client(_quiet(settings))
    h = bearer(predict_key)
    rng = random.Random(10)

    def wave(n: int) -> None:
        for i in range(n):
            kind = i % 5
            if kind == 0:
                client.get(f"/{_junk(rng, 12)}/{_junk(rng, 5)}")
            elif kind == 4:
                client.get(f"/docs-static/{_junk(rng, 12)}")
            elif kind == 1:
                client.post("/predict", json=ROW, headers={**h, "X-Model": _junk(rng, 10)})
            elif kind == 2:
                client.post(f"/models/{_junk(rng, 8)}/predict", json=ROW, headers=h)
            else:
                version = str(rng.randint(2, 10**6))
                client.post("/predict", json=ROW, headers={**h, "X-Model-Version": version})

    client.post("/predict", json=ROW, headers=h)
    wave(10)  # every kind of request twice, and a scrape
    client.get("/metrics")
    before = _samples(client)
    wave(1000)
    after = _samples(client)
    assert set(after) == set(before)
    n = sum(v for (name, _), v in after.items() if name == "aipaas_requests_total")
    assert n == 1 + 10 + 1 + 1 + 1000  # scrapes are requests too
    routes = {dict(labels)["route"] for name, labels in after if "route" in dict(labels)}
    assert routes <= {
        "/predict",
        "/models/{name}/predict",
        "/docs-static/{path}",
        "/metrics",
        "unmatched",
    }
    models = {dict(labels).get("model") for _, labels in after}
    assert models <= {None, "", "diagnosis", "other"}
    versions = {dict(labels).get("version") for _, labels in after}
    assert versions <= {None, "", "1"}


def test_labels_are_route_templates_served_models_and_loaded_versions(
    make_client, settings, source, predict_key
):
    client = make_client()
    h = bearer(predict_key)
    assert client.post("/models/diagnosis/predict", json=ROW, headers=h).status_code == 200
    assert client.post("/models/nope/predict", json=ROW, headers=h).status_code == 404
    assert client.post("/predict", json=ROW, headers={**h, "X-Model": "nope"}).status_code == 404
    too_big = b"x" * (settings.serving.max_body_bytes + 1)
    assert client.post("/predict", content=too_big, headers=h).status_code == 413
    assert client.get("/no/such/thing").status_code == 404
    assert client.get("/docs-static/swagger-ui.css").status_code == 200
    assert client.get(f"/docs-static/{'x' * 40}.js").status_code == 404
    s = _samples(client)
    named = {"route": "/models/{name}/predict"}
    assert _value(s, "aipaas_requests_total", **named, model="diagnosis", version="1", status="200")
    assert _value(s, "aipaas_requests_total", **named, model="other", version="", status="404")
    other = {"route": "/predict", "model": "other", "version": ""}
    assert _value(s, "aipaas_requests_total", **other, status="404") == 1
    # answered by the middleware before routing: still the route's template
    unread = {"route": "/predict", "model": "", "version": ""}
    assert _value(s, "aipaas_requests_total", **unread, status="413") == 1
    assert _value(s, "aipaas_requests_total", route="unmatched", model="", version="", status="404")
    assets = {"route": "/docs-static/{path}", "model": "", "version": ""}
    assert _value(s, "aipaas_requests_total", **assets, status="200") == 1
    assert _value(s, "aipaas_requests_total", **assets, status="404") == 1
    assert _value(s, "aipaas_request_duration_seconds_count", model="diagnosis", version="1") == 1
    assert not [k for k in s if k[0].startswith("aipaas_request_duration") and "other" in str(k)]


def test_loads_and_failed_loads_are_counted_per_served_model(make_client, source, settings):
    client = make_client()
    holder = client.app.state.components.holder
    source.champions["diagnosis"] = "2"
    source.broken.add(("diagnosis", "2"))
    assert holder.refresh("diagnosis") == "failed"
    source.broken.clear()
    assert holder.refresh("diagnosis") == "swapped"
    s = _samples(client)
    assert _value(s, "aipaas_model_loads_total", model="diagnosis") == 2
    assert _value(s, "aipaas_model_load_failures_total", model="diagnosis") == 1


def test_each_app_counts_in_its_own_registry(make_client, settings, predict_key):
    one, two = make_client(), make_client()
    one.post("/predict", json=ROW, headers=bearer(predict_key))
    ok = {"route": "/predict", "model": "diagnosis", "version": "1", "status": "200"}
    assert _value(_samples(one), "aipaas_requests_total", **ok) == 1
    assert _value(_samples(two), "aipaas_requests_total", **ok) is None
    text = two.get("/metrics").text
    assert "process_cpu_seconds_total" in text  # process metrics come with prometheus-client


REPLICA = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from fastapi.testclient import TestClient
    from aipaas.settings import Settings
    from serving.app import create_app
    from tests.support.serving import ROW, FakeSource, bearer

    home = Path(sys.argv[1])
    s = Settings(_env_file=None, home=home, mlflow={"tracking_uri": f"sqlite:///{home}/m.db"})
    app = create_app(s, model_source=FakeSource(), follow=False)
    with TestClient(app) as client:
        for _ in range(int(sys.argv[3])):
            assert client.post("/predict", json=ROW, headers=bearer(sys.argv[2])).status_code == 200
        sys.stdout.write(client.get("/metrics").text)
    """
)


def test_replicas_aggregate_in_multiprocess_mode(settings, tmp_path):
    """Two processes write to one PROMETHEUS_MULTIPROC_DIR; a scrape of either sums both."""
    _, key = keys.create_key(settings, "app", "predict", rate="1000/s")
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(ROOT)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", REPLICA, str(settings.home), key, str(n)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for n in (3, 2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert len(list(shared.glob("counter_*.db"))) == 2  # one file per process
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(runs[1].stdout)
        for s in family.samples
    }
    ok = {"route": "/predict", "model": "diagnosis", "version": "1", "status": "200"}
    assert _value(samples, "aipaas_requests_total", **ok) == 5
    assert _value(samples, "aipaas_model_loads_total", model="diagnosis") == 2
