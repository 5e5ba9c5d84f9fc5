"""The demo's scenarios: what each demo model is sent, ordinary and shifted."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from aipaas.cli import demo
from aipaas.ops import simulate


def _quotes() -> pd.DataFrame:
    return pd.DataFrame({"text": ["a b", "c d e", "f"], "topic": ["people", "science", "people"]})


def test_a_text_scenario_sends_training_texts_then_the_new_kind_with_its_label() -> None:
    scenario = simulate.NewTexts(lambda: ["perl is line noise", "linux"], "computers", "new")
    frame = _quotes()
    ordinary = scenario.ordinary(frame, ("text",), "topic", 50, 0)
    truth = dict(zip(frame.text, frame.topic, strict=True))
    assert len(ordinary) == 50 and {row["text"] for row, _ in ordinary} == set(frame.text)
    assert all(label == truth[row["text"]] for row, label in ordinary)
    shifted = scenario.shifted(frame, ("text",), "topic", 2, 1)
    assert sorted(row["text"] for row, _ in shifted) == ["linux", "perl is line noise"]
    assert {label for _, label in shifted} == {"computers"}
    assert all(list(row) == ["text"] for row, _ in shifted)


def test_every_demo_model_has_a_scenario_and_topic_shifts_to_unseen_quotes() -> None:
    assert list(demo.SCENARIOS) == ["diagnosis", "topic"]
    diagnosis = demo.SCENARIOS["diagnosis"]
    assert isinstance(diagnosis, simulate.ScaledFeatures) and diagnosis.factors == demo.SHIFT
    topic = demo.SCENARIOS["topic"]
    assert isinstance(topic, simulate.NewTexts) and topic.label == "computers"
    texts = topic.texts()
    assert len(texts) > 500 and any("perl" in t.lower() for t in texts)
    # Labelled, the shifted quotes become training rows: no repeats (the suite refuses them).
    shifted = topic.shifted(pd.DataFrame(), ("text",), "topic", 300, 7)
    assert len({row["text"] for row, _ in shifted}) == 300


def test_the_demo_refuses_a_model_without_a_scenario() -> None:
    with pytest.raises(demo.DemoFailed, match="no demo scenario for \\['nope'\\]"):
        demo.demo_cmd(stay=False, model=["nope"], timeout_min=1.0)


def test_clients_call_the_models_own_route() -> None:
    paths: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200, json={"model_version": "1", "request_id": "r"})

    traffic = [({"text": "hello"}, "people")] * 3
    stats = simulate.run_client(
        "http://api", "app", "k", traffic, rate_per_s=10_000, path="/models/topic/predict",
        transport=httpx.MockTransport(api),
    )  # fmt: skip
    assert stats.ok == 3 and paths == ["/models/topic/predict"] * 3
