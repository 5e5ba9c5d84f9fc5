"""Training: the search before and after #14, at 1 and at N trials at a time, and plain Python.

Same search space (the demo ``diagnosis`` definition), the same configurations
(``aipaas.training.tune.sample_configs``, seeded), the same cross-validation
in every mode:

* plain Python: the configurations scored one after another, no Ray;
* before: Ray Tune as ``run_search`` used it until #14 (kept here as the
  reference: ``tune.Tuner``, ``tune.with_parameters``, ``reuse_actors``), after
  a warm-up search, 1 and N trials at a time;
* after: ``run_search`` on the warm trial workers
  (``aipaas.training.trial_workers``): the first search in the process (it
  starts the workers) reported apart from the warm searches at 1 and N at a
  time;
* Prefect: the same plain-Python search inside a ``@flow`` calling one
  ``@task`` per trial, against a throwaway local Prefect server (its start-up
  reported separately): Prefect's overhead.

N is the CPUs Ray sees (``effective_concurrency``); the parallel efficiency
(speed-up N vs 1, divided by N) is compared with the target of 0.8 (2 trials
at a time at least 1.6 times faster than one at a time), for before and
after. The data is the breast cancer set (offline) replicated with jitter so
that a trial does measurable work (``--scale``; 32 copies are 18,208 rows).
Each workload records the machine's load average before and after: on a
shared 2-core machine, another process's load takes CPU from the second
trial, and the efficiency is only meaningful next to it. Run: ``uv run python
-m bench.bench_training`` (or ``make bench``); writes
``bench/results/training.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import print_table, write_results

SEED = 42
EFFICIENCY_TARGET = 0.8  # N trials at a time at least 0.8 * N times faster than one


def _data(scale: int) -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    df = d.data.rename(columns=lambda c: c.replace(" ", "_"))
    df["diagnosis"] = np.where(d.target == 0, "malignant", "benign")
    rng = np.random.default_rng(0)
    parts = [df]
    for _ in range(scale - 1):
        jitter = df.copy()
        num = jitter.columns[:-1]
        jitter[num] = jitter[num] * (1 + rng.normal(scale=0.02, size=(len(df), len(num))))
        parts.append(jitter)
    return pd.concat(parts, ignore_index=True)


def _plain_search(
    definition: Any, df: pd.DataFrame, configs: list[dict[str, Any]], folds: int, seed: int
) -> float:
    from aipaas.training.metrics import cross_validate

    X, y = df[list(definition.features)], df[definition.target]
    best = -np.inf
    for cfg in configs:
        scores = cross_validate(
            definition.build_estimator,
            cfg,
            X,
            y,
            task="classification",
            metric="roc_auc",
            folds=folds,
            seed=seed,
        )
        best = max(best, float(np.mean(scores)))
    return best


def _prefect_search(
    definition: Any, df: pd.DataFrame, configs: list[dict[str, Any]], folds: int, seed: int
) -> tuple[float, float]:
    """(first run incl. the temporary server's start, second run) in seconds."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from aipaas.training.metrics import cross_validate

    X, y = df[list(definition.features)], df[definition.target]

    @task(cache_policy=NO_CACHE)
    def trial(cfg: dict[str, Any]) -> float:
        scores = cross_validate(
            definition.build_estimator,
            cfg,
            X,
            y,
            task="classification",
            metric="roc_auc",
            folds=folds,
            seed=seed,
        )
        return float(np.mean(scores))

    @flow(name="bench-train")
    def search() -> float:
        return max(trial(cfg) for cfg in configs)

    t0 = time.perf_counter()
    search()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    search()
    return first, time.perf_counter() - t0


@dataclass(frozen=True)
class _TuneSpec:
    build: Any
    features: tuple[str, ...]
    target: str
    folds: int
    seed: int


def _tune_trial(config: dict[str, Any], spec: _TuneSpec, data: pd.DataFrame) -> None:
    """The reference trial, as Tune ran it before #14: one config, every fold, one report."""
    import ray
    from ray import tune

    from aipaas.training.metrics import cross_validate

    t0 = time.perf_counter()
    scores = cross_validate(
        spec.build,
        config["cfg"],
        data[list(spec.features)],
        data[spec.target],
        task="classification",
        metric="roc_auc",
        folds=spec.folds,
        seed=spec.seed,
    )
    tune.report(
        {
            "score": float(np.mean(scores)),
            "node_id": ray.get_runtime_context().get_node_id(),
            "duration_s": time.perf_counter() - t0,
        }
    )


@dataclass(frozen=True)
class Timed:
    """One search: wall seconds, seconds inside the trials (summed), its configurations, best."""

    wall_s: float
    compute_s: float
    configs: list[dict[str, Any]]
    best: float


def _tune_reference(
    definition: Any,
    df: pd.DataFrame,
    configs: list[dict[str, Any]],
    concurrency: int,
    folds: int,
    storage: Path,
) -> Timed:
    """The search as ``run_search`` ran it before #14: a ``tune.Tuner`` per search.

    The configurations are given (a grid over them) so that every mode scores
    the same ones; Tune's per-search machinery is otherwise as it was.
    """
    import contextlib
    import sys

    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    spec = _TuneSpec(
        definition.build_estimator, tuple(definition.features), definition.target, folds, SEED
    )
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trial, spec=spec, data=df), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"cfg": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            num_samples=1,
            reuse_actors=True,
            search_alg=BasicVariantGenerator(max_concurrent=concurrency, random_state=SEED),
        ),
        run_config=tune.RunConfig(
            name=f"tune-c{concurrency}-{time.time_ns()}",
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            verbose=0,
        ),
    )
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        grid = tuner.fit()
    wall = time.perf_counter() - t0
    results = [grid[i] for i in range(len(grid))]
    metrics = [r.metrics or {} for r in results]
    return Timed(
        wall,
        sum(float(m.get("duration_s", 0.0)) for m in metrics),
        [(r.config or {})["cfg"] for r in results],
        max(float(m.get("score", -np.inf)) for m in metrics),
    )


