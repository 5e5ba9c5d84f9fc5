"""Every status code, the audit record behind each, keys, limits, feedback."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aipaas import audit
from aipaas.inference import keys
from aipaas.inference.feedback import labelled_rows
from tests.support.serving import ROW, bearer


def _records(settings):
    return [r for r in audit.tail(settings, 1000) if r["kind"] == "request"]


def test_predict_one_record_and_a_batch(client, predict_key):
    r = client.post("/predict", json=ROW, headers=bearer(predict_key))
    assert r.status_code == 200
    body = r.json()
    assert body["output"] == "malignant"
    assert body["probabilities"]["malignant"] == pytest.approx(0.9)
    assert body["model_version"] == "1"
    assert r.headers["x-request-id"] == body["request_id"]
    batch = [ROW, {"mean_radius": -2.0, "mean_texture": 0}]
    r = client.post("/predict", json=batch, headers=bearer(predict_key))
    assert r.status_code == 200
    assert r.json()["output"] == ["malignant", "benign"]
    assert len(r.json()["probabilities"]) == 2


def test_invalid_bodies_are_422_naming_the_field(client, predict_key):
    h = bearer(predict_key)
    r = client.post("/predict", json={"mean_radius": "big", "mean_texture": 1}, headers=h)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "mean_radius"]
    r = client.post("/predict", json={"mean_radius": 1.0}, headers=h)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "mean_texture"]
    assert r.json()["detail"][0]["type"] == "missing"
    r = client.post("/predict", json={**ROW, "colour": "red"}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "colour"]
    r = client.post("/predict", json=[ROW, {"mean_radius": 1}], headers=h)
    assert r.json()["detail"][0]["loc"] == ["body", 1, "mean_texture"]
    r = client.post("/predict", content=b"{not json", headers=h)
    assert r.status_code == 422 and "invalid JSON" in r.json()["detail"][0]["msg"]


def test_batch_and_body_limits(make_client, settings, predict_key):
    s = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(
                update={"max_batch_rows": 3, "max_body_bytes": 400}
            )
        }
    )
    c = make_client(s)
    r = c.post("/predict", json=[ROW] * 4, headers=bearer(predict_key))
    assert r.status_code == 422 and "exceeds the limit of 3" in r.json()["detail"][0]["msg"]
    r = c.post("/predict", json=[ROW] * 20, headers=bearer(predict_key))
    assert r.status_code == 413
    statuses = [rec["status"] for rec in _records(s)]
    assert statuses == [422, 413]


def test_401_for_missing_unknown_revoked_and_expired_keys(client, settings, predict_key):
    _, expired = keys.create_key(settings, "old", "predict", expires="2020-01-01")
    revoked_rec, revoked = keys.create_key(settings, "gone", "predict")
    keys.revoke_key(settings, revoked_rec.id)
    forged = predict_key[:-4] + "abcd"
    expired_id, revoked_id = expired.split("_")[1], revoked.split("_")[1]
    for headers, detail in [
        ({}, "missing API key: send 'Authorization: Bearer <key>'"),
        ({"Authorization": "Basic abc"}, "send the key as 'Authorization: Bearer <key>'"),
        (bearer("garbage"), "malformed API key"),
        (bearer(forged), "unknown API key"),
        (bearer(expired), f"API key {expired_id} expired at 2020-01-01T23:59:59.999999+00:00"),
        (bearer(revoked), f"API key {revoked_id} was revoked"),
    ]:
        r = client.post("/predict", json=ROW, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"detail": detail}


def test_403_without_the_scope_for_the_route_or_model(client, settings, feedback_only_key):
    _, other_model = keys.create_key(settings, "x", "predict:other")
    assert client.post("/predict", json=ROW, headers=bearer(feedback_only_key)).status_code == 403
    r = client.post("/predict", json=ROW, headers=bearer(other_model))
    assert r.status_code == 403
    key_id = other_model.split("_")[1]
    assert r.json() == {"detail": f"API key {key_id} lacks scope 'predict' on model 'diagnosis'"}
    assert "www-authenticate" not in r.headers
    assert client.get("/usage", headers=bearer(feedback_only_key)).status_code == 403


def test_429_with_retry_after(client, settings):
    _, slow = keys.create_key(settings, "slow", "predict", rate="2/m")
    h = bearer(slow)
    assert client.post("/predict", json=ROW, headers=h).status_code == 200
    r = client.post("/predict", json=ROW, headers=h)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json() == {"detail": f"rate limit of 2/m exceeded for key {slow.split('_')[1]}"}
    assert [rec["status"] for rec in _records(settings)] == [200, 429]


def test_503_without_a_champion_then_ready_after_reload(make_client, source, settings, predict_key):
    source.champions["diagnosis"] = None
    c = make_client()
    assert c.get("/readyz").status_code == 503
    r = c.post("/predict", json=ROW, headers=bearer(predict_key))
    assert r.status_code == 503
    assert r.json() == {
        "detail": "model 'diagnosis' has no champion loaded: "
        "no version has the alias 'champion' yet"
    }
    source.champions["diagnosis"] = "4"
    _, admin = keys.create_key(settings, "ops", "admin")
    assert c.post("/admin/reload", headers=bearer(admin)).json() == {
        "outcomes": {"diagnosis": "loaded"}
    }
    assert c.get("/readyz").json() == {
        "ready": True,
        "models": {"diagnosis": "4"},
        "error": None,
        "refused": {},
        "failed": {},
        "canary": {},
    }
    assert c.post("/predict", json=ROW, headers=bearer(predict_key)).json()["model_version"] == "4"


def test_404_for_unknown_routes_and_models(client, predict_key):
    assert client.get("/nope").status_code == 404
    r = client.post("/models/other/predict", json=ROW, headers=bearer(predict_key))
    assert r.status_code == 404
    assert r.json() == {"detail": "model 'other' is not served here (served: ['diagnosis'])"}


def test_every_request_is_audited_including_rejected_ones(client, settings, predict_key):
    calls = [
        ("post", "/predict", {"json": ROW, "headers": bearer(predict_key)}, 200),
        ("post", "/predict", {"json": ROW}, 401),
        ("post", "/predict", {"json": {"x": 1}, "headers": bearer(predict_key)}, 422),
        ("get", "/usage", {"headers": bearer(predict_key)}, 403),
        ("get", "/nope", {}, 404),
        (
            "post",
            "/feedback",
            {"json": {"request_id": "zz", "label": 1}, "headers": bearer(predict_key)},
            404,
        ),
    ]
    ids = []
    for method, path, kwargs, status in calls:
        r = getattr(client, method)(path, **kwargs)
        assert r.status_code == status
        ids.append(r.headers["x-request-id"])
    recs = _records(settings)
    assert [r["request_id"] for r in recs] == ids
    assert [r["status"] for r in recs] == [c[3] for c in calls]
    ok = recs[0]
    assert ok["key_id"] == predict_key.split("_")[1] and ok["owner"] == "app-one"
    assert (ok["model"], ok["version"], ok["route"]) == ("diagnosis", "1", "/predict")
    assert ok["input_hmac"] == audit.input_hmac(
        b"change-me", b'{"mean_radius":1.5,"mean_texture":-0.5}'
    )
    assert ok["latency_ms"] > 0 and ok["compute_s"] > 0 and ok["cost"] > 0
    assert recs[1]["key_id"] is None
    assert audit.verify(settings).ok
    # probes are not client requests
    client.get("/healthz")
    client.get("/metrics")
    assert len(_records(settings)) == len(calls)


def test_model_invocations_and_named_models(make_client, source, settings, predict_key):
    s = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"models": ["diagnosis", "churn"]})}
    )
    source.champions["churn"] = "7"
    c = make_client(s)
    h = bearer(predict_key)
    m = c.get("/model", headers=h).json()
    assert (m["name"], m["version"], m["run_id"], m["data_version"]) == (
        "diagnosis",
        "1",
        "run-1",
        "abc",
    )
    assert [f["name"] for f in m["inputs"]] == ["mean_radius", "mean_texture"]
    assert c.get("/models/churn", headers=h).json()["version"] == "7"
    assert c.post("/models/churn/predict", json=ROW, headers=h).json()["model_version"] == "7"
    r = c.post("/predict", json=ROW, headers={**h, "X-Model": "churn"})
    assert r.json()["model"] == "churn"
    cols = ["mean_radius", "mean_texture"]
    for payload in [
        {"dataframe_split": {"columns": cols, "data": [[1.0, 2.0], [-1.0, 2.0]]}},
        {
            "dataframe_records": [
                {"mean_radius": 1.0, "mean_texture": 2.0},
                {"mean_radius": -1.0, "mean_texture": 2.0},
            ]
        },
        {"instances": [[1.0, 2.0], [-1.0, 2.0]]},
        {"inputs": {"mean_radius": [1.0, -1.0], "mean_texture": [2.0, 2.0]}},
    ]:
        r = c.post("/invocations", json=payload, headers=h)
        assert r.status_code == 200, payload
        assert r.json() == {"predictions": ["malignant", "benign"]}
    r = c.post("/invocations", json={"dataframe_records": [{"mean_radius": 1}]}, headers=h)
    assert r.status_code == 422


@pytest.mark.parametrize("log_inputs", [True, False])
def test_feedback_joins_the_prediction_once(make_client, source, settings, predict_key, log_inputs):
    if log_inputs:  # the version's aipaas.log_inputs tag, as training writes it
        source.log_inputs.add("diagnosis")
    client = make_client()
    h = bearer(predict_key)
    rid = client.post("/predict", json=ROW, headers=h).json()["request_id"]
    client.post("/predict", json=ROW, headers=h)  # unlabelled: not in the frame
    r = client.post("/feedback", json={"request_id": rid, "label": "benign"}, headers=h)
    assert r.status_code == 201 and r.json()["model_version"] == "1"
    again = client.post("/feedback", json={"request_id": rid, "label": "malignant"}, headers=h)
    assert again.status_code == 409
    assert again.json() == {"detail": f"request {rid!r} already has a label"}
    frame = labelled_rows(settings, "diagnosis", target="outcome")
    assert list(frame["request_id"]) == [rid]
    assert frame.loc[0, "prediction"] == "malignant"
    assert frame.loc[0, "outcome"] == "benign"
    assert frame.loc[0, "model_version"] == "1"
    assert str(frame["labelled_at"].dtype).startswith("datetime64")
    logged = {c: frame.loc[0, c] for c in ROW if c in frame}
    assert logged == (ROW if log_inputs else {})
    since = frame.loc[0, "labelled_at"].to_pydatetime()
    assert len(labelled_rows(settings, "diagnosis", since, target="outcome")) == 1
    assert labelled_rows(settings, "other", target="outcome").empty


def test_feedback_needs_the_feedback_scope(client, settings):
    _, only_predict = keys.create_key(settings, "p", "predict")
    r = client.post("/feedback", json={"request_id": "x", "label": 1}, headers=bearer(only_predict))
    assert r.status_code == 403


def test_usage_for_admin_keys(client, predict_key, admin_key):
    h = bearer(predict_key)
    client.post("/predict", json=ROW, headers=h)
    client.post("/predict", json={"bad": 1}, headers=h)
    rows = client.get("/usage", headers=bearer(admin_key)).json()
    mine = [r for r in rows if r["key_id"] == predict_key.split("_")[1] and r["version"] == "1"]
    assert len(mine) == 1 and mine[0]["requests"] == 2 and mine[0]["errors"] == 1
    assert mine[0]["cost"] > 0


def test_metrics_in_prometheus_format(client, predict_key):
    client.post("/predict", json=ROW, headers=bearer(predict_key))
    client.post("/predict", json=ROW)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    mv = {"model": "diagnosis", "version": "1"}
    assert value("aipaas_requests_total", route="/predict", status="200", **mv) == 1
    assert (
        value("aipaas_request_errors_total", route="/predict", model="diagnosis", version="") == 1
    )
    assert value("aipaas_request_duration_seconds_count", **mv) == 1
    assert client.get("/healthz").json() == {"alive": True}
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_switches_off_auth_limits_and_audit(make_client, settings):
    s = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(
                update={"auth_enabled": False, "rate_limit_enabled": False, "audit_enabled": False}
            )
        }
    )
    c = make_client(s)
    for _ in range(3):
        assert c.post("/predict", json=ROW).status_code == 200
    assert _records(s) == []


class ListSink:
    def __init__(self):
        self.calls = []

    def submit(self, model, version, rows, outputs):
        self.calls.append((model, version, rows, outputs))


def test_answered_rows_go_to_the_row_sink(make_client, predict_key):
    sink = ListSink()
    c = make_client(row_sink=sink)
    c.post("/predict", json=ROW, headers=bearer(predict_key))
    c.post("/predict", json={"bad": 1}, headers=bearer(predict_key))
    assert sink.calls == [("diagnosis", "1", [ROW], ["malignant"])]


def test_docs_show_the_signature_schema(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    record = body["schema"]["oneOf"][0]
    assert record["required"] == ["mean_radius", "mean_texture"]
    assert record["additionalProperties"] is False
    assert client.get("/docs").status_code == 200


def test_a_labelled_batch_gives_each_row_its_label(make_client, source, settings, predict_key):
    source.log_inputs.add("diagnosis")
    client = make_client()
    h = bearer(predict_key)
    batch = [ROW, {"mean_radius": -1.0, "mean_texture": 0.0}]
    rid = client.post("/predict", json=batch, headers=h).json()["request_id"]
    r = client.post(
        "/feedback", json={"request_id": rid, "label": ["malignant", "benign"]}, headers=h
    )
    assert r.status_code == 201
    frame = labelled_rows(settings, "diagnosis", target="outcome")
    assert list(frame["outcome"]) == ["malignant", "benign"]
    assert list(frame["prediction"]) == ["malignant", "benign"]
    assert list(frame["mean_radius"]) == [1.5, -1.0]


def test_the_spool_writer_fits_the_row_sink(make_client, settings, predict_key):
    from aipaas.monitoring import spool

    writer = spool.SpoolWriter(settings)
    c = make_client(row_sink=writer)
    c.post("/predict", json=ROW, headers=bearer(predict_key))
    segments = list(spool.spool_dir(settings).iterdir())
    assert any(b'"mean_radius":1.5' in p.read_bytes() for p in segments)
