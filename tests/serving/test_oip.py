"""The Open Inference Protocol (v2), called by a client no one here wrote: ``tritonclient``.

One real uvicorn on loopback serves the tritonclient tests of this module: a
LightGBM classifier on three float features (``diagnosis``: v1 promoted, v2
champion, v3 never promoted) and a scikit-learn text classifier
(``sentiment``: one string feature ``text``), loaded from a real MLflow store,
with keys, limits and the audit trail in a real SQLite platform database.
``tritonclient.http`` calls it as it calls Triton or KServe, with JSON and with
binary tensor data. The error bodies are checked with ``TestClient`` on the
fake source, one refusal at a time.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
import uvicorn
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from aipaas import audit
from aipaas.inference import keys
from aipaas.inference.predictor import FieldSpec
from aipaas.settings import Settings
from serving.app import create_app
from tests.conftest import make_settings
from tests.support.models import FEATURES, log_lgbm, log_text
from tests.support.net import free_port
from tests.support.serving import FakeSource, bearer

TABULAR, TEXT = "diagnosis", "sentiment"
ROWS = [
    {"mean_radius": 1.2, "mean_texture": 0.3, "mean_area": 0.9},
    {"mean_radius": -1.1, "mean_texture": 0.5, "mean_area": -0.8},
    {"mean_radius": 0.05, "mean_texture": -2.0, "mean_area": -0.1},
]
TEXTS = ["great product", "awful service", "love it"]


def real(test: Callable[..., None]) -> Callable[..., None]:
    """A test against the real server of this module (seconds to start)."""
    return pytest.mark.slow(pytest.mark.e2e(test))


@dataclass
class Served:
    settings: Settings
    url: str  # host:port, as tritonclient takes it
    key: str
    v1: str  # promoted before
    v2: str  # the champion
    v3: str  # never promoted

    @property
    def base(self) -> str:
        return f"http://{self.url}"

    def client(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.url, network_timeout=30.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("oip") / "home"
    home.mkdir()
    s = _both(make_settings(home))
    v1 = log_lgbm(s, TABULAR)
    v2 = log_lgbm(s, TABULAR, seed=1)
    v3 = log_lgbm(s, TABULAR, champion=False, seed=2)
    log_text(s, TEXT)
    key = keys.create_key(s, "oip-app", "predict,feedback", rate="1000/s")[1]
    port = free_port()
    app = create_app(s, follow=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # the lifespan loads both champions first
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(s, f"127.0.0.1:{port}", key, v1, v2, v3)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _tabular_inputs(rows: list[dict[str, float]], *, binary: bool, column: bool = False) -> list:
    inputs = []
    for name in FEATURES:
        values = np.array([r[name] for r in rows], dtype=np.float64)
        if column:
            values = values.reshape(-1, 1)
        tensor = httpclient.InferInput(name, list(values.shape), "FP64")
        inputs.append(tensor.set_data_from_numpy(values, binary_data=binary))
    return inputs


def _text_input(texts: list[str], *, binary: bool) -> list:
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    return [tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=binary)]


def _strings(array: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in array.tolist()]


def _predict(served: Served, model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    r = httpx.post(
        f"{served.base}/models/{model}/predict", json=records, headers=bearer(served.key)
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _refused(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


@real
def test_probes_and_server_metadata(served: Served) -> None:
    with served.client() as client:
        assert client.is_server_live() and client.is_server_ready()
        meta = client.get_server_metadata()
    assert meta["name"] == "aipaas" and "binary_tensor_data" in meta["extensions"]


@real
def test_model_metadata_comes_from_the_signature(served: Served) -> None:
    h = bearer(served.key)
    with served.client() as client:
        tabular = client.get_model_metadata(TABULAR, headers=h)
        text = client.get_model_metadata(TEXT, headers=h)
        pinned = client.get_model_metadata(TABULAR, model_version=served.v1, headers=h)
    assert tabular["name"] == TABULAR and tabular["platform"] == "lightgbm"
    assert tabular["inputs"] == [{"name": f, "datatype": "FP64", "shape": [-1]} for f in FEATURES]
    assert tabular["outputs"] == [
        {"name": "output", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]},
    ]
    assert tabular["versions"] == [served.v1, served.v2]  # v3 was never promoted
    assert pinned["name"] == TABULAR and pinned["inputs"] == tabular["inputs"]
    assert text["platform"] == "sklearn"
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in text["outputs"]] == ["output", "probabilities"]


@real
def test_model_readiness_needs_a_key_and_a_version_that_may_serve(served: Served) -> None:
    h = bearer(served.key)
    with served.client() as client:
        assert client.is_model_ready(TABULAR, headers=h)
        assert client.is_model_ready(TEXT, headers=h)
        assert client.is_model_ready(TABULAR, model_version=served.v1, headers=h)
        assert not client.is_model_ready(TABULAR)  # no key: 401
        assert not client.is_model_ready("no-such-model", headers=h)
        assert not client.is_model_ready(TABULAR, model_version=served.v3, headers=h)
        err = _refused(lambda: client.get_model_metadata(TABULAR))
    assert err.status() == "401" and "missing API key" in err.message()


@real
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tabular_infer_answers_what_predict_answers(served: Served, binary: bool) -> None:
    with served.client() as client:
        result = client.infer(
            TABULAR,
            _tabular_inputs(ROWS, binary=binary),
            request_id="order-17",
            headers=bearer(served.key),
        )
    expected = _predict(served, TABULAR, ROWS)
    response = result.get_response()
    assert response["id"] == "order-17"
    assert (response["model_name"], response["model_version"]) == (TABULAR, served.v2)
    assert _strings(result.as_numpy("output")) == expected["output"]
    probs = result.as_numpy("probabilities")
    classes = orjson.loads(result.get_output("probabilities")["parameters"]["classes"])
    assert probs.shape == (3, 2) and classes == ["benign", "malignant"]
    want = [[p[c] for c in classes] for p in expected["probabilities"]]
    np.testing.assert_allclose(probs, want, rtol=1e-12)


@real
def test_columns_may_be_n_by_1_and_outputs_may_be_chosen(served: Served) -> None:
    with served.client() as client:
        result = client.infer(
            TABULAR,
            _tabular_inputs(ROWS[:2], binary=False, column=True),
            outputs=[httpclient.InferRequestedOutput("output", binary_data=False)],
            headers=bearer(served.key),
        )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["output"]
    assert _strings(result.as_numpy("output")) == _predict(served, TABULAR, ROWS[:2])["output"]


@real
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_text_infer_takes_one_bytes_input(served: Served, binary: bool) -> None:
    with served.client() as client:
        result = client.infer(TEXT, _text_input(TEXTS, binary=binary), headers=bearer(served.key))
    expected = _predict(served, TEXT, [{"text": t} for t in TEXTS])
    assert result.get_response()["model_name"] == TEXT
    assert _strings(result.as_numpy("output")) == expected["output"]
    assert result.as_numpy("probabilities").shape == (3, 2)


@real
def test_keys_scopes_and_limits_are_those_of_predict(served: Served) -> None:
    s = served.settings
    only_tabular = keys.create_key(s, "tabular-only", "predict:diagnosis", rate="1000/s")[1]
    slow = keys.create_key(s, "slow", "predict", rate="1/m")[1]
    with served.client() as client:
        anonymous = _refused(lambda: client.infer(TABULAR, _tabular_inputs(ROWS, binary=True)))
        wrong = _refused(
            lambda: client.infer(TABULAR, _tabular_inputs(ROWS, binary=True), headers=bearer("x"))
        )
        scoped = _refused(
            lambda: client.infer(
                TEXT, _text_input(TEXTS, binary=True), headers=bearer(only_tabular)
            )
        )
        ok = client.infer(TABULAR, _tabular_inputs(ROWS, binary=True), headers=bearer(slow))
        limited = _refused(
            lambda: client.infer(TABULAR, _tabular_inputs(ROWS, binary=True), headers=bearer(slow))
        )
    assert (anonymous.status(), wrong.status(), scoped.status()) == ("401", "401", "403")
    assert "missing API key" in anonymous.message()
    assert "lacks scope 'predict' on model 'sentiment'" in scoped.message()
    assert ok.get_response()["model_version"] == served.v2
    assert limited.status() == "429"
    # What a client without tritonclient sees: the protocol's body, and when to retry.
    r = httpx.post(
        f"{served.base}/v2/models/{TABULAR}/infer",
        json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
        headers=bearer(slow),
    )
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert set(r.json()) == {"error"}


@real
def test_each_infer_has_its_audit_record_and_the_chain_verifies(served: Served) -> None:
    with served.client() as client:
        result = client.infer(
            TABULAR, _tabular_inputs(ROWS, binary=True), headers=bearer(served.key)
        )
        refused = _refused(lambda: client.infer(TEXT, _text_input(TEXTS, binary=True)))
    request_id = result.get_response()["parameters"]["request_id"]
    assert result.get_response()["id"] == request_id  # no id sent: the server's
    records = audit.tail(served.settings, 200)
    answered = next(r for r in records if r["request_id"] == request_id)
    assert answered["route"] == f"/v2/models/{TABULAR}/infer"
    assert (answered["model"], answered["version"], answered["status"]) == (TABULAR, served.v2, 200)
    assert answered["key_id"] == served.key.split("_")[1]
    assert answered["input_hmac"] and answered["compute_s"] > 0
    assert refused.status() == "401"
    assert any(
        r["route"] == f"/v2/models/{TEXT}/infer" and r["status"] == 401 and r["key_id"] is None
        for r in records
    )
    assert audit.verify(served.settings).ok
    # The answer joins its ground truth later, as a /predict answer does.
    r = httpx.post(
        f"{served.base}/feedback",
        json={"request_id": request_id, "label": "benign"},
        headers=bearer(served.key),
    )
    assert r.status_code == 201, r.text
    assert (r.json()["model"], r.json()["model_version"]) == (TABULAR, served.v2)


@real
def test_versions_are_pinned_by_path_and_by_key(served: Served) -> None:
    s = served.settings
    pinned_key = keys.create_key(s, "legacy", "predict", rate="1000/s", pins={TABULAR: served.v1})[
        1
    ]
    with served.client() as client:
        by_path = client.infer(
            TABULAR,
            _tabular_inputs(ROWS, binary=True),
            model_version=served.v1,
            headers=bearer(served.key),
        )
        by_key = client.infer(
            TABULAR, _tabular_inputs(ROWS, binary=True), headers=bearer(pinned_key)
        )
        never = _refused(
            lambda: client.infer(
                TABULAR,
                _tabular_inputs(ROWS, binary=True),
                model_version=served.v3,
                headers=bearer(served.key),
            )
        )
    assert by_path.get_response()["model_version"] == served.v1
    assert by_key.get_response()["model_version"] == served.v1
    assert never.status() == "404" and "no promotion record" in never.message()
    request_ids = {
        by_path.get_response()["parameters"]["request_id"],
        by_key.get_response()["parameters"]["request_id"],
    }
    versions = {r["version"] for r in audit.tail(s, 200) if r["request_id"] in request_ids}
    assert versions == {served.v1}


# --- error bodies, on the fake source -------------------------------------------------


@pytest.fixture
def oip_client(
    settings: Settings, source: FakeSource, make_client: Callable[..., TestClient]
) -> TestClient:
    source.champions[TEXT] = "1"
    source.fields[TEXT] = (FieldSpec("text", "str"),)
    return make_client(_both(settings))


def _both(settings: Settings) -> Settings:
    """Serving both models, ``diagnosis`` the default."""
    serving = settings.serving.model_copy(update={"models": [TABULAR, TEXT]})
    return settings.model_copy(update={"serving": serving})


def _tensor(name: str, data: list[Any], datatype: str = "FP64", shape: list[int] | None = None):
    return {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}


GOOD = [_tensor("mean_radius", [1.0, -1.0]), _tensor("mean_texture", [0.5, 0.5])]


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        (
            [*GOOD, _tensor("bogus", [1.0, 2.0])],
            "unknown input 'bogus': one input per feature, named ['mean_radius', 'mean_texture']",
        ),
        (GOOD[:1], "missing input(s) ['mean_texture']"),
        ([GOOD[0], GOOD[0], GOOD[1]], "input 'mean_radius' is given twice"),
        (
            [_tensor("mean_radius", [1.0, 2.0, 3.0, 4.0], shape=[2, 2]), GOOD[1]],
            "input 'mean_radius' has shape [2, 2]: an input is one feature's column",
        ),
        (
            [_tensor("mean_radius", [1.0], shape=[2]), GOOD[1]],
            "input 'mean_radius' has 1 values for shape [2]",
        ),
        (
            [GOOD[0], _tensor("mean_texture", [0.5, 0.5, 0.5])],
            "input 'mean_texture' has 3 rows and 'mean_radius' has 2",
        ),
        (
            [_tensor("mean_radius", ["a", "b"], "BYTES"), GOOD[1]],
            "input 'mean_radius' is BYTES, but feature 'mean_radius' is a float: send FP64",
        ),
        (
            [_tensor("mean_radius", [1.0, 2.0], "FLOAT"), GOOD[1]],
            "input 'mean_radius' has datatype 'FLOAT', not one of the protocol's",
        ),
        (
            [_tensor("mean_radius", [1.0, "2"]), GOOD[1]],
            "input 'mean_radius' (FP64) holds '2' at index 1: expected a number",
        ),
        (
            [_tensor("mean_radius", [True, 1.0]), GOOD[1]],
            "input 'mean_radius' (FP64) holds True at index 0: expected a number",
        ),
        (
            [_tensor("mean_radius", [1, 300], "INT8"), GOOD[1]],
            "input 'mean_radius' (INT8) holds 300 at index 1: expected an integer in [-128, 127]",
        ),
        (
            [_tensor("mean_radius", [10**400, 1.0]), GOOD[1]],
            "input 'mean_radius' holds an integer too large for a float feature",
        ),
        (
            [_tensor("mean_radius", [], shape=[0]), _tensor("mean_texture", [], shape=[0])],
            "the batch is empty",
        ),
        ([], "not an inference request: inputs: List should have at least 1 item"),
        (
            [{"name": "mean_radius", "shape": [2], "datatype": "FP64"}, GOOD[1]],
            "input 'mean_radius' has no data",
        ),
    ],
    ids=[
        "unknown",
        "missing",
        "twice",
        "2d",
        "short",
        "batch-sizes",
        "bytes-for-float",
        "unknown-datatype",
        "string-in-fp64",
        "bool-in-fp64",
        "int8-range",
        "huge-int",
        "empty",
        "no-inputs",
        "no-data",
    ],
)
def test_a_tensor_the_model_cannot_take_is_a_400_naming_it(
    oip_client: TestClient, predict_key: str, inputs: list[Any], says: str
) -> None:
    r = oip_client.post(
        f"/v2/models/{TABULAR}/infer", json={"inputs": inputs}, headers=bearer(predict_key)
    )
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and says in r.json()["error"], r.json()


def test_text_needs_bytes_and_a_bad_body_is_a_400(
    oip_client: TestClient, predict_key: str, settings: Settings
) -> None:
    h = bearer(predict_key)
    url = f"/v2/models/{TEXT}/infer"
    r = oip_client.post(url, json={"inputs": [_tensor("text", [1.0])]}, headers=h)
    assert r.status_code == 400
    assert r.json() == {"error": "input 'text' is FP64, but feature 'text' is a str: send BYTES"}
    r = oip_client.post(url, content=b"{not json", headers=h)
    assert r.status_code == 400 and r.json()["error"].startswith("not an inference request")
    r = oip_client.post(
        url,
        json={"inputs": [_tensor("text", ["hi"], "BYTES")], "outputs": [{"name": "scores"}]},
        headers=h,
    )
    assert r.status_code == 400
    assert r.json()["error"] == (
        "unknown output 'scores': sentiment v1 has ['output', 'probabilities']"
    )
    r = oip_client.post(url, content=b"\x1f\x8b", headers={**h, "Content-Encoding": "gzip"})
    assert r.status_code == 400 and "Content-Encoding: gzip" in r.json()["error"]
    refused = [x for x in audit.tail(settings, 20) if x["route"] == url]
    assert [x["status"] for x in refused] == [400, 400, 400, 400]


def _binary_body(tensors: list[tuple[str, str, bytes, int]]) -> tuple[bytes, str]:
    """(name, datatype, raw bytes, n) -> a binary_tensor_data body and its header length."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [k],
                    "datatype": dt,
                    "parameters": {"binary_data_size": len(b)},
                }
                for n, dt, b, k in tensors
            ]
        }
    )
    return header + b"".join(b for _, _, b, _ in tensors), str(len(header))


