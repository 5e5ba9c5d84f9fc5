"""Usage and cost per key and model version, aggregated from the audit trail.

The audit trail already holds every request with its key, model version,
status and compute seconds, so usage is a query over it rather than a second
set of counters that could drift from the record. Cost is compute seconds
times ``settings.serving.cost_per_compute_second``, fixed when the request
was served.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select

from aipaas import audit, db
from aipaas.settings import Settings


@dataclass(frozen=True)
class UsageRow:
    key_id: str | None
    owner: str | None
    model: str | None
    version: str | None
    requests: int
    errors: int
    compute_s: float
    cost: float


def usage(
    settings: Settings,
    *,
    key_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[UsageRow]:
    """Requests, errors (status >= 400), compute seconds and cost by key and model version."""
    t = db.audit_log
    stmt = (
        select(
            t.c.key_id,
            func.max(t.c.owner).label("owner"),
            t.c.model,
            t.c.version,
            func.count().label("requests"),
            func.sum(case((t.c.status >= 400, 1), else_=0)).label("errors"),
            func.coalesce(func.sum(t.c.compute_s), 0.0).label("compute_s"),
            func.coalesce(func.sum(t.c.cost), 0.0).label("cost"),
        )
        .where(t.c.kind == "request")
        .group_by(t.c.key_id, t.c.model, t.c.version)
        .order_by(t.c.key_id, t.c.model, t.c.version)
    )
    stmt = audit.where_key_and_time(stmt, key_id, since, until)
    with db.engine(settings).connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        UsageRow(
            key_id=r.key_id,
            owner=r.owner,
            model=r.model,
            version=r.version,
            requests=int(r.requests),
            errors=int(r.errors or 0),
            compute_s=float(r.compute_s or 0.0),
            cost=float(r.cost or 0.0),
        )
        for r in rows
    ]
