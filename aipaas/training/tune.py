"""Hyperparameter search: trials side by side on warm Ray actors.

Each trial builds the definition's estimator from one configuration and
scores it by cross-validation on the training split, every fold inside one
call. The configurations are drawn up front by our own seeded sampler
(:func:`sample_configs`), so the same seed scores the same configurations at
any concurrency. A trial that raises is recorded as failed with its root
cause and the search goes on; only a search where every trial failed is an
error.

Why not Ray Tune (which ran the search until #14): its fixed cost per
search. On this 2-core machine a Tune search whose trials do nothing took
3.5-6.9 s per ``Tuner.fit()`` (new trial actors every time, their imports,
the experiment's bookkeeping), more than the whole demo search takes in
plain Python (1.1 s). The trials now run on long-lived actors
(:mod:`aipaas.training.trial_workers`): one per CPU Ray sees, placed per
node, each importing scikit-learn, LightGBM and pandas once and then
running one trial per method call; they are found by name, so a second
search (and, on a Ray this process joined, the next flow run) starts no
process. The frame and the trial's spec go into Ray's object store once per
search. The driver keeps at most :func:`effective_concurrency` trials in
flight (the actors reserve no CPU, so that Ray's other work never waits for
idle trial workers) and collects them with ``ray.wait`` as they finish.

Trials do not talk to MLflow: on a cluster the workers may not reach the
tracking store. The driver hands each finished trial to the caller the
moment it finishes (``on_trial_done``: ``aipaas.training.train`` logs it as a
nested run then, so trials appear in MLflow while the search goes on), and
reports it to the caller's :class:`~aipaas.progress.Progress`.

The driver, not the workers, writes the search's trial table, as
``<storage>/<name>/trials.json``: :func:`storage_location` reads
``settings.ray.storage_path`` (a path, or an object-store URI such as
``s3://...`` written through pyarrow) and falls back to
``<home>/ray-results``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
import uuid
from collections import deque
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
TRIALS_FILE = "trials.json"  # in each search's directory


# The URI schemes pyarrow opens by itself.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def check_storage(location: str) -> None:
    """Refuse a storage URI pyarrow could not open, before any trial runs.

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
    """Where searches write trial tables: the configured path or URI, else ``<home>/ray-results``.

    A URI (``s3://bucket/prefix``, ``gs://...``; ``?endpoint_override=...`` for
    an S3-compatible store) is kept as is and written through pyarrow; a plain
    path is made absolute, so the recorded location means the same anywhere.
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


def sample_configs(definition: ModelDefinition, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` configurations drawn from the definition's space (validated first).

    One numpy ``Generator(seed)`` draws them in trial order, dimension by
    dimension: the same seed gives the same configurations whatever the
    concurrency, so runs compare. IntRange's high is inclusive; LogUniform is
    uniform in log space. Values are plain Python (JSON, MLflow params).
    """
    import numpy as np

    validate_search_space(definition)
    rng = np.random.default_rng(seed)
    configs: list[dict[str, Any]] = []
    for _ in range(count):
        config: dict[str, Any] = {}
        for name, dim in definition.search_space.items():
            if isinstance(dim, LogUniform):
                config[name] = float(math.exp(rng.uniform(math.log(dim.low), math.log(dim.high))))
            elif isinstance(dim, Uniform):
                config[name] = float(rng.uniform(dim.low, dim.high))
            elif isinstance(dim, IntRange):
                config[name] = int(rng.integers(dim.low, dim.high + 1))
            elif isinstance(dim, Choice):
                config[name] = _native({"v": dim.options[int(rng.integers(len(dim.options)))]})["v"]
        configs.append(config)
    return configs


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
    # The search's directory in the storage, holding trials.json (a path or a URI).
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
    """Everything a trial needs besides its config; put in the object store once per search."""

    build: Callable[[dict[str, Any]], Any]
    features: tuple[str, ...]
    target: str
    task: str
    metric: str
    folds: int
    seed: int


