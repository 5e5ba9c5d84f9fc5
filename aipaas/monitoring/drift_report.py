"""Where a drift check is published: an HTML page, the drift history, an MLflow run.

A person looking at drift wants the verdict, the table and a plot per
feature in one file they can open anywhere (:func:`write_html`, no server
needed); a person looking back wants every check of a model in order
(:func:`record_check`, :func:`drift_history`); and the MLflow UI shows a
version's checks side by side (:func:`log_to_mlflow`). The statistics
themselves are :mod:`.drift_stats`.

The history is the ``drift_checks`` table of the platform database, so every
host sharing it sees every check of a model, whichever host ran it, oldest
first by the time of the check. Each row names the check's MLflow run and
its report's artifact URI (:mod:`.drift_store`): the HTML page is written
where the check ran (``<reports>/drift/<model>/``) and stored in MLflow, so
a host without the file fetches it; a row whose store failed says why
(``store_error``). The row is JSON (``drift_checks.record``): fields added
since (``mlflow_run``, ``report_uri``, ``store_error``, ``summary``, the
decision's ``cause``) are absent from older rows and read as empty, so
there was no schema change. A history written by an older aipaas
(``history.jsonl`` there) is imported once, on first use.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from aipaas import coordination, db, files
from aipaas.datasets.profiles import ColumnComparison
from aipaas.monitoring.drift_stats import DriftDecision, DriftReport, FeatureDrift, summary_line
from aipaas.monitoring.spool import PREDICTION
from aipaas.settings import Settings
from aipaas.training import tags


def drift_dir(settings: Settings, model: str) -> Path:
    return settings.reports_dir / "drift" / model


def report_path(settings: Settings, report: DriftReport) -> Path:
    """Where the HTML page of ``report`` goes: one file per check, named by version and time."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(report.created_at))
    return drift_dir(settings, report.model) / f"v{report.version}-{stamp}.html"


# -- the HTML page -----------------------------------------------------------------


def _plot(cmp: ColumnComparison, drift: FeatureDrift) -> str:
    """One PNG (base64) of reference against current for a column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.4), dpi=80)
    try:
        if cmp.kind == "numeric":
            ax.step(cmp.points, cmp.reference_cdf, where="post", label="reference", color="#1f77b4")
            ax.step(cmp.points, cmp.current_cdf, where="post", label="current", color="#d62728")
            ax.set_ylabel("CDF")
        else:
            cats = cmp.categories[:20]
            xs = range(len(cats))
            ax.bar([x - 0.2 for x in xs], cmp.reference_freq[:20], width=0.4, label="reference")
            ax.bar([x + 0.2 for x in xs], cmp.current_freq[:20], width=0.4, label="current")
            ax.set_xticks(list(xs), cats, rotation=45, fontsize=7)
            ax.set_ylabel("frequency")
        colour = "#d62728" if drift.drifting else "#333333"
        ax.set_title(f"{drift.feature}: {drift.method} {drift.score:.3f}", fontsize=9, color=colour)
        ax.legend(fontsize=7)
        # Fixed margins: tight_layout measures every label and doubles the cost of a plot.
        fig.subplots_adjust(left=0.14, right=0.98, top=0.88, bottom=0.3 if cmp.categories else 0.12)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table_html(report: DriftReport) -> str:
    esc = html.escape
    table = report.table()
    head = "".join(f"<th>{esc(k)}</th>" for k in (table or [{"feature": ""}])[0])
    rows = "".join(
        "<tr class='{cls}'>{cells}</tr>".format(
            cls="drift" if r["drifting"] else "",
            cells="".join(f"<td>{esc(str(v))}</td>" for v in r.values()),
        )
        for r in table
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _plots_html(report: DriftReport, comparisons: Sequence[ColumnComparison]) -> str:
    by_name = {f.feature: f for f in report.features}
    if report.prediction is not None:
        by_name[PREDICTION] = report.prediction
    plots = []
    for cmp in comparisons:
        name = PREDICTION if cmp.current_column == PREDICTION else cmp.column
        drift = by_name.get(name)
        if drift is not None:
            src = f"data:image/png;base64,{_plot(cmp, drift)}"
            plots.append(f"<img alt='{html.escape(name)}' src='{src}'>")
    return "".join(plots)


def _accuracy_html(report: DriftReport) -> str:
    if report.accuracy is None:
        return ""
    a = report.accuracy
    holdout = "unknown" if a.holdout_accuracy is None else f"{a.holdout_accuracy:.3f}"
    return (
        f"<p>Accuracy on {a.labelled_rows} labelled rows: {a.accuracy:.3f} (holdout {holdout}): "
        f"{html.escape(a.reason)}.<br>Labels judged: {html.escape(a.window)}.</p>"
    )


def write_html(report: DriftReport, comparisons: Sequence[ColumnComparison], path: Path) -> Path:
    """A self-contained HTML page: verdict, table, one plot per feature."""
    esc = html.escape
    reasons = "".join(f"<li>{esc(r)}</li>" for r in report.decision.reasons)
    windows = esc(", ".join(map(str, report.windows)) or "-")
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>drift {esc(report.model)} v{esc(report.version)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}} tr.drift{{background:#fdd}}
img{{margin:4px;border:1px solid #eee}}</style></head><body>
<h1>Drift: {esc(report.model)} version {esc(report.version)}</h1>
<p>{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.created_at))};
{report.rows} served rows from windows {windows}.</p>
<h2>Decision: {report.decision.verdict}</h2><p>{esc(report.decision.why)}</p><ul>{reasons}</ul>
{_accuracy_html(report)}{_table_html(report)}
<h2>Reference (training) against current (served)</h2>{_plots_html(report, comparisons)}
</body></html>"""
    return files.atomic_write(path, page)


