"""``POST /feedback``: ground truth for an earlier request id."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends

from aipaas.inference import feedback as fb
from serving.deps import ApiKeyDep, ComponentsDep, ContextDep, Guard
from serving.schemas import FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["feedback"], dependencies=[Depends(Guard("feedback"))])


@router.post("/feedback", response_model=FeedbackResponse, status_code=201)
async def post_feedback(
    body: FeedbackRequest, c: ComponentsDep, ctx: ContextDep, key: ApiKeyDep
) -> FeedbackResponse:
    """Label a served prediction: 404 if the request id is unknown, 409 if already labelled."""
    got = await anyio.to_thread.run_sync(
        lambda: fb.record_feedback(c.settings, body.request_id, body.label, key_id=key.id)
    )
    ctx.model, ctx.version = got.model, got.version
    return FeedbackResponse(
        request_id=got.request_id,
        model=got.model,
        model_version=got.version,
        labelled_at=got.labelled_at,
    )
