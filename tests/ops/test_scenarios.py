"""The demo's scenarios: what each demo model is sent, ordinary and shifted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from aipaas.cli import demo
from aipaas.cli.demo import Demo
from aipaas.ops import simulate
from aipaas.settings import Settings


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


def test_shifted_texts_a_retrain_learnt_are_not_sent_again() -> None:
    """A second demo's labelled quotes must not repeat the first's: the suite refuses repeats."""
    pool = [f"quote number {i} about perl" for i in range(10)]
    scenario = simulate.NewTexts(lambda: pool, "computers", "new")
    first = [row["text"] for row, _ in scenario.shifted(pd.DataFrame(), ("text",), "t", 6, 1)]
    assert len(set(first)) == 6 and set(first) <= set(pool)
    second = scenario.shifted(pd.DataFrame(), ("text",), "t", 6, 2, exclude=first)
    texts = [row["text"] for row, _ in second]
    assert len(set(texts)) == 6 and not set(texts) & set(first)
    # Four fresh ones are left: the other two are two quotes joined, new texts of the kind.
    assert sum(t in pool for t in texts) == 4
    assert all(t.count("quote number") == 2 for t in texts if t not in pool)
    assert {label for _, label in second} == {"computers"}


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


# -- a clean start of its own, and the timings ---------------------------------------


def test_the_first_champion_is_the_first_version_promoted_on_the_trail(settings: Settings) -> None:
    """What a second demo rolls back to: not a retrain's version, nor a rejected one."""
    from aipaas.training import promotion_log
    from aipaas.training.promotion_log import PromotionRecord

    assert demo.first_champion(settings, "diagnosis") is None
    for version, action, result in (
        ("1", "promote", "rejected"),
        ("2", "promote", "promoted"),
        ("3", "promote", "promoted"),
        ("2", "rollback", "rolled-back"),
        ("4", "promote", "promoted"),
    ):
        rec = PromotionRecord("diagnosis", version, action, result, "test")
        promotion_log.append(settings, rec)
    assert demo.first_champion(settings, "diagnosis") == "2"
    assert demo.first_champion(settings, "topic") is None


def test_ordinary_traffic_comes_from_the_shipped_source_not_the_retrained_data(
    settings: Settings,
) -> None:
    """Rows a retrain added (an earlier demo's shifted ones) are not sampled as ordinary."""
    s = _demo_settings(settings)
    incoming = s.data.dir / "incoming" / "breast_cancer"
    incoming.mkdir(parents=True)
    d = Demo(s, "diagnosis", 5.0)
    source = d.source_frame()
    shifted = source.assign(mean_area=source.mean_area * 1000)
    shifted.to_csv(incoming / "feedback-20261207T000000.csv", index=False)
    frame = Demo(s, "diagnosis", 5.0).source_frame()
    assert len(frame) == 569 and frame.mean_area.max() < 3000  # breast_cancer as shipped
    traffic = d.traffic(frame, 200, seed=1)
    assert max(row["mean_area"] for row, _ in traffic) < 3000 * 1.1
    scaled = d.traffic(frame, 200, seed=1, shifted=True)  # the same sample, shifted
    assert [r["mean_area"] for r, _ in scaled] == pytest.approx(
        [r["mean_area"] * 1.45 for r, _ in traffic]
    )


def test_the_open_window_of_an_earlier_run_is_read_from_the_profilers_checkpoint(
    settings: Settings,
) -> None:
    from aipaas.monitoring import spool

    s = settings.model_copy(
        update={"monitoring": settings.monitoring.model_copy(update={"window_rows": 5})}
    )
    assert spool.open_windows(s) == {}
    with spool.SpoolWriter(s) as writer, spool.Profiler(s) as profiler:
        for i in range(3):
            writer.submit("m", "1", [{"x": float(i)}], [0])
        profiler.step()
        assert spool.open_windows(s) == {("m", "1"): (1, 3)}
        for i in range(3):
            writer.submit("m", "1", [{"x": float(i)}], [0])
        profiler.step()  # the first window closed at 5 rows; the second holds 1
        assert spool.open_windows(s) == {("m", "1"): (2, 1)}
        assert [w.rows for w in spool.list_windows(s, "m", "1")] == [5]


def test_a_demo_waits_out_what_is_left_of_the_cooldown_or_says_what_holds_it(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from aipaas.monitoring import retrain

    s = _demo_settings(settings)  # the demo's 2 min cooldown
    retrain.record_start(s, "diagnosis", now=time.time() - 119.0)
    took = time.monotonic()
    Demo(s, "diagnosis", 30.0).wait_out_cooldown()
    assert 0.5 < time.monotonic() - took < 5.0
    assert "waiting 1 s for the retrain guardrails (cooldown: " in capsys.readouterr().out
    Demo(s, "diagnosis", 30.0).wait_out_cooldown()  # nothing left: no wait
    assert capsys.readouterr().out == ""

    held = s.model_copy(update={"retrain": s.retrain.model_copy(update={"cooldown_minutes": 60})})
    retrain.record_start(held, "diagnosis")
    with pytest.raises(demo.DemoFailed, match="retraining is held for 60 more minutes"):
        Demo(held, "diagnosis", 30.0).wait_out_cooldown()


def test_the_timings_say_where_drift_to_serving_went_in_json(tmp_path: Path) -> None:
    t = demo.Timings("diagnosis", lifecycle_s=80.0, clean_start_s=3.5, ordinary_s=9.0)
    t.shifted_to_drift_s, t.drift_to_serving_s, t.new_version = 7.25, 61.0, "2"
    t.drift_to_serving = {"retrain_start_to_registered_s": 50.0, "decision_to_serving_s": 1.5}
    line = t.line()
    assert "drift detected -> v2 serving 61.0 (retrain_start_to_registered 50.0," in line
    assert "cooldown wait -" in line  # not reached
    record = demo.DemoTimings(started_at=1.0, platform_start_s=60.0, total_s=230.0, models=[t])
    record.write(tmp_path / "a" / "timings.json", None)
    body = json.loads((tmp_path / "a" / "timings.json").read_text())
    assert body["total_s"] == 230.0 and body["platform_start_s"] == 60.0
    [model] = body["models"]
    assert model["model"] == "diagnosis" and model["drift_to_serving_s"] == 61.0
    assert model["drift_to_serving"]["decision_to_serving_s"] == 1.5
    assert len(body["load_average"]) == 3


def _demo_settings(settings: Settings) -> Settings:
    """``settings`` with the demo's retrain policy and a data directory of its own."""
    data = settings.home / "data"
    data.mkdir(exist_ok=True)
    return settings.model_copy(
        update={
            "retrain": settings.retrain.model_copy(update={"cooldown_minutes": 2.0}),
            "data": settings.data.model_copy(update={"dir": data}),
        }
    )