# -- the history -------------------------------------------------------------------


@dataclass(frozen=True)
class DriftCheckRecord:
    """One line of a model's drift history: what a check saw and decided."""

    at: float
    model: str
    version: str
    rows: int
    windows: tuple[int, ...]
    drifting: tuple[str, ...]
    decision: DriftDecision
    html: str | None = None  # the report's path on the host that ran the check
    mlflow_run: str | None = None  # the check's run in the monitoring experiment
    report_uri: str | None = None  # the report's artifact URI, readable from every host
    store_error: str | None = None  # why the check is not in MLflow, when it is not
    summary: str = ""  # the one-line summary (:func:`~.drift_stats.summary_line`)

    def __post_init__(self) -> None:
        if not self.summary:  # a row an older aipaas wrote
            line = summary_line(self.version, self.windows, self.rows, self.drifting, self.decision)
            object.__setattr__(self, "summary", line)

    @classmethod
    def of(cls, report: DriftReport) -> DriftCheckRecord:
        return cls(
            at=report.created_at,
            model=report.model,
            version=report.version,
            rows=report.rows,
            windows=report.windows,
            drifting=tuple(report.drifting),
            decision=report.decision,
            html=report.html_path,
            mlflow_run=report.mlflow_run,
            report_uri=report.report_uri,
            store_error=report.store_error,
            summary=report.summary,
        )

    @property
    def report_name(self) -> str | None:
        """The report's file name: the same on the host that wrote it and in MLflow."""
        return Path(self.html).name if self.html else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftCheckRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        decision = data.get("decision") or {}
        values["decision"] = DriftDecision(
            decided=bool(decision.get("decided")),
            retrain=bool(decision.get("retrain")),
            reasons=tuple(decision.get("reasons") or ()),
            cause=str(decision.get("cause") or ""),
        )
        values["windows"] = tuple(values.get("windows") or ())
        values["drifting"] = tuple(values.get("drifting") or ())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "model": self.model,
            "version": self.version,
            "rows": self.rows,
            "windows": list(self.windows),
            "drifting": list(self.drifting),
            "decision": self.decision.to_dict(),
            "html": self.html,
            "mlflow_run": self.mlflow_run,
            "report_uri": self.report_uri,
            "store_error": self.store_error,
            "summary": self.summary,
        }


