"""The search: its space, its warm trial workers, and a whole training on a two-node cluster.

The searches run on the session's real local Ray (two CPUs); the trial
workers they start are shared by the session, as they are by a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aipaas.exceptions import ConfigurationError, TrainingError
from aipaas.modeldef import (
    Choice,
    IntRange,
    LogUniform,
    ModelDefinition,
    Uniform,
    load_definition,
)
from aipaas.progress import Recorder
from aipaas.settings import TuneSettings
from aipaas.training import trial_workers
from aipaas.training.tune import (
    TRIALS_FILE,
    TrialOutcome,
    run_search,
    sample_configs,
    validate_search_space,
)

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


def test_sampler_covers_each_dimension_and_is_seeded() -> None:
    definition = _definition(
        {
            "lr": LogUniform(0.01, 0.3),
            "frac": Uniform(0.5, 1.0),
            "trees": IntRange(10, 12),
            "kind": Choice(("gbdt", "dart")),
        }
    )
    samples = sample_configs(definition, 300, seed=7)
    assert all(0.01 <= s["lr"] <= 0.3 for s in samples)
    assert all(0.5 <= s["frac"] <= 1.0 for s in samples)
    # IntRange's high is inclusive.
    assert {s["trees"] for s in samples} == {10, 11, 12}
    assert {s["kind"] for s in samples} == {"gbdt", "dart"}
    # LogUniform: about as many draws below the geometric middle as above it.
    below = sum(s["lr"] < (0.01 * 0.3) ** 0.5 for s in samples)
    assert 100 < below < 200
    # Plain Python values (JSON, MLflow params), and the same seed draws the same.
    assert {type(s["lr"]) for s in samples} == {float}
    assert {type(s["trees"]) for s in samples} == {int}
    assert sample_configs(definition, 300, seed=7) == samples
    assert sample_configs(definition, 300, seed=8) != samples
    # A longer search starts with the same configurations as a shorter one.
    assert sample_configs(definition, 5, seed=7) == samples[:5]


def test_an_invalid_space_is_refused_before_sampling() -> None:
    with pytest.raises(ConfigurationError, match="LogUniform needs low > 0"):
        sample_configs(_definition({"lr": LogUniform(0.0, 1.0)}), 3, seed=1)


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
    from aipaas.training import tags, trial_workers
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
            # This process joined a Ray it did not start: its workers outlive it.
            "detached": trial_workers.pool().detached,
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
    # The trial table sits under the configured storage path, one row per trial.
    assert out["storage_param"] == str(storage)
    results = Path(out["results_path"])
    assert results.parent == storage and results.is_dir()
    table = json.loads((results / TRIALS_FILE).read_text())
    assert {t["trial_id"] for t in table["trials"]} == set(out["trials"])
    assert all(t["ok"] for t in table["trials"])
    assert not (tmp_path / "home" / "ray-results").exists()
    assert out["detached"] is True


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


# --- searches on the session's Ray ------------------------------------------------

MODEL = """
import os
from pathlib import Path

from aipaas.modeldef import Choice, LogUniform, ModelDefinition

DIE_ONCE = Path({die!r})


def build(params):
    from sklearn.linear_model import LogisticRegression

    params = dict(params)
    mode = params.pop("mode", "fit")
    if mode == "raise":
        raise ValueError("this configuration cannot be fitted")
    if mode == "die" and not DIE_ONCE.exists():
        DIE_ONCE.touch()
        os._exit(3)  # the worker process dies, as when the kernel kills it
    return LogisticRegression(max_iter=1000, **params)


definition = ModelDefinition(
    name="diagnosis",
    dataset="breast_cancer",
    target="diagnosis",
    features=("mean_radius", "mean_texture", "mean_area", "worst_radius"),
    build_estimator=build,
    search_space={space},
)
"""


def _model(tmp_path: Path, space: str) -> ModelDefinition:
    # Loaded from a file, as users' definitions are: Ray ships its functions by value.
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "diagnosis.py").write_text(MODEL.format(die=str(tmp_path / "died"), space=space))
    return load_definition("diagnosis", models)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    df = d.data.rename(columns=lambda c: c.replace(" ", "_")).iloc[:160]
    df["diagnosis"] = np.where(d.target.iloc[:160] == 0, "malignant", "benign")
    return df


def _search(definition: ModelDefinition, frame: pd.DataFrame, where: Path, **tune: Any) -> Any:
    """A 2-fold search, 4 trials, 2 at a time, seed 5 unless ``tune`` says otherwise."""
    values = {"num_samples": 4, "max_concurrent": 2, "cv_folds": 2, "seed": 5, **tune}
    return run_search(definition, frame, TuneSettings(**values), storage_dir=where / "store")


def _worker_pids() -> dict[str, int]:
    """This namespace's trial workers, by name, and the pid each answers with."""
    import ray

    entries: list[Any] = ray.util.list_named_actors(all_namespaces=True)
    names = [a["name"] for a in entries if a["namespace"] == trial_workers.NAMESPACE]
    handles = {n: ray.get_actor(n, namespace=trial_workers.NAMESPACE) for n in names}
    infos: list[Any] = ray.get([h.info.remote() for h in handles.values()])
    return {n: int(info["pid"]) for n, info in zip(handles, infos, strict=True)}


