"""Training: the search with 1 and with N concurrent Ray Tune trials, and the overheads.

Same search space (the demo ``diagnosis`` definition), same sampled
configurations, same cross-validation in every mode:

* plain Python: the configurations scored one after another, no Ray;
* Ray Tune, 1 trial at a time: Ray's overhead against plain Python;
* Ray Tune, N trials at a time (N = CPUs): the speed-up and the parallel
  efficiency (speed-up / N);
* Prefect: the same plain-Python search inside a ``@flow`` calling one
  ``@task`` per trial, against a throwaway local Prefect server (its start-up
  reported separately): Prefect's overhead.

The data is the breast cancer set (offline) replicated with jitter so that a
trial does measurable work (``--scale``). Run: ``uv run python -m
bench.bench_training`` (or ``make bench``); writes
``bench/results/training.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import print_table, write_results


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
    from aipaas.evaluate import cross_validate

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

    from aipaas.evaluate import cross_validate

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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=4, help="copies of the data (jittered)")
    parser.add_argument("--skip-prefect", action="store_true")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from aipaas.modeldef import load_definition
    from aipaas.raycluster import ensure_ray
    from aipaas.settings import PROJECT_ROOT, RaySettings, TuneSettings
    from aipaas.tune import run_search

    definition = load_definition("diagnosis", PROJECT_ROOT / "models")
    df = _data(args.scale)
    seed = 42
    n_cpus = os.cpu_count() or 1
    results: dict[str, Any] = {
        "trials": args.trials,
        "cv_folds": args.folds,
        "rows": len(df),
        "features": len(definition.features),
    }

    with tempfile.TemporaryDirectory(prefix="aipaas-bench-") as tmp:
        t0 = time.perf_counter()
        ensure_ray(RaySettings(num_cpus=n_cpus, object_store_memory_mb=200))
        results["ray_init_s"] = time.perf_counter() - t0
        tune_s: dict[int, float] = {}
        best_tune: dict[int, float] = {}
        drawn: dict[int, list[dict[str, Any]]] = {}
        compute_s: dict[int, float] = {}
        # Warm-up: the first search in a process also pays worker start and imports.
        t0 = time.perf_counter()
        warm = TuneSettings(num_samples=n_cpus, max_concurrent=n_cpus, cv_folds=2, seed=seed)
        run_search(definition, df.head(200), warm, storage_dir=Path(tmp) / "ray_results")
        results["ray_warmup_search_s"] = time.perf_counter() - t0
        for concurrency in sorted({1, n_cpus}):
            ts = TuneSettings(
                num_samples=args.trials, max_concurrent=concurrency, cv_folds=args.folds, seed=seed
            )
            t0 = time.perf_counter()
            res = run_search(definition, df, ts, storage_dir=Path(tmp) / "ray_results")
            tune_s[concurrency] = time.perf_counter() - t0
            best_tune[concurrency] = res.best_score
            drawn[concurrency] = sorted((t.config for t in res.trials), key=repr)
            compute_s[concurrency] = sum(t.duration_s or 0.0 for t in res.trials)
        import ray

        ray.shutdown()
        # The same seed draws the same configurations whatever the concurrency;
        # plain Python and Prefect then score exactly those.
        configs = drawn[1]
        results["same_configs_every_mode"] = all(d == configs for d in drawn.values())
        t0 = time.perf_counter()
        best_plain = _plain_search(definition, df, configs, args.folds, seed)
        plain_s = time.perf_counter() - t0
        results["plain_python_s"] = plain_s

        if not args.skip_prefect:
            os.environ["PREFECT_HOME"] = str(Path(tmp) / "prefect")
            os.environ.pop("PREFECT_API_URL", None)
            prefect_first, prefect_s = _prefect_search(definition, df, configs, args.folds, seed)
            results["prefect_first_run_s"] = prefect_first
            results["prefect_s"] = prefect_s

    t1, tn = tune_s[1], tune_s[max(tune_s)]
    speedup = t1 / tn
    results.update(
        {
            "ray_tune_s": {str(k): v for k, v in tune_s.items()},
            # Time inside the trials (CV work) summed over trials: the rest is Ray's.
            "ray_trial_compute_s": {str(k): v for k, v in compute_s.items()},
            "concurrency_n": max(tune_s),
            "speedup": speedup,
            "parallel_efficiency": speedup / max(tune_s),
            "ray_overhead_s": t1 - plain_s,
            "ray_overhead_per_trial_s": (t1 - plain_s) / args.trials,
            "speedup_vs_plain": plain_s / tn,
            "best_cv_roc_auc": {
                "plain": best_plain,
                **{f"tune_c{k}": v for k, v in best_tune.items()},
            },
        }
    )
    rows = [
        ["plain Python (sequential)", plain_s, 1.0, "-"],
        ["Ray Tune, 1 at a time", t1, plain_s / t1, f"overhead {t1 - plain_s:+.2f} s"],
        [
            f"Ray Tune, {max(tune_s)} at a time",
            tn,
            plain_s / tn,
            f"speed-up {speedup:.2f}x, efficiency {speedup / max(tune_s):.0%}",
        ],
    ]
    if "prefect_s" in results:
        p = results["prefect_s"]
        rows.append(
            ["Prefect flow + task per trial", p, plain_s / p, f"overhead {p - plain_s:+.2f} s"]
        )
        rows.append(
            [
                "  first run (server start)",
                results["prefect_first_run_s"],
                plain_s / results["prefect_first_run_s"],
                "-",
            ]
        )
    rows.append(["Ray start (ray.init)", results["ray_init_s"], "-", "once per process"])
    rows.append(["first search (warm-up)", results["ray_warmup_search_s"], "-", "worker start"])
    print_table(
        ["mode", "seconds", "vs plain", "note"],
        rows,
        title=f"search: {args.trials} trials x {args.folds}-fold CV, {len(df)} rows, LightGBM",
    )
    path = write_results("training", results)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
