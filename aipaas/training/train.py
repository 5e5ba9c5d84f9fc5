"""The train pipeline: data version -> search -> refit -> evaluate -> MLflow -> registry.

``train(model, settings)`` is what ``aipaas train`` and the Prefect flow call;
``train_model(definition, version, settings)`` does the work on a given
dataset version. Everything that can refuse (a failed suite, a missing file,
an invalid search space, an unreachable tracking server) refuses before the
search starts, and nothing is registered unless every step succeeded: the
model is logged last.

MLflow layout, read by promotion, serving and drift:

* one parent run per training, the trials as nested runs (failed ones with
  status FAILED and their error);
* params: the best configuration, plus the settings used (``setting.*``);
* metrics: ``holdout_<metric>`` for each of the definition's metrics,
  ``cv_<metric>`` (best trial), ``latency_{p50,p99}_ms`` (one-row predict),
  ``latency_batch_{p50,p99}_ms``, ``trials_ok``, ``trials_failed``;
* tags (run and registered version): ``aipaas.training.tags`` DATASET, DATA_HASH,
  DATA_ROWS, SUITE_PASSED, GIT_COMMIT, MODEL_DEFINITION;
* artifacts: ``evaluation/`` (report.md/html, ROC/PR/confusion PNGs,
  per_class.csv, metrics.json), ``reference_profile/profile.bin`` (whylogs
  profile of the training data, the drift baseline) and ``model/`` (MLflow
  flavour format with signature and input example).

The registered version gets alias ``challenger``.
"""

from __future__ import annotations

import json
import tempfile
import time
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
from aipaas.modeldef import ModelDefinition, load_definition
from aipaas.schemas import DatasetVersion
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import tags


@dataclass(frozen=True)
class TrainResult:
    """What a training produced; ``to_dict()`` is the flow's return value."""

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


def train(model_name: str, settings: Settings) -> TrainResult:
    """Train ``models/<model_name>.py`` on its dataset's recorded version.

    Raises:
        ModelNotFoundError: no such definition.
        DatasetNotFoundError: the dataset has no recorded version.
        DataValidationError: the recorded version failed its suite.
    """
    definition = load_definition(model_name, settings.models_dir)
    from aipaas.datasets.ingest import recorded_version

    version = recorded_version(definition.dataset, settings)
    return train_model(definition, version, settings)


def train_model(
    definition: ModelDefinition, version: DatasetVersion, settings: Settings
) -> TrainResult:
    """Search, refit, evaluate, log and register ``definition`` on ``version``."""
    from aipaas.training import evaluate, registry
    from aipaas.training.raycluster import ensure_ray
    from aipaas.training.tune import run_search, validate_search_space

    # 1. Refuse early: nothing runs and nothing is registered.
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
    evaluate.check_metrics(definition)
    train_df = _read(version.train_path, definition)
    holdout_df = _read(version.holdout_path, definition)
    registry.connect(settings)
    registry.ensure_experiment(settings)

    # 2. Search on Ray, 3. refit the best configuration on the whole training split.
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ray_info = ensure_ray(settings.ray)
    timings["ray_init_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    search = run_search(
        definition,
        train_df,
        settings.tune,
        storage_dir=settings.home / "ray_results",
    )
    timings["search_s"] = time.perf_counter() - t0
    X_train = evaluate.prepare_features(definition, train_df)
    y_train = train_df[definition.target]
    t0 = time.perf_counter()
    try:
        model = definition.build_estimator(dict(search.best_config))
        model.fit(X_train, y_train)
    except (ValueError, TypeError, RuntimeError) as err:
        raise TrainingError(
            f"refit of the best configuration {search.best_config} failed: {err}"
        ) from err
    timings["refit_s"] = time.perf_counter() - t0

    # 4. Evaluate on the holdout (parallel Ray tasks) and time predictions.
    t0 = time.perf_counter()
    X_hold = evaluate.prepare_features(definition, holdout_df)
    holdout_typed = pd.concat([X_hold, holdout_df[[definition.target]]], axis=1)
    ev = evaluate.evaluate_holdout(
        model, definition, holdout_typed, shards=settings.tune.eval_shards
    )
    predict = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    latency = evaluate.measure_latency(predict, X_hold.iloc[:1], X_hold.iloc[:100])
    timings["evaluate_s"] = time.perf_counter() - t0

    # 5. Log everything to one parent run, the model last, then register.
    import mlflow

    code_commit = _git_commit(settings)
    run_tags = {
        tags.DATASET: version.name,
        tags.DATA_HASH: version.hash,
        tags.DATA_ROWS: str(version.rows),
        tags.SUITE_PASSED: str(version.suite_passed).lower(),
        tags.GIT_COMMIT: version.git_commit or code_commit or "unknown",
        tags.MODEL_DEFINITION: definition.name,
        "aipaas.code_commit": code_commit or "unknown",
        "aipaas.ray_nodes": str(ray_info.nodes),
    }
    with (
        tempfile.TemporaryDirectory(prefix="aipaas-train-") as tmp,
        mlflow.start_run(run_name=f"train-{definition.name}", tags=run_tags) as run,
    ):
        run_id = run.info.run_id
        mlflow.log_params({k: _param(v) for k, v in search.best_config.items()})
        mlflow.log_params(_settings_params(settings, ray_info))
        _log_trials(search, definition)
        metrics = {f"holdout_{k}": v for k, v in ev.metrics.items()}
        metrics[f"cv_{definition.metric}"] = search.best_score
        metrics.update({k: v for k, v in latency.items() if k != "latency_batch_rows"})
        metrics["trials_ok"] = float(search.ok)
        metrics["trials_failed"] = float(search.failed)
        metrics.update({f"time_{k}": v for k, v in timings.items()})
        mlflow.log_metrics(metrics)

        report_dir = Path(tmp) / "evaluation"
        evaluate.write_report(
            ev,
            latency,
            report_dir,
            title=f"{definition.name} on {version.name}@{version.hash[:12]}",
            extra={"best_params": search.best_config, "trials": _trial_table(search)},
        )
        mlflow.log_artifacts(str(report_dir), artifact_path="evaluation")

        from aipaas.datasets.profiles import write_profile

        profile = write_profile(train_df, Path(tmp) / "profile.bin")
        mlflow.log_artifact(str(profile), artifact_path="reference_profile")
        mlflow.log_dict(version.to_dict(), "dataset_version.json")

        info = _log_model(model, definition, X_train)
        registered = str(info.registered_model_version)
        timings_total = dict(timings)
    registry.set_tags(definition.name, registered, {k: v for k, v in run_tags.items()})
    registry.set_alias(definition.name, tags.CHALLENGER, registered)
    return TrainResult(
        model=definition.name,
        version=registered,
        run_id=run_id,
        model_uri=f"models:/{definition.name}/{registered}",
        metrics=metrics,
        best_params=dict(search.best_config),
        dataset=version.name,
        data_hash=version.hash,
        trials_ok=search.ok,
        trials_failed=search.failed,
        seconds=timings_total,
    )


