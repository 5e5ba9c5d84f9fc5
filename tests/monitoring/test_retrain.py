"""Retraining guardrails (cooldown, daily cap, suggest-only), the record of every decision,
and the feedback export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from aipaas.exceptions import DataValidationError, GateFailedError
from aipaas.modeldef import ModelDefinition
from aipaas.monitoring import retrain
from aipaas.monitoring.retrain import FeedbackExport, GuardrailVerdict, RetrainOutcome
from aipaas.settings import RetrainSettings, Settings

H = 3600.0
NOW = 1_800_000_000.0
ALLOWED = GuardrailVerdict(True, False, ("allowed: 0 retrains in the last 24 h",), 0)


def test_first_retrain_is_allowed() -> None:
    verdict = retrain.guardrails(RetrainSettings(), [], NOW)
    assert verdict.allowed and not verdict.suggest_only
    assert verdict.retrains_last_24h == 0 and verdict.next_allowed_at is None


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


def test_state_persists_in_the_platform_database_per_model(platform_settings: Settings) -> None:
    settings = platform_settings.model_copy(
        update={"retrain": RetrainSettings(cooldown_minutes=30, max_per_day=4)}
    )
    assert retrain.guardrail_verdict(settings, "diagnosis", NOW).allowed
    retrain.record_start(settings, "diagnosis", NOW)
    again = settings.model_copy(update={"retrain": RetrainSettings(cooldown_minutes=30)})
    assert not retrain.guardrail_verdict(again, "diagnosis", NOW + 60).allowed
    assert retrain.guardrail_verdict(again, "other", NOW + 60).allowed  # per model
    assert retrain.started_at(again, "diagnosis") == [NOW]
    assert not retrain.state_path(settings).exists()  # nothing under home


def test_starts_older_than_a_week_are_forgotten(platform_settings: Settings) -> None:
    settings = platform_settings
    retrain.record_start(settings, "diagnosis", NOW - 8 * 24 * H)
    retrain.record_start(settings, "diagnosis", NOW)
    assert retrain.started_at(settings, "diagnosis") == [NOW]


def test_a_claim_checks_and_counts_in_one_step(platform_settings: Settings) -> None:
    policy = RetrainSettings(cooldown_minutes=30, max_per_day=2)
    settings = platform_settings.model_copy(update={"retrain": policy})
    first = retrain.claim(settings, "diagnosis", NOW)
    assert first.allowed and retrain.started_at(settings, "diagnosis") == [NOW]
    cooled = retrain.claim(settings, "diagnosis", NOW + 60)  # refused: not counted
    assert not cooled.allowed and "cooldown" in cooled.reasons[0]
    assert retrain.started_at(settings, "diagnosis") == [NOW]
    assert retrain.claim(settings, "diagnosis", NOW + 31 * 60).allowed
    capped = retrain.claim(settings, "diagnosis", NOW + 62 * 60)
    assert not capped.allowed and "daily cap: 2 retrains" in capped.reasons[0]
    suggest = settings.model_copy(update={"retrain": RetrainSettings(suggest_only=True)})
    assert retrain.claim(suggest, "other", NOW).suggest_only
    assert retrain.started_at(settings, "other") == []  # suggested: nothing started


def test_a_refusal_is_recorded_with_the_guardrails_reasons(home: Path) -> None:
    settings = Settings(_env_file=None, home=home)
    cooled = retrain.guardrails(RetrainSettings(cooldown_minutes=30), [NOW - 60], NOW)
    suggested = retrain.guardrails(RetrainSettings(suggest_only=True), [], NOW)
    skipped = retrain.record_refusal(settings, "diagnosis", "drift: x", cooled)
    retrain.record_refusal(settings, "other", "requested", suggested)
    assert skipped.action == "skipped" and skipped.outcome is None
    assert skipped.guardrails == cooled.reasons
    (entry,) = retrain.retrain_history(settings, "diagnosis")
    assert entry == skipped and entry.reason == "drift: x"
    assert [e.action for e in retrain.retrain_history(settings)] == ["skipped", "suggested"]


def test_an_attempt_records_the_promotion_it_ended_in(home: Path, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=home)
    exported = FeedbackExport(tmp_path / "feedback-1.csv", 7)
    with retrain.attempt(settings, "diagnosis", "drift: x", ALLOWED, exported) as run:
        run.trained("4", "md5abc")
        run.decided("promoted")
    assert run.outcome == RetrainOutcome(
        "diagnosis", "drift: x", "retrained", ALLOWED.reasons, at=run.outcome.at,
        outcome="promoted", feedback_file=str(exported.path), feedback_rows=7,
        data_hash="md5abc", version="4",
    )  # fmt: skip
    assert retrain.retrain_history(settings, "diagnosis") == [run.outcome]


def test_a_failed_gate_ends_the_attempt_rejected(home: Path) -> None:
    settings = Settings(_env_file=None, home=home)
    with retrain.attempt(settings, "diagnosis", "r", ALLOWED, FeedbackExport(None)) as run:
        run.trained("5", "md5")
        raise GateFailedError("roc_auc 0.61 < 0.9")
    (entry,) = retrain.retrain_history(settings, "diagnosis")
    assert entry.outcome == "rejected" and entry.error == "roc_auc 0.61 < 0.9"
    assert entry.version == "5" and entry.feedback_file is None and entry == run.outcome


def test_another_platform_error_is_recorded_and_raised(home: Path) -> None:
    settings = Settings(_env_file=None, home=home)
    with pytest.raises(DataValidationError, match="suite failed"):
        with retrain.attempt(settings, "diagnosis", "r", ALLOWED, FeedbackExport(None)):
            raise DataValidationError("suite failed")
    (entry,) = retrain.retrain_history(settings, "diagnosis")
    assert entry.action == "retrained" and entry.outcome == "failed"
    assert entry.error == "suite failed"


def test_an_error_from_outside_the_platform_is_recorded_too(home: Path) -> None:
    """A Ray node that did not start, say: the history says failed, not nothing."""
    settings = Settings(_env_file=None, home=home)
    with pytest.raises(RuntimeError, match="node timed out"):
        with retrain.attempt(settings, "diagnosis", "r", ALLOWED, FeedbackExport(None)):
            raise RuntimeError("The current node timed out during startup.")
    (entry,) = retrain.retrain_history(settings, "diagnosis")
    assert entry.outcome == "failed"
    assert entry.error == "RuntimeError: The current node timed out during startup."


def test_history_is_shared_by_every_home_on_the_database(
    platform_settings: Settings, tmp_path: Path
) -> None:
    other = platform_settings.model_copy(update={"home": tmp_path / "host-b"})
    retrain.record_refusal(platform_settings, "diagnosis", "on a", ALLOWED)
    retrain.record_refusal(other, "diagnosis", "on b", ALLOWED)
    for s in (platform_settings, other):
        assert [e.reason for e in retrain.retrain_history(s, "diagnosis")] == ["on a", "on b"]
        assert retrain.retrain_history(s, "other") == []


def test_the_files_of_an_older_aipaas_are_imported_once(
    platform_settings: Settings, tmp_path: Path
) -> None:
    settings = _with_data_dir(platform_settings, tmp_path / "data")
    folder = settings.home / "retrain"
    folder.mkdir()
    an_hour_ago = time.time() - H
    old = RetrainOutcome("diagnosis", "drift: x", "skipped", ("cooldown",), at=an_hour_ago)
    retrain.history_path(settings).write_text(
        json.dumps(old.to_dict()) + '\n{"model": "diagnosis", "act'  # a torn last line
    )
    state = {
        "diagnosis": {"started": [NOW - 2 * H], "exported_through": "2026-01-01T10:00:00+00:00"}
    }
    retrain.state_path(settings).write_text(json.dumps(state))

    new = retrain.record_refusal(settings, "diagnosis", "requested", ALLOWED)
    assert retrain.retrain_history(settings, "diagnosis") == [old, new]
    assert retrain.started_at(settings, "diagnosis") == [NOW - 2 * H]
    assert retrain.exported_through(settings, "diagnosis") == pd.Timestamp(
        "2026-01-01T10:00:00", tz="UTC"
    )
    assert sorted(p.name.split("-")[0] for p in folder.iterdir()) == [
        "history.jsonl.imported",
        "state.json.imported",
    ]
    assert len(retrain.retrain_history(settings, "diagnosis")) == 2  # once

    # The export mark carries on where the file left it.
    store = FeedbackStore()
    store.add(5, "2026-01-01T09:00:00")
    store.add(2, "2026-01-01T11:00:00")
    assert retrain.export_feedback(settings, _definition(), labelled_rows=store).rows == 2


def _with_data_dir(settings: Settings, folder: Path) -> Settings:
    return settings.model_copy(update={"data": settings.data.model_copy(update={"dir": folder})})


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
                "a": [1.0] * n if with_inputs else [float("nan")] * n,
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

    def __call__(
        self, settings: Settings, model: str, since: object = None, *, target: str = "label"
    ) -> pd.DataFrame:
        assert self.frame is not None and target == "target"
        if since is None:
            return self.frame.copy()
        return self.frame[self.frame["labelled_at"] >= pd.Timestamp(since)].copy()


def test_export_writes_only_new_labelled_rows_with_inputs(
    platform_settings: Settings, tmp_path: Path
) -> None:
    settings = _with_data_dir(platform_settings, tmp_path / "data")
    store = FeedbackStore()
    store.add(5, "2026-01-01T10:00:00")
    store.add(2, "2026-01-01T10:30:00", with_inputs=False)

    first = retrain.export_feedback(settings, _definition(), labelled_rows=store, now=NOW)
    assert first.rows == 5 and first.path is not None
    assert first.path.parent == tmp_path / "data" / "incoming" / "breast_cancer"
    assert first.path.name.startswith("feedback-") and first.path.suffix == ".csv"
    exported = pd.read_csv(first.path)
    assert list(exported.columns) == ["a", "b", "target"]
    assert len(exported) == 5

    # Nothing new: nothing written.
    nothing = retrain.export_feedback(settings, _definition(), labelled_rows=store)
    assert nothing == FeedbackExport(None, 0)

    store.add(3, "2026-01-02T09:00:00")
    second = retrain.export_feedback(settings, _definition(), labelled_rows=store, now=NOW + 1)
    assert second.rows == 3 and second.path is not None and second.path != first.path
    assert sorted(first.path.parent.iterdir()) == sorted([first.path, second.path])
