"""Adding a dataset and a model by the README alone: a multiclass and a regression target.

Data the demo does not ship (scikit-learn's wine, three cultivars, and
diabetes, disease progression) goes into a private project as ``csv:``
sources; then, each step a real ``aipaas`` process as a user types it:
declare the dataset in params.yaml, ``aipaas data suite``, ``aipaas data
run``, a model definition in the models folder, ``aipaas train``, ``aipaas
promote``, and a real uvicorn answers ``/models/<name>/predict`` for both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_diabetes, load_wine

from aipaas.datasets.ingest import snake_case
from tests.support.net import free_port
from tests.support.project import new_project, project_env

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
AIPAAS = str(Path(sys.executable).parent / "aipaas")

# The model definitions a team would write (after models/diagnosis.py).
CULTIVAR = '''
"""Which of three cultivars a wine comes from: a multiclass classifier."""

from typing import Any

from aipaas.modeldef import Gates, LogUniform, ModelDefinition

FEATURES = {features!r}


def build_estimator(params: dict[str, Any]) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=2000, **params))]
    )


definition = ModelDefinition(
    name="cultivar",
    dataset="wine",
    target="cultivar",
    features=FEATURES,
    build_estimator=build_estimator,
    search_space={{"C": LogUniform(0.01, 10.0)}},
    task="classification",
    metric="f1",
    metrics=("f1", "accuracy"),
    gates=Gates(min_metrics={{"accuracy": 0.85}}, p99_latency_ms=500.0),
)
'''

PROGRESSION = '''
"""Disease progression a year on, from ten baseline measurements: a regression."""

from typing import Any

from aipaas.modeldef import Gates, LogUniform, ModelDefinition

FEATURES = {features!r}


def build_estimator(params: dict[str, Any]) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(**params)


definition = ModelDefinition(
    name="progression",
    dataset="diabetes",
    target="progression",
    features=FEATURES,
    build_estimator=build_estimator,
    search_space={{"alpha": LogUniform(0.001, 1.0)}},
    task="regression",
    metric="rmse",
    mode="min",
    metrics=("rmse", "mae", "r2"),
    gates=Gates(max_metrics={{"rmse": 75.0}}, min_metrics={{"r2": 0.2}}, p99_latency_ms=500.0),
)
'''

CASES = [
    # dataset, loader, target, task, model, definition
    ("wine", load_wine, "cultivar", "classification", "cultivar", CULTIVAR),
    ("diabetes", load_diabetes, "progression", "regression", "progression", PROGRESSION),
]


def _frame(loader, target: str) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    bunch = loader(as_frame=True)
    frame = bunch.data.rename(columns=snake_case)
    frame[target] = bunch.target
    return frame


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh project with the two sources placed and declared, as README step 1 and 2 say."""
    repo = new_project(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    models = tmp_path / "models"
    models.mkdir()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dataset, loader, target, task, model, source in CASES:
        frame = _frame(loader, target)
        frame.to_csv(repo / "data" / "sources" / f"{dataset}.csv", index=False)
        params["datasets"][dataset] = {
            "source": f"csv:data/sources/{dataset}.csv",
            "target": target,
            "task": task,
        }
        features = tuple(c for c in frame.columns if c != target)
        (models / f"{model}.py").write_text(textwrap.dedent(source.format(features=features)))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPAAS_")}
    env.update(
        project_env(repo, home),
        AIPAAS_MODELS_DIR=str(models),
        AIPAAS_MLFLOW__TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
        AIPAAS_TUNE__NUM_SAMPLES="2",
        AIPAAS_TUNE__MAX_CONCURRENT="2",
        AIPAAS_TUNE__CV_FOLDS="2",
        AIPAAS_SERVING__DEFAULT_MODEL="cultivar",
        OMP_NUM_THREADS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
    )
    return repo, env


def _aipaas(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    proc = subprocess.run(
        [AIPAAS, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"aipaas {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_a_multiclass_and_a_regression_dataset_from_suite_to_serving(project):
    repo, env = project
    for dataset, _, target, _, model, _ in CASES:
        scaffolded = _aipaas(env, "data", "suite", dataset)
        assert f"wrote {repo / 'expectations' / f'{dataset}.json'}" in scaffolded

        # README's edit step: tighten one scaffolded expectation by hand.
        suite_file = repo / "expectations" / f"{dataset}.json"
        suite = json.loads(suite_file.read_text())
        rows = next(
            e for e in suite["expectations"] if e["type"] == "expect_table_row_count_to_be_between"
        )
        rows["kwargs"]["min_value"] = 100
        suite_file.write_text(json.dumps(suite, indent=2))

        version = _aipaas(env, "data", "run", dataset, "--no-push")
        assert "suite     passed" in version and f"target    {target}" in version

        trained = _aipaas(env, "train", model, "--json", timeout=900)
        assert json.loads(trained)["version"] == "1"
        promoted = _aipaas(env, "promote", model, "--json")
        assert json.loads(promoted)["result"] == "promoted", promoted

    key = _aipaas(env, "keys", "create", "--name", "e2e", "--scopes", "predict")
    key = key.strip().splitlines()[-1]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(server, base)
        headers = {"Authorization": f"Bearer {key}"}
        for _, loader, target, task, model, _ in CASES:
            frame = _frame(loader, target)
            row = frame.drop(columns=[target]).iloc[0].to_dict()
            r = httpx.post(f"{base}/models/{model}/predict", json=row, headers=headers, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model_version"] == "1"
            if task == "classification":
                assert str(body["output"]) in {str(v) for v in frame[target].unique()}
            else:
                assert isinstance(body["output"], float)
                assert frame[target].min() / 2 < body["output"] < frame[target].max() * 2
    finally:
        server.terminate()
        server.wait(20)


def _wait_ready(server: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, "server exited"
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.3)