def test_binary_tensor_data_is_decoded_and_checked(
    oip_client: TestClient, predict_key: str
) -> None:
    h = bearer(predict_key)
    url = f"/v2/models/{TABULAR}/infer"
    radius = np.array([1.0, -1.0], dtype="<f8").tobytes()
    texture = np.array([3, 4], dtype="<i4").tobytes()  # an integer tensor for a float feature
    body, size = _binary_body(
        [("mean_radius", "FP64", radius, 2), ("mean_texture", "INT32", texture, 2)]
    )
    r = oip_client.post(url, content=body, headers={**h, "Inference-Header-Content-Length": size})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == ["malignant", "benign"]
    for content, length, says in [
        (body, str(len(body) + 1), "Inference-Header-Content-Length is"),
        (body + b"\x00", size, "1 bytes of binary data follow the request that no input claims"),
        (body[:-1], size, "input 'mean_texture' claims 8 bytes of binary data; 7 follow"),
    ]:
        r = oip_client.post(
            url, content=content, headers={**h, "Inference-Header-Content-Length": length}
        )
        assert r.status_code == 400 and says in r.json()["error"], r.text
    text, size = _binary_body([("text", "BYTES", struct.pack("<I", 5) + b"\xff\xfe", 1)])
    r = oip_client.post(
        f"/v2/models/{TEXT}/infer",
        content=text,
        headers={**h, "Inference-Header-Content-Length": size},
    )
    assert r.status_code == 400
    assert r.json()["error"] == "input 'text': binary BYTES data ends inside an element"


