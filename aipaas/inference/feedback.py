"""Ground truth for served predictions, joined back to what was predicted.

Serving stores every prediction (request id, model, version, output, and the
raw input only when the model definition sets ``log_inputs``); ``/feedback``
adds a label to a request id, once. :func:`labelled_rows` is what drift
monitoring (accuracy) and retraining (new training rows) read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aipaas import db
from aipaas.exceptions import (
    AlreadyLabelledError,
    ModelNotFoundError,
    UnknownRequestError,
)
from aipaas.inference.audit import _iso, utc_now
from aipaas.modeldef import load_definition
from aipaas.settings import Settings


@dataclass(frozen=True)
class Feedback:
    request_id: str
    model: str
    version: str
    label: Any
    labelled_at: str


def record_feedback(
    settings: Settings, request_id: str, label: Any, *, key_id: str | None = None
) -> Feedback:
    """Attach ``label`` to an earlier prediction."""
    eng = db.engine(settings)
    p = db.predictions
    with eng.begin() as conn:
        pred = conn.execute(
            select(p.c.model, p.c.version).where(p.c.request_id == request_id).limit(1)
        ).first()
        if pred is None:
            raise UnknownRequestError(f"no prediction with request_id {request_id!r}")
        now = utc_now()
        try:
            conn.execute(
                db.feedback.insert().values(
                    request_id=request_id,
                    label=orjson.dumps(label).decode(),
                    key_id=key_id,
                    labelled_at=now,
                )
            )
        except IntegrityError as err:
            raise AlreadyLabelledError(f"request {request_id!r} already has a label") from err
    return Feedback(request_id, pred.model, pred.version, label, now)


def labelled_rows(settings: Settings, model: str, since: datetime | None = None) -> pd.DataFrame:
    """Labelled predictions of ``model`` as a frame, oldest label first.

    Columns: the feature columns (only when inputs were logged), the label
    under the definition's target name (``label`` if the definition is not
    found), ``request_id``, ``model_version``, ``prediction`` (the served
    output) and ``labelled_at`` (UTC timestamp). One row per predicted row,
    so a labelled batch of n rows gives n rows with the same label.
    """
    try:
        target = load_definition(model, settings.models_dir).target
    except ModelNotFoundError:
        target = "label"
    p, f = db.predictions, db.feedback
    stmt = (
        select(
            p.c.request_id, p.c.row, p.c.version, p.c.output, p.c.input, f.c.label, f.c.labelled_at
        )
        .join(f, f.c.request_id == p.c.request_id)
        .where(p.c.model == model)
        .order_by(f.c.labelled_at, p.c.request_id, p.c.row)
    )
    if since is not None:
        stmt = stmt.where(f.c.labelled_at >= _iso(since))
    with db.engine(settings).connect() as conn:
        rows = conn.execute(stmt).all()
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r.request_id] = sizes.get(r.request_id, 0) + 1
    records = []
    for r in rows:
        rec: dict[str, Any] = dict(orjson.loads(r.input)) if r.input else {}
        label = orjson.loads(r.label)
        if isinstance(label, list) and len(label) == sizes[r.request_id] > 1:
            label = label[r.row]
        rec[target] = label
        rec["request_id"] = r.request_id
        rec["model_version"] = r.version
        rec["prediction"] = orjson.loads(r.output)
        rec["labelled_at"] = r.labelled_at
        records.append(rec)
    frame = pd.DataFrame.from_records(
        records,
        columns=None
        if records
        else [target, "request_id", "model_version", "prediction", "labelled_at"],
    )
    if len(frame):
        frame["labelled_at"] = pd.to_datetime(frame["labelled_at"], utc=True)
    return frame
