"""KServe's Open Inference Protocol (v2) over REST, beside ``/predict``: the same models.

A protocol client (``tritonclient``, KServe's own) gets what ``/predict``
gives, through the same seams: the same keys and scopes, rate limits and
quotas (the :class:`~serving.deps.Guard`), the same version pinning (path
``/v2/models/{name}/versions/{version}/...``, ``X-Model-Version``, the
key's pin, else the champion: :func:`~serving.routers.predict.served_model`),
the same canary and shadow releases for a request that pins nothing
(:func:`~serving.routers.predict.answer`: a canary's challenger answers its
share of clients, the champion when it fails), the same prediction path (rows
recorded for ``/feedback``, profiling, the audit record's model, version and
compute time). Only the probes and the
server metadata need no key, like ``/healthz`` and ``/readyz``.

An infer request carries one tensor per feature of the model's MLflow
signature, named after it, shape ``[n]`` or ``[n, 1]``, datatype FP64 for a
float feature (FP32, FP16 and the integer types are taken too), INT64 for an
integer one, BYTES for a string, BOOL for a boolean. Tensor data comes as
JSON, or as raw bytes after the JSON (the ``binary_tensor_data`` extension,
``tritonclient``'s default). The answer is the ``output`` tensor (the
predictions, datatype from their values) and, for a classifier, a
``probabilities`` tensor ``[n, classes]`` whose column order its
``parameters.classes`` gives (a JSON list). Answers are JSON even when binary
outputs are asked for; the protocol's clients read either.

Every refusal of these routes, its dependencies' too, is the protocol's
``{"error": "..."}`` with the status the rest of the API gives
(:data:`serving.errors.TABLE`): 401, 403, 404, 429 (with ``Retry-After``),
503; and 400 for a tensor the model cannot take, naming it. Refusals made
before any route runs (413 body too large, 422 bad ``X-End-User``, 503 audit
trail down) keep the middleware's ``{"detail": ...}``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

import aipaas
from aipaas.exceptions import AipaasError
from aipaas.inference.predictor import FieldSpec, LoadedModel, Prediction
from aipaas.settings import Settings
from aipaas.training import promotion_log
from serving import errors
from serving.deps import Components, ComponentsDep, Guard, components, context
from serving.errors import ModelNotReadyError
from serving.holder import ServedModel
from serving.oip_schemas import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ModelMetadataResponse,
    ModelReadyResponse,
    OipError,
    RequestInput,
    RequestOutput,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
)
from serving.routers.predict import JSONBytes, Routed, RoutedDep, ServedModelDep, answer

SERVER_NAME = "aipaas"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "inference-header-content-length"
OUTPUT = "output"
PROBABILITIES = "probabilities"
REF = "#/components/schemas/"

# What each feature type takes, and what the model metadata advertises.
_FLOATS = ("FP64", "FP32", "FP16")
_INTS = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")
ACCEPTS: dict[str, tuple[str, ...]] = {
    "float": _FLOATS + _INTS,
    "int": _INTS,
    "str": ("BYTES",),
    "bool": ("BOOL",),
}
DATATYPE = {"float": "FP64", "int": "INT64", "str": "BYTES", "bool": "BOOL"}
# Raw little-endian layout of the binary_tensor_data extension (BYTES: length-prefixed).
_NUMPY = {dt: np.dtype(dt.replace("FP", "float").replace("UINT", "uint").lower()) for dt in _FLOATS}
_NUMPY |= {dt: np.dtype(dt.lower()) for dt in _INTS}
_NUMPY = {dt: t.newbyteorder("<") for dt, t in _NUMPY.items()} | {"BOOL": np.dtype("?")}
KNOWN = (*_FLOATS, *_INTS, "BYTES", "BOOL")
_RANGES = {dt: (int(np.iinfo(_NUMPY[dt]).min), int(np.iinfo(_NUMPY[dt]).max)) for dt in _INTS}


class InvalidTensorError(AipaasError):
    """An inference request the model cannot take: a 400 that names the tensor and the fault."""


# --- errors: the protocol's body, for the routes and their dependencies ------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _refusal(err: AipaasError) -> JSONResponse | None:
    """``err`` as the protocol's error body, or None if the API does not refuse with it."""
    if isinstance(err, InvalidTensorError):
        return _error(400, str(err))
    try:
        status = errors.status_for(err)
    except LookupError:  # not a refusal: a bug, left to the 500 handler
        return None
    body = errors.body_for(err)
    body = {"error": body.pop("detail"), **body}  # a quota's fields stay
    return JSONResponse(body, status_code=status, headers=errors.headers_for(err))


