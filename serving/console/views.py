"""What each console page shows, gathered from the core: plain functions, plain values.

They run in a worker thread (they read the database, the registry and
files); the routes only render what they return. A registry or database
that cannot answer becomes a ``problem`` line on the page, not an error page.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aipaas import audit
from aipaas.exceptions import AipaasError, ModelNotFoundError
from aipaas.inference import usage as usage_mod
from aipaas.inference import usage_chart
from aipaas.inference.usage import UsageRow
from aipaas.monitoring import card, drift_report, drift_store
from aipaas.monitoring.drift_report import DriftCheckRecord
from aipaas.settings import Settings
from aipaas.training import promote, registry, tags
from aipaas.training.promote import ModelStatus
from serving.holder import ModelHolder

# A model name or report file name as the platform writes them: no separators, no "..".
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
VERSION = re.compile(r"^[0-9]{1,9}$")  # a registry version number
REPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\.html$")
USAGE_SPAN = {"day": timedelta(days=30), "hour": timedelta(hours=48)}
AUDIT_ROWS = 50
_PLOT_LOCK = threading.Lock()  # pyplot's state is global: one chart at a time


def mlflow_ui(settings: Settings) -> str | None:
    """The MLflow UI's address, when the tracking URI is a server (not a local file)."""
    uri = settings.mlflow_tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def prefect_ui(settings: Settings) -> str:
    return settings.prefect_api_url.removesuffix("/api")


# -- models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelView:
    name: str
    served_version: str | None
    serving_problem: str | None  # the holder's refusal or load failure
    status: ModelStatus | None
    problem: str | None  # why the registry could not say more
    commits: dict[str, str] = field(default_factory=dict)  # version -> git commit


def _registered(settings: Settings) -> tuple[list[str], str | None]:
    try:
        registry.connect(settings)
        return registry.list_models(), None
    except AipaasError as err:
        return [], str(err)


def _commits(model: str) -> dict[str, str]:
    return {v.version: v.tags.get(tags.GIT_COMMIT, "") for v in registry.list_versions(model)}


def models_view(settings: Settings, holder: ModelHolder) -> tuple[list[ModelView], str | None]:
    """Each served or registered model; a registry problem shown once, at the top."""
    registered, problem = _registered(settings)
    views = []
    for name in dict.fromkeys([*holder.names, *registered]):
        served = holder.get(name)
        serving_problem = holder.refused.get(name) or holder.last_error.get(name)
        status: ModelStatus | None = None
        commits: dict[str, str] = {}
        why = None
        if problem is None:
            try:
                status = promote.model_status(settings, name)
                commits = _commits(name)
            except AipaasError as err:
                why = str(err)
        views.append(
            ModelView(
                name, served.version if served else None, serving_problem, status, why, commits
            )
        )
    return views, problem


# -- model cards -----------------------------------------------------------------------


@dataclass(frozen=True)
class CardView:
    """One version's model card as the console shows it, or why it cannot."""

    model: str
    version: str | None
    body: str | None = None  # the card page's body: bare tags, escaped text (card.body_of)
    stored: bool = False  # read from the version's training run (else rendered now)
    versions: list[str] = field(default_factory=list)  # every registered version, newest first
    champion: str | None = None
    problem: str | None = None
    status: int = 200


def card_view(settings: Settings, model: str, version: str | None) -> CardView:
    """The card of ``model`` v``version`` (default: the champion, else the newest version).

    Any registered model, served here or not. An unknown model or version is
    a 404 with the reason; a registry that does not answer, a 503.
    """
    if not SAFE_NAME.match(model) or (version is not None and not VERSION.match(version)):
        return CardView(
            model, version, problem=f"No model card for {model!r} v{version}.", status=404
        )
    try:
        registry.connect(settings)
        versions = [v.version for v in registry.list_versions(model)]
        if not versions:
            return CardView(
                model, version, problem=f"Model {model!r} has no registered version.", status=404
            )
        champion = registry.get_alias(model, tags.CHAMPION)
        chosen = str(int(version)) if version is not None else None
        chosen = chosen or (champion.version if champion else versions[0])
        made = card.read(settings, model, chosen)
    except ModelNotFoundError as err:
        return CardView(model, version, problem=str(err), status=404)
    except AipaasError as err:
        return CardView(model, version, problem=f"The registry did not answer: {err}", status=503)
    return CardView(
        model,
        made.version,
        body=card.body_of(made.html),
        stored=made.stored,
        versions=versions,
        champion=champion.version if champion else None,
    )


# -- drift -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftCheckView:
    when: str
    record: DriftCheckRecord
    report: str | None  # the report's file name, when it can be served (here or from MLflow)


@dataclass(frozen=True)
class ReportSource:
    """Where the drift report page comes from: this host's file, MLflow, or neither and why."""

    path: Path | None = None
    content: bytes | None = None
    problem: str | None = None
    status: int = 200


@dataclass(frozen=True)
class DriftView:
    model: str
    by_version: dict[str, list[DriftCheckView]]  # newest version first, newest check first


def _drift_models(settings: Settings, names: Iterable[str]) -> list[str]:
    root = settings.reports_dir / "drift"
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    # Checks recorded by other hosts are in the database, their reports on those hosts.
    recorded = drift_report.drift_models(settings)
    return [n for n in dict.fromkeys([*names, *recorded, *found]) if SAFE_NAME.match(n)]