@pytest.mark.slow
def test_a_second_search_reuses_the_warm_workers(
    tmp_path: Path, frame: pd.DataFrame, ray_session: None
) -> None:
    definition = _model(tmp_path, '{"C": LogUniform(0.1, 10.0)}')
    first = _search(definition, frame, tmp_path)
    pids, started = _worker_pids(), trial_workers.started
    # One worker per CPU the session's Ray sees, named with the code's fingerprint.
    assert len(pids) == 2
    assert all(n.startswith(f"{trial_workers.PREFIX}{trial_workers.fingerprint()}-") for n in pids)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    second = _search(definition, frame, tmp_path)
    # The same processes ran the second search: none started, none replaced.
    assert _worker_pids() == pids and trial_workers.started == started
    assert first.ok == second.ok == 4 and first.failed == second.failed == 0
    # Each search wrote its trial table in its own directory under the storage.
    assert first.results_path != second.results_path
    results = Path(second.results_path)
    assert results.parent == tmp_path / "store"
    table = json.loads((results / TRIALS_FILE).read_text())
    assert [t["trial_id"] for t in table["trials"]] == [t.trial_id for t in second.trials]
    assert table["best_score"] == second.best_score and table["results_path"] == str(results)


@pytest.mark.slow
def test_the_same_seed_scores_the_same_configurations_at_any_concurrency(
    tmp_path: Path, frame: pd.DataFrame, ray_session: None
) -> None:
    definition = _model(tmp_path, '{"C": LogUniform(0.01, 10.0)}')
    one = _search(definition, frame, tmp_path, max_concurrent=1)
    two = _search(definition, frame, tmp_path, max_concurrent=2)
    drawn = sample_configs(definition, 4, seed=5)
    assert [t.config for t in one.trials] == [t.config for t in two.trials] == drawn
    assert len({c["C"] for c in drawn}) == 4
    assert [t.score for t in one.trials] == pytest.approx([t.score for t in two.trials])
    assert one.best_config == two.best_config


@pytest.mark.slow
def test_a_trial_that_raises_fails_alone_and_is_reported_live(
    tmp_path: Path, frame: pd.DataFrame, ray_session: None
) -> None:
    definition = _model(tmp_path, '{"C": LogUniform(0.1, 10.0), "mode": Choice(("fit", "raise"))}')
    rec, done = Recorder(), []

    def listener(index: int, outcome: TrialOutcome) -> None:
        done.append(index)
        assert len(rec.trials) == index  # before progress hears of it

    settings = TuneSettings(num_samples=6, max_concurrent=2, cv_folds=2, seed=11)
    result = run_search(
        definition,
        frame,
        settings,
        storage_dir=tmp_path / "store",
        progress=rec,
        on_trial_done=listener,
    )
    modes = [t.config["mode"] for t in result.trials]
    assert "fit" in modes and "raise" in modes, modes
    for t in result.trials:
        if t.config["mode"] == "raise":
            assert not t.ok and t.error == "ValueError: this configuration cannot be fitted"
            assert t.node_id  # where it failed
        else:
            assert t.ok and t.score is not None and t.error is None
    assert result.failed == modes.count("raise")
    assert done == list(range(6))
    assert [(e.done, e.total) for e in rec.trials] == [(i, 6) for i in range(1, 7)]
    assert {e.trial_id for e in rec.trials} == {t.trial_id for t in result.trials}


