"""One lifecycle in this process, under pyinstrument, against a running ``aipaas up``.

Run by path (``python bench/stage_runner.py OUT_STEM``) by
:mod:`bench.bench_stages`, with the variant's tree first on ``PYTHONPATH`` and
the platform's environment (home, ports, Ray head and token), so it imports the
variant's code, as ``aipaas run lifecycle diagnosis`` would. Writes
``OUT_STEM.txt`` (pyinstrument's text tree, frames under 1% hidden),
``OUT_STEM.html`` and ``OUT_STEM.json``: the wall time and where the driver's
time went, per stage (the flow it was in) and per kind (imports by package,
DVC subprocesses, MLflow and Prefect calls, ...).

Time is attributed from each sample upwards: to the first library the
project's own code (aipaas/, flows/, models/) called on the way to it, or to
``import <package>`` when the sample is inside an import. Ray trials run in
other processes and show here as waiting in ``ray``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

MODEL = "diagnosis"
STAGES = {"lifecycle_flow": "lifecycle", "data_flow": "data", "train_flow": "train"}
STAGES |= {"promote_flow": "promote"}
PROJECT_DIRS = ("aipaas", "flows", "models", "serving")


def _tree() -> str:
    import aipaas

    return str(Path(aipaas.__file__).resolve().parent.parent)


def _is_project(path: str, tree: str) -> bool:
    return any(path.startswith(f"{tree}/{d}/") for d in PROJECT_DIRS)


def _package(path: str) -> str:
    """``mlflow`` for ``.../site-packages/mlflow/x.py``; the stdlib module otherwise."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith("<frozen"):
        return "importlib"
    return Path(path).stem  # stdlib: subprocess, threading, socket, ...


def _kind(path: list[Any], tree: str) -> str:
    """What a sample at the end of ``path`` (root first) was doing, from the project's view."""
    # The nearest project frame above the sample, and what it called.
    i = max((k for k, f in enumerate(path) if _is_project(f.file_path or "", tree)), default=-1)
    below = path[i + 1 :]
    for f in below:
        if f.function == "<module>" and f.file_path and not f.file_path.startswith("<"):
            return f"import {_package(f.file_path)}"
    if not below:
        return "own code" if i >= 0 else "(outside project code)"
    callee = _package(below[0].file_path or "?")
    caller = path[i].file_path or "" if i >= 0 else ""
    if caller.endswith("versioning.py") and callee == "subprocess":
        return "DVC (subprocess)"
    if callee == "subprocess":
        return f"subprocess from {Path(caller).stem}"
    return callee


def attribute(root: Any, tree: str) -> dict[str, dict[str, float]]:
    """Self time by stage, then by kind."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def walk(frame: Any, path: list[Any], stage: str) -> None:
        # A frame's self time already holds its synthetic children ([self], [await]).
        if frame.is_synthetic:
            return
        path = [*path, frame]
        if frame.function in STAGES and (frame.file_path or "").startswith(f"{tree}/flows/"):
            stage = STAGES[frame.function]
        self_time = frame.total_self_time
        if self_time > 0:
            out[stage][_kind(path, tree)] += self_time
        for child in frame.children:
            walk(child, path, stage)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    walk(root, [], "startup (imports before the flow)")
    return {s: dict(sorted(k.items(), key=lambda kv: -kv[1])) for s, k in out.items()}


def main(stem: Path) -> None:
    from pyinstrument import Profiler

    started = time.perf_counter()
    profiler = Profiler(interval=0.002)
    profiler.start()
    from aipaas.cli.run import prefect_api
    from aipaas.settings import get_settings
    from flows.lifecycle import lifecycle_flow

    with prefect_api(get_settings()):
        flow_started = time.perf_counter()
        result = lifecycle_flow(model=MODEL)
    flow_s = time.perf_counter() - flow_started
    profiler.stop()
    wall_s = time.perf_counter() - started
    tree = _tree()
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = profiler.output_text(show_all=False, processor_options={"filter_threshold": 0.01})
    stem.with_suffix(".txt").write_text(text)
    # Resampled: the full timeline of a few minutes is tens of MB.
    profiler.write_html(stem.with_suffix(".html"), resample_interval=0.05)
    session = profiler.last_session
    root = session.root_frame() if session else None
    by_stage = attribute(root, tree) if root is not None else {}
    version = getattr(getattr(result, "train", None), "version", None)
    figures = {
        "tree": tree,
        "wall_s": wall_s,
        "flow_s": flow_s,
        "profiled_s": session.duration if session else None,
        "result_version": version,
        "self_time_by_stage": by_stage,
        "pid": os.getpid(),
    }
    stem.with_suffix(".json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"profiled lifecycle: {flow_s:.1f} s in the flow, {wall_s:.1f} s with imports; {tree}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