def _check_view(settings: Settings, record: DriftCheckRecord) -> DriftCheckView:
    name = record.report_name
    local = name is not None and report_file(settings, record.model, name) is not None
    stored = name is not None and record.mlflow_run is not None and REPORT_NAME.match(name)
    served = name if local or stored else None
    when = datetime.fromtimestamp(record.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return DriftCheckView(when, record, served)


def drift_view(settings: Settings, names: Iterable[str]) -> list[DriftView]:
    views = []
    for model in _drift_models(settings, names):
        by_version: dict[str, list[DriftCheckView]] = {}
        for record in reversed(drift_report.drift_history(settings, model)):
            by_version.setdefault(record.version, []).append(_check_view(settings, record))
        ordered = dict(sorted(by_version.items(), key=lambda kv: _version_key(kv[0]), reverse=True))
        views.append(DriftView(model, ordered))
    return views


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def report_file(settings: Settings, model: str, name: str) -> Path | None:
    """The drift report ``name`` of ``model``, only if it is an HTML file in that model's folder.

    Names with a separator or ``..`` never match :data:`REPORT_NAME`; the
    resolved path must still sit directly in the resolved drift folder, so a
    symbolic link out of it is refused as well.
    """
    if not SAFE_NAME.match(model) or not REPORT_NAME.match(name):
        return None
    folder = drift_report.drift_dir(settings, model)
    path = folder / name
    try:
        resolved = path.resolve(strict=True)
    except OSError:
        return None
    if resolved.parent != folder.resolve() or not resolved.is_file():
        return None
    return resolved


def stored_record(settings: Settings, model: str, name: str) -> DriftCheckRecord | None:
    """The newest check of ``model`` whose report ``name`` was stored in MLflow."""
    for record in reversed(drift_report.drift_history(settings, model)):
        if record.report_name == name and record.mlflow_run:
            return record
    return None


def report_source(settings: Settings, model: str, name: str) -> ReportSource:
    """The drift report ``name``: this host's file when there is one, else MLflow's copy.

    A check stores its report in MLflow (:mod:`aipaas.monitoring.drift_store`)
    and its history row names the run, so a console on any host shows a
    report another host wrote. Only names the platform writes are looked up
    (:data:`REPORT_NAME`), and only in runs the history names.
    """
    missing = f"No drift report {name!r} for model {model!r}."
    local = report_file(settings, model, name)
    if local is not None:
        return ReportSource(path=local)
    if not SAFE_NAME.match(model) or not REPORT_NAME.match(name):
        return ReportSource(problem=missing, status=404)
    record = stored_record(settings, model, name)
    if record is None or record.mlflow_run is None:
        return ReportSource(problem=missing, status=404)
    try:
        return ReportSource(content=drift_store.fetch_report(settings, record.mlflow_run, name))
    except ModelNotFoundError as err:
        return ReportSource(problem=f"{missing} {err}", status=404)
    except AipaasError as err:
        problem = (
            f"The drift report {name!r} of {model!r} was written on another host, "
            f"and MLflow could not return it now: {err}"
        )
        return ReportSource(problem=problem, status=503)


# -- usage -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageView:
    bucket: str
    since: datetime
    totals: list[UsageRow]  # per key and model version over the span


def _since(bucket: str) -> datetime:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - USAGE_SPAN[bucket]


def _model_usage(settings: Settings, bucket: str | None, since: datetime) -> list[UsageRow]:
    """Usage of the models only: console pages and admin reads are requests too, but not usage."""
    rows = usage_mod.usage(settings, since=since, bucket=bucket)
    return [r for r in rows if r.model is not None]


def usage_view(settings: Settings, bucket: str) -> UsageView:
    since = _since(bucket)
    return UsageView(bucket=bucket, since=since, totals=_model_usage(settings, None, since))


def usage_png(settings: Settings, bucket: str) -> bytes:
    """The usage chart (requests and cost per key) as PNG bytes."""
    rows = _model_usage(settings, bucket, _since(bucket))
    with _PLOT_LOCK, tempfile.TemporaryDirectory(prefix="aipaas-console-") as tmp:
        path = usage_chart.write_chart(rows, Path(tmp) / "usage.png", bucket=bucket)
        return path.read_bytes()


# -- audit -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditView:
    records: list[dict[str, Any]]  # newest first
    verified: audit.VerifyReport


def audit_view(settings: Settings, n: int = AUDIT_ROWS) -> AuditView:
    return AuditView(records=audit.query(settings, limit=n), verified=audit.verify(settings))


# -- try it ----------------------------------------------------------------------------

_PLACEHOLDER: dict[str, Any] = {"float": 0.0, "int": 0, "str": "", "bool": False}


@dataclass(frozen=True)
class TryModel:
    name: str
    version: str
    example: dict[str, Any]  # a request body with every input, placeholder values


def try_models(holder: ModelHolder) -> list[TryModel]:
    out = []
    for name, served in holder.all().items():
        fields = served.loaded.fields
        example = {f.name: _PLACEHOLDER.get(f.type, "") for f in fields}
        if served.loaded.is_text:
            example = {"text": "type something here"}
        out.append(TryModel(name, served.version, example))
    return out
