"""Stage timings of the lifecycle and the demo, before and after, with a profile (issue #14).

"before" is the code at the baseline commit (``--baseline``, default
``0eb10be``), taken with ``git archive`` into a temporary directory (the
repository is not touched) and run with this ``.venv`` by putting that tree
first on ``PYTHONPATH`` for every process the variant starts (``up`` passes its
environment to its children: worker, flow runs, Ray, serving); "after" is the
working tree, the same way. Each variant runs in a process of its own
(``python bench/bench_stages.py --variant ...`` by path, from its tree), so the
private project, the demo's defaults and the CLI all come from the variant's
code. The order alternates (before, after, after, before, ... with
``--rounds``); the load average is recorded at every step.

For each variant:

1. ``aipaas up`` on a private home and data project, serving ``diagnosis``,
   with the issue's search (8 trials, 3 folds): the time until up, then the
   lifecycle ``up`` starts by itself (cold): its flow run's creation to
   champion v1 serving, the ``data``, ``train``, ``promote`` flow runs (Prefect
   API) and the training steps' ``time_<step>_s`` metrics (MLflow API);
2. with ``up`` still running, a second lifecycle through the ``lifecycle``
   deployment (warm: what a user's retrain costs), timed the same way;
3. a third lifecycle in a fresh process under pyinstrument (``bench/
   stage_runner.py``): ``bench/results/stages-profile-<variant>.{txt,html,json}``
   and the top self-time per stage in the output;
4. ``aipaas demo --model diagnosis`` (``--demo all``: every model; ``none``:
   skipped) on another private home (the demo starts its own platform),
   observed from outside: its wall time, and from the drift check that asked
   for the retrain (its time in the platform database's drift history) to
   serving answering with the new version (``/readyz`` polled every 0.5 s).

Prints one table (before s, after s, after/before, target, met?) and writes
``bench/results/stages.json`` with every run's figures (``--table FILE``
prints a written file's tables again). 8 minutes a variant at load 3 on 2
cores, 20 at load 10.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MODEL = "diagnosis"
REPO = Path(__file__).resolve().parent.parent
BENCH_FILE = Path(__file__).resolve()
RUNNER = BENCH_FILE.with_name("stage_runner.py")
FLOWS = ("lifecycle", "data", "train", "promote")
SEARCH = {"AIPAAS_TUNE__NUM_SAMPLES": "8", "AIPAAS_TUNE__CV_FOLDS": "3"}
UP_TIMEOUT_S = 300.0
LIFECYCLE_TIMEOUT_S = 900.0
PHASES = ("cold", "warm", "profiled", "demo")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Targets from issue #14, seconds.
TARGET_LIFECYCLE_S = 60.0
TARGET_DRIFT_TO_SERVING_S = 90.0
TARGET_DEMO_ALL_S = 240.0


def say(msg: str) -> None:
    load = os.getloadavg()[0]
    print(f"[{time.strftime('%H:%M:%S')} load {load:.2f}] {msg}", flush=True)


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- inside a variant's process ------------------------------------------------------


def _epoch(stamp: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def flow_runs(prefect: str) -> list[dict[str, Any]]:
    """Every flow run of the platform, oldest first: name, state, times (epoch s)."""
    from tests.support.platform import get_json

    flows = {f["id"]: f["name"] for f in get_json(f"{prefect}/flows/filter", {})}
    runs = get_json(f"{prefect}/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})
    return [
        {
            "id": r["id"],
            "name": flows.get(r["flow_id"], "?"),
            "state": r["state_type"],
            "created": _epoch(r.get("created")),
            "start": _epoch(r.get("start_time")),
            "end": _epoch(r.get("end_time")),
            "run_s": float(r.get("total_run_time") or 0.0),
        }
        for r in runs
    ]


def lifecycle_stages(runs: list[dict[str, Any]], lifecycle_id: str) -> dict[str, Any]:
    """The lifecycle run and the data/train/promote runs inside its time span."""
    lc = next(r for r in runs if r["id"] == lifecycle_id)
    out: dict[str, Any] = {"lifecycle": lc["run_s"], "lifecycle_state": lc["state"]}
    start, end = lc["start"] or 0.0, lc["end"] or time.time()
    for r in runs:
        if r["name"] in FLOWS[1:] and r["start"] and start <= r["start"] <= end:
            out.setdefault(r["name"], r["run_s"])
    return out


def training_steps(mlflow: str) -> dict[str, dict[str, float]]:
    """``time_<step>_s`` of every registered version's training run, by version."""
    from tests.support.platform import get_json

    found = get_json(
        f"{mlflow}/api/2.0/mlflow/model-versions/search?filter=name%3D%27{MODEL}%27"
    ).get("model_versions", [])
    out = {}
    for v in found:
        run = get_json(f"{mlflow}/api/2.0/mlflow/runs/get?run_id={v['run_id']}")
        metrics = run["run"]["data"].get("metrics", [])
        out[str(v["version"])] = {
            m["key"].removeprefix("time_").removesuffix("_s"): float(m["value"])
            for m in metrics
            if m["key"].startswith("time_")
        }
    return out


