"""``python -m bench [name ...]``: run every ``bench/bench_*.py`` (or the named ones).

Each benchmark runs in a fresh interpreter (``python -m bench.bench_<name>``)
so Ray, Prefect and servers started by one do not skew the next. The exit
code is non-zero if any benchmark failed; the others still run, and their
results are still written.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench import RESULTS_DIR, print_table

BENCH_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    known = discover()
    wanted = argv or known
    unknown = [w for w in wanted if w not in known]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {known}", file=sys.stderr)
        return 2
    rows = []
    failed = 0
    for name in wanted:
        print(f"\n=== bench {name} ===", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"bench.bench_{name}"], check=False)
        result = RESULTS_DIR / f"{name}.json"
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        failed += proc.returncode != 0
        rows.append(
            [name, status, time.perf_counter() - t0, str(result) if result.exists() else "-"]
        )
    print_table(["benchmark", "status", "seconds", "results"], rows, title="benchmarks")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
