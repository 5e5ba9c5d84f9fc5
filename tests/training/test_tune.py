"""The search space translation and validation, and a whole training on a two-node cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aipaas.exceptions import ConfigurationError
from aipaas.modeldef import Choice, IntRange, LogUniform, ModelDefinition, Uniform
from aipaas.training.tune import to_param_space, validate_search_space

ROOT = Path(__file__).resolve().parents[2]


def _definition(space: object) -> ModelDefinition:
    return ModelDefinition(
        name="m",
        dataset="d",
        target="y",
        features=("a",),
        build_estimator=lambda p: None,
        search_space=space,  # type: ignore[arg-type]
    )


def test_space_translates_to_ray_tune_domains() -> None:
    space = to_param_space(
        _definition(
            {
                "lr": LogUniform(0.01, 0.3),
                "frac": Uniform(0.5, 1.0),
                "trees": IntRange(10, 12),
                "kind": Choice(("gbdt", "dart")),
            }
        )
    )
    samples = [{k: v.sample() for k, v in space.items()} for _ in range(300)]
    assert all(0.01 <= s["lr"] <= 0.3 for s in samples)
    assert all(0.5 <= s["frac"] <= 1.0 for s in samples)
    # IntRange is inclusive: Ray's randint is not, so the translation adds one.
    assert {s["trees"] for s in samples} == {10, 11, 12}
    assert {s["kind"] for s in samples} == {"gbdt", "dart"}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "non-empty mapping"),
        ({"lr": LogUniform(0.0, 1.0)}, "LogUniform needs low > 0"),
        ({"frac": Uniform(1.0, 0.5)}, "needs low < high"),
        ({"trees": IntRange(10, 5)}, "IntRange needs integers low <= high"),
        ({"trees": IntRange(1.5, 5)}, "IntRange needs integers"),  # type: ignore[arg-type]
        ({"kind": Choice(())}, "Choice needs at least one option"),
        ({"lr": (0.1, 0.2)}, "is not Uniform, LogUniform, IntRange or Choice"),
        ({"lr": Uniform(float("nan"), 1.0)}, "needs low < high"),
    ],
)
def test_invalid_space_is_a_configuration_error(space: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid search space|non-empty") as err:
        validate_search_space(_definition(space))
    assert message in str(err.value)


def test_every_bad_dimension_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as err:
        validate_search_space(_definition({"a": Uniform(2, 1), "b": Choice(())}))
    assert "search_space['a']" in str(err.value) and "search_space['b']" in str(err.value)


TWO_NODE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import mlflow, numpy as np
    from ray.cluster_utils import Cluster
    from sklearn.datasets import load_breast_cancer
    from aipaas.modeldef import load_definition
    from aipaas.schemas import DatasetVersion
    from aipaas.settings import Settings
    from aipaas.training import tags
    from aipaas.training.train import train_model

    models, storage, work = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    d = load_breast_cancer(as_frame=True)
    df = d.data.rename(columns=lambda c: c.replace(" ", "_"))
    df["diagnosis"] = np.where(d.target == 0, "malignant", "benign")
    df = df.sample(frac=1.0, random_state=1)
    df.iloc[:200].to_csv(work / "train.csv", index=False)
    df.iloc[200:300].to_csv(work / "holdout.csv", index=False)
    version = DatasetVersion(
        name="breast_cancer", hash="0" * 32, rows=300, suite_passed=True,
        train_path=work / "train.csv", holdout_path=work / "holdout.csv",
        target="diagnosis", git_commit=None,
    )

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 200 * 1024**2},
    )
    worker = cluster.add_node(num_cpus=1, object_store_memory=200 * 1024**2)
    cluster.wait_for_nodes()
    try:
        settings = Settings(
            _env_file=None,
            home=work / "home",
            models_dir=models,
            mlflow={"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
            ray={"address": cluster.address, "storage_path": storage},
            tune={"num_samples": 2, "max_concurrent": 2, "cv_folds": 2, "eval_shards": 2},
        )
        result = train_model(load_definition("diagnosis", models), version, settings)
        names = {cluster.head_node.node_id: "head", worker.node_id: "worker"}
        client = mlflow.MlflowClient()
        parent = client.get_run(result.run_id)
        trials = client.search_runs(
            [parent.info.experiment_id],
            f"tags.mlflow.parentRunId = '{result.run_id}'",
        )
        mv = client.get_model_version("diagnosis", result.version)
        print(json.dumps({
            "version": result.version,
            "aliases": list(mv.aliases),
            "ray_nodes": mv.tags.get(tags.RAY_NODES),
            "metrics": sorted(result.metrics),
            "results_path": parent.data.tags.get(tags.TUNE_RESULTS),
            "storage_param": parent.data.params.get("setting.ray.storage_path"),
            "trials": {
                t.data.tags[tags.TRIAL_ID]: names.get(t.data.tags[tags.NODE_ID], "unknown")
                for t in trials
            },
        }))
    finally:
        import ray
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.slow
def test_train_model_runs_on_a_two_node_cluster_with_shared_storage(tmp_path: Path) -> None:
    """The whole training (search, refit, evaluation, registration) against a cluster.

    Its own process: the session's local Ray cannot coexist with a second
    cluster. Each node has one CPU, so two concurrent trials must use both.
    """
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODE_SCRIPT)
    storage = tmp_path / "shared" / "tune"
    env = {
        **__import__("os").environ,
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(ROOT / "models"), str(storage), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Registered as challenger, evaluated on the holdout, on two nodes.
    assert out["version"] == "1" and "challenger" in out["aliases"]
    assert out["ray_nodes"] == "2"
    assert "holdout_roc_auc" in out["metrics"] and "time_evaluate_s" in out["metrics"]
    # One trial on each node, and we know which ran where.
    assert sorted(out["trials"].values()) == ["head", "worker"], out["trials"]
    # Tune's results sit under the configured storage path, one directory per trial.
    assert out["storage_param"] == str(storage)
    results = Path(out["results_path"])
    assert results.parent == storage and results.is_dir()
    for trial_id in out["trials"]:
        found = [p for p in results.iterdir() if p.is_dir() and trial_id in p.name]
        assert len(found) == 1 and (found[0] / "result.json").is_file(), (trial_id, found)
    assert not (tmp_path / "home" / "ray-results").exists()


def test_storage_location_defaults_under_home_and_passes_uris_through(tmp_path: Path) -> None:
    from aipaas.settings import RaySettings
    from aipaas.training.tune import storage_location

    assert storage_location(RaySettings(), tmp_path) == str(tmp_path / "ray-results")
    uri = "s3://bucket/tune?endpoint_override=http://127.0.0.1:9000"
    assert storage_location(RaySettings(storage_path=uri), tmp_path) == uri
    rel = storage_location(RaySettings(storage_path="shared/tune"), tmp_path)
    assert Path(rel).is_absolute() and rel.endswith("shared/tune")


def test_unknown_storage_scheme_is_refused_before_anything_runs() -> None:
    from aipaas.training.tune import check_storage

    with pytest.raises(ConfigurationError, match="ray.storage_path 'nope://x/y' cannot be opened"):
        check_storage("nope://x/y")
    check_storage("s3://bucket/prefix")  # opening does not reach the store
