"""The API's published contract: security, error responses, offline docs, readiness."""

from __future__ import annotations

import re

from aipaas.exceptions import UnsignedVersionError
from aipaas.inference.predictor import LoadedModel
from serving import errors
from tests.support.serving import FakeSource

KEYED = {
    ("post", "/predict"),
    ("post", "/models/{name}/predict"),
    ("post", "/models/{name}/versions/{version}/predict"),
    ("post", "/invocations"),
    ("get", "/model"),
    ("get", "/models/{name}"),
    ("post", "/feedback"),
    ("post", "/admin/reload"),
    ("post", "/admin/models/{name}/rollback"),
    ("get", "/usage"),
    ("get", "/audit"),
}
PROBES = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    # the Open Inference Protocol's server metadata and probes, keyless as /healthz
    ("get", "/v2"),
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
}


def _operations(spec):
    return {(m, p): op for p, ops in spec["paths"].items() for m, op in ops.items()}


def _refs(response) -> set[str]:
    schema = response["content"]["application/json"]["schema"]
    return {s["$ref"].rsplit("/", 1)[1] for s in schema.get("anyOf", [schema])}


def test_keyed_operations_declare_the_bearer_scheme_and_probes_do_not(client):
    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    ops = _operations(spec)
    assert KEYED <= set(ops)
    for key, op in ops.items():
        if key in PROBES:
            assert "security" not in op, key
            assert not {"401", "403", "429"} & set(op["responses"]), key
        else:
            assert op["security"] == [{"bearer": []}], key


def test_each_operation_documents_the_errors_it_can_answer(client):
    spec = client.get("/openapi.json").json()
    ops = _operations(spec)
    statuses = {key: set(op["responses"]) for key, op in ops.items()}
    assert statuses[("post", "/predict")] >= {"401", "403", "404", "413", "422", "429", "503"}
    assert statuses[("post", "/feedback")] >= {"401", "403", "404", "409", "413", "422", "429"}
    assert "429" not in statuses[("get", "/usage")]  # admin reads are not rate limited
    assert "409" not in statuses[("post", "/predict")]
    assert "404" in statuses[("post", "/admin/models/{name}/rollback")]
    predict = ops[("post", "/predict")]["responses"]
    assert _refs(predict["401"]) == {"ErrorOut"}
    assert predict["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert _refs(predict["429"]) == {"ErrorOut", "QuotaExceededOut"}
    assert "Retry-After" in predict["429"]["headers"]
    assert _refs(predict["422"]) == {"HTTPValidationError", "ErrorOut"}
    assert "never promoted" in predict["404"]["description"]
    quota = spec["components"]["schemas"]["QuotaExceededOut"]
    assert set(quota["required"]) == {"detail", "quota", "kind", "used", "resets_at"}
    for op in ops.values():  # every reference resolves
        for response in op["responses"].values():
            for ref in re.findall(r"#/components/schemas/(\w+)", str(response)):
                assert ref in spec["components"]["schemas"]


def test_the_documented_statuses_come_from_the_error_table(client):
    spec = client.get("/openapi.json").json()
    documented = {int(s) for op in _operations(spec).values() for s in op["responses"]}
    table = {row.status for row in (*errors.TABLE.values(), *errors.EDGE)}
    assert table <= documented
    assert documented - table <= {200, 201}


def test_without_auth_no_scheme_and_no_401(make_client, settings):
    off = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"auth_enabled": False})}
    )
    spec = make_client(off).get("/openapi.json").json()
    assert "securitySchemes" not in spec["components"]
    predict = _operations(spec)[("post", "/predict")]
    assert "security" not in predict and "401" not in predict["responses"]


def test_docs_and_redoc_load_their_assets_from_this_server(client):
    for page, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")),
        ("/redoc", ("redoc.standalone.js", "favicon.png")),
    ):
        html = client.get(page).text
        assert not re.search(r"""(src|href)=["']?https?://""", html), page
        for asset in assets:
            assert f"/docs-static/{asset}" in html
            r = client.get(f"/docs-static/{asset}")
            assert r.status_code == 200 and len(r.content) > 1000, asset
    assert "persistAuthorization" in client.get("/docs").text
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert "/docs-static/{path}" not in client.get("/openapi.json").json()["paths"]


class RefusingSource(FakeSource):
    """The alias points at version 2, which has no promotion record."""

    def load(self, name: str, version: str) -> LoadedModel:
        if version == "2":
            raise UnsignedVersionError(f"{name} v2 has no promotion record")
        return super().load(name, version)


def test_readyz_says_which_champion_is_refused_and_why(make_client):
    source = RefusingSource()
    client = make_client(model_source=source)
    assert client.get("/readyz").json()["refused"] == {}
    source.champions["diagnosis"] = "2"
    assert client.app.state.components.holder.refresh("diagnosis") == "refused"
    r = client.get("/readyz")
    assert r.status_code == 200  # v1 keeps serving
    assert r.json() == {
        "ready": True,
        "models": {"diagnosis": "1"},
        "error": None,
        "refused": {"diagnosis": "diagnosis v2 has no promotion record"},
        "failed": {},
        "canary": {},
    }