def _after(definition: Any, df: pd.DataFrame, ts: Any, storage: Path) -> Timed:
    """The search as ``run_search`` runs it now."""
    from aipaas.training.tune import run_search

    t0 = time.perf_counter()
    res = run_search(definition, df, ts, storage_dir=storage)
    wall = time.perf_counter() - t0
    return Timed(
        wall,
        sum(t.duration_s or 0.0 for t in res.trials),
        [t.config for t in res.trials],
        res.best_score,
    )


@dataclass
class RaySearches:
    """Every Ray search of one workload, by mode and concurrency."""

    before: dict[int, Timed] = field(default_factory=dict)
    after: dict[int, Timed] = field(default_factory=dict)
    after_first: Timed | None = None


def _ray_searches(
    definition: Any,
    df: pd.DataFrame,
    configs: list[dict[str, Any]],
    args: argparse.Namespace,
    tmp: Path,
    out: dict[str, Any],
) -> RaySearches:
    """Ray start; the first run_search (pool start); Tune's warm-up; then 1 and N at a time.

    Before and after alternate at each concurrency, so a change in the
    machine's load hits both alike.
    """
    import ray

    from aipaas.settings import RaySettings, TuneSettings
    from aipaas.training import trial_workers
    from aipaas.training.raycluster import ensure_ray
    from aipaas.training.tune import effective_concurrency

    t0 = time.perf_counter()
    ensure_ray(RaySettings(num_cpus=os.cpu_count() or 1, object_store_memory_mb=200))
    out["ray_init_s"] = time.perf_counter() - t0
    n = effective_concurrency(0, ray.cluster_resources().get("CPU", 1.0))

    def settings(c: int) -> TuneSettings:
        return TuneSettings(
            num_samples=args.trials, max_concurrent=c, cv_folds=args.folds, seed=SEED
        )

    found = RaySearches()
    started = trial_workers.started
    found.after_first = _after(definition, df, settings(n), tmp / "after")
    out["trial_workers_started"] = trial_workers.started - started
    # Tune's warm-up: the first Tune search in a process also pays its own start.
    t0 = time.perf_counter()
    _tune_reference(definition, df.head(200), configs[:n], n, 2, tmp / "tune")
    out["ray_warmup_search_s"] = time.perf_counter() - t0
    for c in sorted({1, n}):
        found.before[c] = _tune_reference(definition, df, configs, c, args.folds, tmp / "tune")
        found.after[c] = _after(definition, df, settings(c), tmp / "after")
    out["trial_workers_started_warm"] = (
        trial_workers.started - started - out["trial_workers_started"]
    )
    ray.shutdown()
    return found


