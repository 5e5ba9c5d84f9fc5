"""Drift checks stored where every host reads them: one MLflow run per check.

A drift check runs on whichever host's flow run or CLI picked it up; the
person reading it sits at the console of another serving replica. So each
check's HTML report and the merged window profile it judged go to the
platform's artifact store, MLflow (local under ``AIPAAS_HOME`` by default,
served by ``mlflow server`` or object storage in the team setup): one run
per check in the monitoring experiment (``<mlflow.experiment>-monitoring``,
``aipaas-monitoring`` by default), tagged with the model, the champion's
version and training run, the decision and the windows. The drift history
row names the run and the report's artifact URI (:mod:`.drift_report`), so
any host fetches the report by :func:`fetch_report`.

The artifact store is not the verdict's keeper: the platform database is. A
check whose store fails (MLflow down, a refused login) still decides and
records its verdict, with the error in place of the run
(:func:`aipaas.monitoring.drift.check_model`); only the report stays local
to the host that wrote it.

No MLflow type leaves this module: callers get :class:`StoredCheck`, bytes
or a :class:`~aipaas.datasets.profiles.Profile`.
"""

from __future__ import annotations

import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aipaas.datasets import profiles
from aipaas.datasets.profiles import Profile
from aipaas.exceptions import ModelNotFoundError, RegistryUnavailableError
from aipaas.settings import Settings
from aipaas.training import registry, tags

if TYPE_CHECKING:
    from aipaas.monitoring.drift_stats import DriftReport

WINDOW_PROFILE = f"{tags.DRIFT_ARTIFACT}/window-profile.bin"  # the merged windows judged
REPORT_JSON = f"{tags.DRIFT_ARTIFACT}/report.json"
# Run tags beside the training tags (:mod:`aipaas.training.tags`) a drift run already had.
DECISION_TAG = "aipaas.drift_decision"  # retrain | no retrain | no decision
CAUSE_TAG = "aipaas.drift_cause"  # the verdict's reason, one line
WINDOWS_TAG = "aipaas.drift_windows"  # "3,4"
CHAMPION_RUN_TAG = "aipaas.champion_run"  # the judged version's training run
MODEL_URI_TAG = "aipaas.model_uri"  # models:/<model>/<version>
HOST_TAG = "aipaas.drift_host"  # the host that ran the check
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
_TAG_MAX = 5000  # MLflow refuses longer tag values on some backends


@dataclass(frozen=True)
class StoredCheck:
    """Where a check lives in the artifact store."""

    run_id: str
    report_uri: str | None  # the HTML report's artifact URI; None: no report file


class ReportStore(Protocol):
    """Stores one check's report and window profile where every host reads them."""

    def __call__(
        self,
        settings: Settings,
        report: DriftReport,
        *,
        html: Path | None,
        window: Profile | None,
        champion_run: str | None,
    ) -> StoredCheck: ...


def experiment_name(settings: Settings) -> str:
    """The monitoring experiment: beside the platform's training experiment, named after it."""
    return f"{settings.mlflow.experiment}-monitoring"


def _client(settings: Settings) -> Any:
    return registry.own_client(settings)


def _experiment_id(settings: Settings, client: Any) -> str:
    return registry.side_experiment(settings, client, experiment_name(settings))


def _run_tags(report: DriftReport, champion_run: str | None) -> dict[str, str]:
    values = {
        tags.MODEL_DEFINITION: report.model,
        tags.DRIFT_VERSION: str(report.version),
        tags.DRIFT_RETRAIN: str(report.decision.retrain).lower(),
        tags.KIND: tags.KIND_DRIFT_CHECK,
        DECISION_TAG: report.decision.verdict,
        CAUSE_TAG: report.decision.why[:_TAG_MAX],
        WINDOWS_TAG: ",".join(map(str, report.windows)),
        MODEL_URI_TAG: f"models:/{report.model}/{report.version}",
        HOST_TAG: socket.gethostname(),
        NOTE_TAG: report.summary[:_TAG_MAX],
    }
    if champion_run:
        values[CHAMPION_RUN_TAG] = champion_run
    return values


