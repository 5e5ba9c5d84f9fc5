"""What a canary or a shadow release costs a request: ``/predict`` with none, a shadow, a canary.

One app in this process (FastAPI's TestClient: the whole ASGI path, keys,
limits and the audit commit, without the network), a real MLflow store with
two registered LightGBM versions of one model: v1 champion, v2 the
challenger. Requests go in interleaved blocks, the release switched between
blocks the way users switch it (:func:`aipaas.training.canary.start` and
``end``, which the app follows through the promotion signal), so a busy
spell of the machine lands on every configuration alike:

- ``none``: the champion answers, no release;
- ``shadow``: the champion answers; each request's rows are queued for v2,
  which a background thread runs and records (``shadow_outputs``);
- ``canary 100%``: v2 answers every request (on its own thread), v1 stands by.

Run: ``uv run python -m bench.bench_canary`` (or ``make bench``); writes
``bench/results/canary.json``. ``BENCH_CANARY_BLOCKS`` (default 8 per
configuration) and ``BENCH_CANARY_REQUESTS`` (default 100 per block).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import print_table, write_results

MODEL = "diagnosis"
ROW = {"mean_radius": 1.0, "mean_texture": 0.0, "mean_area": 1.0}
MODES = ("none", "shadow", "canary 100%")


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from aipaas.inference import keys
    from aipaas.schemas import GateResult
    from aipaas.training import canary, promote
    from serving.app import create_app
    from tests.conftest import make_settings
    from tests.support.definitions import tiny_definition
    from tests.support.models import FEATURES, log_lgbm

    blocks = int(os.environ.get("BENCH_CANARY_BLOCKS", "8"))
    per_block = int(os.environ.get("BENCH_CANARY_REQUESTS", "100"))
    home = Path(tempfile.mkdtemp(prefix="aipaas-bench-canary-")) / "home"
    home.mkdir()
    s = make_settings(home)
    v1 = log_lgbm(s, MODEL)
    v2 = log_lgbm(s, MODEL, champion=False, seed=7)
    definition = tiny_definition(name=MODEL, features=tuple(FEATURES))
    key = keys.create_key(s, "bench", "predict", rate="100000/s")[1]
    headers = {"Authorization": f"Bearer {key}"}
    passed = promote.Assessment(MODEL, v2, v1, (GateResult("bench", True, 1.0, ">= 0"),))
    latencies: dict[str, list[float]] = {m: [] for m in MODES}
    answered_by: dict[str, set[str]] = {m: set() for m in MODES}
    with TestClient(create_app(s, key_cache_s=600.0)) as client:
        holder = client.app.state.components.holder  # type: ignore[attr-defined]

        def switch(mode: str) -> None:
            if canary.active(s, MODEL) is not None:
                canary.end(s, MODEL, "stopped", decided_by="bench")
            if mode != "none":
                canary.start(
                    s, definition, v2, mode="shadow" if mode == "shadow" else "canary",
                    percent=100.0, watch_s=3600, decided_by="bench", assessment=passed,
                )  # fmt: skip
            want = {"none": None, "shadow": "shadow"}.get(mode, "canary")

            def followed() -> bool:
                release = holder.canary(MODEL)
                return (release[0].mode if release else None) == want

            deadline = time.monotonic() + 30
            while not followed():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serving did not follow the switch to {mode!r}")
                time.sleep(0.05)

        for _ in range(200):  # warm: both versions' code paths, the key cache
            client.post("/predict", json=ROW, headers=headers)
        for block in range(blocks * len(MODES)):
            mode = MODES[block % len(MODES)]
            switch(mode)
            for _ in range(per_block):
                t = time.perf_counter()
                r = client.post("/predict", json=ROW, headers=headers)
                latencies[mode].append((time.perf_counter() - t) * 1000.0)
                if r.status_code != 200:
                    raise RuntimeError(f"{mode}: /predict answered {r.status_code}: {r.text}")
                answered_by[mode].add(r.json()["model_version"])
        switch("none")
        shadow = client.app.state.components.shadow  # type: ignore[attr-defined]
        shadow_counts = {"written": shadow.written, "dropped": shadow.dropped, "lost": shadow.lost}
    base = statistics.median(latencies["none"])
    rows = []
    for mode in MODES:
        vals = latencies[mode]
        p50 = statistics.median(vals)
        rows.append(
            {
                "configuration": mode,
                "answered by": ", ".join(f"v{v}" for v in sorted(answered_by[mode])),
                "requests": len(vals),
                "p50 ms": round(p50, 3),
                "p90 ms": round(_percentile(vals, 90), 3),
                "p99 ms": round(_percentile(vals, 99), 3),
                "p50 vs none": round(p50 / base, 3),
            }
        )
    headers_out = list(rows[0])
    print_table(headers_out, [[r[h] for h in headers_out] for r in rows], "canary and shadow cost")
    print(f"shadow rows written {shadow_counts['written']}, dropped {shadow_counts['dropped']}")
    results = {"blocks": blocks, "per_block": per_block, "rows": rows, "shadow": shadow_counts}
    write_results("canary", results)
    return results


if __name__ == "__main__":
    main()
