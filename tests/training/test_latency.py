"""Predict latency: the numbers promotion's latency gate reads."""

from __future__ import annotations

import time

import pytest

from aipaas.training import tags
from aipaas.training.latency import measure_latency


def test_percentiles_are_in_milliseconds_per_call() -> None:
    lat = measure_latency(lambda x: time.sleep(0.002), [1], [1, 2], repeats=20, batch_repeats=5)
    assert 1.5 < lat.p50_ms < 50
    assert lat.p99_ms >= lat.p50_ms
    assert 1.5 < lat.batch_p50_ms <= lat.batch_p99_ms
    assert lat.batch_rows == 2


def test_batch_latency_grows_with_the_batch() -> None:
    lat = measure_latency(
        lambda x: time.sleep(0.001 * len(x)), [1], list(range(5)), repeats=5, batch_repeats=5
    )
    assert lat.batch_p50_ms > lat.p50_ms + 2


def test_warm_up_calls_are_not_timed() -> None:
    calls: list[int] = []

    def slow_first(x: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.2)

    lat = measure_latency(slow_first, [1], [1], repeats=10, batch_repeats=2, warmup=1, rounds=1)
    assert lat.p99_ms < 100 and len(calls) == 1 + 10 + 1 + 2


def test_a_burst_in_one_round_does_not_make_the_p99() -> None:
    """A neighbour's burst of CPU lands on one round: the gate reads the model's own p99."""
    calls: list[int] = []

    def burst_in_the_first_round(x: object) -> None:
        calls.append(1)
        if 3 <= len(calls) <= 12:  # timed calls of round 1 (after 2 warm-ups)
            time.sleep(0.05)

    lat = measure_latency(burst_in_the_first_round, [1], [1], repeats=10, batch_repeats=2,
                          warmup=2, rounds=3)  # fmt: skip
    assert lat.p99_ms < 20 and len(calls) == 3 * (2 + 10) + 2 + 2


def test_metrics_carry_the_names_promotion_reads() -> None:
    lat = measure_latency(lambda x: None, [1], [1], repeats=3, batch_repeats=3)
    metrics = lat.metrics()
    assert metrics[tags.LATENCY_P99_MS] == pytest.approx(lat.p99_ms)
    assert set(metrics) == {
        tags.LATENCY_P50_MS,
        tags.LATENCY_P99_MS,
        tags.LATENCY_BATCH_P50_MS,
        tags.LATENCY_BATCH_P99_MS,
    }
