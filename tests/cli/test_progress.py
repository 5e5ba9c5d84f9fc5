"""Progress as a user meets it: ``aipaas data run`` and ``aipaas train`` off a terminal.

CliRunner's output is not a terminal, so the commands print plain lines:
one per stage as it starts and ends (with its time), one per finished trial
(done of total, best so far). The live bar on a terminal is drawn by rich
from the same events; the renderer's choice is checked here too.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aipaas.cli import app
from aipaas.cli.train import LineProgress, TerminalProgress, progress_display
from aipaas.progress import StageEvent, TrialEvent
from aipaas.settings import Settings
from tests.support.project import copy_project, project_env


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_live_display_and_a_pipe_gets_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdout", io.StringIO())
    with progress_display() as plain:
        assert isinstance(plain, LineProgress)
    tty = _Tty()
    monkeypatch.setattr("sys.stdout", tty)
    with progress_display() as live:
        assert isinstance(live, TerminalProgress)
        live.on_stage(StageEvent("search", "started", detail="2 trials"))
        live.on_trial(TrialEvent(1, 2, 0.97, "t1", True, 0.97, 0.5, metric="roc_auc"))
        live.on_trial(TrialEvent(2, 2, 0.98, "t2", True, 0.98, 0.5, metric="roc_auc"))
        live.on_stage(StageEvent("search", "finished", 1.5, detail="2 trials"))
    screen = tty.getvalue()
    assert "trial 2/2  roc_auc 0.9800" in screen
    assert "best roc_auc 0.9800" in screen and "2/2" in screen
    assert "search (2 trials) finished in 1.5 s" in screen


@pytest.mark.slow
def test_data_run_and_train_print_stages_and_trials_as_lines(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    home: Path,
    use_settings: Callable[..., Settings],
    ray_session: None,
) -> None:
    repo = copy_project(tmp_path_factory, tmp_path)
    use_settings(
        env={
            **project_env(repo, home),
            "AIPAAS_MLFLOW__TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "AIPAAS_TUNE__CV_FOLDS": "2",
        }
    )
    runner = CliRunner()

    data = runner.invoke(app, ["data", "run", "breast_cancer", "--no-push"])
    assert data.exit_code == 0, data.output
    lines = data.output.splitlines()
    assert lines[0] == "reproduce (ingest, validate, split) ..."
    assert re.fullmatch(r"reproduce \(ingest, validate, split\) finished in \d+\.\d s", lines[1])
    assert lines[2] == "version ..." and lines[3].startswith("version finished in ")
    assert not any("push" in line for line in lines)  # --no-push
    assert "rows      569" in data.output

    train = runner.invoke(app, ["train", "diagnosis", "-n", "3", "-c", "2"])
    assert train.exit_code == 0, train.output
    out = train.stdout.splitlines()  # MLflow writes its own notes to stderr
    started = [line.removesuffix(" ...") for line in out if line.endswith(" ...")]
    assert started == ["prepare", "search (3 trials)", "refit", "evaluate", "register"]
    trials = [line for line in out if line.startswith("trial ")]
    assert [t.split()[1] for t in trials] == ["1/3", "2/3", "3/3"]
    assert all(re.search(r"roc_auc 0\.\d{4} in \d+\.\d s  \(best 0\.\d{4}\)$", t) for t in trials)
    # The trial lines come between the search's start and its end, before the result.
    assert out.index("search (3 trials) ...") < out.index(trials[0])
    end = next(i for i, line in enumerate(out) if line.startswith("search (3 trials) finished"))
    assert out.index(trials[-1]) < end
    assert out[-1].startswith("best params: ")
    assert "Configuration for experiment" not in train.stdout  # Tune's own table: stderr

    # --json keeps stdout machine-readable: the progress lines go to stderr.
    as_json = runner.invoke(app, ["train", "diagnosis", "-n", "1", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["version"] == "2"
    assert "trial 1/1" in as_json.stderr
