"""Request and response schemas; per-model request schemas come from the signature."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from aipaas.inference.predictor import FieldSpec

_PY = {"float": float, "int": int, "str": str, "bool": bool}


def request_model(
    name: str, fields: tuple[FieldSpec, ...]
) -> tuple[type[BaseModel], tuple[str, ...]]:
    """A pydantic model for one record of ``name``'s input, and its attribute names in order.

    Column names need not be Python identifiers, so each field is ``f<i>``
    with the column name as its alias; errors name the column.
    """
    defs: dict[str, Any] = {}
    attrs = []
    for i, spec in enumerate(fields):
        attr = f"f{i}"
        attrs.append(attr)
        py = _PY[spec.type]
        if spec.required:
            defs[attr] = (py, Field(..., alias=spec.name))
        else:
            defs[attr] = (py | None, Field(None, alias=spec.name))
    model = create_model(  # type: ignore[call-overload]
        f"{name.title().replace('-', '').replace('_', '')}Input",
        __config__=ConfigDict(extra="forbid", populate_by_name=False),
        **defs,
    )
    return model, tuple(attrs)


class PredictResponse(BaseModel):
    """One record in: ``output`` is a value; a list of records: a list."""

    output: Any
    probabilities: dict[str, float] | list[dict[str, float]] | None = None
    model: str
    model_version: str
    request_id: str


class InvocationsResponse(BaseModel):
    predictions: list[Any]


class FieldOut(BaseModel):
    name: str
    type: str
    required: bool


class ModelOut(BaseModel):
    name: str
    version: str
    run_id: str | None
    dataset: str | None
    data_version: str | None
    promoted_at: str | None
    loaded_at: str
    flavor: str
    classes: list[Any] | None
    inputs: list[FieldOut]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    label: Any


class FeedbackResponse(BaseModel):
    request_id: str
    model: str
    model_version: str
    labelled_at: str


class Health(BaseModel):
    alive: bool


class Readiness(BaseModel):
    """Whether the default model answers; per served model, the loaded version.

    ``refused`` names the models whose ``champion`` points at a version serving
    refuses to load (no valid promotion record), and why; the version loaded
    before, if any, keeps serving.
    """

    ready: bool
    models: dict[str, str | None]
    error: str | None = None
    refused: dict[str, str] = Field(default_factory=dict)
    # model -> why its champion failed to load or warm up (it answers 503; others serve)
    failed: dict[str, str] = Field(default_factory=dict)
    # model -> its canary or shadow challenger here: version, mode, percent, until,
    # serving (false with an error when it takes no traffic); only models with a release
    canary: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    """Why a request was refused or failed, in words a person can act on."""

    detail: str


class QuotaExceededOut(ErrorOut):
    """A 429 for a quota or budget: which limit, what was counted, and when it resets."""

    quota: str = Field(description='As configured: "10000/day", "50/month".')
    kind: str = Field(description='"requests" (a quota) or "cost" (a budget).')
    used: float = Field(description="Requests or cost counted in the current period.")
    resets_at: str = Field(description="ISO 8601 UTC start of the next period.")


class UsageOut(BaseModel):
    key_id: str | None
    owner: str | None
    model: str | None
    version: str | None
    requests: int
    errors: int
    compute_s: float
    cost: float


class ReloadOut(BaseModel):
    outcomes: dict[str, str]


class RollbackOut(BaseModel):
    """A rollback on record: who, when, from which version to which."""

    model: str
    version: str  # the champion now
    previous: str | None  # the champion before
    decided_by: str
    at: str
    signature: str | None
    serving: str  # what this process did: swapped, unchanged, refused, ...
