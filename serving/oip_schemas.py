"""The Open Inference Protocol's (KServe v2) REST bodies, as its specification names them.

Field names and shapes follow the protocol (``docs/predict-api/v2/required_api.md``
in kserve/kserve), so any client of it (``tritonclient``, KServe's own) reads
them; what aipaas adds goes in the ``parameters`` the protocol leaves open.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# A parameter value is a string, a number or a boolean.
Parameters = dict[str, Any]
Dim = Annotated[StrictInt, Field(ge=0)]


class RequestInput(BaseModel):
    """One input tensor: ``data`` in JSON, or ``parameters.binary_data_size`` bytes after it."""

    name: str
    shape: list[Dim]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    """``$inference_request``: one input per feature, named after it."""

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "42",
                "inputs": [
                    {"name": "mean_radius", "shape": [2], "datatype": "FP64", "data": [1.2, -0.3]},
                    {"name": "mean_texture", "shape": [2], "datatype": "FP64", "data": [0.1, 0.4]},
                ],
            }
        }
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    """``$inference_response``; ``parameters.request_id`` is the id ``POST /feedback`` takes."""

    id: str
    model_name: str
    model_version: str
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a variable dimension (the batch)")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str] = Field(description="Versions that may be asked for by path")
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLiveResponse(BaseModel):
    live: bool


class ServerReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class OipError(BaseModel):
    """The protocol's error body: ``{"error": "<what went wrong>"}``.

    A quota or budget refusal adds what :class:`serving.schemas.QuotaExceededOut`
    carries (``quota``, ``kind``, ``used``, ``resets_at``).
    """

    error: str
