"""``/predict``, ``/invocations`` and ``/model``: the champion, or a pinned version.

Which version answers, first match wins: the path
(``/models/{name}/versions/{version}/predict``), the ``X-Model-Version``
header, the key's pin for the model, else the champion. A pinned version
must have been promoted at some time (a signed promotion record); it is
loaded on demand in a worker thread, never on the event loop. The response's
``model_version`` and the audit record name the version that answered.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from aipaas.audit import prediction_records
from aipaas.exceptions import ModelNotFoundError
from aipaas.training.tags import CHAMPION
from serving.deps import Components, Guard, components, context, model_name
from serving.errors import ModelNotReadyError
from serving.holder import ServedModel
from serving.middleware import RequestContext
from serving.schemas import FieldOut, InvocationsResponse, ModelOut, PredictResponse

VERSION_HEADER = "x-model-version"


def pinned_version(request: Request, ctx: RequestContext, name: str) -> str | None:
    """The version asked for: path, then ``X-Model-Version``, then the key's pin; None: champion.

    Raises:
        ModelNotFoundError: the version is not a registry version number (404).
    """
    version = (
        request.path_params.get("version")
        or request.headers.get(VERSION_HEADER)
        or (ctx.key.pins.get(name) if ctx.key is not None else None)
    )
    if version is None:
        return None
    version = str(version).strip()
    if not version.isdigit():
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r}: versions are registry numbers"
        )
    return str(int(version))


async def served_model(request: Request) -> ServedModel:
    """The version that answers this request: pinned (path, header, key) or the champion.

    Raises:
        ModelNotFoundError: this process does not serve the model, or no such version (404).
        UnsignedVersionError: a pinned version that was never promoted (404).
        ModelNotReadyError: no champion is loaded yet (503).
    """
    c = components(request)
    ctx = context(request)
    name = model_name(request, c)
    ctx.model = name
    if name not in c.holder.names:
        raise ModelNotFoundError(f"model {name!r} is not served here (served: {c.holder.names})")
    version = pinned_version(request, ctx, name)
    if version is None:
        served = _champion(c, name)
    elif (found := c.holder.get_version(name, version)) is not None:
        served = found
    else:
        served = await anyio.to_thread.run_sync(c.holder.load_version, name, version)
    ctx.version = served.version
    return served


def _champion(c: Components, name: str) -> ServedModel:
    served = c.holder.get(name)
    if served is None:
        reason = (
            c.holder.refused.get(name)
            or c.holder.last_error.get(name)
            or f"no version has the alias {CHAMPION!r} yet"
        )
        raise ModelNotReadyError(f"model {name!r} has no champion loaded: {reason}")
    return served


ServedModelDep = Annotated[ServedModel, Depends(served_model)]


router = APIRouter(
    tags=["predict"],
    dependencies=[Depends(Guard("predict", per_model=True))],
)

BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "description": "One record (the signature's columns) or a list of records",
                    "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}],
                }
            }
        },
    }
}


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body",),
                    "msg": f"invalid JSON: {err}",
                    "input": None,
                }
            ]
        ) from err


def _validate(served: ServedModel, records: Any, batch: bool, max_rows: int) -> list[list[Any]]:
    """Records -> rows in signature order; 422 naming the field on any problem."""
    try:
        if batch:
            if len(records) > max_rows:
                raise RequestValidationError(
                    [
                        {
                            "type": "too_long",
                            "loc": ("body",),
                            "msg": f"batch of {len(records)} rows exceeds the limit of {max_rows}",
                            "input": None,
                        }
                    ]
                )
            objs = served.list_adapter.validate_python(records)
        else:
            objs = [served.record_model.model_validate(records)]
    except ValidationError as err:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
        raise RequestValidationError(errors) from err
    attrs = served.attrs
    return [[getattr(o, a) for a in attrs] for o in objs]


async def run_prediction(
    c: Components, ctx: RequestContext, served: ServedModel, rows: list[list[Any]]
) -> Any:
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    pred = await loop.run_in_executor(c.executor, served.loaded.predict, rows)
    ctx.compute_s = time.perf_counter() - t
    names = served.names
    dict_rows = [dict(zip(names, r, strict=True)) for r in rows]
    ctx.predictions += prediction_records(
        ctx.request_id,
        served.name,
        served.version,
        dict_rows,
        pred.outputs,
        log_inputs=served.log_inputs,
    )
    if c.settings.serving.profiling_enabled:
        c.sink.submit(served.name, served.version, dict_rows, pred.outputs)
    return pred


async def _predict(request: Request, served: ServedModel) -> Response:
    c, ctx = components(request), context(request)
    payload = _loads(await request.body())
    batch = isinstance(payload, list)
    rows = _validate(served, payload, batch, c.settings.serving.max_batch_rows)
    pred = await run_prediction(c, ctx, served, rows)
    probs = pred.probabilities
    return JSONBytes(
        {
            "output": pred.outputs if batch else pred.outputs[0],
            "probabilities": (probs if batch else probs[0]) if probs is not None else None,
            "model": served.name,
            "model_version": served.version,
            "request_id": ctx.request_id,
        }
    )


@router.post("/predict", response_model=PredictResponse, openapi_extra=BODY_DOC)
async def predict(request: Request, served: ServedModelDep) -> Response:
    """Predict with the default model (or the one in ``X-Model``): champion, or a pinned version."""
    return await _predict(request, served)


@router.post("/models/{name}/predict", response_model=PredictResponse, openapi_extra=BODY_DOC)
async def predict_named(name: str, request: Request, served: ServedModelDep) -> Response:
    """Predict with the champion of model ``name``."""
    return await _predict(request, served)


@router.post(
    "/models/{name}/versions/{version}/predict",
    response_model=PredictResponse,
    openapi_extra=BODY_DOC,
)
async def predict_version(
    name: str, version: str, request: Request, served: ServedModelDep
) -> Response:
    """Predict with version ``version`` of model ``name`` (it must have been promoted once)."""
    return await _predict(request, served)


def _mlflow_records(payload: Any, names: tuple[str, ...]) -> list[Any]:
    """MLflow scoring formats -> a list of records."""
    if not isinstance(payload, dict) or len(payload) != 1:
        raise _bad("expected exactly one of dataframe_split, dataframe_records, instances, inputs")
    fmt, data = next(iter(payload.items()))
    if fmt == "dataframe_split":
        if not isinstance(data, dict) or "data" not in data:
            raise _bad("dataframe_split needs 'columns' and 'data'")
        cols = data.get("columns") or list(names)
        return [dict(zip(cols, row, strict=False)) for row in data["data"]]
    if fmt == "dataframe_records":
        return data if isinstance(data, list) else [data]
    if fmt in ("instances", "inputs"):
        if isinstance(data, dict):  # columnar: {"col": [values...]}
            cols = list(data)
            values = [v if isinstance(v, list) else [v] for v in data.values()]
            return [dict(zip(cols, row, strict=True)) for row in zip(*values, strict=False)]
        if isinstance(data, list):
            return [r if isinstance(r, dict) else dict(zip(names, r, strict=False)) for r in data]
    raise _bad(f"unknown scoring format {fmt!r}")


def _bad(msg: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body",), "msg": msg, "input": None}]
    )


async def _invocations(request: Request, served: ServedModel) -> Response:
    c, ctx = components(request), context(request)
    records = _mlflow_records(_loads(await request.body()), served.names)
    rows = _validate(served, records, True, c.settings.serving.max_batch_rows)
    pred = await run_prediction(c, ctx, served, rows)
    return JSONBytes({"predictions": pred.outputs})


@router.post("/invocations", response_model=InvocationsResponse, openapi_extra=BODY_DOC)
async def invocations(request: Request, served: ServedModelDep) -> Response:
    """MLflow's scoring protocol, so clients of ``mlflow models serve`` work unchanged."""
    return await _invocations(request, served)