def _workload(
    definition: Any,
    df: pd.DataFrame,
    args: argparse.Namespace,
    tmp: Path,
    *,
    prefect: bool,
) -> dict[str, Any]:
    """One data size: before and after at 1 and N trials at a time, plain Python, Prefect."""
    from aipaas.training.tune import sample_configs

    out: dict[str, Any] = {"rows": len(df), "trials": args.trials, "cv_folds": args.folds}
    out["load_avg_1m_before"] = os.getloadavg()[0]
    # The same seed draws the same configurations whatever the concurrency;
    # every mode scores exactly those.
    configs = sample_configs(definition, args.trials, SEED)
    runs = _ray_searches(definition, df, configs, args, tmp, out)
    assert runs.after_first is not None
    drawn = [runs.after_first, *runs.after.values(), *runs.before.values()]
    out["same_configs_every_mode"] = all(
        sorted(map(repr, t.configs)) == sorted(map(repr, configs)) for t in drawn
    )
    best = {f"tune_c{c}": t.best for c, t in runs.before.items()}
    best |= {f"run_search_c{c}": t.best for c, t in runs.after.items()}
    t0 = time.perf_counter()
    best["plain"] = _plain_search(definition, df, configs, args.folds, SEED)
    plain_s = time.perf_counter() - t0
    if prefect:
        os.environ["PREFECT_HOME"] = str(tmp / "prefect")
        os.environ.pop("PREFECT_API_URL", None)
        out["prefect_first_run_s"], out["prefect_s"] = _prefect_search(
            definition, df, configs, args.folds, SEED
        )
    n = max(runs.after)

    def summary(timed: dict[int, Timed]) -> dict[str, Any]:
        speedup = timed[1].wall_s / timed[n].wall_s
        return {
            "s": {str(k): v.wall_s for k, v in timed.items()},
            # Time inside the trials (the CV work) summed over trials; the rest is overhead.
            "trial_compute_s": {str(k): v.compute_s for k, v in timed.items()},
            "speedup": speedup,
            "parallel_efficiency": speedup / n,
            "efficiency_target_met": speedup / n >= EFFICIENCY_TARGET,
            "overhead_vs_plain_s": timed[1].wall_s - plain_s,
            "speedup_vs_plain": plain_s / timed[n].wall_s,
        }

    before, after = summary(runs.before), summary(runs.after)
    out.update(
        {
            "plain_python_s": plain_s,
            "concurrency_n": n,
            "efficiency_target": EFFICIENCY_TARGET,
            # Before #14: Ray Tune (the reference implementation in this file).
            "before": before,
            "ray_tune_s": before["s"],
            # After #14: run_search on warm trial workers.
            "after": after,
            "run_search_s": after["s"],
            "run_search_first_s": runs.after_first.wall_s,
            "run_search_first_compute_s": runs.after_first.compute_s,
            # The platform's search as it is now (after).
            "speedup": after["speedup"],
            "parallel_efficiency": after["parallel_efficiency"],
            "efficiency_target_met": after["efficiency_target_met"],
            "after_vs_plain": after["speedup_vs_plain"],
            "best_cv_roc_auc": best,
            "load_avg_1m_after": os.getloadavg()[0],
        }
    )
    return out


