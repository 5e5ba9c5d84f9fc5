"""The promotion signal: a counter per model in the platform database that serving polls.

Promotion and rollback bump the model's row in ``champion_signals``
(:func:`notify_champion_changed`); every serving process reads the counters
of the models it serves in one query on the primary key each tick
(:func:`champion_generations`) and reloads a model at once when its counter
moved, instead of waiting for its next registry poll. The database is what
every host sharing it sees, so a promotion on one host reloads serving on
all of them, with no broker; a missed nudge (the database did not answer)
costs only the registry's poll interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from aipaas import db
from aipaas.settings import Settings

log = logging.getLogger(__name__)


def notify_champion_changed(settings: Settings, model: str) -> None:
    """Tell every serving process on this platform database that ``champion`` of ``model`` moved."""
    t = db.champion_signals
    eng = db.engine(settings)
    dialect = postgresql if eng.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(t).values(model=model, generation=1, updated_at=time.time())
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.c.model],
        set_={"generation": t.c.generation + 1, "updated_at": stmt.excluded.updated_at},
    )
    with eng.begin() as conn:
        conn.execute(stmt)


def champion_generations(settings: Settings, models: Collection[str]) -> dict[str, int] | None:
    """The signal counter of each of ``models`` (0: never signalled), in one query.

    None when the database did not answer: the caller's registry poll still
    runs, so a missed signal only delays a reload.
    """
    if not models:
        return {}
    t = db.champion_signals
    query = select(t.c.model, t.c.generation).where(t.c.model.in_(list(models)))
    try:
        with db.engine(settings).connect() as conn:
            found = {str(m): int(g) for m, g in conn.execute(query)}
    except OperationalError as err:
        log.warning("champion signals unreadable (the registry poll still runs): %s", err)
        return None
    return {m: found.get(m, 0) for m in models}


def champion_generation(settings: Settings, model: str) -> int:
    """The signal counter of ``model``: 0 when nothing was ever signalled."""
    t = db.champion_signals
    with db.engine(settings).connect() as conn:
        value = conn.execute(select(t.c.generation).where(t.c.model == model)).scalar()
    return 0 if value is None else int(value)


def signalled_at(settings: Settings, model: str) -> float:
    """When ``model`` was last signalled (epoch seconds), 0.0 when never."""
    t = db.champion_signals
    with db.engine(settings).connect() as conn:
        value = conn.execute(select(t.c.updated_at).where(t.c.model == model)).scalar()
    return 0.0 if value is None else float(value)


# The marker file's mtime before the signal moved into the database: the same
# meaning (0.0: never signalled; it moves with each signal), kept for callers.
marker_mtime = signalled_at