def champion(mlflow: str) -> str | None:
    from tests.support.platform import get_json

    url = f"{mlflow}/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=champion"
    try:
        return str(get_json(url)["model_version"]["version"])
    except OSError:
        return None


def served_versions(serving: str) -> dict[str, str]:
    from tests.support.platform import get

    try:
        text = get(f"{serving}/readyz")[1]
    except OSError:
        return {}
    return dict(re.findall(r'"(\w+)"\s*:\s*"(\d+)"', text))


def children_paths(home: Path, tree: str) -> dict[str, Any]:
    """Which processes of this platform run with the variant's tree first on PYTHONPATH."""
    seen: dict[str, Any] = {"with_tree": 0, "without": []}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(
                kv.split("=", 1)
                for kv in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in kv
            )
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if env.get("AIPAAS_HOME") != str(home) or "python" not in cmd:
            continue
        if env.get("PYTHONPATH", "").split(":")[0] == tree:
            seen["with_tree"] += 1
        else:
            seen["without"].append(cmd[:120])
    return seen


def trigger_lifecycle(prefect: str) -> str:
    from tests.support.platform import get_json

    deployment = get_json(f"{prefect}/deployments/name/lifecycle/lifecycle")
    run = get_json(
        f"{prefect}/deployments/{deployment['id']}/create_flow_run",
        {"parameters": {"model": MODEL}, "tags": ["bench-stages"]},
    )
    return str(run["id"])


def wait_flow_run(prefect: str, run_id: str, timeout_s: float) -> str:
    from tests.support.platform import get_json

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = get_json(f"{prefect}/flow_runs/{run_id}")["state_type"]
        if state in TERMINAL:
            return str(state)
        time.sleep(0.5)
    return "TIMEOUT"