class OipRoute(APIRoute):
    """A route whose refusals, its dependencies' included, are ``{"error": ...}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except AipaasError as err:
                refusal = _refusal(err)
                if refusal is None:
                    raise
                return refusal
            except RequestValidationError as err:
                return _error(400, _describe(err.errors()))

        return handler


def _describe(problems: Any) -> str:
    """Pydantic's errors in one line: ``inputs.0.shape: Input should be a valid list``."""
    parts = []
    for p in problems:
        loc = ".".join(str(x) for x in p.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {p.get('msg')}" if loc else str(p.get("msg")))
    return "; ".join(parts) or "invalid request"


# --- routes --------------------------------------------------------------------------

_open = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=OipRoute)
_keyed = APIRouter(
    prefix="/v2",
    tags=["open inference protocol"],
    route_class=OipRoute,
    dependencies=[Depends(Guard("predict", per_model=True))],
)

INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": REF + "InferenceRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary_tensor_data: the JSON request (its length in the "
                "Inference-Header-Content-Length header), then each input's raw bytes",
            },
        },
    }
}


@_open.get("", response_model=ServerMetadataResponse)
async def server_metadata() -> ServerMetadataResponse:
    """The protocol's server metadata: name, version and the extensions served."""
    return ServerMetadataResponse(
        name=SERVER_NAME, version=aipaas.__version__, extensions=EXTENSIONS
    )


@_open.get("/health/live", response_model=ServerLiveResponse)
async def live() -> ServerLiveResponse:
    """The process answers."""
    return ServerLiveResponse(live=True)


@_open.get(
    "/health/ready", response_model=ServerReadyResponse, responses={503: {"model": OipError}}
)
async def ready(c: ComponentsDep) -> ServerReadyResponse:
    """200 once every served model has a version loaded, 503 naming those that have none.

    The protocol's rule; ``/readyz`` asks only for the default model.
    """
    problem = _not_ready(c)
    if problem is not None:
        raise ModelNotReadyError(problem)
    return ServerReadyResponse(ready=True)


def _not_ready(c: Components) -> str | None:
    holder = c.holder
    if holder.follower_error is not None:
        return holder.follower_error
    missing = [
        f"{name}: {holder.refused.get(name) or holder.last_error.get(name) or 'no champion yet'}"
        for name in list(holder.names)
        if holder.get(name) is None
    ]
    return f"not every model has a version loaded: {'; '.join(missing)}" if missing else None


@_keyed.get("/models/{name}", response_model=ModelMetadataResponse)
async def model_metadata(
    name: str, request: Request, served: ServedModelDep
) -> ModelMetadataResponse:
    """Inputs and outputs from the MLflow signature of the version this key gets."""
    return await _metadata(components(request), served)


@_keyed.get("/models/{name}/versions/{version}", response_model=ModelMetadataResponse)
async def version_metadata(
    name: str, version: str, request: Request, served: ServedModelDep
) -> ModelMetadataResponse:
    """Inputs and outputs from the MLflow signature of version ``version``."""
    return await _metadata(components(request), served)


