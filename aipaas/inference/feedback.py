"""Ground truth for served predictions, joined back to what was predicted.

Serving stores every prediction (request id, model, version, output, and the
raw input only when the version's ``aipaas.log_inputs`` tag allows it, see
:class:`aipaas.audit.PredictionRecord`); ``/feedback`` adds a label
to a request id, once. :func:`labelled_rows` is what drift monitoring
(accuracy) and retraining (new training rows) read; they hold the model
definition and pass its target name, so nothing here reads ``models/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aipaas import db
from aipaas.audit import iso_utc, utc_now
from aipaas.exceptions import AlreadyLabelledError, UnknownRequestError
from aipaas.settings import Settings

# The label's column when the caller names no target.
LABEL = "label"
# The columns every frame of :func:`labelled_rows` has besides the label.
META_COLUMNS = ("request_id", "model_version", "prediction", "labelled_at")


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
    """Attach ``label`` to an earlier prediction.

    Raises:
        UnknownRequestError: no prediction has this request id.
        AlreadyLabelledError: the request was labelled before; a label is final.
    """
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


def labelled_rows(
    settings: Settings,
    model: str,
    since: datetime | None = None,
    *,
    target: str = LABEL,
) -> pd.DataFrame:
    """Labelled predictions of ``model`` as a frame, oldest label first.

    Columns: the feature columns (only when inputs were logged), the label
    under ``target`` (the definition's target: callers that hold the
    definition pass it), ``request_id``, ``model_version``, ``prediction``
    (the served output) and ``labelled_at`` (UTC timestamp). One row per
    predicted row, so a labelled batch of n rows gives n rows with the same
    label, or each its own when the label is a list of n.
    """
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
        stmt = stmt.where(f.c.labelled_at >= iso_utc(since))
    with db.engine(settings).connect() as conn:
        rows = conn.execute(stmt).all()
    records = _records(rows, target)
    frame = pd.DataFrame.from_records(records, columns=None if records else [target, *META_COLUMNS])
    if len(frame):
        frame["labelled_at"] = pd.to_datetime(frame["labelled_at"], utc=True)
    return frame


def _records(rows: Sequence[Any], target: str) -> list[dict[str, Any]]:
    """Joined rows -> frame records; a batch's list label is split over its rows."""
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
    return records
