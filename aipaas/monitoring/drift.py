"""A drift check: the champion's served windows against its reference, decided and recorded.

:func:`check_model` merges the profile windows serving closed since the last
decided check, loads the champion's reference profile (the whylogs profile
training logged) and its holdout accuracy, scores them with
:mod:`.drift_stats`, writes the HTML page, stores the page and the merged
windows in MLflow where every host reads them (:mod:`.drift_store`) and
appends the verdict, with the run, to the drift history
(:mod:`.drift_report`). The registry, the feedback store and the artifact
store are collaborators it is given (:class:`ChampionLoader`,
``labelled_rows``, :class:`~.drift_store.ReportStore`), so the check runs on
fakes in tests and on MLflow and the platform database in production. A
store that fails costs the other hosts the report, never the verdict: the
check records it with the error and logs a warning.

Accuracy is judged on labels no retrain has learnt from: those labelled
after the model's last retrain start and after its last feedback export
(:func:`labels_consumed_through`, from the retrain records in the platform
database), within the policy's window. Otherwise every check of the old
version, until the new one serves, would say "retrain" again on the very
labels the retrain is training on.

Windows are marked consumed only when a check decided something, so a quiet
hour's rows add up until there are ``min_rows`` of them; checks of one model
are serialised on every host sharing the platform database
(:func:`aipaas.coordination.lock`), so each window is judged once and one
shift starts one retrain.

Which windows were consumed is the ``drift_state`` table, keyed by the window
store (the profiles directory, named by the id file :func:`store_id` keeps in
it), the model and the version: window numbers count per store, so hosts
that each profile into their own directory keep apart, and hosts that share
one directory share its state. A ``drift-state.json`` an older aipaas wrote is
imported once, on first use.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pandas as pd
from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection

from aipaas import coordination, db, files
from aipaas.datasets import profiles
from aipaas.datasets.profiles import Profile
from aipaas.exceptions import AipaasError, ModelNotFoundError
from aipaas.modeldef import ModelDefinition
from aipaas.monitoring import retrain, spool
from aipaas.monitoring.drift_report import record_check, report_path, write_html
from aipaas.monitoring.drift_stats import DriftReport, build_report
from aipaas.monitoring.drift_store import ReportStore, store_check
from aipaas.monitoring.retrain import RetrainOutcome
from aipaas.settings import Settings
from aipaas.training import tags

# ``labelled_rows(settings, model, target=...)``: labelled feedback as a frame,
# the label under ``target`` (see :func:`aipaas.inference.feedback.labelled_rows`).
LabelledRows = Callable[..., pd.DataFrame]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """What a drift check needs of the champion: its version, reference and holdout accuracy."""

    version: str
    reference: Profile
    holdout_accuracy: float | None
    run_id: str | None = None  # its training run: the drift run links to it


@dataclass(frozen=True)
class DriftOutcome:
    """What the drift flow returns: the check, its MLflow run, and the retrain it started."""

    report: DriftReport
    mlflow_run: str | None = None
    retrain: RetrainOutcome | None = None  # None: the policy did not ask for one


class ChampionLoader(Protocol):
    """Finds the current champion of a model and the evidence training logged for it."""

    def __call__(self, settings: Settings, model: str) -> Champion: ...


# -- which windows a check consumes ---------------------------------------------

STORE_ID = ".store-id"  # in profiles_dir: names the window store in ``drift_state``


def state_path(settings: Settings, model: str) -> Path:
    """Where an older aipaas kept the consumed windows: imported once, then renamed."""
    return settings.profiles_dir / model / "drift-state.json"


def store_id(settings: Settings) -> str:
    """The id of the window store ``profiles_dir``: made once, then the same for all who share it.

    Created by a hard link of a complete temporary file, so a reader never
    sees an empty id and two processes racing agree on the first one.
    """
    path = settings.profiles_dir / STORE_ID
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    tmp = files.atomic_write(path.with_name(f".{STORE_ID}.{uuid.uuid4().hex}"), uuid.uuid4().hex)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def _state_key(settings: Settings, model: str, version: str) -> dict[str, str]:
    return {"store": store_id(settings), "model": model, "version": str(version)}


def _upsert_state(conn: Connection, key: dict[str, str], last_seq: int, checked_at: float) -> None:
    t = db.drift_state
    where = and_(*(t.c[k] == v for k, v in key.items()))
    done = conn.execute(update(t).where(where).values(last_seq=last_seq, checked_at=checked_at))
    if done.rowcount == 0:
        conn.execute(insert(t).values(**key, last_seq=last_seq, checked_at=checked_at))


def _import_legacy_state(settings: Settings, model: str) -> None:
    """Bring a ``drift-state.json`` into ``drift_state``, keeping the later of both per version."""

    def write(conn: Connection, content: bytes) -> int:
        try:
            state = json.loads(content)
        except ValueError:
            state = None
        if not isinstance(state, dict):
            return 0
        rows = 0
        for version, entry in state.items():
            if not isinstance(entry, dict) or "last_seq" not in entry:
                continue
            key = _state_key(settings, model, version)
            t = db.drift_state
            where = and_(*(t.c[k] == v for k, v in key.items()))
            known = conn.execute(select(t.c.last_seq).where(where)).scalar()
            if known is None or int(entry["last_seq"]) > int(known):
                checked_at = float(entry.get("checked_at") or time.time())
                _upsert_state(conn, key, int(entry["last_seq"]), checked_at)
                rows += 1
        return rows

    coordination.import_once(settings, state_path(settings, model), write)


def last_checked(settings: Settings, model: str, version: str) -> int:
    """The last window sequence number of this version a decided check consumed."""
    _import_legacy_state(settings, model)
    t = db.drift_state
    key = _state_key(settings, model, version)
    query = select(t.c.last_seq).where(and_(*(t.c[k] == v for k, v in key.items())))
    with db.engine(settings).connect() as conn:
        value = conn.execute(query).scalar()
    return 0 if value is None else int(value)


def mark_checked(
    settings: Settings, model: str, version: str, last_seq: int, *, now: float | None = None
) -> None:
    """Record that windows up to ``last_seq`` of this version have been judged.

    Called under the model's drift lock (:func:`check_model`), so the update
    and the insert of a first check cannot race.
    """
    _import_legacy_state(settings, model)
    checked_at = time.time() if now is None else now
    with db.engine(settings).begin() as conn:
        _upsert_state(conn, _state_key(settings, model, version), int(last_seq), checked_at)


def collect_windows(
    settings: Settings, model: str, version: str
) -> tuple[Profile | None, list[int]]:
    """Merge the closed windows of this version not yet consumed by a decided check."""
    windows = spool.list_windows(
        settings, model, version, after_seq=last_checked(settings, model, version)
    )
    merged = profiles.merge_profiles(spool.load_window(w) for w in windows)
    return merged, [w.seq for w in windows]


# -- the champion's evidence, from MLflow ------------------------------------------


def load_reference(settings: Settings, run_id: str | None, model: str, version: str) -> Profile:
    """The champion's reference profile, downloaded from its training run."""
    if not run_id:
        raise ModelNotFoundError(
            f"{model} version {version} has no training run to hold its reference profile"
        )
    import mlflow

    from aipaas.training import registry

    registry.connect(settings)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=tags.REFERENCE_PROFILE, dst_path=tmp
            )
        except mlflow.exceptions.MlflowException as err:
            raise ModelNotFoundError(
                f"{model} version {version} (run {run_id}) has no {tags.REFERENCE_PROFILE}: "
                "it was not trained by `aipaas train`; retrain it"
            ) from err
        return profiles.read_profile(Path(local))