def test_refusals_are_the_protocols_body_with_the_apis_status(
    oip_client: TestClient, settings: Settings, predict_key: str
) -> None:
    body = {"inputs": GOOD}
    r = oip_client.post(f"/v2/models/{TABULAR}/infer", json=body)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json() == {"error": "missing API key: send 'Authorization: Bearer <key>'"}
    r = oip_client.post("/v2/models/nope/infer", json=body, headers=bearer(predict_key))
    assert r.status_code == 404 and "model 'nope' is not served here" in r.json()["error"]
    r = oip_client.get("/v2/models/nope", headers=bearer(predict_key))
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = oip_client.post(
        f"/v2/models/{TABULAR}/versions/abc/infer", json=body, headers=bearer(predict_key)
    )
    assert r.status_code == 404 and "versions are registry numbers" in r.json()["error"]
    other = keys.create_key(settings, "text-only", "predict:sentiment")[1]
    r = oip_client.post(f"/v2/models/{TABULAR}/infer", json=body, headers=bearer(other))
    assert (
        r.status_code == 403 and "lacks scope 'predict' on model 'diagnosis'" in r.json()["error"]
    )
    slow = keys.create_key(settings, "slow", "predict", rate="1/m")[1]
    assert oip_client.get(f"/v2/models/{TABULAR}", headers=bearer(slow)).status_code == 200
    r = oip_client.get(f"/v2/models/{TABULAR}/ready", headers=bearer(slow))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert set(r.json()) == {"error"} and "rate" in r.json()["error"]


