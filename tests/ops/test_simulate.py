"""Simulated clients: the traffic they sample and what they count of the answers."""

from __future__ import annotations

import json

import httpx
import pandas as pd

from aipaas.ops import simulate


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"size": [10.0, 20.0, 30.0, 40.0], "shape": [1.0] * 4, "y": [0, 1, 0, 1]})


def test_traffic_is_drawn_from_the_data_and_scaled_where_asked() -> None:
    frame = _frame()
    plain = simulate.sample_traffic(frame, ["size", "shape"], "y", 200, seed=1, noise=0.0)
    assert len(plain) == 200
    assert {row["size"] for row, _ in plain} <= set(frame["size"])
    assert all(label == {10.0: 0, 20.0: 1, 30.0: 0, 40.0: 1}[row["size"]] for row, label in plain)
    shifted = simulate.sample_traffic(
        frame, ["size", "shape"], "y", 200, seed=1, noise=0.0, scale={"size": 1.5}
    )
    assert [r["size"] for r, _ in shifted] == [r["size"] * 1.5 for r, _ in plain]
    assert [r["shape"] for r, _ in shifted] == [r["shape"] for r, _ in plain]


def test_a_client_counts_answers_failures_versions_and_labels() -> None:
    seen: list[tuple[str, str, dict]] = []

    def api(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, request.headers["authorization"], body))
        if request.url.path == "/feedback":
            return httpx.Response(201, json={})
        if body["size"] > 25:
            return httpx.Response(429, text="rate limited")
        return httpx.Response(200, json={"model_version": "3", "request_id": f"r{len(seen)}"})

    traffic = simulate.sample_traffic(_frame(), ["size", "shape"], "y", 40, seed=2, noise=0.0)
    stats = simulate.run_client(
        "http://api", "clinic", "k1", traffic, rate_per_s=10_000, feedback=True,
        transport=httpx.MockTransport(api),
    )  # fmt: skip
    small = sum(1 for row, _ in traffic if row["size"] < 25)
    assert 0 < small < 40
    assert (stats.sent, stats.ok, stats.failed) == (40, small, 40 - small)
    assert stats.labelled == small and stats.versions == {"3": small}
    assert stats.errors[0].startswith("429: rate limited")
    assert {auth for _, auth, _ in seen} == {"Bearer k1"}
    labels = [body["label"] for path, _, body in seen if path == "/feedback"]
    assert labels == [label for row, label in traffic if row["size"] < 25]