def wait_version(serving: str, version: str, timeout_s: float) -> float | None:
    """Epoch time when serving answers with ``version`` of the model; None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served_versions(serving).get(MODEL) == version:
            return time.time()
        time.sleep(0.25)
    return None


def measure_platform(name: str, tree: str, root: Path, results: Path) -> dict[str, Any]:
    """Steps 1-3: up, a cold, a warm and a profiled lifecycle."""
    from tests.support.platform import running_up, stop

    extra = {"AIPAAS_SERVING__MODELS": f'["{MODEL}"]', **SEARCH}
    out: dict[str, Any] = {}
    with running_up(root, extra, timeout_s=UP_TIMEOUT_S) as up:
        prefect, mlflow, serving = up.url("prefect", "/api"), up.url("mlflow"), up.url("serving")
        out["up_s"] = up.up_s
        up_line_at = time.time() - (time.monotonic() - up.started) + up.up_s
        out["load_at_up"] = load_avg()
        say(f"{name}: up in {up.up_s:.1f} s; waiting for the first lifecycle (cold)")
        served_at = wait_version(serving, "1", LIFECYCLE_TIMEOUT_S)
        runs = flow_runs(prefect)
        first = next(r for r in runs if r["name"] == "lifecycle")
        out["cold"] = {
            "wall_s": (served_at - first["created"]) if served_at else None,
            "up_line_to_served_s": (served_at - up_line_at) if served_at else None,
            "flow_run_s": lifecycle_stages(runs, first["id"]),
            "load": load_avg(),
        }
        say(f"{name}: cold lifecycle {out['cold']}")
        out["children"] = children_paths(up.home, tree)

        # Warm: the deployment again, with up running.
        before = champion(mlflow)
        t0 = time.time()
        run_id = trigger_lifecycle(prefect)
        state = wait_flow_run(prefect, run_id, LIFECYCLE_TIMEOUT_S)
        t_done = time.time()
        after = champion(mlflow)
        t_served = wait_version(serving, after, 120) if after and after != before else None
        out["warm"] = {
            "state": state,
            "wall_s": (t_served or t_done) - t0,
            "trigger_to_flow_done_s": t_done - t0,
            "promoted": after != before,
            "champion": after,
            "flow_run_s": lifecycle_stages(flow_runs(prefect), run_id),
            "load": load_avg(),
        }
        say(f"{name}: warm lifecycle {out['warm']}")

        # Profiled: in a fresh process under pyinstrument.
        stem = results / f"stages-profile-{name}"
        env = {
            **up.env,
            "AIPAAS_RAY__ADDRESS": up.ray_address(),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(up.home / "run" / "ray-auth-token"),
        }
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, str(RUNNER), str(stem)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=LIFECYCLE_TIMEOUT_S,
            check=False,
        )
        t_done = time.time()
        (root / "profile.out").write_text(proc.stdout + proc.stderr)
        profiled: dict[str, Any] = {"exit": proc.returncode, "process_wall_s": t_done - t0}
        if proc.returncode == 0:
            profiled |= json.loads(stem.with_suffix(".json").read_text())
        else:
            profiled["error"] = (proc.stdout + proc.stderr)[-3000:]
        lifecycles = [r for r in flow_runs(prefect) if r["name"] == "lifecycle"]
        if len(lifecycles) >= 3:
            profiled["flow_run_s"] = lifecycle_stages(flow_runs(prefect), lifecycles[-1]["id"])
        profiled["load"] = load_avg()
        out["profiled"] = profiled
        say(f"{name}: profiled lifecycle: exit {proc.returncode}, {t_done - t0:.1f} s")
        out["training_steps_by_version"] = training_steps(mlflow)
        out["flow_runs"] = flow_runs(prefect)
        stop(up)
    return out


def retrain_checks(home: Path) -> list[dict[str, Any]]:
    """Drift checks that asked for a retrain, from the platform database (SQLite)."""
    db = home / "platform.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT model, at, record FROM drift_checks ORDER BY at").fetchall()
    out = []
    for model, at, record in rows:
        decision = json.loads(record).get("decision") or {}
        out.append({"model": model, "at": float(at), "retrain": bool(decision.get("retrain"))})
    return out


def measure_demo(name: str, tree: str, root: Path, which: str) -> dict[str, Any]:
    """Step 4: ``aipaas demo`` on a private home, observed from outside."""
    from aipaas.cli.demo import DEMO_ENV
    from tests.support.platform import CLI, up_env

    env, _ = up_env(root)
    # The demo's own defaults (this variant's), as `make demo` has them; the
    # cooldown stays long (one retrain per model, as the e2e test runs it).
    for key in (
        "AIPAAS_TUNE__NUM_SAMPLES",
        "AIPAAS_TUNE__CV_FOLDS",
        "PREFECT_WORKER_QUERY_SECONDS",
    ):
        env.pop(key, None)
        if key in DEMO_ENV:
            env[key] = DEMO_ENV[key]
    serving = f"http://127.0.0.1:{env['AIPAAS_SERVING__PORT']}"
    changes: list[tuple[float, dict[str, str]]] = []
    done = threading.Event()

    def watch() -> None:
        last: dict[str, str] = {}
        while not done.is_set():
            now = served_versions(serving)
            if now and now != last:
                changes.append((time.time(), now))
                last = now
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    args = [] if which == "all" else ["--model", MODEL]
    t0 = time.time()
    with (root / "demo.out").open("w") as log:
        proc = subprocess.run(
            [*CLI, "demo", *args],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=1800,
            check=False,
        )
    total = time.time() - t0
    done.set()
    watcher.join(5)
    home = Path(env["AIPAAS_HOME"])
    checks = retrain_checks(home)
    per_model: dict[str, Any] = {}
    for model in sorted({c["model"] for c in checks}):
        asked = next((c for c in checks if c["model"] == model and c["retrain"]), None)
        first_version = next((v[model] for _, v in changes if model in v), None)
        swapped = next(
            (
                t
                for t, v in changes
                if asked and t >= asked["at"] and v.get(model) not in (None, first_version)
            ),
            None,
        )
        per_model[model] = {
            "retrain_asked_at": asked["at"] if asked else None,
            "new_version_served_at": swapped,
            "drift_to_serving_s": (swapped - asked["at"]) if asked and swapped else None,
            "checks": len([c for c in checks if c["model"] == model]),
        }
    out = {
        "which": which,
        "exit": proc.returncode,
        "total_s": total,
        "per_model": per_model,
        "served_changes": [(round(t - t0, 1), v) for t, v in changes],
        "load": load_avg(),
    }
    if proc.returncode != 0:
        out["tail"] = (root / "demo.out").read_text()[-3000:]
    say(f"{name}: demo {which}: exit {proc.returncode}, {total:.1f} s, {per_model}")
    return out


def run_variant(name: str, tree: str, out_path: Path, demo: str, results: Path) -> None:
    import aipaas

    figures: dict[str, Any] = {
        "variant": name,
        "tree": tree,
        "aipaas_file": aipaas.__file__,
        "load_start": load_avg(),
        "started_at": time.strftime("%H:%M:%S"),
    }
    say(f"{name}: aipaas from {aipaas.__file__}")
    assert aipaas.__file__.startswith(tree + "/"), (aipaas.__file__, tree)
    with tempfile.TemporaryDirectory(prefix=f"aipaas-bench-stages-{name}-") as tmp:
        t0 = time.perf_counter()
        try:
            figures |= measure_platform(name, tree, Path(tmp) / "up", results)
        except Exception as err:  # noqa: BLE001 - a failed step is reported, the demo still runs
            figures["platform_error"] = repr(err)[-3000:]
            say(f"{name}: platform steps failed: {err!r}"[:2000])
        figures["platform_steps_s"] = time.perf_counter() - t0
        if demo != "none":
            figures["demo"] = measure_demo(name, tree, Path(tmp) / "demo", demo)
    figures["load_end"] = load_avg()
    out_path.write_text(json.dumps(figures, indent=2, default=str) + "\n")


# -- the orchestrator ---------------------------------------------------------------


def _pick(run: dict[str, Any], *keys: str) -> Any:
    value: Any = run
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _mean(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, int | float)]
    return sum(nums) / len(nums) if nums else None


def _lifecycle_run(run: dict[str, Any], index: int) -> dict[str, Any]:
    """The ``index``-th lifecycle flow run (0 cold, 1 warm, 2 profiled) of a variant's platform."""
    runs = [r for r in run.get("flow_runs") or [] if r["name"] == "lifecycle"]
    return runs[index] if len(runs) > index else {}