def test_an_answer_echoes_the_id_and_keeps_the_outputs_asked_for(
    oip_client: TestClient, predict_key: str
) -> None:
    column = [_tensor(t["name"], [[v] for v in t["data"]], shape=[2, 1]) for t in GOOD]
    r = oip_client.post(
        f"/v2/models/{TABULAR}/infer",
        json={"id": "a-1", "inputs": column, "outputs": [{"name": "probabilities"}]},
        headers=bearer(predict_key),
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("a-1", TABULAR, "1")
    assert answer["parameters"]["request_id"] == r.headers["x-request-id"]
    assert answer["outputs"] == [
        {
            "name": "probabilities",
            "shape": [2, 2],
            "datatype": "FP64",
            "parameters": {"classes": '["benign","malignant"]'},
            "data": [0.09999999999999998, 0.9, 0.9, 0.1],
        }
    ]


def test_server_readiness_needs_every_model(
    settings: Settings,
    source: FakeSource,
    make_client: Callable[..., TestClient],
    predict_key: str,
) -> None:
    source.fields[TEXT] = (FieldSpec("text", "str"),)
    source.champions[TEXT] = None  # not trained yet: no champion to load
    client = make_client(_both(settings))
    r = client.get("/v2/health/ready")
    assert r.status_code == 503
    assert r.json() == {"error": "not every model has a version loaded: sentiment: no champion yet"}
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get(f"/v2/models/{TEXT}/ready", headers=bearer(predict_key))
    assert r.status_code == 503 and "model 'sentiment' has no champion loaded" in r.json()["error"]
    r = client.get(f"/v2/models/{TABULAR}/ready", headers=bearer(predict_key))
    assert r.json() == {"name": TABULAR, "ready": True}


def test_openapi_documents_the_protocols_bodies(oip_client: TestClient) -> None:
    assert oip_client.get("/v2/health/ready").json() == {"ready": True}
    spec = oip_client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.rsplit("/", 1)[1] == "InferenceRequest" and "RequestInput" in schemas
    for status in ("400", "401", "403", "429"):
        ref = infer["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/OipError"), status
    for status in ("404", "503"):  # also a path no route matches; the audit trail down
        refs = infer["responses"][status]["content"]["application/json"]["schema"]["anyOf"]
        assert [r["$ref"].rsplit("/", 1)[1] for r in refs] == ["OipError", "ErrorOut"]
    assert schemas["OipError"]["required"] == ["error"]
    assert infer["security"] == [{"bearer": []}]
    assert {"/v2", "/v2/health/live", "/v2/health/ready"} <= set(spec["paths"])
