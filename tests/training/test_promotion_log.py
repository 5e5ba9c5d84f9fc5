"""The promotion log: append-only JSON lines, readable per model, safe under concurrency."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta

from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import promotion_log
from aipaas.training.promotion_log import PromotionRecord


def _record(model: str, version: str, result: str = "promoted") -> PromotionRecord:
    return PromotionRecord(
        model=model,
        version=version,
        action="promote",
        result=result,  # type: ignore[arg-type]
        decided_by="tester",
        gates=[GateResult("min roc_auc", True, 0.9, ">= 0.7")],
    )


def test_records_append_in_order_and_filter_by_model(settings: Settings) -> None:
    assert promotion_log.read(settings) == []
    assert promotion_log.last(settings, "a") is None
    promotion_log.append(settings, _record("a", "1"))
    promotion_log.append(settings, _record("b", "1"))
    promotion_log.append(settings, _record("a", "2", "rejected"))

    lines = promotion_log.log_path(settings).read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0])["model"] == "a"
    assert [r.version for r in promotion_log.read(settings, "a")] == ["1", "2"]
    last = promotion_log.last(settings, "a")
    assert last is not None and last.result == "rejected" and last.decided_by == "tester"
    assert last.gates == [GateResult("min roc_auc", True, 0.9, ">= 0.7")]
    decided = datetime.fromisoformat(last.at)
    assert timedelta(0) <= datetime.now(UTC) - decided < timedelta(minutes=1)


def test_a_torn_last_line_does_not_hide_the_history(settings: Settings) -> None:
    promotion_log.append(settings, _record("a", "1"))
    with promotion_log.log_path(settings).open("a") as fh:
        fh.write('{"model": "a", "vers')  # a writer killed mid-line
    assert [r.version for r in promotion_log.read(settings, "a")] == ["1"]


def test_records_written_by_an_older_or_newer_writer_still_read(settings: Settings) -> None:
    line = {**_record("a", "1").to_dict(), "added_later": "ignored"}
    line["gates"][0].pop("detail")  # written before gates had a detail
    promotion_log.log_path(settings).parent.mkdir(parents=True, exist_ok=True)
    promotion_log.log_path(settings).write_text(json.dumps(line) + "\n")
    [record] = promotion_log.read(settings)
    assert record.gates == [GateResult("min roc_auc", True, 0.9, ">= 0.7", "")]


def _writer(home: str, worker: int) -> None:
    s = Settings(_env_file=None, home=home)
    for i in range(25):
        promotion_log.append(s, _record(f"m{worker}", str(i)))


def test_concurrent_writers_never_interleave(settings: Settings) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(settings.home), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    lines = promotion_log.log_path(settings).read_text().splitlines()
    assert len(lines) == 100
    assert all(json.loads(line)["decided_by"] == "tester" for line in lines)
    for w in range(4):
        assert [r.version for r in promotion_log.read(settings, f"m{w}")] == [
            str(i) for i in range(25)
        ]