def history_path(settings: Settings, model: str) -> Path:
    """Where an older aipaas kept the history: imported once, then renamed."""
    return drift_dir(settings, model) / "history.jsonl"


def _row(record: DriftCheckRecord) -> dict[str, Any]:
    return {
        "model": record.model,
        "version": str(record.version),
        "at": float(record.at),
        "record": json.dumps(record.to_dict(), default=str, separators=(",", ":")),
    }


def _import_legacy(settings: Settings, model: str) -> None:
    def write(conn: Connection, content: bytes) -> int:
        records = [DriftCheckRecord.from_dict(d) for d in coordination.jsonl_records(content)]
        if records:
            conn.execute(insert(db.drift_checks), [_row(r) for r in records])
        return len(records)

    coordination.import_once(settings, history_path(settings, model), write)


def record_check(settings: Settings, report: DriftReport) -> DriftCheckRecord:
    """Add the verdict to the model's drift history; returns the record as stored."""
    record = DriftCheckRecord.of(report)
    _import_legacy(settings, record.model)  # older checks first, when there are any
    with db.engine(settings).begin() as conn:
        conn.execute(insert(db.drift_checks).values(**_row(record)))
    return record


def drift_history(settings: Settings, model: str) -> list[DriftCheckRecord]:
    """Every drift check of ``model`` on this platform database, oldest first."""
    _import_legacy(settings, model)
    t = db.drift_checks
    query = select(t.c.record).where(t.c.model == model).order_by(t.c.at, t.c.id)
    with db.engine(settings).connect() as conn:
        return [DriftCheckRecord.from_dict(json.loads(r)) for (r,) in conn.execute(query)]


def drift_models(settings: Settings) -> list[str]:
    """Every model with a drift check on this platform database, whichever host ran it."""
    t = db.drift_checks
    with db.engine(settings).connect() as conn:
        return [str(m) for (m,) in conn.execute(select(t.c.model).distinct().order_by(t.c.model))]


# -- MLflow ------------------------------------------------------------------------


def report_metrics(report: DriftReport) -> dict[str, float]:
    """Flat numbers for MLflow: one score per feature plus the summary."""
    out = {tags.drift_metric(f.feature): f.score for f in report.features}
    out[tags.DRIFT_ROWS] = float(report.rows)
    out[tags.DRIFT_FEATURES_DRIFTING] = float(len(report.drifting))
    out[tags.DRIFT_RETRAIN_METRIC] = float(report.decision.retrain)
    if report.prediction is not None:
        out[tags.DRIFT_PREDICTION] = report.prediction.score
    if report.accuracy is not None:
        out[tags.FEEDBACK_ACCURACY] = report.accuracy.accuracy
        out[tags.FEEDBACK_LABELLED_ROWS] = float(report.accuracy.labelled_rows)
    return out


def log_to_mlflow(settings: Settings, report: DriftReport) -> str:
    """The check's MLflow run id: the one the check stored, else a new run (returns its id).

    :func:`aipaas.monitoring.drift.check_model` stores every check itself
    (:mod:`.drift_store`), so for its reports this returns that run and logs
    nothing twice; a report made otherwise (or whose store failed) is stored
    now, in the monitoring experiment. Raises
    :class:`~aipaas.exceptions.RegistryUnavailableError` when MLflow does
    not take it.
    """
    if report.mlflow_run:
        return report.mlflow_run
    from aipaas.monitoring import drift_store

    html = Path(report.html_path) if report.html_path else None
    return drift_store.store_check(settings, report, html=html, window=None).run_id
