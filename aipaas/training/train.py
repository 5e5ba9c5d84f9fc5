"""The train pipeline as named steps: prepare data -> search -> refit -> evaluate -> register.

Each step is a function of a few lines at the top of this module; what passes
between them is a dataclass (:class:`PreparedData`, the search's
:class:`~aipaas.training.tune.SearchResult`, :class:`FittedModel`,
:class:`ModelEvaluation`, and :class:`TrainResult` at the end). The Prefect
flow ``train`` calls them one task each, so the UI shows where a run is and
where it failed; :func:`train_model` calls the same steps in this process for
``aipaas train``, reporting each as a stage of a :class:`~aipaas.progress.Progress`
(the search also reports each trial); nothing here prints.

Everything that can refuse (a failed suite, a missing file, an invalid search
space, an unreachable tracking server) refuses in :func:`prepare_data`,
before the MLflow run opens. The parent run spans the steps: opened by
:func:`prepare_data`, re-entered by run id in each later step, and marked
FAILED by the step that raises. Nothing is registered unless every step
succeeded: the model is logged last.

MLflow layout (every name in :mod:`aipaas.training.tags`), read by
promotion, serving and drift:

* one parent run per training, the trials as nested runs (failed ones with
  status FAILED and their error), each logged the moment its trial finishes
  (:class:`TrialLogger`, called by the search in the driver), so the MLflow
  UI lists them while the search runs;
* params: the best configuration, plus the settings used (``setting.*``);
* metrics: ``holdout_<metric>`` for each of the definition's metrics,
  ``cv_<metric>`` (best trial), ``latency_{p50,p99}_ms`` (one-row predict),
  ``latency_batch_{p50,p99}_ms``, ``trials_ok``, ``trials_failed``,
  ``time_<step>_s``;
* tags (run and registered version): DATASET, DATA_HASH, DATA_ROWS,
  SUITE_PASSED, GIT_COMMIT, CODE_COMMIT, RAY_NODES, MODEL_DEFINITION; on the
  version also what serving needs of the definition (TARGET, LOG_INPUTS), so
  a serving host needs the registry, not ``models/``; and DATA_LOCK, the
  dataset's dvc.lock entries, from which ``aipaas data restore`` rebuilds the
  exact files on any checkout (on the version only: run tags are too short);
* the search's directory in the storage (TUNE_RESULTS: ``trials.json``, the
  trial table, written by the driver; a path or an object-store URI,
  ``settings.ray.storage_path``);
* artifacts: ``evaluation/`` (report.md/html; ROC/PR (one-vs-rest for
  multiclass) and confusion PNGs for a classifier, residuals and
  predicted-vs-actual for a regressor, feature importance for a model that
  has it; per_class.csv, metrics.json), ``reference_profile/profile.bin`` (whylogs
  profile of the training data, the drift baseline), ``dataset_version.json``,
  ``dataset_lock.json`` and ``model/`` (MLflow flavour format with signature
  and input example).

The registered version gets alias ``challenger``.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from aipaas.exceptions import (
    ConfigurationError,
    DatasetNotFoundError,
    DataValidationError,
    TrainingError,
)
from aipaas.modeldef import ModelDefinition
from aipaas.progress import NO_PROGRESS, Progress, stage
from aipaas.schemas import DatasetVersion
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import registry, tags, trial_workers
from aipaas.training.evaluate import (
    HoldoutEvaluation,
    evaluate_holdout,
    feature_importance,
    write_report,
)
from aipaas.training.latency import Latency, measure_latency
from aipaas.training.metrics import check_metrics, prepare_features
from aipaas.training.raycluster import RayInfo, ensure_ray
from aipaas.training.requirements import pip_requirements
from aipaas.training.tune import (
    SearchResult,
    TrialOutcome,
    check_storage,
    effective_concurrency,
    run_search,
    storage_location,
    validate_search_space,
)

# The stages :func:`train_model` reports, in order (the flow's tasks bear the same names).
PREPARE, SEARCH, REFIT, EVALUATE, REGISTER = "prepare", "search", "refit", "evaluate", "register"
STAGES = (PREPARE, SEARCH, REFIT, EVALUATE, REGISTER)

LATENCY_BATCH = 100  # rows in the batch whose predict latency is measured
EXAMPLE_ROWS = 5  # training rows the signature is inferred from
INPUT_EXAMPLE_ROWS = 2  # rows stored with the model as its input example


@dataclass(frozen=True)
class PreparedData:
    """The checked inputs of a training, with its MLflow parent run open."""

    version: DatasetVersion
    train: pd.DataFrame
    holdout: pd.DataFrame
    run_id: str
    tags: dict[str, str]  # lineage: on the run, and on the registered version
    # The dataset's dvc.lock entries (md5s of every output and of the incoming
    # files): enough to rebuild this exact data from the DVC remote. None when
    # dvc.lock records another version than the one trained on.
    data_lock: dict[str, Any] | None = None


@dataclass(frozen=True)
class FittedModel:
    """The best configuration refitted on the whole training split."""

    model: Any
    search: SearchResult
    example: pd.DataFrame  # typed training rows: the signature and input example


@dataclass(frozen=True)
class ModelEvaluation:
    """The refitted model on the holdout, and its predict latency."""

    holdout: HoldoutEvaluation
    latency: Latency


@dataclass(frozen=True)
class TrainResult:
    """What a training produced: the ``train`` flow's return value."""

    model: str
    version: str
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    best_params: dict[str, Any]
    dataset: str
    data_hash: str
    trials_ok: int
    trials_failed: int
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the steps -------------------------------------------------------------------