def _gaps(run: dict[str, Any], phase: str, index: int) -> dict[str, float | None]:
    """Around the lifecycle flow run: before it starts, and from its end to serving."""
    lc = _lifecycle_run(run, index)
    wall = _pick(run, phase, "wall_s")
    if not lc.get("created") or not lc.get("start") or not lc.get("end") or wall is None:
        return {"pickup": None, "to_served": None}
    return {
        "pickup": lc["start"] - lc["created"],
        "to_served": lc["created"] + wall - lc["end"],
    }


STEPS = ("ray_init", "prepare", "search", "refit", "evaluate", "register")


def _spec(runs: list[dict[str, Any]], demo: str) -> list[tuple[str, Any, float | None]]:
    """The table's rows: label, how to pick the figure from one run, target."""
    spec: list[tuple[str, Any, float | None]] = [
        ("aipaas up: until up", lambda r: r.get("up_s"), None),
    ]
    phases = (
        ("cold", 0, "1", "lifecycle 1 (cold, started by up): created -> v1 served"),
        ("warm", 1, "2", "lifecycle 2 (warm, deployment, up running): trigger -> served"),
    )
    for phase, index, version, title in phases:
        tag = f"  {phase}:"
        spec.append((title, lambda r, p=phase: _pick(r, p, "wall_s"), TARGET_LIFECYCLE_S))
        spec.append(
            (
                f"{tag} created -> flow run started (worker, process)",
                lambda r, p=phase, i=index: _gaps(r, p, i)["pickup"],
                None,
            )
        )
        for flow in FLOWS:
            spec.append(
                (
                    f"{tag} flow run {flow}",
                    lambda r, p=phase, f=flow: _pick(r, p, "flow_run_s", f),
                    None,
                )
            )
        for step in STEPS:
            spec.append(
                (
                    f"{tag}   train step {step}",
                    lambda r, v=version, s=step: _pick(r, "training_steps_by_version", v, s),
                    None,
                )
            )
        spec.append(
            (
                f"{tag} flow run ended -> new version served",
                lambda r, p=phase, i=index: _gaps(r, p, i)["to_served"],
                None,
            )
        )
    spec += [
        (
            "lifecycle 3 (profiled, own process): process wall",
            lambda r: _pick(r, "profiled", "process_wall_s"),
            None,
        ),
        ("  profiled: the flow call", lambda r: _pick(r, "profiled", "flow_s"), None),
    ]
    if demo != "none":
        models = sorted({m for r in runs for m in (_pick(r, "demo", "per_model") or {})})
        for model in models:
            spec.append(
                (
                    f"demo: drift detected -> {model} new version served",
                    lambda r, m=model: _pick(r, "demo", "per_model", m, "drift_to_serving_s"),
                    TARGET_DRIFT_TO_SERVING_S,
                )
            )
        target = TARGET_DEMO_ALL_S if demo == "all" else None
        spec.append((f"demo ({demo}): total", lambda r: _pick(r, "demo", "total_s"), target))
    return spec