def load_champion(settings: Settings, model: str) -> Champion:
    """The registry's champion of ``model`` with its reference profile and holdout accuracy."""
    from aipaas.training import registry

    registry.connect(settings)
    champion = registry.get_alias(model, tags.CHAMPION)
    if champion is None:
        raise ModelNotFoundError(
            f"{model!r} has no champion yet: run `aipaas run lifecycle {model}`"
        )
    reference = load_reference(settings, champion.run_id, model, champion.version)
    metrics = registry.run_metrics(champion.run_id or "")
    return Champion(
        version=champion.version,
        reference=reference,
        holdout_accuracy=metrics.get(tags.holdout_metric("accuracy")),
        run_id=champion.run_id,
    )


def labels_consumed_through(settings: Settings, model: str) -> float | None:
    """Epoch seconds up to which labels of ``model`` went into a retrain (None: none did).

    The later of the last retrain start (a check judged those labels and
    started it) and the feedback export mark (the rows a retrain trained on),
    both in the platform database, so every host agrees.
    """
    marks = retrain.started_at(settings, model)[-1:]
    exported = retrain.exported_through(settings, model)
    if exported is not None:
        marks.append(exported.timestamp())
    return max(marks, default=None)


def champion_feedback(
    settings: Settings,
    definition: ModelDefinition,
    version: str,
    labelled_rows: LabelledRows | None = None,
    *,
    since: float | None = None,
) -> pd.DataFrame:
    """Labelled feedback on the predictions of this version (empty when there is none).

    ``labelled_rows`` defaults to :func:`aipaas.inference.feedback.labelled_rows`,
    which then reads only labels from ``since`` (epoch seconds) on: older ones
    are out of the accuracy window or already learnt by a retrain. An injected
    ``labelled_rows`` is called as before; the window itself is applied by
    :func:`aipaas.monitoring.drift_stats.accuracy_window` either way.
    """
    if labelled_rows is None:
        from aipaas.inference import feedback

        after = None if since is None else datetime.fromtimestamp(since, UTC)
        labelled_rows = functools.partial(feedback.labelled_rows, since=after)
    frame = labelled_rows(settings, definition.name, target=definition.target)
    if frame.empty or "model_version" not in frame:
        return frame
    return frame[frame["model_version"].astype(str) == str(version)]