def prepare_data(
    definition: ModelDefinition, version: DatasetVersion, settings: Settings
) -> PreparedData:
    """Refuse early, read the splits, reach MLflow and Ray, open the parent run."""
    from aipaas.datasets.ingest import version_lock

    check_inputs(definition, version)
    check_storage(storage_location(settings.ray, settings.home))
    train_df = read_split(version.train_path, definition)
    holdout_df = read_split(version.holdout_path, definition)
    registry.connect(settings)
    registry.ensure_experiment(settings)
    t0 = time.perf_counter()
    ray = ensure_ray(settings.ray)
    ray_s = time.perf_counter() - t0
    # Start (or find) the search's warm workers now: their imports overlap
    # with opening the MLflow run below, instead of delaying the first trial.
    trial_workers.pool().take(effective_concurrency(settings.tune.max_concurrent, ray.cpus))
    lineage_tags = run_tags(definition, version, ray, _git_commit(settings))
    run_id = open_run(definition, lineage_tags, settings_params(settings, ray))
    with parent_run(run_id):
        _log_seconds("ray_init", ray_s)
    lock = version_lock(version.name, settings, version.hash)
    return PreparedData(version, train_df, holdout_df, run_id, lineage_tags, lock)


def search(
    definition: ModelDefinition,
    data: PreparedData,
    settings: Settings,
    progress: Progress = NO_PROGRESS,
) -> SearchResult:
    """The search's trials on warm Ray workers, each logged as a nested run as it finishes."""
    import mlflow

    with parent_run(data.run_id) as parent, _timed("search"):
        result = run_search(
            definition,
            data.train,
            settings.tune,
            storage_dir=storage_location(settings.ray, settings.home),
            progress=progress,
            on_trial_done=TrialLogger(definition, data.run_id, parent.info.experiment_id),
        )
        mlflow.set_tag(tags.TUNE_RESULTS, result.results_path)
        log_search_metrics(result, definition)
    return result


def refit(definition: ModelDefinition, data: PreparedData, result: SearchResult) -> FittedModel:
    """The best configuration, fitted on the whole training split."""
    X = prepare_features(definition, data.train)
    with parent_run(data.run_id), _timed("refit"):
        model = fit(definition, result.best_config, X, data.train[definition.target])
        _log_params(result.best_config)
    return FittedModel(model, result, X.head(EXAMPLE_ROWS))


def evaluate(
    definition: ModelDefinition, data: PreparedData, fitted: FittedModel, settings: Settings
) -> ModelEvaluation:
    """Score the holdout in parallel Ray tasks, time predictions, log the report."""
    import mlflow

    with parent_run(data.run_id), _timed("evaluate"):
        evaluation = score_holdout(definition, data, fitted, shards=settings.tune.eval_shards)
        metrics = {tags.holdout_metric(k): v for k, v in evaluation.holdout.metrics.items()}
        mlflow.log_metrics(metrics | evaluation.latency.metrics())
        log_report(evaluation, definition, data, fitted)
    return evaluation