def score_trial(spec: _TrialSpec, config: dict[str, Any], data: pd.DataFrame) -> dict[str, Any]:
    """One trial, in a trial worker: every CV fold of one configuration, in one call."""
    import numpy as np
    import ray

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
    return {
        SCORE: float(np.mean(scores)),
        "score_std": float(np.std(scores)),
        "node_id": ray.get_runtime_context().get_node_id(),
        "duration_s": time.perf_counter() - t0,
    }


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
    The trial table is written to ``<storage_dir>/<name>/trials.json``.

    Raises:
        ConfigurationError: the search space is invalid (nothing ran).
        TrainingError: every trial failed.
    """
    import ray

    from aipaas.training import trial_workers

    configs = sample_configs(definition, tune_settings.num_samples, tune_settings.seed)
    storage = str(storage_dir)
    check_storage(storage)
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
    name = name or f"{definition.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
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
    live = _Live(
        total=len(configs),
        mode=definition.mode,
        metric=definition.metric,
        progress=progress,
        on_trial_done=on_trial_done,
    )
    t0 = time.perf_counter()
    pool = trial_workers.pool()
    workers = pool.take(concurrency)
    # Shipped once: every trial gets the references, a node fetches each once.
    columns = list(dict.fromkeys([*definition.features, definition.target]))
    data_ref = ray.put(train[columns])
    spec_ref = ray.put(spec)
    prefix = uuid.uuid4().hex[:5]
    trials = _Trials(configs, [f"{prefix}_{i:05d}" for i in range(len(configs))], live)
    trials.run(pool, workers, spec_ref, data_ref)
    wall = time.perf_counter() - t0
    results_path = _join(storage, name)
    outcomes = trials.outcomes()
    try:
        result = replace(_best(definition, outcomes, wall), results_path=results_path)
    except TrainingError:
        _write_trials(results_path, SearchResult({}, math.nan, outcomes, wall, results_path))
        raise
    _write_trials(results_path, result)
    return result


@dataclass
class _Trials:
    """The search as the driver runs it: configurations handed to idle workers as they free up."""

    configs: list[dict[str, Any]]
    ids: list[str]
    live: _Live
    done: dict[int, TrialOutcome] = field(default_factory=dict)

    def run(self, pool: Any, workers: list[Any], spec_ref: Any, data_ref: Any) -> None:
        import ray

        idle = deque(workers)
        pending: dict[Any, tuple[int, Any]] = {}
        following = 0
        try:
            while following < len(self.configs) or pending:
                while idle and following < len(self.configs):
                    worker = idle.popleft()
                    config = self.configs[following]
                    ref = worker.handle.run.remote(score_trial, spec_ref, config, data_ref)
                    pending[ref] = (following, worker)
                    following += 1
                if not pending:  # every worker died and none could be replaced
                    for i in range(following, len(self.configs)):
                        self._finish(i, None, "no trial worker could be started")
                    following = len(self.configs)
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                index, worker = pending.pop(ready[0])
                again = self._collect(index, worker, ready[0], pool)
                if again is not None:
                    idle.append(again)
        finally:
            for ref in pending:  # interrupted: do not leave trials running for nobody
                with contextlib.suppress(Exception):
                    ray.cancel(ref)

    def _collect(self, index: int, worker: Any, ref: Any, pool: Any) -> Any:
        """Record one finished call; the worker to use next (a replacement if it died)."""
        import ray
        from ray.exceptions import RayActorError, RayError

        try:
            metrics = ray.get(ref)
        except RayActorError as err:
            self._finish(
                index,
                worker.node_id,
                "the trial worker running this trial died (killed, or out of memory?): "
                + _first_line(err),
            )
            return pool.replace(worker)
        except RayError as err:
            self._finish(index, worker.node_id, _short_error(err))
            return worker
        self._finish(index, metrics.get("node_id") or worker.node_id, None, metrics)
        return worker

    def _finish(
        self,
        index: int,
        node_id: str | None,
        error: str | None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        config = dict(self.configs[index])
        if error is not None or metrics is None:
            outcome = TrialOutcome(
                self.ids[index], config, ok=False, node_id=node_id, error=error or "no score"
            )
        else:
            outcome = TrialOutcome(
                self.ids[index],
                config,
                ok=True,
                score=float(metrics[SCORE]),
                score_std=float(metrics.get("score_std", 0.0)),
                node_id=node_id,
                duration_s=float(metrics.get("duration_s", 0.0)),
            )
        self.done[index] = outcome
        self.live.finished(outcome)

    def outcomes(self) -> list[TrialOutcome]:
        """In trial order (not completion order)."""
        return [self.done[i] for i in sorted(self.done)]


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__)[:500]


def _join(storage: str, name: str) -> str:
    """``storage/name`` for a path or a URI (a URI's query string kept at its end)."""
    if "://" not in storage:
        return str(Path(storage) / name)
    base, sep, query = storage.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def _write_trials(results_path: str, result: SearchResult) -> None:
    """The trial table as JSON in ``results_path/trials.json``: a local path, or pyarrow's."""
    table = result.to_dict()
    if not math.isfinite(result.best_score):  # every trial failed: no best
        table["best_score"] = None
    payload = json.dumps(table, indent=2, default=str).encode()
    if "://" not in results_path:
        Path(results_path).mkdir(parents=True, exist_ok=True)
        (Path(results_path) / TRIALS_FILE).write_bytes(payload)
        return
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(results_path)
    filesystem.create_dir(path, recursive=True)
    with filesystem.open_output_stream(f"{path.rstrip('/')}/{TRIALS_FILE}") as out:
        out.write(payload)


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


def _native(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Plain Python values (a Choice may hold numpy scalars), so results serialise to JSON."""
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
