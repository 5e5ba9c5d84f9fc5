"""A drift check: the champion's served windows against its reference, decided and recorded.

:func:`check_model` merges the profile windows serving closed since the last
decided check, loads the champion's reference profile (the whylogs profile
training logged) and its holdout accuracy, scores them with
:mod:`.drift_stats`, writes the HTML page and appends the verdict to the
drift history (:mod:`.drift_report`). The registry and the feedback store
are collaborators it is given (:class:`ChampionLoader`, ``labelled_rows``),
so the check runs on fakes in tests and on MLflow and the platform database
in production.

Windows are marked consumed only when a check decided something, so a quiet
hour's rows add up until there are ``min_rows`` of them; checks of one model
are serialised, so each window is judged once and one shift starts one
retrain.
"""

from __future__ import annotations

import fcntl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import pandas as pd

from aipaas import files
from aipaas.datasets import profiles
from aipaas.datasets.profiles import Profile
from aipaas.exceptions import ModelNotFoundError
from aipaas.modeldef import ModelDefinition
from aipaas.monitoring import spool
from aipaas.monitoring.drift_report import record_check, report_path, write_html
from aipaas.monitoring.drift_stats import DriftReport, build_report
from aipaas.monitoring.retrain import RetrainOutcome
from aipaas.settings import Settings
from aipaas.training import tags

# ``labelled_rows(settings, model, target=...)``: labelled feedback as a frame,
# the label under ``target`` (see :func:`aipaas.inference.feedback.labelled_rows`).
LabelledRows = Callable[..., pd.DataFrame]


@dataclass(frozen=True)
class Champion:
    """What a drift check needs of the champion: its version, reference and holdout accuracy."""

    version: str
    reference: Profile
    holdout_accuracy: float | None


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


def state_path(settings: Settings, model: str) -> Path:
    return settings.profiles_dir / model / "drift-state.json"


def last_checked(settings: Settings, model: str, version: str) -> int:
    """The last window sequence number of this version a decided check consumed."""
    state = files.read_json(state_path(settings, model), default={})
    return int(state.get(str(version), {}).get("last_seq", 0))


def mark_checked(
    settings: Settings, model: str, version: str, last_seq: int, *, now: float | None = None
) -> None:
    """Record that windows up to ``last_seq`` of this version have been judged."""
    path = state_path(settings, model)
    state = files.read_json(path, default={})
    checked_at = time.time() if now is None else now
    state[str(version)] = {"last_seq": int(last_seq), "checked_at": checked_at}
    files.atomic_write_json(path, state, indent=1)


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
    )


def champion_feedback(
    settings: Settings,
    definition: ModelDefinition,
    version: str,
    labelled_rows: LabelledRows | None = None,
) -> pd.DataFrame:
    """Labelled feedback on the predictions of this version (empty when there is none).

    ``labelled_rows`` defaults to :func:`aipaas.inference.feedback.labelled_rows`.
    """
    if labelled_rows is None:
        from aipaas.inference import feedback

        labelled_rows = feedback.labelled_rows
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
) -> DriftReport:
    """Run one drift check of the champion now: compare, write the HTML, record.

    Checks of one model are serialised (two window closes start two drift
    runs): each window is judged once, so one shift starts one retrain.
    """
    lock_path = state_path(settings, definition.name).with_name("drift.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _check_locked(settings, definition, champion_loader, labelled_rows)


def _check_locked(
    settings: Settings,
    definition: ModelDefinition,
    champion_loader: ChampionLoader,
    labelled_rows: LabelledRows | None,
) -> DriftReport:
    model = definition.name
    champion = champion_loader(settings, model)
    current, seqs = collect_windows(settings, model, champion.version)
    feedback = champion_feedback(settings, definition, champion.version, labelled_rows)
    report, comparisons = build_report(
        champion.version, champion.reference, current, definition,
        windows=seqs, feedback=feedback, holdout_accuracy=champion.holdout_accuracy,
    )  # fmt: skip
    path = write_html(report, comparisons, report_path(settings, report))
    report = replace(report, html_path=str(path))
    record_check(settings, report)
    if report.decision.decided and seqs:
        mark_checked(settings, model, champion.version, max(seqs))
    return report