def log_and_register(
    definition: ModelDefinition, data: PreparedData, fitted: FittedModel
) -> TrainResult:
    """Log the reference profile and the model (last), register it as challenger."""
    with parent_run(data.run_id):
        log_reference(data)
        info = log_model(fitted.model, definition, fitted.example)
    version = str(info.registered_model_version)
    registry.set_tags(
        definition.name, version, data.tags | serving_tags(definition) | lock_tags(data)
    )
    registry.set_alias(definition.name, tags.CHALLENGER, version)
    return train_result(definition, data, fitted, version)


def train_model(
    definition: ModelDefinition,
    version: DatasetVersion,
    settings: Settings,
    progress: Progress = NO_PROGRESS,
) -> TrainResult:
    """Every step in order, in this process: what ``aipaas train`` runs.

    Each step is a stage of ``progress`` (started, then finished or failed,
    with its time); the search reports each trial as it finishes.
    """
    with stage(progress, PREPARE):
        data = prepare_data(definition, version, settings)
    with stage(progress, SEARCH, f"{settings.tune.num_samples} trials"):
        result = search(definition, data, settings, progress)
    with stage(progress, REFIT):
        fitted = refit(definition, data, result)
    with stage(progress, EVALUATE):
        evaluate(definition, data, fitted, settings)
    with stage(progress, REGISTER):
        return log_and_register(definition, data, fitted)


def train(
    definition: ModelDefinition, settings: Settings, progress: Progress = NO_PROGRESS
) -> TrainResult:
    """Train ``definition`` on its dataset's recorded version.

    Raises:
        DatasetNotFoundError: the dataset has no recorded version.
        DataValidationError: the recorded version failed its suite.
    """
    from aipaas.datasets.ingest import recorded_version

    return train_model(
        definition, recorded_version(definition.dataset, settings), settings, progress
    )


# --- prepare ---------------------------------------------------------------------


def check_inputs(definition: ModelDefinition, version: DatasetVersion) -> None:
    """Refuse what would fail later: nothing runs and nothing is registered."""
    if not version.suite_passed:
        raise DataValidationError(
            f"dataset {version.name!r} version {version.hash} failed its validation suite; "
            "fix the data and rerun `aipaas data run "
            f"{version.name}` before training {definition.name!r}"
        )
    if version.name != definition.dataset:
        raise ConfigurationError(
            f"model {definition.name!r} trains on dataset {definition.dataset!r}, "
            f"not {version.name!r}"
        )
    for path in (version.train_path, version.holdout_path):
        if not Path(path).is_file():
            raise DatasetNotFoundError(
                f"dataset {version.name!r} version {version.hash}: {path} is missing; run "
                f"`aipaas data run {version.name}` (or `dvc pull`) to restore it"
            )
    validate_search_space(definition)
    check_metrics(definition)


def read_split(path: Path, definition: ModelDefinition) -> pd.DataFrame:
    """One split, refused if it lacks a column the definition needs, or any row."""
    df = pd.read_csv(path)
    needed = [*definition.features, definition.target]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ConfigurationError(
            f"model {definition.name!r} needs columns {missing} that {path} does not have; "
            "check the definition's features and target against the dataset"
        )
    if df.empty:
        raise DatasetNotFoundError(f"{path} has no rows")
    return df


def run_tags(
    definition: ModelDefinition, version: DatasetVersion, ray: RayInfo, code_commit: str | None
) -> dict[str, str]:
    """The lineage of a training: its data version, code and cluster."""
    return {
        tags.DATASET: version.name,
        tags.DATA_HASH: version.hash,
        tags.DATA_ROWS: str(version.rows),
        tags.SUITE_PASSED: str(version.suite_passed).lower(),
        tags.GIT_COMMIT: version.git_commit or code_commit or "unknown",
        tags.MODEL_DEFINITION: definition.name,
        tags.CODE_COMMIT: code_commit or "unknown",
        tags.RAY_NODES: str(ray.nodes),
    }


def lock_tags(data: PreparedData) -> dict[str, str]:
    """The dataset's dvc.lock entries, on the version (run tags are too short for them)."""
    if data.data_lock is None:
        return {}
    return {tags.DATA_LOCK: json.dumps(data.data_lock, sort_keys=True)}