@_keyed.get("/models/{name}/ready", response_model=ModelReadyResponse)
async def model_ready(name: str, served: ServedModelDep) -> ModelReadyResponse:
    """200 when the version this key gets (its pin, or the champion) answers; else 404 or 503."""
    return ModelReadyResponse(name=served.name, ready=True)


@_keyed.get("/models/{name}/versions/{version}/ready", response_model=ModelReadyResponse)
async def version_ready(name: str, version: str, served: ServedModelDep) -> ModelReadyResponse:
    """200 when the version answers: loaded now if need be (it must have been promoted once)."""
    return ModelReadyResponse(name=served.name, ready=True)


@_keyed.post("/models/{name}/infer", response_model=InferenceResponse, openapi_extra=INFER_DOC)
async def infer(name: str, request: Request, routed: RoutedDep) -> Response:
    """Predict with the champion of ``name``, or the key's pinned version."""
    return await _infer(request, routed)


@_keyed.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    openapi_extra=INFER_DOC,
)
async def infer_version(name: str, version: str, request: Request, routed: RoutedDep) -> Response:
    """Predict with version ``version`` of ``name`` (it must have been promoted once)."""
    return await _infer(request, routed)


router = APIRouter()
router.include_router(_open)
router.include_router(_keyed)


# --- metadata ------------------------------------------------------------------------


async def _metadata(c: Components, served: ServedModel) -> ModelMetadataResponse:
    loaded = served.loaded
    versions = await anyio.to_thread.run_sync(_versions, c, served)
    return ModelMetadataResponse(
        name=served.name,
        versions=versions,
        platform=loaded.flavor,
        inputs=[
            MetadataTensor(name=f.name, datatype=DATATYPE[f.type], shape=[-1])
            for f in loaded.fields
        ],
        outputs=_outputs_metadata(loaded),
    )


def _versions(c: Components, served: ServedModel) -> list[str]:
    """Versions a request may name: every promoted one, and those in memory (blocking)."""
    name = served.name
    promoted = promotion_log.read(c.settings, name)
    found = {r.version for r in promoted if r.result == "promoted"}
    champion = c.holder.get(name)
    found |= {served.version} | ({champion.version} if champion else set())
    found |= {v for (m, v) in c.holder.pinned() if m == name}
    return sorted(found, key=lambda v: (len(v), v))


def _outputs_metadata(loaded: LoadedModel) -> list[MetadataTensor]:
    """``output``, and ``probabilities`` when the version has classes (it then answers them)."""
    classes = loaded.classes
    datatype = _typed(list(classes))[0] if classes else "FP64"
    out = [MetadataTensor(name=OUTPUT, datatype=datatype, shape=[-1])]
    if classes is not None:
        out.append(MetadataTensor(name=PROBABILITIES, datatype="FP64", shape=[-1, len(classes)]))
    return out


def _output_names(loaded: LoadedModel) -> list[str]:
    return [OUTPUT, PROBABILITIES] if loaded.classes is not None else [OUTPUT]


# --- inference -----------------------------------------------------------------------


