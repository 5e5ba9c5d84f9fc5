"""The search space translation and validation, and a search on a two-node cluster."""

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
    import numpy as np, pandas as pd
    from ray.cluster_utils import Cluster
    from aipaas.modeldef import load_definition
    from aipaas.training.raycluster import ensure_ray
    from aipaas.settings import RaySettings, TuneSettings
    from aipaas.training.tune import run_search

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 200 * 1024**2},
    )
    cluster.add_node(num_cpus=1, object_store_memory=200 * 1024**2)
    cluster.wait_for_nodes()
    try:
        info = ensure_ray(RaySettings(address=cluster.address))
        rng = np.random.default_rng(0)
        definition = load_definition("diagnosis", Path(sys.argv[1]))
        X = rng.normal(size=(120, len(definition.features)))
        df = pd.DataFrame(X, columns=list(definition.features))
        df["diagnosis"] = np.where(X[:, 0] + rng.normal(scale=0.5, size=120) > 0,
                                   "malignant", "benign")
        result = run_search(
            definition, df, TuneSettings(num_samples=4, max_concurrent=2, cv_folds=2),
            storage_dir=Path(sys.argv[2]),
        )
        print(json.dumps({"nodes": info.nodes,
                          "trial_nodes": [t.node_id for t in result.trials],
                          "ok": result.ok}))
    finally:
        import ray
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.slow
def test_search_runs_trials_on_both_nodes_of_a_two_node_cluster(tmp_path: Path) -> None:
    # Its own process: the session's local Ray cannot coexist with a second cluster.
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODE_SCRIPT)
    env = {
        **__import__("os").environ,
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(ROOT / "models"), str(tmp_path / "ray_results")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["nodes"] == 2
    assert out["ok"] == 4
    assert len(set(out["trial_nodes"])) == 2, out
