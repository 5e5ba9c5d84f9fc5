"""A release's live evidence, read from rows written into a real SQLite platform database.

Requests go through the real audit writer (hash-chained, with their
prediction rows) and labels through ``record_feedback``, as serving writes
them; the judge is then checked on what a person would read: each limit's
value, and the verdict (rolled back, promoted, inconclusive). The shadow
report's numbers are exact on rows built for it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import insert

from aipaas import audit, db
from aipaas.exceptions import ConfigurationError
from aipaas.inference import feedback
from aipaas.modeldef import Canary
from aipaas.monitoring import canary_watch as cw
from aipaas.settings import Settings
from aipaas.training.canary import CanaryState

MODEL = "tiny"
CHAMPION, CHALLENGER = "1", "2"


class Traffic:
    """Writes what serving writes during a release: audit records, predictions, labels."""

    def __init__(self, settings: Settings, model: str = MODEL) -> None:
        self.settings = settings
        self.model = model
        self.writer = audit.AuditWriter(settings, commit_window_ms=0)

    def request(
        self,
        version: str,
        output: Any = "yes",
        *,
        status: int = 200,
        latency_ms: float = 5.0,
        fallback_of: str | None = None,
        route: str = "/predict",
        inputs: dict[str, Any] | None = None,
        label: Any = None,
    ) -> str:
        """One answered request (by ``version``); a fallback names the challenger that failed."""
        rid = uuid.uuid4().hex
        detail = (
            json.dumps({"canary": {"version": fallback_of, "error": "RuntimeError: boom"}})
            if fallback_of
            else None
        )
        record = audit.AuditRecord(
            request_id=rid,
            route=route,
            model=self.model,
            version=version,
            status=status,
            latency_ms=latency_ms,
            event=cw.FALLBACK if fallback_of else None,
            detail=detail,
        )
        preds = (
            audit.prediction_records(
                rid,
                self.model,
                version,
                [inputs or {"a": 0.0}],
                [output],
                log_inputs=inputs is not None,
            )
            if status < 400 and route != "/feedback"
            else []
        )
        self.writer.submit(record, preds).result(10)
        if label is not None:
            feedback.record_feedback(self.settings, rid, label)
        return rid

    def many(self, n: int, version: str, **kw: Any) -> list[str]:
        return [self.request(version, **kw) for _ in range(n)]

    def shadow(
        self,
        champion_output: Any,
        output: Any,
        *,
        version: str = CHALLENGER,
        latency_ms: float = 4.0,
        inputs: dict[str, Any] | None = None,
    ) -> None:
        """One shadowed row: the champion's answer (audited) and the challenger's (or None)."""
        rid = self.request(CHAMPION, champion_output, inputs=inputs)
        row = {
            "request_id": rid,
            "row": 0,
            "model": self.model,
            "version": version,
            "champion_version": CHAMPION,
            "champion_output": json.dumps(champion_output),
            "output": None if output is None else json.dumps(output),
            "error": "RuntimeError: boom" if output is None else None,
            "latency_ms": latency_ms,
            "at": time.time(),
        }
        with db.engine(self.settings).begin() as conn:
            conn.execute(insert(db.shadow_outputs), [row])

    def close(self) -> None:
        self.writer.close()


def release(
    settings: Settings, mode: str = "canary", watch_s: float = 60.0, **limits: Any
) -> CanaryState:
    """A running release as the chain would give it, starting now (after every earlier row)."""
    marker = audit.append_event(settings, "test.release", {}, model=MODEL)
    now = time.time()
    policy = Canary(watch_s=watch_s, **limits)
    return CanaryState(
        model=MODEL,
        version=CHALLENGER,
        mode=mode,  # type: ignore[arg-type]
        percent=policy.percent,
        champion=CHAMPION,
        started_at=now,
        until=now + watch_s,
        started_by="tests",
        seq=marker.seq,
        signature="-",
        limits={k: getattr(policy, k) for k in Canary.__dataclass_fields__},
    )


@pytest.fixture
def traffic(settings: Settings):
    t = Traffic(settings)
    yield t
    t.close()


def gate(decision: cw.Decision, name: str):
    return next(g for g in decision.gates if g.name == name)


def test_durations_parse_and_bad_ones_say_what_is_expected() -> None:
    assert [cw.parse_duration(v) for v in ("90s", "15m", "1h", "2.5m", "45", 30)] == [
        90.0,
        900.0,
        3600.0,
        150.0,
        45.0,
        30.0,
    ]
    for bad in ("soon", "15 minutes", "-5m", "0s", ""):
        with pytest.raises(ConfigurationError, match="like '15m'|like '90s', '15m' or '1h'"):
            cw.parse_duration(bad)
    assert cw.format_duration(905) == "15m05s" and cw.format_duration(7) == "7s"


def test_fallbacks_break_the_error_rate_and_only_prediction_requests_count(
    settings: Settings, traffic: Traffic
) -> None:
    traffic.many(3, CHALLENGER)  # before the release: not evidence
    state = release(settings, min_requests=10, max_error_rate=0.1)
    traffic.many(20, CHAMPION, latency_ms=10.0)
    traffic.many(8, CHALLENGER, latency_ms=12.0)
    traffic.request(CHAMPION, fallback_of=CHALLENGER, latency_ms=40.0)
    traffic.request(CHAMPION, fallback_of=CHALLENGER, latency_ms=40.0)
    traffic.request(CHALLENGER, route="/feedback")  # names the version; not a prediction
    traffic.request("7", latency_ms=1.0)  # a pinned version: neither arm
    traffic.request(CHAMPION, status=503)  # a champion error

    ev = cw.read_evidence(settings, state)
    ch, champ = ev.challenger, ev.champion
    assert (ch.requests, ch.errors, ch.fallbacks, ch.error_rate) == (10, 2, 2, 0.2)
    assert (champ.requests, champ.errors) == (21, 1)
    assert ch.rows == 8 and champ.rows == 22  # the fallbacks' answers are the champion's
    assert ch.p99_ms == pytest.approx(40.0, abs=0.1) and champ.p50_ms == 10.0

    decision = cw.decide(ev, state.policy)
    assert decision.outcome == "rolled-back"
    err = gate(decision, cw.ERROR_RATE)
    assert (err.passed, err.value, err.threshold) == (False, 0.2, "<= 0.1")
    assert "2 of 10 challenger requests failed" in err.detail
    assert decision.reasons[0].startswith("canary_error_rate = 0.2 (needs <= 0.1)")
    assert "canary_error_rate" in cw.progress_line(ev, decision)


def test_errors_beyond_what_min_requests_allows_roll_back_before_min_requests(
    settings: Settings, traffic: Traffic
) -> None:
    state = release(settings, min_requests=50, max_error_rate=0.05)
    traffic.many(3, CHALLENGER)
    traffic.many(2, CHAMPION, fallback_of=CHALLENGER)
    first = cw.decide(cw.read_evidence(settings, state), state.policy)
    assert first.outcome is None  # 2 errors of 5: 50 requests may hold 2.5
    assert gate(first, cw.ERROR_RATE).detail.startswith(cw.NOT_YET)
    traffic.request(CHAMPION, fallback_of=CHALLENGER)
    second = cw.decide(cw.read_evidence(settings, state), state.policy)
    assert second.outcome == "rolled-back"
    assert "more than 5.00% of the first 50" in gate(second, cw.ERROR_RATE).detail


def test_a_slow_challenger_breaks_the_p99_ratio_and_the_absolute_p99(
    settings: Settings, traffic: Traffic
) -> None:
    state = release(settings, min_requests=20, max_p99_ratio=1.5, max_p99_ms=30.0)
    traffic.many(10, CHALLENGER, latency_ms=50.0)
    early = cw.decide(cw.read_evidence(settings, state), state.policy)
    # 10 requests over 30 ms: more than 1% of 20 can be, before the ratio can be judged.
    assert early.outcome == "rolled-back"
    assert [g.name for g in early.broken] == [cw.P99_MS]
    assert gate(early, cw.P99_RATIO).detail.startswith(cw.NOT_YET)

    traffic.many(10, CHALLENGER, latency_ms=50.0)
    traffic.many(20, CHAMPION, latency_ms=10.0)
    late = cw.decide(cw.read_evidence(settings, state), state.policy)
    ratio = gate(late, cw.P99_RATIO)
    assert (ratio.passed, ratio.value) == (False, 5.0)
    assert ratio.detail == "p99 50.0 ms vs champion 10.0 ms"


def test_output_drift_between_the_arms_classes_and_numbers(
    settings: Settings, traffic: Traffic
) -> None:
    state = release(settings, min_requests=40, max_output_drift=0.25)
    for i in range(40):
        traffic.request(CHAMPION, "yes" if i % 2 else "no")
        traffic.request(CHALLENGER, "yes" if i % 2 else "no")
    same = cw.decide(cw.read_evidence(settings, state), state.policy)
    assert gate(same, cw.OUTPUT_DRIFT).value == 0.0 and same.outcome is None
    traffic.many(160, CHALLENGER, output="yes")
    ev = cw.read_evidence(settings, state)
    assert ev.output_kind == "classes"
    assert ev.challenger.distribution == {"no": 20, "yes": 180}
    assert ev.champion.distribution == {"no": 20, "yes": 20}
    drifted = cw.decide(ev, state.policy)
    drift = gate(drifted, cw.OUTPUT_DRIFT)
    assert not drift.passed and drift.value > 0.25 and drifted.outcome == "rolled-back"

    numbers = release(settings, min_requests=40, max_output_drift=0.25, max_accuracy_drop=0.05)
    for i in range(50):
        traffic.request(CHAMPION, 100.0 + i * 1.37)
        traffic.request(CHALLENGER, 100.0 + i * 1.37 + 0.01)
    ev = cw.read_evidence(settings, numbers)
    assert ev.output_kind == "numbers" and sum(ev.champion.distribution.values()) == 50
    assert ev.output_drift is not None and ev.output_drift < 0.05
    shifted = release(settings, min_requests=40, max_output_drift=0.25)
    for i in range(50):
        traffic.request(CHAMPION, 100.0 + i * 1.37)
        traffic.request(CHALLENGER, 200.0 + i * 1.37)
    decision = cw.decide(cw.read_evidence(settings, shifted), shifted.policy)
    assert decision.outcome == "rolled-back"
    # Every challenger output in the champion's top quartile bin: sqrt(1 - sqrt(1/4)), less noise.
    assert gate(decision, cw.OUTPUT_DRIFT).value == pytest.approx(0.689, abs=0.005)
    assert gate(decision, cw.ACCURACY_DROP).detail.endswith("outputs are numbers, not classes")


def test_accuracy_on_labelled_feedback_is_judged_once_both_arms_have_enough_labels(
    settings: Settings, traffic: Traffic
) -> None:
    state = release(settings, min_requests=5, min_labels=20, max_accuracy_drop=0.05)
    for i in range(20):
        traffic.request(CHAMPION, "yes", label="yes")
        traffic.request(CHALLENGER, "yes", label="yes" if i < 15 else "no")
    traffic.request(CHALLENGER, "yes")  # unlabelled
    ev = cw.read_evidence(settings, state)
    assert (ev.challenger.labelled, ev.challenger.accuracy) == (20, 0.75)
    assert (ev.champion.labelled, ev.champion.accuracy) == (20, 1.0)
    decision = cw.decide(ev, state.policy)
    acc = gate(decision, cw.ACCURACY_DROP)
    assert (acc.passed, acc.value) == (False, 0.25)
    assert acc.detail == "accuracy 0.750 on 20 labels vs champion 1.000 on 20"
    assert decision.outcome == "rolled-back"

    fewer = release(settings, min_requests=5, min_labels=20, max_accuracy_drop=0.05)
    for _ in range(19):
        traffic.request(CHALLENGER, "yes", label="no")
    early = cw.decide(cw.read_evidence(settings, fewer), fewer.policy)
    assert early.outcome is None and gate(early, cw.ACCURACY_DROP).passed


def test_at_the_window_end_too_few_requests_is_inconclusive_and_enough_is_promoted(
    settings: Settings, traffic: Traffic
) -> None:
    state = release(settings, min_requests=10, watch_s=0.5)
    traffic.many(9, CHALLENGER)
    traffic.many(30, CHAMPION)
    running = cw.decide(cw.read_evidence(settings, state, now=state.started_at + 0.1), state.policy)
    assert running.outcome is None and gate(running, cw.REQUESTS).passed
    ended = cw.read_evidence(settings, state, now=state.until + 1)
    few = cw.decide(ended, state.policy)
    assert few.outcome == "inconclusive"
    assert few.reasons == [
        "only 9 challenger requests in the window (needs 10): nothing was decided"
    ]
    traffic.request(CHALLENGER)
    done = cw.decide(cw.read_evidence(settings, state, now=state.until + 1), state.policy)
    assert done.outcome == "promoted" and all(g.passed for g in done.gates)
    assert done.reasons[0].startswith("every limit held over 0s and 10 challenger requests")
    assert json.dumps(cw.read_evidence(settings, state).summary())  # the audit keeps it


def test_the_shadow_report_counts_disagreements_exactly_and_writes_html_and_png(
    settings: Settings, traffic: Traffic
) -> None:
    state = replace(release(settings, mode="shadow"), mode="shadow")
    # 12 rows: the champion says yes on 8, no on 4; the challenger disagrees on 3 of
    # the yes (those with a >= 3) and 1 of the no (a = 2.5); one more row it failed.
    rows = [("yes", "yes", a) for a in (0.1, 0.2, 0.3, 0.4, 0.5)]
    rows += [("yes", "no", a) for a in (3.0, 3.1, 3.2)]
    rows += [("no", "no", a) for a in (0.6, 0.7, 0.8)] + [("no", "yes", 2.5)]
    for champ, chall, a in rows:
        traffic.shadow(champ, chall, inputs={"a": a, "b": "x"}, latency_ms=4.0)
    traffic.shadow("yes", None, latency_ms=9.0)
    report = cw.shadow_report(settings, state)
    assert (report.rows, report.compared, report.disagree, report.errors) == (13, 12, 4, 1)
    assert report.disagreement_rate == pytest.approx(4 / 12)
    assert report.error_rate == pytest.approx(1 / 13)
    assert [(g.group, g.rows, g.disagree) for g in report.by_output] == [
        ("no", 4, 1),
        ("yes", 8, 3),
    ]
    assert report.inputs_known
    # Quartile bins of input a: every row with a >= 2.625 disagrees.
    assert [(g.group, g.rows, g.disagree) for g in report.by_feature["a"]] == [
        ("[-inf, 0.375)", 3, 0),
        ("[0.375, 0.65)", 3, 0),
        ("[0.65, 2.625)", 3, 1),
        ("[2.625, inf)", 3, 3),
    ]
    assert [(g.group, g.rows, g.disagree) for g in report.by_feature["b"]] == [("x", 12, 4)]
    assert report.p50_ms == 4.0

    written = cw.write_shadow_report(settings, report)
    assert written.html_path and written.png_path
    page = open(written.html_path, encoding="utf-8").read()
    assert "33.3% disagree" in page and "by input a" in page
    with open(written.png_path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    # No such model in MLflow here: the report on disk stands, the store error says why.
    assert written.mlflow_run is None and "did not store the shadow report" in (
        written.store_error or ""
    )

    # Shadow evidence: the challenger's arm is the shadow rows.
    ev = cw.read_evidence(settings, state)
    assert (ev.challenger.requests, ev.challenger.errors) == (13, 1)
    assert ev.challenger.distribution == {"no": 6, "yes": 6}