@router.post(
    "/models/{name}/invocations", response_model=InvocationsResponse, openapi_extra=BODY_DOC
)
async def invocations_named(name: str, request: Request, served: ServedModelDep) -> Response:
    return await _invocations(request, served)


@router.post(
    "/models/{name}/versions/{version}/invocations",
    response_model=InvocationsResponse,
    openapi_extra=BODY_DOC,
)
async def invocations_version(
    name: str, version: str, request: Request, served: ServedModelDep
) -> Response:
    """MLflow's scoring protocol, answered by version ``version`` of model ``name``."""
    return await _invocations(request, served)


def _model_out(served: ServedModel) -> ModelOut:
    m = served.loaded
    return ModelOut(
        name=m.name,
        version=m.version,
        run_id=m.meta.run_id,
        dataset=m.meta.dataset,
        data_version=m.meta.data_version,
        promoted_at=m.meta.promoted_at,
        loaded_at=datetime.fromtimestamp(m.loaded_at, UTC).isoformat(),
        flavor=m.flavor,
        classes=list(m.classes) if m.classes is not None else None,
        inputs=[FieldOut(name=f.name, type=f.type, required=f.required) for f in m.fields],
    )


@router.get("/model", response_model=ModelOut)
async def model(served: ServedModelDep) -> ModelOut:
    """The version answering ``/predict``: its run, data version and when it was promoted."""
    return _model_out(served)


@router.get("/models/{name}", response_model=ModelOut)
async def model_named(name: str, served: ServedModelDep) -> ModelOut:
    return _model_out(served)
