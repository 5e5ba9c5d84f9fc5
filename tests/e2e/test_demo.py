"""The loop closed, for real: ``aipaas demo`` on a private data project and free ports.

Lifecycle -> champion v1; ordinary traffic from keyed clients -> no drift;
shifted traffic with feedback -> drift -> retrain (feedback rows become a new
DVC version) -> gates -> champion v2 served, with no failed request and the
audit chain verified. Every server is started by the demo and stopped by it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from aipaas.settings import PROJECT_ROOT
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_demo_closes_the_loop(home: Path, tmp_path: Path) -> None:
    from tests.support.project import new_project

    repo = new_project(tmp_path / "project")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIPAAS_", "PREFECT_"))},
        "AIPAAS_HOME": str(home),
        "AIPAAS_PREFECT__PORT": str(free_port()),
        "AIPAAS_MLFLOW__PORT": str(free_port()),
        "AIPAAS_SERVING__PORT": str(free_port()),
        "AIPAAS_DATA__DIR": str(repo / "data"),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
        "AIPAAS_TUNE__NUM_SAMPLES": "2",
        "AIPAAS_TUNE__CV_FOLDS": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from aipaas.cli import main; main()", "demo"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "champion v1 serving" in out
    assert "no drift reported on ordinary traffic" in out
    assert "drift detected" in out
    assert "passed its gates; serving swapped to it" in out
    assert ", failed 0," in out
    assert "audit chain:" in out and "verified" in out.split("audit chain:")[1].splitlines()[0]

    # The feedback became training data: a new dataset version with more rows.
    incoming = list((repo / "data" / "incoming" / "breast_cancer").glob("feedback-*.csv"))
    assert incoming, "no feedback exported"
    raw = pd.read_csv(repo / "data" / "breast_cancer" / "raw.csv")
    assert len(raw) > 569