async def _infer(request: Request, routed: Routed) -> Response:
    c, ctx = components(request), context(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidTensorError(
            f"compressed request bodies (Content-Encoding: {encoding}) are not taken; "
            "send the request uncompressed"
        )
    header, binary = _split(await request.body(), request.headers.get(HEADER_LENGTH))
    req = _parse(header)

    def prepare(served: ServedModel) -> list[list[Any]]:
        _requested(served.loaded, req.outputs)  # outputs it cannot give: refused before predicting
        return rows_from_tensors(served.loaded.fields, req.inputs, binary, c.settings)

    pred, served = await answer(c, ctx, routed, prepare)
    wanted = _requested(served.loaded, req.outputs)
    tensors = output_tensors(pred)
    outputs = [t for n, t in tensors.items() if wanted is None or n in wanted]
    return JSONBytes(
        {
            "id": req.id if req.id is not None else ctx.request_id,
            "model_name": served.name,
            "model_version": served.version,
            "parameters": {"request_id": ctx.request_id},
            "outputs": outputs,
        }
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON request and the binary tensor data after it (binary_tensor_data)."""
    if header_length is None:
        return body, b""
    try:
        size = int(header_length)
    except ValueError:
        size = -1
    if not 0 < size <= len(body):
        raise InvalidTensorError(
            f"Inference-Header-Content-Length is {header_length!r}: it must be the length "
            f"of the JSON part of the body, 1 to {len(body)} bytes"
        )
    return body[:size], body[size:]


def _parse(header: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as err:
        raise InvalidTensorError(
            f"not an inference request: {_describe(err.errors(include_url=False))}"
        ) from err


def _requested(loaded: LoadedModel, outputs: list[RequestOutput] | None) -> list[str] | None:
    """The outputs asked for, in order; None: all of them."""
    if not outputs:
        return None
    available = _output_names(loaded)
    names = []
    for out in outputs:
        params = out.parameters or {}
        if params.get("class_count"):
            raise InvalidTensorError(
                "the classification extension (class_count) is not served; "
                f"read the {PROBABILITIES!r} output"
            )
        if "shared_memory_region" in params:
            raise InvalidTensorError("shared-memory outputs are not served: ask for JSON")
        if out.name not in available:
            raise InvalidTensorError(
                f"unknown output {out.name!r}: {loaded.name} v{loaded.version} has {available}"
            )
        names.append(out.name)
    return names


def rows_from_tensors(
    fields: tuple[FieldSpec, ...], inputs: list[RequestInput], binary: bytes, settings: Settings
) -> list[list[Any]]:
    """One tensor per feature -> ``n`` rows in signature order, what the predictor takes.

    Raises:
        InvalidTensorError: an unknown, repeated or missing input; a shape that is not
            ``[n]`` or ``[n, 1]`` or that disagrees with another input's or with its data;
            a datatype the feature cannot take; a value that is not of the datatype;
            binary data that does not add up.
    """
    by_name = {f.name: f for f in fields}
    columns: dict[str, list[Any]] = {}
    n: int | None = None
    offset = 0
    max_rows = settings.serving.max_batch_rows
    for tensor in inputs:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise InvalidTensorError(
                f"unknown input {tensor.name!r}: one input per feature, named {list(by_name)}"
            )
        if tensor.name in columns:
            raise InvalidTensorError(f"input {tensor.name!r} is given twice")
        rows = _batch_size(tensor)
        if n is None:
            n = rows
            if n == 0:
                raise InvalidTensorError("the batch is empty: shape [0]")
            if n > max_rows:
                raise InvalidTensorError(f"batch of {n} rows exceeds the limit of {max_rows}")
        elif rows != n:
            first = next(iter(columns))
            raise InvalidTensorError(
                f"input {tensor.name!r} has {rows} rows and {first!r} has {n}: "
                "every input holds the batch's rows"
            )
        _check_datatype(tensor, spec)
        values, offset, raw = _values(tensor, binary, offset)
        if len(values) != rows:
            raise InvalidTensorError(
                f"input {tensor.name!r} has {len(values)} values for shape {tensor.shape}"
            )
        columns[tensor.name] = _column(tensor, spec, values, checked=raw)
    if offset != len(binary):
        raise InvalidTensorError(
            f"{len(binary) - offset} bytes of binary data follow the request that no input "
            "claims (parameters.binary_data_size)"
        )
    missing = [f.name for f in fields if f.required and f.name not in columns]
    if missing:
        raise InvalidTensorError(
            f"missing input(s) {missing}: one input per feature, named {list(by_name)}"
        )
    assert n is not None  # an InferenceRequest has at least one input
    table = [columns[f.name] if f.name in columns else [None] * n for f in fields]
    return [list(row) for row in zip(*table, strict=True)]


def _batch_size(tensor: RequestInput) -> int:
    shape = tensor.shape
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        return shape[0]
    raise InvalidTensorError(
        f"input {tensor.name!r} has shape {shape}: an input is one feature's column, "
        "shape [n] or [n, 1]"
    )


def _check_datatype(tensor: RequestInput, spec: FieldSpec) -> None:
    dt = tensor.datatype
    if dt not in KNOWN:
        raise InvalidTensorError(
            f"input {tensor.name!r} has datatype {dt!r}, not one of the protocol's {list(KNOWN)}"
        )
    if dt not in ACCEPTS[spec.type]:
        raise InvalidTensorError(
            f"input {tensor.name!r} is {dt}, but feature {spec.name!r} is a {spec.type}: "
            f"send {DATATYPE[spec.type]}"
        )


def _values(tensor: RequestInput, binary: bytes, offset: int) -> tuple[list[Any], int, bool]:
    """The tensor's elements, flat; the binary offset after them; whether they were raw bytes."""
    params = tensor.parameters or {}
    if "shared_memory_region" in params:
        raise InvalidTensorError(f"input {tensor.name!r}: shared-memory inputs are not served")
    size = params.get("binary_data_size")
    if size is None:
        if tensor.data is None:
            raise InvalidTensorError(
                f"input {tensor.name!r} has no data (nor parameters.binary_data_size)"
            )
        return _flatten(tensor.name, tensor.data), offset, False
    if tensor.data is not None:
        raise InvalidTensorError(
            f"input {tensor.name!r} has both data and parameters.binary_data_size"
        )
    if type(size) is not int or size < 0:
        raise InvalidTensorError(
            f"input {tensor.name!r}: binary_data_size must be a byte count, not {size!r}"
        )
    if offset + size > len(binary):
        raise InvalidTensorError(
            f"input {tensor.name!r} claims {size} bytes of binary data; "
            f"{len(binary) - offset} follow"
        )
    return _decode(tensor, binary[offset : offset + size]), offset + size, True


def _flatten(name: str, data: list[Any]) -> list[Any]:
    """``[[1.0], [2.0]]`` (a ``[n, 1]`` tensor written out) -> ``[1.0, 2.0]``."""
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    for v in data:
        if not isinstance(v, list) or any(isinstance(x, list) for x in v):
            raise InvalidTensorError(
                f"input {name!r}: data is a flat list, or one list per row ([[v], [v], ...])"
            )
        flat.extend(v)
    return flat


def _decode(tensor: RequestInput, chunk: bytes) -> list[Any]:
    if tensor.datatype == "BYTES":
        return _decode_bytes(tensor.name, chunk)
    dtype = _NUMPY[tensor.datatype]
    if len(chunk) % dtype.itemsize:
        raise InvalidTensorError(
            f"input {tensor.name!r}: {len(chunk)} bytes is not a whole number of "
            f"{tensor.datatype} elements ({dtype.itemsize} bytes each)"
        )
    return np.frombuffer(chunk, dtype=dtype).tolist()  # type: ignore[no-any-return]


def _decode_bytes(name: str, chunk: bytes) -> list[str]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes of UTF-8."""
    out: list[str] = []
    i = 0
    while i < len(chunk):
        if i + 4 > len(chunk):
            raise InvalidTensorError(f"input {name!r}: binary BYTES data ends inside a length")
        (size,) = struct.unpack_from("<I", chunk, i)
        i += 4
        if i + size > len(chunk):
            raise InvalidTensorError(f"input {name!r}: binary BYTES data ends inside an element")
        try:
            out.append(chunk[i : i + size].decode())
        except UnicodeDecodeError as err:
            raise InvalidTensorError(
                f"input {name!r}: element {len(out)} is not UTF-8 text"
            ) from err
        i += size
    return out


def _is_number(v: Any) -> bool:
    return type(v) is float or type(v) is int


def _expected(dt: str) -> tuple[Callable[[Any], bool], str]:
    if dt in _FLOATS:
        return _is_number, "a number"
    if dt in _INTS:
        lo, hi = _RANGES[dt]
        return (lambda v: type(v) is int and lo <= v <= hi), f"an integer in [{lo}, {hi}]"
    if dt == "BYTES":
        return (lambda v: type(v) is str), "a string"
    return (lambda v: type(v) is bool), "true or false"


def _column(
    tensor: RequestInput, spec: FieldSpec, values: list[Any], *, checked: bool
) -> list[Any]:
    """Elements checked against the datatype (JSON ones), as the feature's Python type."""
    if not checked:
        ok, what = _expected(tensor.datatype)
        for i, v in enumerate(values):
            if not ok(v):
                raise InvalidTensorError(
                    f"input {tensor.name!r} ({tensor.datatype}) holds {v!r} at index {i}: "
                    f"expected {what}"
                )
    if spec.type == "float":
        try:
            return [float(v) for v in values]
        except OverflowError as err:  # an integer past float64's range
            raise InvalidTensorError(
                f"input {tensor.name!r} holds an integer too large for a float feature"
            ) from err
    return values


# --- outputs -------------------------------------------------------------------------


def _typed(values: list[Any]) -> tuple[str, list[Any]]:
    """A datatype for ``values`` and the values in it (anything else as JSON text, BYTES)."""
    if all(type(v) is bool for v in values):
        return "BOOL", values
    if all(type(v) is int for v in values):
        return "INT64", values
    if all(_is_number(v) for v in values):
        return "FP64", [float(v) for v in values]
    if all(type(v) is str for v in values):
        return "BYTES", values
    return "BYTES", [v if type(v) is str else orjson.dumps(v).decode() for v in values]


def output_tensors(pred: Prediction) -> dict[str, dict[str, Any]]:
    """``output``: the predictions; ``probabilities``: ``[n, classes]``, when there are some."""
    n = len(pred.outputs)
    datatype, data = _typed(pred.outputs)
    out: dict[str, dict[str, Any]] = {
        OUTPUT: {"name": OUTPUT, "shape": [n], "datatype": datatype, "data": data}
    }
    probs = pred.probabilities
    if probs is not None:
        labels = list(probs[0]) if probs else []
        out[PROBABILITIES] = {
            "name": PROBABILITIES,
            "shape": [n, len(labels)],
            "datatype": "FP64",
            "parameters": {"classes": orjson.dumps(labels).decode()},
            "data": [row[label] for row in probs for label in labels],
        }
    return out


# --- OpenAPI -------------------------------------------------------------------------

# Answered by the middleware before any route runs: its {"detail": ...} body.
_EDGE_STATUSES = {"413", "422"}
# Also answered outside these routes: 404 for a path no route matches, 503 when
# the audit trail cannot be written (both {"detail": ...}).
_SHARED_STATUSES = {"404", "503"}


def document(spec: dict[str, Any]) -> None:
    """The ``/v2`` operations' error bodies as the protocol's, their 400, the request body."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (InferenceRequest, OipError):
        schema = model.model_json_schema(ref_template=REF + "{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    oip_ref = {"$ref": REF + OipError.__name__}
    for path, operations in spec.get("paths", {}).items():
        if path != "/v2" and not path.startswith("/v2/"):
            continue
        for op in operations.values():
            responses = op.setdefault("responses", {})
            for status, response in responses.items():
                if not status.isdigit() or int(status) < 400 or status in _EDGE_STATUSES:
                    continue
                schema = (
                    {"anyOf": [oip_ref, {"$ref": REF + "ErrorOut"}]}
                    if status in _SHARED_STATUSES
                    else oip_ref
                )
                response["content"] = {"application/json": {"schema": schema}}
            if path.endswith("/infer"):
                responses["400"] = {
                    "description": "a tensor the model cannot take (named): an unknown, "
                    "missing or repeated input, a wrong shape or datatype, bad binary data",
                    "content": {"application/json": {"schema": oip_ref}},
                }
