"""A drift check: windows consumed once, the champion's evidence injected, the verdict recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from aipaas import coordination
from aipaas.monitoring import drift
from aipaas.monitoring.drift import Champion
from aipaas.monitoring.drift_report import drift_history
from aipaas.monitoring.spool import Profiler, SpoolWriter
from aipaas.settings import Settings
from tests.conftest import settings_env
from tests.monitoring.conftest import local_mlflow

if TYPE_CHECKING:
    from tests.monitoring.conftest import BreastCancer

MODEL = "diagnosis"
FEW = 5  # features a check scores and plots here: the first five, the shifted ones


def _serve(settings: Settings, cancer: BreastCancer, rows: pd.DataFrame, version: str) -> None:
    """What serving hands off, profiled into windows."""
    with SpoolWriter(settings) as writer:
        for _, r in rows.iterrows():
            d = r.to_dict()
            row = {k: d[k] for k in cancer.features}
            writer.submit(MODEL, version, [row], [int(d["prediction"])])
    with Profiler(settings) as profiler:
        profiler.step()


class Champions:
    """Stands in for the registry: the champion's version, reference and holdout accuracy."""

    def __init__(self, cancer: BreastCancer, version: str = "1") -> None:
        self.champion = Champion(version, cancer.reference, holdout_accuracy=0.95)
        self.asked: list[str] = []

    def __call__(self, settings: Settings, model: str) -> Champion:
        self.asked.append(model)
        return self.champion


def no_feedback(settings: Settings, model: str, *, target: str) -> pd.DataFrame:
    return pd.DataFrame()


def test_windows_are_consumed_once_per_decided_check(
    cancer: BreastCancer, on_db: Callable[[int], Settings]
) -> None:
    settings = on_db(50)
    _serve(settings, cancer, cancer.served(120, seed=5), "1")
    merged, seqs = drift.collect_windows(settings, MODEL, "1")
    assert seqs == [1, 2] and merged is not None and merged.num_rows == 100
    drift.mark_checked(settings, MODEL, "1", max(seqs))
    again, seqs2 = drift.collect_windows(settings, MODEL, "1")
    assert again is None and seqs2 == []
    assert drift.last_checked(settings, MODEL, "1") == 2
    assert drift.last_checked(settings, MODEL, "2") == 0


def test_check_decides_writes_the_report_and_records_it(
    cancer: BreastCancer, on_db: Callable[[int], Settings]
) -> None:
    settings = on_db(150)
    _serve(settings, cancer, cancer.served(150, seed=1, shift=0.7), "1")
    champions = Champions(cancer)
    report = drift.check_model(
        settings, cancer.definition(FEW), champion_loader=champions, labelled_rows=no_feedback
    )
    assert champions.asked == [MODEL]
    assert report.version == "1" and report.rows == 150 and report.windows == (1,)
    assert report.decision.retrain and len(report.drifting) >= 3
    assert report.html_path is not None
    html = Path(report.html_path)
    assert html.is_file() and html.parent == settings.reports_dir / "drift" / MODEL
    (entry,) = drift_history(settings, MODEL)
    assert entry.decision.retrain and entry.html == report.html_path

    # The window is consumed: the next check has nothing to decide on.
    again = drift.check_model(
        settings, cancer.definition(FEW), champion_loader=champions, labelled_rows=no_feedback
    )
    assert again.rows == 0 and not again.decision.decided
    assert [e.rows for e in drift_history(settings, MODEL)] == [150, 0]


def test_too_little_traffic_stays_for_the_next_check(cancer: BreastCancer, home: Path) -> None:
    settings = Settings(
        _env_file=None, home=home, mlflow=local_mlflow(home), monitoring={"window_rows": 60}
    )
    champions = Champions(cancer)
    _serve(settings, cancer, cancer.served(60, seed=2), "1")
    first = drift.check_model(
        settings, cancer.definition(FEW), champion_loader=champions, labelled_rows=no_feedback
    )
    assert first.rows == 60 and not first.decision.decided
    _serve(settings, cancer, cancer.served(60, seed=3), "1")
    second = drift.check_model(
        settings, cancer.definition(FEW), champion_loader=champions, labelled_rows=no_feedback
    )
    assert second.rows == 120 and second.windows == (1, 2) and second.decision.decided


def test_feedback_of_the_champion_version_enters_the_check(
    cancer: BreastCancer, home: Path
) -> None:
    settings = Settings(
        _env_file=None, home=home, mlflow=local_mlflow(home), monitoring={"window_rows": 150}
    )
    _serve(settings, cancer, cancer.served(150, seed=3), "2")
    right = pd.DataFrame({"target": [1, 0] * 20, "prediction": [1, 0] * 20, "model_version": "1"})
    wrong = pd.DataFrame({"target": [1, 0] * 20, "prediction": [1] * 40, "model_version": "2"})

    def labelled_rows(s: Settings, model: str, *, target: str) -> pd.DataFrame:
        assert (model, target) == (MODEL, "target")  # the label under the definition's target
        return pd.concat([right, wrong], ignore_index=True)

    report = drift.check_model(
        settings, cancer.definition(FEW),
        champion_loader=Champions(cancer, version="2"), labelled_rows=labelled_rows,
    )  # fmt: skip
    assert report.accuracy is not None
    assert report.accuracy.labelled_rows == 40 and report.accuracy.accuracy == 0.5
    assert report.decision.retrain and not report.drifting