def serving_tags(definition: ModelDefinition) -> dict[str, str]:
    """What serving needs of the definition, read from the registered version."""
    return {
        tags.TARGET: definition.target,
        tags.LOG_INPUTS: str(definition.log_inputs).lower(),
    }


def settings_params(settings: Settings, ray: RayInfo) -> dict[str, Any]:
    """The settings a training ran with, as MLflow params (``setting.*``)."""
    prefix = tags.SETTING_PREFIX
    out = {f"{prefix}tune.{k}": v for k, v in settings.tune.model_dump().items()}
    out[f"{prefix}ray.address"] = settings.ray.address or "local"
    out[f"{prefix}ray.storage_path"] = storage_location(settings.ray, settings.home)
    out[f"{prefix}ray.object_store_memory_mb"] = settings.ray.object_store_memory_mb
    out[f"{prefix}ray.nodes"] = ray.nodes
    out[f"{prefix}ray.cpus"] = ray.cpus
    return out


def open_run(definition: ModelDefinition, run_tags: dict[str, str], params: dict[str, Any]) -> str:
    """Start the training's parent run with its lineage; the later steps re-enter it."""
    import mlflow

    name = f"{tags.TRAIN_RUN_PREFIX}{definition.name}"
    with mlflow.start_run(run_name=name, tags=run_tags) as run:
        mlflow.log_params(params)
        return str(run.info.run_id)


@contextmanager
def parent_run(run_id: str) -> Iterator[Any]:
    """Re-enter the training's parent run for one step; a step that raises marks it FAILED."""
    import mlflow

    with mlflow.start_run(run_id=run_id) as run:
        yield run


def _git_commit(settings: Settings) -> str | None:
    """HEAD of the project checkout, when there is one (a wheel install has none)."""
    from aipaas.datasets.versioning import git_commit

    for root in (settings.versioning.repo, PROJECT_ROOT):
        commit = git_commit(root)
        if commit:
            return commit
    return None


# --- search and refit ------------------------------------------------------------


@dataclass(frozen=True)
class TrialLogger:
    """Logs each finished trial as a nested run of the training's parent run.

    Called by the search in the driver as each trial ends (``run_search``'s
    ``on_trial_done``), so the MLflow UI lists trials while the search still
    runs. It names the parent explicitly (an MLflow client, not the fluent
    active-run stack), so it does not depend on which thread calls it.
    """

    definition: ModelDefinition
    parent_run_id: str
    experiment_id: str

    def __call__(self, index: int, trial: TrialOutcome) -> None:
        import mlflow
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        client = mlflow.MlflowClient()
        name = f"{tags.TRIAL_RUN_PREFIX}{index:03d}"
        run = client.create_run(
            self.experiment_id,
            run_name=name,
            tags={MLFLOW_PARENT_RUN_ID: self.parent_run_id, MLFLOW_RUN_NAME: name},
        )
        run_tags = {
            tags.TRIAL_ID: trial.trial_id,
            tags.NODE_ID: trial.node_id or "unknown",
            tags.MODEL_DEFINITION: self.definition.name,
        }
        now = int(time.time() * 1000)
        metrics: dict[str, float] = {}
        if trial.ok:
            cv = tags.cv_metric(self.definition.metric)
            metrics = {
                cv: trial.score or 0.0,
                f"{cv}{tags.STD_SUFFIX}": trial.score_std or 0.0,
                tags.TRIAL_DURATION_S: trial.duration_s or 0.0,
            }
        else:
            run_tags[tags.ERROR] = (trial.error or "")[:5000]
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            params=[Param(k, str(_param(v))) for k, v in trial.config.items()],
            tags=[RunTag(k, v) for k, v in run_tags.items()],
        )
        client.set_terminated(run.info.run_id, status="FINISHED" if trial.ok else "FAILED")


def log_search_metrics(result: SearchResult, definition: ModelDefinition) -> None:
    import mlflow

    mlflow.log_metrics(
        {
            tags.cv_metric(definition.metric): result.best_score,
            tags.TRIALS_OK: float(result.ok),
            tags.TRIALS_FAILED: float(result.failed),
        }
    )


def fit(definition: ModelDefinition, config: dict[str, Any], X: pd.DataFrame, y: pd.Series) -> Any:
    """The definition's estimator built from ``config`` and fitted on ``X``, ``y``."""
    try:
        model = definition.build_estimator(dict(config))
        model.fit(X, y)
    except (ValueError, TypeError, RuntimeError) as err:
        raise TrainingError(f"refit of the best configuration {config} failed: {err}") from err
    return model