@pytest.mark.slow
def test_a_search_where_every_trial_fails_raises_and_keeps_its_table(
    tmp_path: Path, frame: pd.DataFrame, ray_session: None
) -> None:
    definition = _model(tmp_path, '{"mode": Choice(("raise",))}')
    with pytest.raises(TrainingError, match="all 2 trials of model 'diagnosis' failed") as err:
        _search(definition, frame, tmp_path, num_samples=2)
    assert "ValueError: this configuration cannot be fitted" in str(err.value)
    [table] = (tmp_path / "store").glob(f"*/{TRIALS_FILE}")
    got = json.loads(table.read_text())
    assert got["best_score"] is None and [t["ok"] for t in got["trials"]] == [False, False]


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_trial_and_is_replaced(
    tmp_path: Path, frame: pd.DataFrame, ray_session: None
) -> None:
    import ray

    # The first trial that draws "die" kills its worker's process; later ones fit.
    definition = _model(tmp_path, '{"C": LogUniform(0.1, 10.0), "mode": Choice(("fit", "die"))}')
    result = _search(definition, frame, tmp_path, num_samples=6, seed=11)
    assert [t.config["mode"] for t in result.trials].count("die") >= 1
    [dead] = [t for t in result.trials if not t.ok]
    assert dead.config["mode"] == "die" and "trial worker running this trial died" in (
        dead.error or ""
    )
    assert result.ok == 5

    # Replaced: the pool is whole again and the next search starts nothing.
    pids, started = _worker_pids(), trial_workers.started
    assert len(pids) == 2
    again = _search(definition, frame, tmp_path, num_samples=6, seed=11)
    assert again.ok == 6 and trial_workers.started == started

    # A worker killed while idle is found dead before a trial is sent to it.
    name = sorted(pids)[0]
    ray.kill(ray.get_actor(name, namespace=trial_workers.NAMESPACE))
    _wait_gone(name)
    third = _search(definition, frame, tmp_path, num_samples=6, seed=11)
    assert third.ok == 6 and trial_workers.started == started + 1
    assert _worker_pids()[name] != pids[name]


def _wait_gone(name: str, timeout_s: float = 20.0) -> None:
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=trial_workers.NAMESPACE)
        except ValueError:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} still registered after {timeout_s} s")


@pytest.mark.slow
def test_workers_of_other_code_are_killed(ray_session: None) -> None:
    import ray

    stale = f"{trial_workers.PREFIX}0123456789-old-0"
    handle = (
        ray.remote(trial_workers.TrialWorker)
        .options(name=stale, namespace=trial_workers.NAMESPACE, num_cpus=0)  # type: ignore[attr-defined]
        .remote(())
    )
    ray.get(handle.info.remote())  # type: ignore[attr-defined]
    assert stale in trial_workers.kill_stale()
    _wait_gone(stale)
    assert trial_workers.kill_stale() == []  # ours are kept


def test_workers_outlive_the_process_only_on_a_ray_it_joined(ray_session: None) -> None:
    assert trial_workers.lifetime(started_here=False) == "detached"
    assert trial_workers.lifetime(started_here=True) is None
    # The session's Ray was started by this process: its workers die with it.
    assert trial_workers.ray_started_here()
    assert trial_workers.pool().detached is False


@pytest.mark.slow
def test_the_holdout_is_scored_on_the_warm_workers_and_a_dead_ones_shard_here(
    tmp_path: Path, frame: pd.DataFrame, ray_session: None
) -> None:
    from sklearn.linear_model import LogisticRegression

    from aipaas.training.evaluate import evaluate_holdout
    from aipaas.training.metrics import predict_outputs

    definition = _model(tmp_path, '{"C": LogUniform(0.1, 10.0)}')
    X, y = frame[list(definition.features)], frame[definition.target]
    model = LogisticRegression(max_iter=500).fit(X, y)
    here = predict_outputs(model, X)

    trial_workers.pool().take(2)  # warm, as the search leaves them
    pids, started = _worker_pids(), trial_workers.started
    ev = evaluate_holdout(model, definition, frame, shards=2)
    # The two shards ran on the workers the search uses: no new process.
    assert _worker_pids() == pids and trial_workers.started == started
    assert ev.shards == 2 and ev.rows == len(frame)
    assert list(ev.pred) == list(here[0]) and np.allclose(ev.proba, here[1])

    # A worker that dies predicting its shard: the driver predicts that shard itself.
    driver = os.getpid()

    class DiesOnWorkers(LogisticRegression):
        def predict(self, X: Any) -> Any:
            if os.getpid() != driver:
                os._exit(3)  # as when the kernel kills the worker
            return super().predict(X)

    dying = DiesOnWorkers(max_iter=500).fit(X, y)
    again = evaluate_holdout(dying, definition, frame, shards=2)
    assert list(again.pred) == list(here[0]) and again.metrics == ev.metrics
    # Both workers died: the next use of the pool starts new ones.
    assert len(trial_workers.pool().take(2)) == 2 and trial_workers.started == started + 2
