"""``/predict``, ``/invocations`` and ``/model``: the champion, or a pinned version.

Which version answers, first match wins: the path
(``/models/{name}/versions/{version}/predict``), the ``X-Model-Version``
header, the key's pin for the model, else the champion. A pinned version
must have been promoted at some time (a signed promotion record); it is
loaded on demand in a worker thread, never on the event loop. The response's
``model_version`` and the audit record name the version that answered.

A request that pins no version meets the model's canary or shadow release,
if one runs (:meth:`serving.holder.ModelHolder.canary`):

- canary: a client (its key; its address when there are no keys) whose
  bucket falls in the share is answered by the challenger, and its record and
  rows name the challenger's version. A challenger that fails the request
  (it raises, or refuses rows the champion takes) is not the client's
  problem: the champion answers the same request, and its audit record says
  ``event = "canary.fallback"`` with the challenger's version and error in
  ``detail.canary`` (what the canary flow counts as errors);
- shadow: the champion answers; a copy of the rows and its outputs goes to
  :class:`serving.shadow.Shadow` once the answer is built, for the challenger.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from aipaas.audit import prediction_records
from aipaas.exceptions import AipaasError, ModelNotFoundError
from aipaas.inference.predictor import Prediction
from aipaas.training.tags import CHAMPION
from serving.deps import ANONYMOUS, Components, Guard, components, context, model_name
from serving.errors import ModelNotReadyError
from serving.holder import ServedModel
from serving.middleware import RequestContext
from serving.schemas import FieldOut, InvocationsResponse, ModelOut, PredictResponse
from serving.shadow import ShadowJob

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

FALLBACK = (
    "canary.fallback"  # the audit record's event: the challenger failed, the champion answered
)
ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class Routed:
    """Who answers a predict request: ``served``, and, during a release, who else.

    ``fallback``: ``served`` is a canary's challenger and this champion answers
    if it fails. ``shadow``: the champion answers and this challenger gets a copy.
    """

    served: ServedModel
    fallback: ServedModel | None = None
    shadow: ServedModel | None = None


async def routed_model(request: Request, served: ServedModelDep) -> Routed:
    """:func:`served_model`, then the model's canary or shadow for a request that pins nothing."""
    c = components(request)
    ctx = context(request)
    if pinned_version(request, ctx, served.name) is not None:
        return Routed(served)
    release = c.holder.canary(served.name)
    if release is None:
        return Routed(served)
    state, challenger = release
    if challenger.version == served.version:  # promoted meanwhile: one version, no release
        return Routed(served)
    if state.mode == "shadow":
        return Routed(served, shadow=challenger)
    if state.takes(client_of(request, ctx)):
        ctx.version = challenger.version
        return Routed(challenger, fallback=served)
    return Routed(served)


def client_of(request: Request, ctx: RequestContext) -> str:
    """Who a canary's split is stable for: the key; its address when keys are off."""
    if ctx.key_id is not None and ctx.key is not ANONYMOUS:
        return ctx.key_id
    return request.client.host if request.client is not None else "unknown"


RoutedDep = Annotated[Routed, Depends(routed_model)]


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
    c: Components,
    ctx: RequestContext,
    served: ServedModel,
    rows: list[list[Any]],
    *,
    challenger: bool = False,
) -> Any:
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    executor = c.canary_executor if challenger else c.executor
    pred = await loop.run_in_executor(executor, served.loaded.predict, rows)
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


async def answer(
    c: Components,
    ctx: RequestContext,
    routed: Routed,
    prepare: Callable[[ServedModel], list[list[Any]]],
) -> tuple[Prediction, ServedModel]:
    """Predict with the version ``routed`` names; the prediction and the version that made it.

    ``prepare`` turns the request into rows for a version (it raises the
    client's refusal). A canary's challenger that refuses what the champion
    takes, or that raises, is answered for by the champion (:func:`_fall_back`).
    """
    served, champion = routed.served, routed.fallback
    if champion is None:
        rows = prepare(served)
        pred = await run_prediction(c, ctx, served, rows)
        if routed.shadow is not None:
            _shadow(c, ctx, routed.shadow, served, rows, pred)
        return pred, served
    try:
        rows = prepare(served)
    except (RequestValidationError, AipaasError) as refused:
        ctx.version = champion.version
        rows = prepare(champion)  # the champion refuses it too: the client's own refusal
        return await _fall_back(c, ctx, served, champion, rows, refused), champion
    recorded = len(ctx.predictions)
    try:
        return await run_prediction(c, ctx, served, rows, challenger=True), served
    except Exception as err:  # noqa: BLE001 - a challenger's failure never reaches the client
        del ctx.predictions[recorded:]
        if champion.names != served.names:
            ctx.version = champion.version
            rows = prepare(champion)
        return await _fall_back(c, ctx, served, champion, rows, err), champion