# --- evaluate --------------------------------------------------------------------


def score_holdout(
    definition: ModelDefinition, data: PreparedData, fitted: FittedModel, *, shards: int
) -> ModelEvaluation:
    """The holdout metrics (parallel Ray tasks) and the predict latency."""
    X = prepare_features(definition, data.holdout)
    typed = pd.concat([X, data.holdout[[definition.target]]], axis=1)
    model = fitted.model
    holdout = evaluate_holdout(model, definition, typed, shards=shards)
    predict = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    latency = measure_latency(predict, X.iloc[:1], X.iloc[:LATENCY_BATCH])
    return ModelEvaluation(holdout, latency)


def log_report(
    evaluation: ModelEvaluation,
    definition: ModelDefinition,
    data: PreparedData,
    fitted: FittedModel,
) -> None:
    """The evaluation report, its plots and tables, as the run's ``evaluation/`` artifacts."""
    import mlflow

    version = data.version
    result = fitted.search
    with tempfile.TemporaryDirectory(prefix="aipaas-report-") as tmp:
        out = Path(tmp) / tags.EVALUATION_ARTIFACT
        write_report(
            evaluation.holdout,
            evaluation.latency,
            out,
            title=f"{definition.name} on {version.name}@{version.hash[:12]}",
            extra={"best_params": result.best_config, "trials": result.trial_table()},
            importance=feature_importance(fitted.model, definition.features),
        )
        mlflow.log_artifacts(str(out), artifact_path=tags.EVALUATION_ARTIFACT)


# --- log and register ------------------------------------------------------------


def log_reference(data: PreparedData) -> None:
    """The whylogs profile of the training data (drift's baseline) and the data version."""
    import mlflow

    from aipaas.datasets.profiles import write_profile

    with tempfile.TemporaryDirectory(prefix="aipaas-profile-") as tmp:
        profile = write_profile(data.train, Path(tmp) / Path(tags.REFERENCE_PROFILE).name)
        mlflow.log_artifact(str(profile), artifact_path=tags.REFERENCE_PROFILE_DIR)
    mlflow.log_dict(data.version.to_dict(), tags.DATASET_VERSION_ARTIFACT)
    if data.data_lock is not None:
        mlflow.log_dict(data.data_lock, tags.DATA_LOCK_ARTIFACT)


