"""Drift for text: the ``topic`` model's one feature, judged on real quotes.

The reference is the training split of the ``quotes`` data (Debian's fortunes:
computers, people, politics, science). Served traffic goes through the real
spool and profiler into windows, and a check with the champion injected
decides: held-out quotes of the same topics never ask for a retrain; Star Trek
quotes or gibberish do, through the text statistics alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from aipaas.datasets import ingest, profiles
from aipaas.modeldef import DriftPolicy, load_definition
from aipaas.monitoring import drift, drift_report, drift_stats
from aipaas.monitoring.drift import Champion
from aipaas.monitoring.drift_stats import FeatureDrift
from aipaas.monitoring.spool import Profiler, SpoolWriter
from aipaas.settings import PROJECT_ROOT, Settings
from tests.monitoring.conftest import local_mlflow

TOPIC = load_definition("topic", PROJECT_ROOT / "models")
STATISTICS = ("text.length", "text.tokens", "text.oov", "text.empty")


class Quotes:
    def __init__(self) -> None:
        data = ingest.load_fortunes(ingest_categories(), "topic", ingest.FORTUNES_DIR)
        self.train, self.holdout = train_test_split(
            data, test_size=0.2, random_state=42, stratify=data["topic"]
        )
        self.reference = profiles.profile_frame(self.train)
        self.startrek = list(ingest.load_fortunes(["startrek"], "topic", ingest.FORTUNES_DIR).text)

    def sample(self, texts: list[str], n: int, seed: int) -> list[str]:
        idx = np.random.default_rng(seed).choice(len(texts), n, replace=False)
        return [texts[i] for i in idx]


def ingest_categories() -> list[str]:
    return ingest._categories(ingest.spec("quotes", Settings(_env_file=None)).source.split(":")[1])


def gibberish(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    return [
        " ".join(
            "".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(rng.integers(4, 20))
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def quotes() -> Quotes:
    return Quotes()


def served(texts: list[str]) -> profiles.Profile:
    return profiles.profile_frame(pd.DataFrame({"text": texts, "prediction": "people"}))


def check(settings: Settings, quotes: Quotes, texts: list[str]) -> drift_stats.DriftReport:
    """Serve ``texts`` through the spool and profiler, then run one drift check."""
    with SpoolWriter(settings) as writer:
        for text in texts:
            writer.submit("topic", "1", [{"text": text}], ["people"])
    with Profiler(settings) as profiler:
        profiler.step()
    champion = Champion("1", quotes.reference, holdout_accuracy=0.71)
    return drift.check_model(
        settings,
        TOPIC,
        champion_loader=lambda s, m: champion,
        labelled_rows=lambda s, m, *, target: pd.DataFrame(),
    )


def test_the_reference_profile_carries_the_training_vocabulary(quotes: Quotes) -> None:
    sketch = quotes.reference.text("text")
    assert sketch is not None and sketch.rows == len(quotes.train) and sketch.empty == 0
    assert sketch.counts["the"] > 1000 and len(sketch.counts) > 10_000
    assert 0.05 < sketch.expected_oov_rate() < 0.12
    again = profiles.Profile.from_bytes(quotes.reference.to_bytes())
    assert again.text("text") == sketch and again.num_rows == quotes.reference.num_rows
    assert again.summary("text.length").count == len(quotes.train)


def test_text_sketches_merge_and_count_empty_inputs() -> None:
    a = served(["Hello world", "", "   "])
    b = served(["hello again, it's me"])
    merged = profiles.merge_profiles([a, b])
    assert merged is not None
    sketch = merged.text("text")
    assert sketch is not None
    assert (sketch.rows, sketch.empty, sketch.tokens) == (4, 2, 6)
    assert sketch.counts["hello"] == 2 and sketch.counts["it's"] == 1
    assert sketch.oov_rate(profiles.TextSketch.of(["hello world"])) == pytest.approx(
        3 / 6
    )  # again, it's, me


def test_a_plain_profile_still_reads_and_merges_with_a_text_one() -> None:
    plain = profiles.profile_frame(pd.DataFrame({"x": [1.0, 2.0]}))
    assert plain.text("text") is None
    assert profiles.Profile.from_bytes(plain.to_bytes()).columns == ["x"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_quotes_of_the_same_topics_do_not_drift(quotes: Quotes, seed: int) -> None:
    texts = quotes.sample(list(quotes.holdout.text), 120, seed)
    report, _ = drift_stats.build_report("1", quotes.reference, served(texts), TOPIC)
    assert [f.feature for f in report.features] == list(STATISTICS)
    assert report.decision.verdict == "no retrain", report.decision.reasons
    assert report.decision.reasons == (
        "no drift: 0 of 1 features drifting (policy: 1, every feature; max_drifting_features is 3)",
        "accuracy not judged: no labelled feedback on this version",
    )


@pytest.mark.parametrize("population", ["startrek", "gibberish"])
def test_a_shifted_text_population_asks_for_a_retrain(
    quotes: Quotes, population: str, home: Path
) -> None:
    texts = (
        quotes.sample(quotes.startrek, 150, 0) if population == "startrek" else gibberish(150, 0)
    )
    settings = Settings(
        _env_file=None, home=home, mlflow=local_mlflow(home), monitoring={"window_rows": 50}
    )
    report = check(settings, quotes, texts)
    assert report.rows == 150 and report.windows == (1, 2, 3)
    assert report.decision.verdict == "retrain", report.decision.reasons
    assert report.drifting and all(f.startswith("text.") for f in report.drifting)
    scores = {f.feature: f.score for f in report.features}
    assert scores["text.oov"] > TOPIC.drift.feature_thresholds["text.oov"]
    if population == "gibberish":
        assert scores["text.oov"] > 0.8 and set(report.drifting) >= {"text.tokens", "text.oov"}
    page = Path(report.html_path or "").read_text()
    assert "Decision: retrain" in page
    assert page.count("<img ") == len(STATISTICS) + 1  # one plot per statistic, prediction
    for name in STATISTICS:
        assert f"alt='{name}'" in page
    history = drift_report.drift_history(settings, "topic")
    assert history[-1].decision.retrain and history[-1].rows == 150


def test_ordinary_traffic_through_the_spool_does_not_retrain(quotes: Quotes, home: Path) -> None:
    settings = Settings(
        _env_file=None, home=home, mlflow=local_mlflow(home), monitoring={"window_rows": 100}
    )
    report = check(settings, quotes, quotes.sample(list(quotes.holdout.text), 200, 3))
    assert report.decision.verdict == "no retrain", report.decision.reasons
    assert drift_report.report_metrics(report)["drift_text.oov"] < 0.05


def test_a_surge_of_empty_inputs_drifts(quotes: Quotes) -> None:
    texts = quotes.sample(list(quotes.holdout.text), 80, 4) + [""] * 20 + [" "] * 10
    report, _ = drift_stats.build_report("1", quotes.reference, served(texts), TOPIC)
    empty = next(f for f in report.features if f.feature == "text.empty")
    assert empty.score == pytest.approx(30 / 110) and empty.drifting
    assert report.decision.retrain


# -- the one-feature threshold ------------------------------------------------------


def _drifting(name: str, source: str = "") -> FeatureDrift:
    return FeatureDrift(name, "text", "excess", 0.3, 0.15, True, reasons=("x",), source=source)


def _calm(name: str, source: str = "") -> FeatureDrift:
    return FeatureDrift(name, "text", "excess", 0.0, 0.15, False, source=source)


def test_a_one_feature_model_retrains_when_its_feature_drifts() -> None:
    policy = DriftPolicy(max_drifting_features=3, min_rows=10)
    one = [_drifting("text.oov", "text"), _calm("text.length", "text")]
    decision = drift_stats.decide_retrain(policy, 10, one, None)
    assert decision.retrain
    assert decision.reasons[0].startswith(
        "1 features drifting (policy: 1, every feature; max_drifting_features is 3): text.oov"
    )
    assert decision.cause == (
        "1 features drifting (policy: 1, every feature; max_drifting_features is 3)"
    )
    assert drift_stats.needed_features(policy, 1) == 1
    assert drift_stats.needed_features(policy, 2) == 2
    assert drift_stats.needed_features(policy, 30) == 3


def test_statistics_of_one_feature_count_once() -> None:
    policy = DriftPolicy(max_drifting_features=2, min_rows=10)
    rows = [_drifting("text.oov", "text"), _drifting("text.tokens", "text"), _calm("x")]
    decision = drift_stats.decide_retrain(policy, 10, rows, None)
    assert not decision.retrain  # one of two features drifts, however many statistics
    assert decision.reasons == (
        "no drift: 1 of 2 features drifting (policy: 2)",
        "accuracy not judged",
    )
    assert drift_stats.decide_retrain(policy, 10, [*rows[:2], _drifting("x")], None).retrain
