"""Hyperparameter search as parallel Ray Tune trials.

Each trial builds the definition's estimator from one sampled configuration
and scores it by cross-validation on the training split. The training frame
goes into Ray's object store once (``tune.with_parameters``), not once per
trial. A trial that raises is recorded as failed with its error and the
search goes on; only a search where every trial failed is an error.

Trials do not talk to MLflow: on a cluster the workers may not reach the
tracking store. A Tune callback in the driver hands each trial to the caller
the moment it finishes (``on_trial_done``: ``aipaas.training.train`` logs it
as a nested run then, so trials appear in MLflow while the search goes on),
and reports it to the caller's :class:`~aipaas.progress.Progress`.

Ray pays for itself only when the work it spreads outweighs what it adds per
trial: the frame is shipped once, an actor is reused across trials, the CV
folds run inside the trial (one round trip per configuration, not per fold),
and no more trials run at once than Ray has CPUs
(:func:`effective_concurrency`): a trial over that only queues for a CPU.

Tune writes each trial's results where the trial runs, so on a cluster its
storage must be one every node reaches: Ray 2 no longer copies results back
to the head node. :func:`storage_location` reads ``settings.ray.storage_path``
(a shared filesystem path or an object-store URI such as ``s3://...``) and
falls back to ``<home>/ray-results``, which only one machine sees.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from aipaas.exceptions import ConfigurationError, TrainingError
from aipaas.modeldef import Choice, IntRange, LogUniform, ModelDefinition, Uniform
from aipaas.progress import NO_PROGRESS, Progress, TrialEvent
from aipaas.settings import RaySettings, TuneSettings

SCORE = "score"
RESULTS_DIR = "ray-results"  # under home when no storage path is configured


# The URI schemes pyarrow (Tune's storage layer) opens by itself.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def check_storage(location: str) -> None:
    """Refuse a storage URI Tune could not open, before any trial runs.

    Only the scheme is checked: opening an object store would reach the
    network (pyarrow resolves an S3 bucket's region on open), and
    credentials are read by each node later.

    Raises:
        ConfigurationError: the URI's scheme is not one pyarrow opens.
    """
    scheme, sep, rest = location.partition("://")
    if not sep:
        return
    if scheme.lower() not in STORAGE_SCHEMES or not rest.strip("/"):
        raise ConfigurationError(
            f"ray.storage_path {location!r} cannot be opened: use a path every Ray node "
            "sees or a URI pyarrow reads (" + ", ".join(f"{s}://" for s in STORAGE_SCHEMES) + ")"
        )


def storage_location(ray_settings: RaySettings, home: Path) -> str:
    """Where Tune keeps results: the configured path or URI, else ``<home>/ray-results``.

    A URI (``s3://bucket/prefix``, ``gs://...``; ``?endpoint_override=...`` for
    an S3-compatible store) goes to Tune as is, read through pyarrow; a plain
    path is made absolute, since Tune resolves a relative one against each
    worker's own directory.
    """
    configured = ray_settings.storage_path.strip()
    if not configured:
        return str(Path(home) / RESULTS_DIR)
    if "://" in configured:
        return configured
    return str(Path(configured).expanduser().resolve())


def validate_search_space(definition: ModelDefinition) -> None:
    """Raise :class:`ConfigurationError` naming every bad dimension, before anything runs."""
    problems: list[str] = []
    space = definition.search_space
    if not isinstance(space, Mapping) or not space:
        raise ConfigurationError(
            f"model {definition.name!r}: search_space must be a non-empty mapping of "
            "parameter name to Uniform/LogUniform/IntRange/Choice"
        )
    for name, dim in space.items():
        where = f"search_space[{name!r}]"
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: parameter names must be non-empty strings")
        elif isinstance(dim, Uniform | LogUniform):
            if not (_finite(dim.low) and _finite(dim.high)) or dim.low >= dim.high:
                problems.append(f"{where}: needs low < high, got {dim.low}..{dim.high}")
            elif isinstance(dim, LogUniform) and dim.low <= 0:
                problems.append(f"{where}: LogUniform needs low > 0, got {dim.low}")
        elif isinstance(dim, IntRange):
            if not (isinstance(dim.low, int) and isinstance(dim.high, int)) or dim.low > dim.high:
                problems.append(f"{where}: IntRange needs integers low <= high, got {dim}")
        elif isinstance(dim, Choice):
            if not isinstance(dim.options, tuple | list) or len(dim.options) == 0:
                problems.append(f"{where}: Choice needs at least one option")
        else:
            problems.append(
                f"{where}: {dim!r} is not Uniform, LogUniform, IntRange or Choice "
                "(from aipaas.modeldef)"
            )
    if problems:
        raise ConfigurationError(
            f"model {definition.name!r} has an invalid search space: " + "; ".join(problems)
        )


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def to_param_space(definition: ModelDefinition) -> dict[str, Any]:
    """The definition's search space in Ray Tune's vocabulary (validated first)."""
    from ray import tune

    validate_search_space(definition)
    out: dict[str, Any] = {}
    for name, dim in definition.search_space.items():
        if isinstance(dim, LogUniform):
            out[name] = tune.loguniform(dim.low, dim.high)
        elif isinstance(dim, Uniform):
            out[name] = tune.uniform(dim.low, dim.high)
        elif isinstance(dim, IntRange):
            out[name] = tune.randint(dim.low, dim.high + 1)  # randint's upper bound is exclusive
        elif isinstance(dim, Choice):
            out[name] = tune.choice(list(dim.options))
    return out


@dataclass(frozen=True)
class TrialOutcome:
    """One trial as the driver saw it."""

    trial_id: str
    config: dict[str, Any]
    ok: bool
    score: float | None = None
    score_std: float | None = None
    node_id: str | None = None
    duration_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class SearchResult:
    best_config: dict[str, Any]
    best_score: float
    trials: list[TrialOutcome] = field(default_factory=list)
    wall_s: float = 0.0
    # The experiment's directory in Tune's storage (a path or a URI).
    results_path: str = ""

    @property
    def ok(self) -> int:
        return sum(t.ok for t in self.trials)

    @property
    def failed(self) -> int:
        return sum(not t.ok for t in self.trials)

    def trial_table(self) -> list[dict[str, Any]]:
        """One row per trial, for the evaluation report."""
        return [
            {
                "trial": t.trial_id,
                "ok": t.ok,
                "score": t.score,
                "node": (t.node_id or "")[:12],
                "error": t.error,
            }
            for t in self.trials
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _TrialSpec:
    """Everything a trial needs besides its config; pickled to the workers."""

    build: Callable[[dict[str, Any]], Any]
    features: tuple[str, ...]
    target: str
    task: str
    metric: str
    folds: int
    seed: int


def _run_trial(config: dict[str, Any], spec: _TrialSpec, data: pd.DataFrame) -> None:
    import numpy as np
    import ray
    from ray import tune

    from aipaas.training.metrics import cross_validate

    t0 = time.perf_counter()
    scores = cross_validate(
        spec.build,
        config,
        data[list(spec.features)],
        data[spec.target],
        task=spec.task,
        metric=spec.metric,
        folds=spec.folds,
        seed=spec.seed,
    )
    tune.report(
        {
            SCORE: float(np.mean(scores)),
            "score_std": float(np.std(scores)),
            "node_id": ray.get_runtime_context().get_node_id(),
            "duration_s": time.perf_counter() - t0,
        }
    )


def run_search(
    definition: ModelDefinition,
    train: pd.DataFrame,
    tune_settings: TuneSettings,
    *,
    storage_dir: str | Path,
    name: str | None = None,
    progress: Progress = NO_PROGRESS,
    on_trial_done: TrialListener | None = None,
) -> SearchResult:
    """Search the definition's space; Ray must be up (``aipaas.training.raycluster.ensure_ray``).

    ``storage_dir`` is a local or shared path, or an object-store URI
    (:func:`storage_location`); a path is created if missing. Each finished
    trial goes to ``on_trial_done`` (its 0-based completion index and outcome),
    then to ``progress``, in the driver, while the other trials still run.

    Raises:
        ConfigurationError: the search space is invalid (nothing ran).
        TrainingError: every trial failed.
    """
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    param_space = to_param_space(definition)
    concurrency = effective_concurrency(
        tune_settings.max_concurrent, ray.cluster_resources().get("CPU", 1.0)
    )
    spec = _TrialSpec(
        build=definition.build_estimator,
        features=tuple(definition.features),
        target=definition.target,
        task=definition.task,
        metric=definition.metric,
        folds=tune_settings.cv_folds,
        seed=tune_settings.seed,
    )
    storage = str(storage_dir)
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, spec=spec, data=train), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=SCORE,
            mode=definition.mode,
            num_samples=tune_settings.num_samples,
            # A new worker process per trial costs seconds on a small machine.
            reuse_actors=True,
            # With a SearchGenerator Tune ignores max_concurrent_trials: bound it here.
            search_alg=BasicVariantGenerator(
                max_concurrent=concurrency, random_state=tune_settings.seed
            ),
        ),
        run_config=tune.RunConfig(
            name=name or f"{definition.name}-{int(time.time())}",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            verbose=0,
            callbacks=[
                _live_callback(
                    _Live(
                        total=tune_settings.num_samples,
                        mode=definition.mode,
                        metric=definition.metric,
                        progress=progress,
                        on_trial_done=on_trial_done,
                    )
                )
            ],
        ),
    )
    t0 = time.perf_counter()
    # Tune's output engine prints its configuration table to stdout even at
    # verbose=0: stdout is the caller's (``aipaas train --json`` prints its
    # result there), so Tune's text goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        grid = tuner.fit()
    wall = time.perf_counter() - t0
    result = _best(definition, [_outcome(grid[i]) for i in range(len(grid))], wall)
    return replace(result, results_path=str(grid.experiment_path))


def _outcome(res: Any) -> TrialOutcome:
    """One trial's result as the driver saw it: its score, or its error."""
    return _trial_outcome(res.metrics, res.config, res.error, Path(str(res.path)).name)


def _trial_outcome(
    metrics: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    error: BaseException | None,
    fallback_id: str,
) -> TrialOutcome:
    m = metrics or {}
    trial_id = str(m.get("trial_id") or fallback_id)
    if error is not None or SCORE not in m:
        return TrialOutcome(
            trial_id=trial_id,
            config=_native(config),
            ok=False,
            node_id=m.get("node_id"),
            error=_short_error(error),
        )
    return TrialOutcome(
        trial_id=trial_id,
        config=_native(config),
        ok=True,
        score=float(m[SCORE]),
        score_std=float(m.get("score_std", 0.0)),
        node_id=m.get("node_id"),
        duration_s=float(m.get("duration_s", 0.0)),
    )


def effective_concurrency(requested: int, cpus: float) -> int:
    """Trials at once: ``requested`` (0 = as many as Ray's CPUs), never more than the CPUs.

    Each trial takes one CPU: beyond the CPUs Ray sees, a trial waits for
    one and only adds scheduling work.
    """
    available = max(1, int(cpus))
    return available if requested <= 0 else max(1, min(requested, available))


# Called with each finished trial's 0-based completion index and its outcome.
TrialListener = Callable[[int, TrialOutcome], None]


@dataclass
class _Live:
    """The search as the driver follows it: trials done, the best so far."""

    total: int
    mode: str
    metric: str
    progress: Progress
    on_trial_done: TrialListener | None
    done: int = 0
    best: float | None = None

    def finished(self, outcome: TrialOutcome) -> None:
        index = self.done
        self.done += 1
        score = outcome.score
        if outcome.ok and score is not None and math.isfinite(score):
            better = self.best is None or (
                score > self.best if self.mode == "max" else score < self.best
            )
            self.best = score if better else self.best
        if self.on_trial_done is not None:
            self.on_trial_done(index, outcome)
        self.progress.on_trial(
            TrialEvent(
                done=self.done,
                total=self.total,
                best=self.best,
                trial_id=outcome.trial_id,
                ok=outcome.ok,
                score=outcome.score,
                duration_s=outcome.duration_s,
                error=outcome.error,
                metric=self.metric,
            )
        )


def _live_callback(live: _Live) -> Any:
    """A Tune callback feeding ``live`` as trials finish; it runs in the driver.

    Tune pickles its run config into the experiment directory (``tuner.pkl``,
    for a restore); the callback's listeners (an MLflow client, a terminal)
    mean nothing there, so they are left out of the pickle.
    """
    from ray import tune

    class LiveTrials(tune.Callback):
        def __init__(self, live: _Live | None) -> None:
            self.live = live

        def __getstate__(self) -> dict[str, Any]:
            return {"live": None}

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            if self.live is not None:
                self.live.finished(
                    _trial_outcome(trial.last_result, trial.config, None, str(trial.trial_id))
                )

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            if self.live is not None:
                error = _trial_error(trial)
                self.live.finished(
                    _trial_outcome(trial.last_result, trial.config, error, str(trial.trial_id))
                )

    return LiveTrials(live)


def _best(definition: ModelDefinition, trials: list[TrialOutcome], wall: float) -> SearchResult:
    good = [t for t in trials if t.ok and t.score is not None and math.isfinite(t.score)]
    if not good:
        errors = "; ".join(sorted({t.error or "no score reported" for t in trials}))[:1500]
        raise TrainingError(
            f"all {len(trials)} trials of model {definition.name!r} failed, nothing was "
            f"registered. Errors: {errors}"
        )
    pick = max if definition.mode == "max" else min
    best = pick(good, key=lambda t: t.score or 0.0)
    return SearchResult(
        best_config=dict(best.config),
        best_score=float(best.score or 0.0),
        trials=trials,
        wall_s=wall,
    )


def _trial_error(trial: Any) -> BaseException | None:
    """A failed trial's error, read where Tune just wrote it (the driver's copy).

    When the callback runs, the error is on the driver's disk but not yet in
    Tune's storage, which ``Trial.get_pickled_error`` reads.
    """
    import ray.cloudpickle

    pickled = trial.pickled_error_file
    if pickled and Path(pickled).is_file():
        with open(pickled, "rb") as f:
            error: BaseException = ray.cloudpickle.load(f)
        return error
    text = trial.error_file
    if text and Path(text).is_file():
        return RuntimeError(Path(text).read_text(errors="replace").strip())
    return None


def _native(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Plain Python values (Tune samples numpy scalars), so results serialise to JSON."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in (config or {}).items()}


def _short_error(err: BaseException | None) -> str:
    """The root cause of a trial's failure, one line, without Ray's wrapper text."""
    if err is None:
        return "trial reported no score"
    cause: BaseException = err
    while getattr(cause, "cause", None) is not None:  # RayTaskError.cause
        cause = cause.cause  # type: ignore[attr-defined]
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = f"{type(cause).__name__}: {cause}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        # Ray stringifies the remote traceback; the last line is the exception.
        last = lines[-1].strip()
        return last[:500]
    return text[:500] if text else "".join(traceback.format_exception_only(cause))[:500]