def log_model(model: Any, definition: ModelDefinition, example: pd.DataFrame) -> Any:
    """Log in the flavour's own format (skops for scikit-learn and LightGBM), never pickle."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    common: dict[str, Any] = {
        "name": tags.MODEL_ARTIFACT,
        "signature": infer_signature(example, model.predict(example)),
        "input_example": example.head(INPUT_EXAMPLE_ROWS),
        "registered_model_name": definition.name,
    }
    try:
        from lightgbm import LGBMModel

        # Named, not inferred: MLflow's inference loads the model in a new
        # Python process (7 s a training here); see aipaas.training.requirements.
        if isinstance(model, LGBMModel):
            return mlflow.lightgbm.log_model(
                model, pip_requirements=pip_requirements(model), **common
            )
        return mlflow.sklearn.log_model(
            model,
            serialization_format="skops",
            pip_requirements=pip_requirements(model, skops=True),
            **common,
        )
    except MlflowException as err:
        if "untrusted types" in str(err):
            raise ConfigurationError(
                f"model {definition.name!r}: the estimator contains types skops does not trust "
                f"({err}). Use scikit-learn/LightGBM types only; aipaas never falls back to pickle"
            ) from err
        raise


def train_result(
    definition: ModelDefinition, data: PreparedData, fitted: FittedModel, version: str
) -> TrainResult:
    """The result, its metrics read back from the run every step logged to."""
    metrics = registry.run_metrics(data.run_id)
    seconds = {
        k.removeprefix(tags.TIME_PREFIX): v
        for k, v in metrics.items()
        if k.startswith(tags.TIME_PREFIX)
    }
    return TrainResult(
        model=definition.name,
        version=version,
        run_id=data.run_id,
        model_uri=f"models:/{definition.name}/{version}",
        metrics=metrics,
        best_params=dict(fitted.search.best_config),
        dataset=data.version.name,
        data_hash=data.version.hash,
        trials_ok=fitted.search.ok,
        trials_failed=fitted.search.failed,
        seconds=seconds,
    )


# --- helpers ---------------------------------------------------------------------


@contextmanager
def _timed(step: str) -> Iterator[None]:
    """Log how long a step took as ``time_<step>_s`` in the active run."""
    t0 = time.perf_counter()
    yield
    _log_seconds(step, time.perf_counter() - t0)


def _log_seconds(step: str, seconds: float) -> None:
    import mlflow

    mlflow.log_metric(tags.step_seconds(step), seconds)


def _log_params(config: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: _param(v) for k, v in config.items()})


def _param(v: Any) -> Any:
    return v if isinstance(v, int | float | str | bool) else json.dumps(v, default=str)


# --- reading back ----------------------------------------------------------------


@dataclass(frozen=True)
class RecordedData:
    """The dataset version a model version was trained on, as the registry records it."""

    dataset: str
    data_hash: str
    lock: dict[str, Any]  # the dataset's dvc.lock entries at training time
    model_version: str  # "name vN": where it was read


def recorded_data(model: str, version: str | int, settings: Settings) -> RecordedData:
    """The data lineage of one registered version, enough to restore the files.

    Raises:
        ModelNotFoundError: no such version.
        DatasetNotFoundError: the version was trained before data locks were
            recorded, or on data dvc.lock did not record.
    """
    registry.connect(settings)
    return _recorded(registry.get_version(model, version))


def find_recorded_data(dataset: str, data_hash: str, settings: Settings) -> RecordedData:
    """The first registered version (of any model) trained on ``dataset`` at ``data_hash``.

    Raises:
        DatasetNotFoundError: no version names that dataset version with its lock.
    """
    registry.connect(settings)
    for name in registry.list_models():
        for mv in registry.list_versions(name):
            t = mv.tags
            if t.get(tags.DATASET) == dataset and t.get(tags.DATA_HASH) == data_hash:
                if tags.DATA_LOCK in t:
                    return _recorded(mv)
    raise DatasetNotFoundError(
        f"no registered model version records {dataset} version {data_hash} with its dvc.lock "
        "entries; `aipaas models lineage NAME VERSION` shows which version a model used"
    )


def _recorded(mv: registry.ModelVersionInfo) -> RecordedData:
    raw = mv.tags.get(tags.DATA_LOCK)
    where = f"{mv.name} v{mv.version}"
    if not raw:
        raise DatasetNotFoundError(
            f"{where} does not record its dataset's dvc.lock entries (trained before they "
            f"were recorded, or on data outside the DVC repository); use `git checkout "
            f"{mv.tags.get(tags.GIT_COMMIT, '<commit>')} -- dvc.lock && dvc pull` instead"
        )
    return RecordedData(
        dataset=mv.tags.get(tags.DATASET, ""),
        data_hash=mv.tags.get(tags.DATA_HASH, ""),
        lock=json.loads(raw),
        model_version=where,
    )


def lineage(model: str, version: str | int, settings: Settings) -> dict[str, str]:
    """How to get from a registered version back to its exact data.

    Read from the version's tags (written at registration) and its run, so it
    works from any machine that reaches the registry. ``git checkout <commit>
    && dvc checkout`` (or ``dvc pull``) restores the files whose hash is shown.
    """
    registry.connect(settings)
    mv = registry.get_version(model, version)
    t = mv.tags
    run = mv.run_id or ""
    metrics = registry.run_metrics(run) if run else {}
    out = {
        "model": f"{mv.name} v{mv.version}",
        "aliases": ", ".join(mv.aliases) or "-",
        "dataset": t.get(tags.DATASET, "unknown"),
        "dvc_hash": t.get(tags.DATA_HASH, "unknown"),
        "rows": t.get(tags.DATA_ROWS, "unknown"),
        "suite_passed": t.get(tags.SUITE_PASSED, "unknown"),
        "run_id": run or "unknown",
        "git_commit": t.get(tags.GIT_COMMIT, "unknown"),
        "code_commit": t.get(tags.CODE_COMMIT, "unknown"),
        "model_uri": mv.uri,
    }
    for key in sorted(metrics):
        if key.startswith(tags.HOLDOUT_PREFIX):
            out[key] = f"{metrics[key]:.4f}"
    return out