def store_check(
    settings: Settings,
    report: DriftReport,
    *,
    html: Path | None,
    window: Profile | None,
    champion_run: str | None = None,
) -> StoredCheck:
    """One run for one check: scores as metrics, the HTML, the window profile, the report JSON.

    Raises :class:`RegistryUnavailableError` naming the server when MLflow
    does not take it; the run is then marked failed if it was created.
    """
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from aipaas.monitoring.drift_report import report_metrics

    uri = settings.mlflow_tracking_uri
    run_id: str | None = None
    try:
        client = _client(settings)
        run = client.create_run(
            _experiment_id(settings, client),
            tags=_run_tags(report, champion_run),
            run_name=f"drift-{report.model}-v{report.version}",
        )
        run_id = str(run.info.run_id)
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, 0) for k, v in report_metrics(report).items()]
        client.log_batch(run_id, metrics=metrics)
        client.log_dict(run_id, report.to_dict(), REPORT_JSON)
        report_uri = None
        if html is not None and html.is_file():
            client.log_artifact(run_id, str(html), tags.DRIFT_ARTIFACT)
            report_uri = f"{run.info.artifact_uri}/{tags.DRIFT_ARTIFACT}/{html.name}"
        if window is not None:
            with tempfile.TemporaryDirectory(prefix="aipaas-window-") as tmp:
                path = profiles.save_profile(window, Path(tmp) / Path(WINDOW_PROFILE).name)
                client.log_artifact(run_id, str(path), tags.DRIFT_ARTIFACT)
        client.set_terminated(run_id, "FINISHED")
    except (MlflowException, OSError) as err:
        if run_id is not None:
            _mark_failed(settings, run_id)
        raise RegistryUnavailableError(
            f"MLflow at {uri} did not store the drift check of {report.model} "
            f"v{report.version}: {type(err).__name__}: {err}"
        ) from err
    return StoredCheck(run_id, report_uri)


def _mark_failed(settings: Settings, run_id: str) -> None:
    """Best effort: a half-stored run shows as failed in the MLflow UI, not as running."""
    from mlflow.exceptions import MlflowException

    try:
        _client(settings).set_terminated(run_id, "FAILED")
    except (MlflowException, OSError, RegistryUnavailableError):
        pass  # the server that failed the store is likely down: the run stays as it is


def _download(settings: Settings, run_id: str, path: str, what: str) -> bytes:
    from mlflow.exceptions import MlflowException

    try:
        client = _client(settings)
        with tempfile.TemporaryDirectory(prefix="aipaas-fetch-") as tmp:
            local = client.download_artifacts(run_id, path, dst_path=tmp)
            return Path(local).read_bytes()
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")) or (
            "not found" in str(err).lower() or "no such file" in str(err).lower()
        ):
            raise ModelNotFoundError(f"MLflow run {run_id} has no {what} at {path}") from err
        raise RegistryUnavailableError(
            f"MLflow at {settings.mlflow_tracking_uri} did not return {what} of run {run_id}: {err}"
        ) from err
    except OSError as err:
        raise RegistryUnavailableError(
            f"MLflow at {settings.mlflow_tracking_uri} did not return {what} of run "
            f"{run_id}: {type(err).__name__}: {err}"
        ) from err


def fetch_report(settings: Settings, run_id: str, name: str) -> bytes:
    """The HTML report ``name`` a check stored in run ``run_id``, from any host."""
    return _download(settings, run_id, f"{tags.DRIFT_ARTIFACT}/{name}", "drift report")


def fetch_window_profile(settings: Settings, run_id: str) -> Profile:
    """The merged window profile a check judged, from any host."""
    data = _download(settings, run_id, WINDOW_PROFILE, "window profile")
    return Profile.from_bytes(data)