async def _fall_back(
    c: Components,
    ctx: RequestContext,
    challenger: ServedModel,
    champion: ServedModel,
    rows: list[list[Any]],
    err: Exception,
) -> Prediction:
    """The champion answers instead; the record says the challenger failed, and how."""
    ctx.event = FALLBACK
    problem = {"version": challenger.version, "error": f"{type(err).__name__}: {err}"[:ERROR_CHARS]}
    ctx.detail = {**(ctx.detail or {}), "canary": problem}
    ctx.version = champion.version
    return await run_prediction(c, ctx, champion, rows)


def _shadow(
    c: Components,
    ctx: RequestContext,
    challenger: ServedModel,
    champion: ServedModel,
    rows: list[list[Any]],
    pred: Prediction,
) -> None:
    """A copy for the shadow's challenger: queued, never waited for."""
    c.shadow.submit(
        ShadowJob(
            request_id=ctx.request_id,
            challenger=challenger,
            champion_version=champion.version,
            names=champion.names,
            rows=rows,
            champion_outputs=pred.outputs,
            at=time.time(),
        )
    )


async def _predict(request: Request, routed: Routed) -> Response:
    c, ctx = components(request), context(request)
    payload = _loads(await request.body())
    batch = isinstance(payload, list)
    max_rows = c.settings.serving.max_batch_rows
    pred, served = await answer(c, ctx, routed, lambda s: _validate(s, payload, batch, max_rows))
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
async def predict(request: Request, routed: RoutedDep) -> Response:
    """Predict with the default model (or the one in ``X-Model``): champion, or a pinned version."""
    return await _predict(request, routed)


@router.post("/models/{name}/predict", response_model=PredictResponse, openapi_extra=BODY_DOC)
async def predict_named(name: str, request: Request, routed: RoutedDep) -> Response:
    """Predict with the champion of model ``name``."""
    return await _predict(request, routed)


@router.post(
    "/models/{name}/versions/{version}/predict",
    response_model=PredictResponse,
    openapi_extra=BODY_DOC,
)
async def predict_version(name: str, version: str, request: Request, routed: RoutedDep) -> Response:
    """Predict with version ``version`` of model ``name`` (it must have been promoted once)."""
    return await _predict(request, routed)


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


async def _invocations(request: Request, routed: Routed) -> Response:
    c, ctx = components(request), context(request)
    payload = _loads(await request.body())
    max_rows = c.settings.serving.max_batch_rows

    def prepare(served: ServedModel) -> list[list[Any]]:
        return _validate(served, _mlflow_records(payload, served.names), True, max_rows)

    pred, _ = await answer(c, ctx, routed, prepare)
    return JSONBytes({"predictions": pred.outputs})


@router.post("/invocations", response_model=InvocationsResponse, openapi_extra=BODY_DOC)
async def invocations(request: Request, routed: RoutedDep) -> Response:
    """MLflow's scoring protocol, so clients of ``mlflow models serve`` work unchanged."""
    return await _invocations(request, routed)


@router.post(
    "/models/{name}/invocations", response_model=InvocationsResponse, openapi_extra=BODY_DOC
)
async def invocations_named(name: str, request: Request, routed: RoutedDep) -> Response:
    return await _invocations(request, routed)


@router.post(
    "/models/{name}/versions/{version}/invocations",
    response_model=InvocationsResponse,
    openapi_extra=BODY_DOC,
)
async def invocations_version(
    name: str, version: str, request: Request, routed: RoutedDep
) -> Response:
    """MLflow's scoring protocol, answered by version ``version`` of model ``name``."""
    return await _invocations(request, routed)


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
