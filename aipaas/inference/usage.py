"""Usage and cost per key, model version and end user, in total or over time.

The audit trail already holds every request with its key, model version,
end user, status and compute seconds, so usage is a query over it rather
than a second set of counters that could drift from the record. Cost is
compute seconds times ``settings.serving.cost_per_compute_second``, fixed
when the request was served. Only request records count (admin events do
not); an error is a status of 400 or more.

A time series groups by the start of each UTC hour or day: the first 13 or
10 characters of the record's ISO-8601 ``ts`` (``2026-05-01T14``,
``2026-05-01``), plain ``substr`` that SQLite and PostgreSQL both run the
same. End users appear as their pseudonyms (:func:`aipaas.audit.end_user_pseudonym`);
a filter takes the raw id and hashes it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, literal_column, select

from aipaas import audit, db
from aipaas.exceptions import ConfigurationError
from aipaas.settings import Settings

# bucket -> how many leading characters of an ISO timestamp name it
BUCKETS = {"hour": 13, "day": 10}


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
    end_user: str | None = None  # the pseudonym, when grouped by end user
    bucket: str | None = None  # ISO UTC start of the hour or day, for a time series


def bucket_start(prefix: str, bucket: str) -> str:
    """``"2026-05-01T14"`` (hour) or ``"2026-05-01"`` (day) -> the ISO UTC time it starts."""
    return f"{prefix}:00:00+00:00" if bucket == "hour" else f"{prefix}T00:00:00+00:00"


def _groups(bucket: str | None, by_end_user: bool) -> list[Any]:
    """The columns to group by, in output order."""
    t = db.audit_log
    groups: list[Any] = []
    if bucket is not None:
        if bucket not in BUCKETS:
            raise ConfigurationError(f"bucket {bucket!r} is not one of: {', '.join(BUCKETS)}")
        # Literal positions, so PostgreSQL sees the same expression in SELECT and GROUP BY.
        n: Any = literal_column(str(BUCKETS[bucket]))
        groups.append(func.substr(t.c.ts, literal_column("1"), n).label("bucket"))
    groups += [t.c.key_id, t.c.model, t.c.version]
    if by_end_user:
        groups.append(t.c.end_user)
    return groups


def usage(
    settings: Settings,
    *,
    key_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    end_user: str | None = None,
    by_end_user: bool = False,
    bucket: str | None = None,
) -> list[UsageRow]:
    """Requests, errors, compute seconds and cost by key and model version.

    Args:
        end_user: only this end user's requests (the raw id; hashed here).
        by_end_user: one row per end user too.
        bucket: ``"hour"`` or ``"day"``: one row per UTC hour or day too.
    """
    t = db.audit_log
    groups = _groups(bucket, by_end_user)
    stmt = (
        select(
            *groups,
            func.max(t.c.owner).label("owner"),
            func.count().label("requests"),
            func.sum(case((t.c.status >= 400, 1), else_=0)).label("errors"),
            func.coalesce(func.sum(t.c.compute_s), 0.0).label("compute_s"),
            func.coalesce(func.sum(t.c.cost), 0.0).label("cost"),
        )
        .where(t.c.kind == "request")
        .group_by(*groups)
        .order_by(*groups)
    )
    pseudonym = audit.end_user_pseudonym(settings, end_user) if end_user is not None else None
    stmt = audit.where_key_and_time(stmt, key_id, since, until, end_user_hash=pseudonym)
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
            end_user=r.end_user if by_end_user else None,
            bucket=bucket_start(r.bucket, bucket) if bucket is not None else None,
        )
        for r in rows
    ]
