"""Retraining guardrails (cooldown, daily cap, suggest-only) and the feedback export."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aipaas.modeldef import ModelDefinition
from aipaas.monitoring import retrain
from aipaas.settings import RetrainSettings, Settings

H = 3600.0
NOW = 1_800_000_000.0


def test_first_retrain_is_allowed() -> None:
    verdict = retrain.guardrails(RetrainSettings(), [], NOW)
    assert verdict.allowed and not verdict.suggest_only
    assert verdict.retrains_last_24h == 0


def test_cooldown_blocks_until_it_has_passed() -> None:
    policy = RetrainSettings(cooldown_minutes=30, max_per_day=10)
    blocked = retrain.guardrails(policy, [NOW - 10 * 60], NOW)
    assert not blocked.allowed
    assert "cooldown" in blocked.reasons[0] and "20.0 min to go" in blocked.reasons[0]
    assert blocked.next_allowed_at == NOW + 20 * 60
    assert retrain.guardrails(policy, [NOW - 31 * 60], NOW).allowed


def test_daily_cap_counts_a_rolling_24_hours() -> None:
    policy = RetrainSettings(cooldown_minutes=0, max_per_day=2)
    two_today = [NOW - 5 * H, NOW - 1 * H]
    capped = retrain.guardrails(policy, two_today, NOW)
    assert not capped.allowed and "daily cap: 2 retrains" in capped.reasons[0]
    assert capped.next_allowed_at == NOW - 5 * H + 24 * H
    assert retrain.guardrails(policy, [NOW - 25 * H, NOW - 1 * H], NOW).allowed


def test_suggest_only_reports_instead_of_retraining() -> None:
    verdict = retrain.guardrails(RetrainSettings(suggest_only=True), [], NOW)
    assert not verdict.allowed and verdict.suggest_only
    assert "suggest-only" in verdict.reasons[-1]


def test_state_and_history_persist_under_home(home: Path) -> None:
    settings = Settings(
        _env_file=None, home=home, retrain={"cooldown_minutes": 30, "max_per_day": 4}
    )
    assert retrain.check(settings, "diagnosis", NOW).allowed
    retrain.record_start(settings, "diagnosis", NOW)
    again = Settings(_env_file=None, home=home, retrain={"cooldown_minutes": 30})
    assert not retrain.check(again, "diagnosis", NOW + 60).allowed
    assert retrain.check(again, "other", NOW + 60).allowed  # per model
    retrain.record_decision(settings, "diagnosis", {"action": "skipped", "reasons": ["x"]})
    (entry,) = retrain.history(settings, "diagnosis")
    assert entry["action"] == "skipped"
    assert (home / "retrain" / "state.json").is_file()


def _definition() -> ModelDefinition:
    return ModelDefinition(
        name="diagnosis",
        dataset="breast_cancer",
        target="target",
        features=("a", "b"),
        build_estimator=lambda params: None,
        search_space={},
    )


class FeedbackStore:
    """Stands in for ``aipaas.inference.feedback.labelled_rows``, same signature."""

    def __init__(self) -> None:
        self.frame: pd.DataFrame | None = None

    def add(self, n: int, at: str, with_inputs: bool = True) -> None:
        rows = pd.DataFrame(
            {
                "a": [1.0] * n if with_inputs else [None] * n,
                "b": [2.0] * n,
                "target": [1] * n,
                "request_id": [f"{at}-{i}" for i in range(n)],
                "model_version": "1",
                "prediction": [0] * n,
                "labelled_at": pd.Timestamp(at, tz="UTC"),
            }
        )
        frames = [rows] if self.frame is None else [self.frame, rows]
        self.frame = pd.concat(frames, ignore_index=True)

    def __call__(self, settings: Settings, model: str, since: object = None) -> pd.DataFrame:
        assert self.frame is not None
        if since is None:
            return self.frame.copy()
        return self.frame[self.frame["labelled_at"] >= pd.Timestamp(since)].copy()


def test_export_writes_only_new_labelled_rows_with_inputs(home: Path, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=home, data={"dir": tmp_path / "data"})
    store = FeedbackStore()
    store.add(5, "2026-01-01T10:00:00")
    store.add(2, "2026-01-01T10:30:00", with_inputs=False)

    path, n = retrain.export_feedback(settings, _definition(), labelled_rows=store, now=NOW)
    assert n == 5 and path is not None
    assert path.parent == tmp_path / "data" / "incoming" / "breast_cancer"
    assert path.name.startswith("feedback-") and path.suffix == ".csv"
    exported = pd.read_csv(path)
    assert list(exported.columns) == ["a", "b", "target"]
    assert len(exported) == 5

    # Nothing new: nothing written.
    assert retrain.export_feedback(settings, _definition(), labelled_rows=store) == (None, 0)

    store.add(3, "2026-01-02T09:00:00")
    path2, n2 = retrain.export_feedback(settings, _definition(), labelled_rows=store, now=NOW + 1)
    assert n2 == 3 and path2 is not None and path2 != path
    assert len(list(path.parent.glob("feedback-*.csv"))) == 2
