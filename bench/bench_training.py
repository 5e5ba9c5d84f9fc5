"""Training: the search with 1 and with N concurrent Ray Tune trials, and the overheads.

Same search space (the demo ``diagnosis`` definition), same sampled
configurations, same cross-validation in every mode:

* plain Python: the configurations scored one after another, no Ray;
* Ray Tune, 1 trial at a time: Ray's overhead against plain Python;
* Ray Tune, N trials at a time (N = the CPUs Ray sees, as
  ``aipaas.training.tune.effective_concurrency`` picks it): the speed-up and
  the parallel efficiency (speed-up / N), against the target of 0.8 (2
  trials at a time at least 1.6 times faster than one at a time);
* Prefect: the same plain-Python search inside a ``@flow`` calling one
  ``@task`` per trial, against a throwaway local Prefect server (its start-up
  reported separately): Prefect's overhead.

The data is the breast cancer set (offline) replicated with jitter so that a
trial does measurable work (``--scale``; 32 copies are 18,208 rows). Each
workload records the machine's load average before and after: on a shared
2-core machine, another process's load takes CPU from the second trial, and
the efficiency is only meaningful next to it. Run: ``uv run python -m
bench.bench_training`` (or ``make bench``); writes
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


@dataclass
class RaySearches:
    """Ray Tune at each concurrency: wall seconds, seconds inside trials, configs, best score."""

    tune_s: dict[int, float] = field(default_factory=dict)
    compute_s: dict[int, float] = field(default_factory=dict)
    drawn: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)


def _ray_searches(
    definition: Any, df: pd.DataFrame, args: argparse.Namespace, tmp: Path, out: dict[str, Any]
) -> RaySearches:
    """Ray start, a warm-up search, then the search at 1 and at N concurrent trials."""
    import ray

    from aipaas.settings import RaySettings, TuneSettings
    from aipaas.training.raycluster import ensure_ray
    from aipaas.training.tune import effective_concurrency, run_search

    t0 = time.perf_counter()
    ensure_ray(RaySettings(num_cpus=os.cpu_count() or 1, object_store_memory_mb=200))
    out["ray_init_s"] = time.perf_counter() - t0
    n_cpus = effective_concurrency(0, ray.cluster_resources().get("CPU", 1.0))
    # Warm-up: the first search in a process also pays worker start and imports.
    t0 = time.perf_counter()
    warm = TuneSettings(num_samples=n_cpus, max_concurrent=n_cpus, cv_folds=2, seed=SEED)
    run_search(definition, df.head(200), warm, storage_dir=tmp / "ray_results")
    out["ray_warmup_search_s"] = time.perf_counter() - t0
    found = RaySearches()
    for c in sorted({1, n_cpus}):
        ts = TuneSettings(num_samples=args.trials, max_concurrent=c, cv_folds=args.folds, seed=SEED)
        t0 = time.perf_counter()
        res = run_search(definition, df, ts, storage_dir=tmp / "ray_results")
        found.tune_s[c] = time.perf_counter() - t0
        found.compute_s[c] = sum(t.duration_s or 0.0 for t in res.trials)
        found.drawn[c] = sorted((t.config for t in res.trials), key=repr)
        found.best[f"tune_c{c}"] = res.best_score
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
    """One data size: Tune at 1 and N concurrent trials, plain Python, optionally Prefect."""
    out: dict[str, Any] = {"rows": len(df), "trials": args.trials, "cv_folds": args.folds}
    out["load_avg_1m_before"] = os.getloadavg()[0]
    ray_runs = _ray_searches(definition, df, args, tmp, out)
    tune_s, best = ray_runs.tune_s, ray_runs.best
    # The same seed draws the same configurations whatever the concurrency;
    # plain Python and Prefect then score exactly those.
    configs = ray_runs.drawn[1]
    out["same_configs_every_mode"] = all(d == configs for d in ray_runs.drawn.values())
    t0 = time.perf_counter()
    best["plain"] = _plain_search(definition, df, configs, args.folds, SEED)
    plain_s = time.perf_counter() - t0
    if prefect:
        os.environ["PREFECT_HOME"] = str(tmp / "prefect")
        os.environ.pop("PREFECT_API_URL", None)
        out["prefect_first_run_s"], out["prefect_s"] = _prefect_search(
            definition, df, configs, args.folds, SEED
        )
    n = max(tune_s)
    speedup = tune_s[1] / tune_s[n]
    out.update(
        {
            "plain_python_s": plain_s,
            "ray_tune_s": {str(k): v for k, v in tune_s.items()},
            # Time inside the trials (the CV work) summed over trials; the rest is Ray's.
            "ray_trial_compute_s": {str(k): v for k, v in ray_runs.compute_s.items()},
            "concurrency_n": n,
            "speedup": speedup,
            "parallel_efficiency": speedup / n,
            "ray_overhead_s": tune_s[1] - plain_s,
            "ray_overhead_per_trial_s": (tune_s[1] - plain_s) / args.trials,
            "speedup_vs_plain": plain_s / tune_s[n],
            "efficiency_target": EFFICIENCY_TARGET,
            "efficiency_target_met": speedup / n >= EFFICIENCY_TARGET,
            "best_cv_roc_auc": best,
            "load_avg_1m_after": os.getloadavg()[0],
        }
    )
    return out


def _rows(w: dict[str, Any]) -> list[list[Any]]:
    plain, n = w["plain_python_s"], w["concurrency_n"]
    t1, tn = w["ray_tune_s"]["1"], w["ray_tune_s"][str(n)]
    rows = [
        ["plain Python (sequential)", plain, 1.0, f"{plain / w['trials']:.2f} s/trial"],
        ["Ray Tune, 1 at a time", t1, plain / t1, f"overhead {t1 - plain:+.2f} s"],
        [
            f"Ray Tune, {n} at a time",
            tn,
            plain / tn,
            f"speed-up {w['speedup']:.2f}x, efficiency {w['parallel_efficiency']:.0%}",
        ],
    ]
    if "prefect_s" in w:
        p = w["prefect_s"]
        rows.append(["Prefect flow + task per trial", p, plain / p, f"overhead {p - plain:+.2f} s"])
        first = w["prefect_first_run_s"]
        rows.append(["  first run (temp server start)", first, plain / first, "-"])
    met = "met" if w["efficiency_target_met"] else "NOT met"
    rows.append(
        [
            f"efficiency target {w['efficiency_target']:.0%}",
            "-",
            "-",
            f"{met}; load avg {w['load_avg_1m_before']:.1f} -> {w['load_avg_1m_after']:.1f}",
        ]
    )
    rows.append(["Ray start (ray.init)", w["ray_init_s"], "-", "once per process"])
    rows.append(["first search (warm-up)", w["ray_warmup_search_s"], "-", "worker start"])
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