def rows(runs: list[dict[str, Any]], demo: str) -> list[dict[str, Any]]:
    """The table: one row per stage, each variant's mean over its runs."""
    table = []
    for label, pick, target in _spec(runs, demo):
        before = _mean([pick(r) for r in runs if r["variant"] == "before"])
        after = _mean([pick(r) for r in runs if r["variant"] == "after"])
        if before is None and after is None:
            continue
        ratio = after / before if before and after is not None else None
        met = None if target is None or after is None else after <= target
        table.append(
            {
                "stage": label,
                "before_s": before,
                "after_s": after,
                "after_over_before": ratio,
                "target_s": target,
                "met": met,
            }
        )
    return table


def print_profile(name: str, profile: dict[str, Any], top: int = 5) -> None:
    by_stage = profile.get("self_time_by_stage") or {}
    print(
        f"\nprofile {name}: driver self time by stage (top {top} kinds; Ray trials are 'ray' waits)"
    )
    for stage, kinds in by_stage.items():
        total = sum(kinds.values())
        parts = ", ".join(f"{k} {v:.1f}" for k, v in list(kinds.items())[:top])
        print(f"  {stage:<36} {total:6.1f} s: {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="pairs (before, after) to run")
    parser.add_argument("--demo", choices=("all", "diagnosis", "none"), default="diagnosis")
    parser.add_argument("--baseline", default="0eb10be", help="the commit 'before' runs")
    parser.add_argument("--only", choices=("before", "after"), help="one variant (a quick look)")
    parser.add_argument(
        "--variant", nargs=3, metavar=("NAME", "TREE", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--table", type=Path, help="print the table of a stages.json again")
    args = parser.parse_args()
    from bench import write_results

    if args.table:
        report(json.loads(args.table.read_text()))
        return

    if args.variant:
        name, tree, out = args.variant
        # This repository's bench/results, whichever tree the variant imports.
        run_variant(name, tree, Path(out), args.demo, BENCH_FILE.parent / "results")
        return

    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aipaas-bench-stages-") as tmp:
        base = Path(tmp) / "before"
        base.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--short", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        trees = {"before": str(base), "after": str(REPO)}
        order: list[str] = []
        for i in range(args.rounds):
            order += ["before", "after"] if i % 2 == 0 else ["after", "before"]
        if args.only:
            order = [args.only] * args.rounds
        for i, name in enumerate(order):
            out = Path(tmp) / f"{name}-{i}.json"
            env = {**os.environ, "PYTHONPATH": trees[name]}
            say(f"=== {name} ({trees[name]}), run {i + 1} of {len(order)}")
            proc = subprocess.run(
                [
                    sys.executable,
                    str(BENCH_FILE),
                    "--demo",
                    args.demo,
                    "--variant",
                    name,
                    trees[name],
                    str(out),
                ],
                cwd=trees[name],
                env=env,
                check=False,
            )
            run = json.loads(out.read_text()) if out.exists() else {"variant": name}
            runs.append({**run, "round": i // 2, "exit": proc.returncode})
    results = {
        "baseline": args.baseline,
        "after_commit": commit,
        "after_uncommitted": dirty,
        "demo": args.demo,
        "rounds": args.rounds,
        "order": [r["variant"] for r in runs],
        "search": SEARCH,
        "table": rows(runs, args.demo),
        "bench_s": time.perf_counter() - started,
        "runs": runs,
    }
    report(results)
    path = write_results("stages", results)
    print(f"wrote {path} in {results['bench_s'] / 60:.1f} min; profiles beside it")


def report(results: dict[str, Any]) -> None:
    """The table, the profiles' top entries and the load averages of a run's results."""
    from bench import print_table

    runs = results["runs"]
    dirty = " with uncommitted changes" if results.get("after_uncommitted") else ""
    table = rows(runs, results["demo"])
    print_table(
        ["stage (seconds, mean of runs)", "before", "after", "after/before", "target", "met?"],
        [
            [
                r["stage"],
                "-" if r["before_s"] is None else r["before_s"],
                "-" if r["after_s"] is None else r["after_s"],
                "-" if r["after_over_before"] is None else r["after_over_before"],
                "-" if r["target_s"] is None else r["target_s"],
                {None: "-", True: "yes", False: "NO"}[r["met"]],
            ]
            for r in table
        ],
        title=f"stage timings: before {results['baseline']} vs after (working tree at "
        f"{results['after_commit'][:7]}{dirty}), {MODEL}, 8 trials x 3 folds; "
        f"demo {results['demo']}",
    )
    # Per run, with the load: on a shared machine the load moves the figures more than the code.
    heads = [f"{r['variant']} #{i + 1}" for i, r in enumerate(runs)]

    def loads(r: dict[str, Any]) -> str:
        at = (r.get("load_start"), r.get("load_at_up"), *(_pick(r, k, "load") for k in PHASES))
        return " ".join(str(x[0]) if x else "-" for x in at)

    per_run: list[list[Any]] = [
        ["load avg 1 min: start, up, cold, warm, profiled, demo", *map(loads, runs)]
    ]
    for label, pick, _ in _spec(runs, results["demo"]):
        values = [pick(r) for r in runs]
        if any(isinstance(v, int | float) for v in values):
            per_run.append([label, *("-" if v is None else float(v) for v in values)])
    print_table(["stage (seconds), each run in order", *heads], per_run, title="per run")
    for run in runs:
        if "profiled" in run:
            print_profile(f"{run['variant']} (round {run['round']})", run["profiled"])
    loads = [(r["variant"], r.get("load_start"), r.get("load_end")) for r in runs]
    print(f"\nload averages (1, 5, 15 min) at start/end of each variant: {loads}")


if __name__ == "__main__":
    if __package__ in (None, ""):  # run by path (a variant's process): the variant's modules
        sys.path[0] = os.getcwd()
    main()