def test_concurrent_checks_judge_each_window_once(
    cancer: BreastCancer, on_db: Callable[[int], Settings]
) -> None:
    """Two window closes start two drift runs at once: one shift must start one retrain."""
    settings = on_db(150)
    _serve(settings, cancer, cancer.served(300, seed=7, shift=3.0), "1")
    champions = Champions(cancer)

    def check(_: int) -> drift.DriftReport:
        return drift.check_model(
            settings, cancer.definition(FEW), champion_loader=champions, labelled_rows=no_feedback
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(check, range(2)))
    assert sorted(r.rows for r in reports) == [0, 300]
    assert sum(r.decision.retrain for r in reports) == 1


def test_champion_feedback_keeps_only_that_version(cancer: BreastCancer, home: Path) -> None:
    settings = Settings(_env_file=None, home=home)
    frame = pd.DataFrame({"target": [1, 0, 1], "model_version": [1, 2, 2]})
    definition = cancer.definition(FEW)
    got = drift.champion_feedback(settings, definition, "2", lambda s, m, target: frame)
    assert list(got["target"]) == [0, 1]
    empty = drift.champion_feedback(settings, definition, "2", lambda s, m, target: pd.DataFrame())
    assert empty.empty


@pytest.mark.parametrize("run_id", [None, ""])
def test_a_champion_without_a_training_run_has_no_reference(home: Path, run_id: str) -> None:
    from aipaas.exceptions import ModelNotFoundError

    settings = Settings(_env_file=None, home=home)
    with pytest.raises(ModelNotFoundError, match="no training run"):
        drift.load_reference(settings, run_id, MODEL, "3")


def test_a_second_check_of_the_model_waits_for_the_first(
    cancer: BreastCancer, on_db: Callable[[int], Settings], tmp_path: Path
) -> None:
    """A check in another process (another host, on PostgreSQL) holds the model's drift lock."""
    settings = on_db(150)
    _serve(settings, cancer, cancer.served(150, seed=7, shift=3.0), "1")
    release = tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, drift.drift_lock(MODEL), str(release)],
        env={**os.environ, **settings_env(settings), "AIPAAS_HOME": str(tmp_path / "host-b")},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with ThreadPoolExecutor(max_workers=1) as pool:
            check = pool.submit(
                drift.check_model, settings, cancer.definition(FEW),
                champion_loader=Champions(cancer), labelled_rows=no_feedback,
            )  # fmt: skip
            time.sleep(2)
            assert drift_history(settings, MODEL) == []
            released_at = time.time()
            release.touch()
            report = check.result(timeout=60)
        # It judged the windows only once the other let go.
        assert report.created_at > released_at
        assert report.rows == 150 and report.decision.retrain
        assert holder.wait(30) == 0
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = """
import pathlib, sys, time
from aipaas import coordination
from aipaas.settings import get_settings
with coordination.lock(get_settings(), sys.argv[1]):
    print("held", flush=True)
    while not pathlib.Path(sys.argv[2]).exists():
        time.sleep(0.02)
"""


def test_window_stores_keep_their_own_state_on_one_database(
    on_db: Callable[[int], Settings], tmp_path: Path
) -> None:
    """Window numbers count per profiles directory: hosts with their own keep apart."""
    host_a = on_db(50)
    host_b = host_a.model_copy(update={"home": tmp_path / "host-b"})
    assert drift.store_id(host_a) != drift.store_id(host_b)
    assert drift.store_id(host_a) == drift.store_id(host_a)  # made once
    drift.mark_checked(host_a, MODEL, "1", 4)
    assert drift.last_checked(host_a, MODEL, "1") == 4
    assert drift.last_checked(host_b, MODEL, "1") == 0
    # A host that profiles into the same (shared) directory shares its state.
    host_c = host_a.model_copy(update={"home": tmp_path / "host-c"})
    host_c.home.mkdir()
    (host_c.home / "profiles").symlink_to(host_a.profiles_dir)
    assert drift.last_checked(host_c, MODEL, "1") == 4
    drift.mark_checked(host_c, MODEL, "1", 6)
    assert drift.last_checked(host_a, MODEL, "1") == 6


def test_a_drift_state_file_of_an_older_aipaas_is_imported(
    on_db: Callable[[int], Settings],
) -> None:
    settings = on_db(50)
    drift.mark_checked(settings, MODEL, "2", 9)  # already in the database: the later wins
    path = drift.state_path(settings, MODEL)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"1": {"last_seq": 3, "checked_at": 1.0}, "2": {"last_seq": 5, "checked_at": 1.0}}
    path.write_text(json.dumps(state))
    assert drift.last_checked(settings, MODEL, "1") == 3
    assert drift.last_checked(settings, MODEL, "2") == 9
    assert not path.exists() and list(path.parent.glob("drift-state.json.imported-*"))
    assert coordination.lock_path(settings, "x").parent != path.parent