# -- the check -------------------------------------------------------------------


def check_model(
    settings: Settings,
    definition: ModelDefinition,
    *,
    champion_loader: ChampionLoader = load_champion,
    labelled_rows: LabelledRows | None = None,
    report_store: ReportStore | None = store_check,
    now: float | None = None,
) -> DriftReport:
    """Run one drift check of the champion now: compare, write the HTML, store, record.

    Checks of one model are serialised on every host sharing the platform
    database (two window closes start two drift runs, perhaps on two hosts):
    each window is judged once, so one shift starts one retrain.
    ``report_store=None`` keeps the report on this host only (``aipaas
    monitor drift --no-mlflow``).
    """
    with coordination.lock(settings, drift_lock(definition.name)):
        return _check_locked(
            settings, definition, champion_loader, labelled_rows, report_store, now
        )


def drift_lock(model: str) -> str:
    """The name of the lock that serialises drift checks of ``model`` on every host."""
    return f"drift:{model}"


def _check_locked(
    settings: Settings,
    definition: ModelDefinition,
    champion_loader: ChampionLoader,
    labelled_rows: LabelledRows | None,
    report_store: ReportStore | None,
    now: float | None,
) -> DriftReport:
    model = definition.name
    now = time.time() if now is None else now
    champion = champion_loader(settings, model)
    current, seqs = collect_windows(settings, model, champion.version)
    consumed = labels_consumed_through(settings, model)
    feedback = champion_feedback(
        settings, definition, champion.version, labelled_rows,
        since=_feedback_since(definition, consumed, now),
    )  # fmt: skip
    report, comparisons = build_report(
        champion.version, champion.reference, current, definition,
        windows=seqs, feedback=feedback, holdout_accuracy=champion.holdout_accuracy,
        consumed_through=consumed, now=now,
    )  # fmt: skip
    path = write_html(report, comparisons, report_path(settings, report))
    report = replace(report, html_path=str(path))
    if report_store is not None:
        report = _store(settings, report, report_store, path, current, champion.run_id)
    record_check(settings, report)
    if report.decision.decided and seqs:
        mark_checked(settings, model, champion.version, max(seqs))
    return report


def _feedback_since(
    definition: ModelDefinition, consumed: float | None, now: float
) -> float | None:
    """The oldest label time the accuracy window can use: read no older labels."""
    hours = definition.drift.accuracy_window_hours
    oldest = None if hours is None else now - hours * 3600.0
    marks = [t for t in (consumed, oldest) if t is not None]
    return max(marks, default=None)


def _store(
    settings: Settings,
    report: DriftReport,
    report_store: ReportStore,
    html: Path,
    window: Profile | None,
    champion_run: str | None,
) -> DriftReport:
    """The report with where it is stored; or, when the store failed, why, and a warning.

    The verdict is recorded either way: a store outage must not cost a
    decision (nor the windows, which the record then consumes).
    """
    try:
        stored = report_store(settings, report, html=html, window=window, champion_run=champion_run)
    except AipaasError as err:
        log.warning(
            "drift check of %s v%s decided %r but was not stored in MLflow; "
            "its report stays on this host only (%s): %s",
            report.model, report.version, report.decision.verdict, html, err,
        )  # fmt: skip
        return replace(report, store_error=str(err))
    return replace(report, mlflow_run=stored.run_id, report_uri=stored.report_uri)