def _rows(w: dict[str, Any]) -> list[list[Any]]:
    plain, n, k = w["plain_python_s"], w["concurrency_n"], str(w["concurrency_n"])
    b, a = w["before"], w["after"]

    def eff(x: dict[str, Any]) -> str:
        return f"speed-up {x['speedup']:.2f}x, efficiency {x['parallel_efficiency']:.2f}"

    def met(x: dict[str, Any]) -> str:
        return "met" if x["efficiency_target_met"] else "NOT met"

    def trials(x: dict[str, Any], c: str) -> str:
        # Seconds inside the trials (summed): wall - trials / c is the engine's own cost,
        # and trials at N vs at 1 shows how much the trials slowed each other (shared CPUs).
        return f"; in trials {x['trial_compute_s'][c]:.1f} s"

    first = w["run_search_first_s"]
    rows = [
        ["plain Python (sequential)", plain, 1.0, f"{plain / w['trials']:.2f} s/trial"],
        [
            "before: Ray Tune, 1 at a time",
            b["s"]["1"],
            plain / b["s"]["1"],
            f"overhead {b['overhead_vs_plain_s']:+.2f} s" + trials(b, "1"),
        ],
        [f"before: Ray Tune, {n} at a time", b["s"][k], plain / b["s"][k], eff(b) + trials(b, k)],
        [
            "after: run_search, first (starts workers)",
            first,
            plain / first,
            f"{n} at a time, {w['trial_workers_started']} workers started"
            f"; in trials {w['run_search_first_compute_s']:.1f} s",
        ],
        [
            "after: run_search, 1 at a time",
            a["s"]["1"],
            plain / a["s"]["1"],
            f"overhead {a['overhead_vs_plain_s']:+.2f} s" + trials(a, "1"),
        ],
        [f"after: run_search, {n} at a time", a["s"][k], plain / a["s"][k], eff(a) + trials(a, k)],
    ]
    if "prefect_s" in w:
        p = w["prefect_s"]
        rows.append(["Prefect flow + task per trial", p, plain / p, f"overhead {p - plain:+.2f} s"])
        p_first = w["prefect_first_run_s"]
        rows.append(["  first run (temp server start)", p_first, plain / p_first, "-"])
    target = f"{w['efficiency_target']:.2f}"
    rows.append(
        [
            f"efficiency target {target}",
            "-",
            "-",
            f"before {met(b)}, after {met(a)}; load avg "
            f"{w['load_avg_1m_before']:.1f} -> {w['load_avg_1m_after']:.1f}",
        ]
    )
    rows.append(["Ray start (ray.init)", w["ray_init_s"], "-", "once per process"])
    rows.append(["Tune warm-up search", w["ray_warmup_search_s"], "-", "before's worker start"])
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument(
        "--scale",
        type=int,
        action="append",
        help="copies of the data, jittered (repeatable; default: 1 and 32)",
    )
    parser.add_argument("--skip-prefect", action="store_true")
    args = parser.parse_args(argv)
    scales = args.scale or [1, 32]

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from aipaas.modeldef import load_definition
    from aipaas.settings import PROJECT_ROOT

    definition = load_definition("diagnosis", PROJECT_ROOT / "models")
    results: dict[str, Any] = {"workloads": {}}
    with tempfile.TemporaryDirectory(prefix="aipaas-bench-") as tmp:
        for i, scale in enumerate(scales):
            df = _data(scale)
            w = _workload(
                definition,
                df,
                args,
                Path(tmp) / str(scale),
                prefect=(i == 0 and not args.skip_prefect),
            )
            results["workloads"][f"rows_{len(df)}"] = w
            print_table(
                ["mode", "seconds", "vs plain", "note"],
                _rows(w),
                title=f"search: {args.trials} trials x {args.folds}-fold CV, {len(df)} rows, "
                "LightGBM (diagnosis space)",
            )
    path = write_results("training", results)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