def _read(path: Path, definition: ModelDefinition) -> pd.DataFrame:
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


def _log_trials(search: Any, definition: ModelDefinition) -> None:
    """One nested run per trial; a crashed trial is a FAILED run carrying its error."""
    import mlflow

    for i, trial in enumerate(search.trials):
        with mlflow.start_run(run_name=f"trial-{i:03d}", nested=True) as child:
            mlflow.log_params({k: _param(v) for k, v in trial.config.items()})
            mlflow.set_tags(
                {
                    "aipaas.trial_id": trial.trial_id,
                    "aipaas.node_id": trial.node_id or "unknown",
                    tags.MODEL_DEFINITION: definition.name,
                }
            )
            if trial.ok:
                mlflow.log_metrics(
                    {
                        f"cv_{definition.metric}": trial.score or 0.0,
                        f"cv_{definition.metric}_std": trial.score_std or 0.0,
                        "duration_s": trial.duration_s or 0.0,
                    }
                )
            else:
                mlflow.set_tag("aipaas.error", (trial.error or "")[:5000])
        if not trial.ok:
            mlflow.MlflowClient().set_terminated(child.info.run_id, status="FAILED")


def _trial_table(search: Any) -> list[dict[str, Any]]:
    return [
        {
            "trial": t.trial_id,
            "ok": t.ok,
            "score": t.score,
            "node": (t.node_id or "")[:12],
            "error": t.error,
        }
        for t in search.trials
    ]


def _log_model(model: Any, definition: ModelDefinition, X_train: pd.DataFrame) -> Any:
    """Log in the flavour's own format (skops for scikit-learn and LightGBM), never pickle."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    example = X_train.head(5)
    signature = infer_signature(example, model.predict(example))
    common: dict[str, Any] = {
        "name": "model",
        "signature": signature,
        "input_example": X_train.head(2),
        "registered_model_name": definition.name,
    }
    try:
        from lightgbm import LGBMModel

        if isinstance(model, LGBMModel):
            return mlflow.lightgbm.log_model(model, **common)
        return mlflow.sklearn.log_model(model, serialization_format="skops", **common)
    except MlflowException as err:
        if "untrusted types" in str(err):
            raise ConfigurationError(
                f"model {definition.name!r}: the estimator contains types skops does not trust "
                f"({err}). Use scikit-learn/LightGBM types only; aipaas never falls back to pickle"
            ) from err
        raise


def _param(v: Any) -> Any:
    return v if isinstance(v, int | float | str | bool) else json.dumps(v, default=str)


def _settings_params(settings: Settings, ray_info: Any) -> dict[str, Any]:
    out = {f"setting.tune.{k}": v for k, v in settings.tune.model_dump().items()}
    out["setting.ray.address"] = settings.ray.address or "local"
    out["setting.ray.object_store_memory_mb"] = settings.ray.object_store_memory_mb
    out["setting.ray.nodes"] = ray_info.nodes
    out["setting.ray.cpus"] = ray_info.cpus
    return out


def _git_commit(settings: Settings) -> str | None:
    """HEAD of the project checkout, when there is one (a wheel install has none)."""
    from aipaas.datasets.versioning import git_commit

    for root in (settings.versioning.repo, PROJECT_ROOT):
        commit = git_commit(root)
        if commit:
            return commit
    return None


def lineage(model: str, version: str | int, settings: Settings) -> dict[str, str]:
    """How to get from a registered version back to its exact data.

    Read from the version's tags (written at registration) and its run, so it
    works from any machine that reaches the registry. ``git checkout <commit>
    && dvc checkout`` (or ``dvc pull``) restores the files whose hash is shown.
    """
    from aipaas.training import registry

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
        "code_commit": t.get("aipaas.code_commit", "unknown"),
        "model_uri": mv.uri,
    }
    for key in sorted(metrics):
        if key.startswith("holdout_"):
            out[key] = f"{metrics[key]:.4f}"
    return out
