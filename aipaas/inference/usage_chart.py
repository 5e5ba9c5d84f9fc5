"""A PNG of usage over time: requests and cost per hour or day, one line per key.

For people who look rather than read tables (``aipaas usage --by day --chart
usage.png``). Matplotlib runs headless (``Agg``), as for the training plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from aipaas.exceptions import ConfigurationError
from aipaas.inference.usage import UsageRow

SIZE = (9, 6)
DPI = 100


@dataclass(frozen=True)
class KeySeries:
    """One key's requests and cost per bucket, buckets in time order."""

    label: str
    starts: list[datetime]
    requests: list[int]
    cost: list[float]


def per_key(rows: Sequence[UsageRow]) -> list[KeySeries]:
    """Sum a time series over model versions and end users: one series per key."""
    sums: dict[str, dict[str, list[float]]] = {}
    labels: dict[str, str] = {}
    for r in rows:
        if r.bucket is None:
            raise ConfigurationError("a usage chart needs a time series: usage by hour or day")
        key = r.key_id or "-"
        labels[key] = f"{key} ({r.owner})" if r.owner else key
        cell = sums.setdefault(key, {}).setdefault(r.bucket, [0.0, 0.0])
        cell[0] += r.requests
        cell[1] += r.cost
    return [
        KeySeries(
            label=labels[key],
            starts=[datetime.fromisoformat(b) for b in sorted(cells)],
            requests=[int(cells[b][0]) for b in sorted(cells)],
            cost=[cells[b][1] for b in sorted(cells)],
        )
        for key, cells in sorted(sums.items())
    ]


def write_chart(rows: Sequence[UsageRow], path: Path, *, bucket: str) -> Path:
    """Draw requests (top) and cost (bottom) per ``bucket``, one line per key, into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = per_key(rows)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=SIZE)
    for s in series:
        top.plot(s.starts, s.requests, marker="o", label=s.label)
        bottom.plot(s.starts, s.cost, marker="o", label=s.label)
    top.set(ylabel=f"requests per {bucket}", title=f"usage per {bucket} (UTC), by key")
    bottom.set(ylabel=f"cost per {bucket}", xlabel=f"{bucket} starting (UTC)")
    if series:
        top.legend(loc="upper left", fontsize="small")
    else:
        top.text(0.5, 0.5, "no requests in this range", ha="center", transform=top.transAxes)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
