"""Slice gates: a model good on average must also be good on each named slice.

The definition checks, the slicing of a holdout and the gate logic run on
plain DataFrames and values. The promotion tests register real scikit-learn
versions in a real MLflow store and score them with the platform's own scorer
on the same holdout: a challenger trained with one slice's labels flipped
beats the champion overall but is rejected, the slice named in its reasons;
a good one is promoted. The first champion's slices are checked too.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aipaas.exceptions import ConfigurationError, GateFailedError
from aipaas.modeldef import Gates, ModelDefinition, Slice, Uniform, load_definition
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import promotion_log, registry, tags
from aipaas.training.evaluate import score_model, score_slices, slice_frames
from aipaas.training.gates import Candidate, SliceScore, check_gates, failure_reasons, slice_gates
from aipaas.training.metrics import undefined_metrics
from aipaas.training.promote import assess, gates_tag, model_status, promote

# --- definitions -------------------------------------------------------------------

BANDS = (
    Slice("low", "a", range=(None, -1.0)),
    Slice("mid", "a", range=(-1.0, 1.0)),
    Slice("high", "a", range=(1.0, None)),
)


def _definition(**gates: object) -> ModelDefinition:
    policy: dict[str, object] = {"slices": BANDS, "min_slice_metrics": {"accuracy": 0.7}}
    return ModelDefinition(
        name="tiny",
        dataset="tiny",
        target="y",
        features=("a", "b"),
        build_estimator=lambda p: None,
        search_space={"C": Uniform(0.1, 1.0)},
        metrics=("roc_auc", "accuracy"),
        gates=Gates(**{**policy, **gates}),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Slice("s", "a"), "either values=(...) or range=(low, high)"),
        (lambda: Slice("s", "a", values=(1,), range=(0, 1)), "either values"),
        (lambda: Slice("s", "a", values=()), "values is empty"),
        (lambda: Slice("s", "a", values="abc"), "must be a tuple of values"),
        (lambda: Slice("s", "a", range=(2, 1)), "low 2 must be below high 1"),
        (lambda: Slice("s", "a", range=(None, None)), "selects every row"),
        (lambda: Slice("s", "a", range=(0, "9")), "numbers or None"),
        (lambda: Slice("s", "a", range=(0, math.inf)), "numbers or None"),
        (lambda: Slice("", "a", values=(1,)), "a slice needs a name"),
        (lambda: Gates(slices=BANDS), "no slice gate checks them"),
        (lambda: Gates(min_slice_metrics={"accuracy": 0.5}), "no slices are named"),
        (
            lambda: Gates(slices=(BANDS[0], BANDS[0]), min_slice_metrics={"accuracy": 0.5}),
            "repeated: ['low']",
        ),
        (lambda: Gates(slices=BANDS, max_slice_gap={"accuracy": -0.1}), "must be >= 0"),
        (lambda: Gates(slices=BANDS, min_slice_metrics={"accuracy": "high"}), "a number"),
        (
            lambda: Gates(slices=BANDS, min_slice_metrics={"accuracy": 0.5}, slice_min_rows=0),
            "slice_min_rows must be a whole number >= 1",
        ),
        (lambda: _definition(min_slice_metrics={"f1": 0.5}), "add them to metrics"),
        (
            lambda: _definition(
                slices=(Slice("yes", "y", values=("yes",)),),
                min_slice_metrics={"accuracy": 0.7, "roc_auc": 0.6},
            ),
            "holds one class of 'y', on which ['roc_auc'] are undefined",
        ),
        (
            lambda: _definition(slices=(Slice("yes", "y", range=(0, 1)),)),
            "takes a range of the class target",
        ),
        (
            lambda: _definition(slices=(Slice("low", "a", range=(None, 0), metrics=("f1",)),)),
            "names metrics ['f1'] that no slice gate checks",
        ),
    ],
)
def test_a_wrong_slice_definition_is_refused_when_built(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        make()
    assert message in str(err.value)


def test_a_class_slice_gated_on_accuracy_is_accepted() -> None:
    d = _definition(
        slices=(*BANDS, Slice("yes", "y", values=("yes",), metrics=("accuracy",))),
        min_slice_metrics={"accuracy": 0.7, "roc_auc": 0.6},
    )
    assert [s.name for s in d.gates.slices][-1] == "yes"
    assert d.gates.slices[3].applies_to("accuracy") and not d.gates.slices[3].applies_to("roc_auc")
    assert [s.describe() for s in d.gates.slices] == ["a < -1", "a in [-1, 1)", "a >= 1", "y = yes"]
    listed = Slice("two", "y", values=["x", "z"])  # a list is kept as a tuple
    assert listed.values == ("x", "z") and listed.describe() == "y in {x, z}"


def test_a_definition_file_with_a_bad_slice_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tiny.py").write_text(
        textwrap.dedent(
            """
            from aipaas.modeldef import Gates, ModelDefinition, Slice, Uniform
            definition = ModelDefinition(
                name="tiny", dataset="tiny", target="y", features=("a",),
                build_estimator=lambda p: None, search_space={"C": Uniform(0.1, 1.0)},
                gates=Gates(slices=(Slice("s", "a", range=(3, 1)),),
                            min_slice_metrics={"accuracy": 0.5}),
            )
            """
        )
    )
    with pytest.raises(ConfigurationError, match=r"tiny\.py: slice 's': range low 3"):
        load_definition("tiny", tmp_path)


# --- slicing a holdout ----------------------------------------------------------------


def test_slices_select_half_open_bands_and_values() -> None:
    frame = pd.DataFrame(
        {
            "a": [-2.0, -1.0, 0.0, 0.999, 1.0, 5.0, np.nan],
            "y": ["no", "no", "yes", "no", "yes", "yes", "no"],
            "b": 0.0,
        }
    )
    d = _definition(
        slices=(*BANDS, Slice("yes", "y", values=("yes",), metrics=("accuracy",))),
    )
    parts = slice_frames(d, frame)
    assert {k: v["a"].tolist() for k, v in parts.items() if k != "yes"} == {
        "low": [-2.0],
        "mid": [-1.0, 0.0, 0.999],  # -1 is in [-1, 1); a missing value is in no band
        "high": [1.0, 5.0],
    }
    assert parts["yes"]["a"].tolist() == [0.0, 1.0, 5.0]


def test_a_slice_that_does_not_fit_the_holdout_is_a_clear_error() -> None:
    frame = pd.DataFrame({"a": [1.0], "b": [2.0], "y": ["yes"], "site": ["x"]})
    wrong = _definition(slices=(Slice("s", "age", range=(0, 18)),))
    with pytest.raises(ConfigurationError, match="the holdout has no column 'age'"):
        slice_frames(wrong, frame)
    text = _definition(slices=(Slice("s", "site", range=(0, 18)),))
    with pytest.raises(ConfigurationError, match="needs a numeric column; 'site' holds object"):
        slice_frames(text, frame)


def test_undefined_metrics_are_named_with_why() -> None:
    assert undefined_metrics("classification", ["roc_auc", "accuracy"], ["no", "yes"]) == {}
    one = undefined_metrics("classification", ["roc_auc", "f1", "accuracy", "log_loss"], ["no"])
    assert one == {"roc_auc": "one class (no) in these rows", "f1": "one class (no) in these rows"}
    assert undefined_metrics("regression", ["rmse", "r2"], [3.0, 3.0]) == {
        "r2": "one target value in these rows"
    }


def test_slices_are_scored_measured_only_where_they_mean_something() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(-3, -1.5, 30), rng.uniform(-1, 1, 60), rng.uniform(1, 2, 5)])
    frame = pd.DataFrame({"a": a, "b": rng.normal(size=len(a))})
    frame["y"] = np.where(frame["a"] + rng.normal(scale=0.3, size=len(a)) > 0, "yes", "no")
    frame.loc[frame["a"] < -1.0, "y"] = "no"  # the low band holds one class
    model = LogisticRegression().fit(frame[["a", "b"]], frame["y"])
    d = _definition(min_slice_metrics={"accuracy": 0.7, "roc_auc": 0.6})

    low, mid, high = score_slices(d, frame, lambda rows: score_model(model, d, rows))

    assert (low.rows, mid.rows, high.rows) == (30, 60, 5)
    assert low.metrics == {"accuracy": 1.0} and low.undefined == {
        "roc_auc": "one class (no) in these rows"
    }
    assert low.reading("roc_auc") == (None, "roc_auc undefined: one class (no) in these rows")
    assert set(mid.metrics) == {"roc_auc", "accuracy"} and mid.metrics["roc_auc"] > 0.8
    assert high.unmeasured == "not enough rows (5 < 20)" and high.metrics == {}


# --- the gates on plain evidence -----------------------------------------------------


def _scores(**values: float | str) -> tuple[SliceScore, ...]:
    """``low=0.9, high="not enough rows (3 < 20)"``: accuracy per slice, or why none."""
    return tuple(
        SliceScore(name, 3, unmeasured=v)
        if isinstance(v, str)
        else SliceScore(name, 40, {"accuracy": v, "roc_auc": 0.9})
        for name, v in values.items()
    )


def _candidate(version: str = "2", slices: tuple[SliceScore, ...] | None = None) -> Candidate:
    return Candidate(
        version,
        {"roc_auc": 0.9, "accuracy": 0.85},
        latency_p99_ms=3.0,
        input_schema={"a": "double", "b": "double"},
        suite_passed=True,
        slices=slices,
    )


def _named(gates: list[GateResult], name: str) -> GateResult:
    [found] = [g for g in gates if g.name == name]
    return found


def test_a_slice_below_its_floor_fails_and_is_named() -> None:
    d = _definition()
    gates = slice_gates(d.gates, _candidate(slices=_scores(low=0.4, mid=0.9, high=0.95)), None)
    [g] = gates
    assert (g.name, g.passed, g.value, g.threshold) == (
        "slice min accuracy",
        False,
        0.4,
        ">= 0.7 on every slice",
    )
    assert g.detail == (
        "below on low; low 0.400 (40 rows), mid 0.900 (40 rows), high 0.950 (40 rows)"
    )
    assert failure_reasons(gates)[0].startswith("slice min accuracy = 0.4 (needs >= 0.7 on every")
    fine = slice_gates(d.gates, _candidate(slices=_scores(low=0.8, mid=0.9, high=0.95)), None)
    assert fine[0].passed and fine[0].value == 0.8


def test_too_few_rows_or_an_undefined_metric_fails_rather_than_guess() -> None:
    d = _definition(min_slice_metrics={"accuracy": 0.7, "roc_auc": 0.6})
    thin = _scores(low=0.9, mid=0.9, high="not enough rows (3 < 20)")
    gates = slice_gates(d.gates, _candidate(slices=thin), None)
    assert [g.passed for g in gates] == [False, False]
    assert "no value on high (not enough rows (3 < 20))" in gates[0].detail
    assert gates[0].value == 0.9  # the worst measured slice
    one_class = (
        *_scores(low=0.9, mid=0.9),
        SliceScore("high", 40, {"accuracy": 1.0}, undefined={"roc_auc": "one class (yes)"}),
    )
    gates = slice_gates(d.gates, _candidate(slices=one_class), None)
    acc, auc = gates
    assert acc.passed and not auc.passed
    assert "high (roc_auc undefined: one class (yes))" in auc.detail


def test_a_slice_restricted_to_some_metrics_is_only_gated_on_them() -> None:
    d = _definition(
        slices=(*BANDS, Slice("yes", "y", values=("yes",), metrics=("accuracy",))),
        min_slice_metrics={"accuracy": 0.7, "roc_auc": 0.6},
    )
    scores = (
        *_scores(low=0.9, mid=0.9, high=0.9),
        SliceScore("yes", 30, {"accuracy": 0.8}, undefined={"roc_auc": "one class (yes)"}),
    )
    acc, auc = slice_gates(d.gates, _candidate(slices=scores), None)
    assert acc.passed and "yes 0.800 (30 rows)" in acc.detail
    assert auc.passed and "yes" not in auc.detail


def test_the_gap_between_best_and_worst_slice() -> None:
    d = _definition(min_slice_metrics={}, max_slice_gap={"accuracy": 0.1})
    [g] = slice_gates(d.gates, _candidate(slices=_scores(low=0.7, mid=0.9, high=0.95)), None)
    assert not g.passed and g.value == 0.25 and g.threshold == "<= 0.1 between slices"
    assert g.detail == "best high 0.950, worst low 0.700"
    [g] = slice_gates(d.gates, _candidate(slices=_scores(low=0.9, mid=0.92, high=0.95)), None)
    assert g.passed and g.value == 0.05
    thin = _scores(low=0.9, mid="not enough rows (3 < 20)", high="not enough rows (2 < 20)")
    [g] = slice_gates(d.gates, _candidate(slices=thin), None)
    assert not g.passed and g.value is None and "needs accuracy on two slices" in g.detail


def test_each_slice_against_the_champion() -> None:
    d = _definition(min_slice_metrics={}, slice_champion_tolerance={"accuracy": 0.05})
    champion = _candidate("1", _scores(low=0.9, mid=0.8, high=0.9))

    worse = _candidate(slices=_scores(low=0.6, mid=0.99, high=0.99))
    [g] = slice_gates(d.gates, worse, champion)
    assert not g.passed and g.value == -0.3
    assert g.detail.startswith("worse on low; against champion v1: low 0.600 vs 0.900")

    within = _candidate(slices=_scores(low=0.86, mid=0.8, high=0.95))
    [g] = slice_gates(d.gates, within, champion)
    assert g.passed and g.value == -0.04

    [g] = slice_gates(d.gates, within, None)
    assert g.passed and g.threshold == "no champion yet"
    [g] = slice_gates(d.gates, within, champion, comparable="different holdouts")
    assert not g.passed and g.detail == "different holdouts"
    unscored = replace(champion, slices=None, slices_error="no holdout to slice: gone")
    [g] = slice_gates(d.gates, within, unscored)
    assert not g.passed and g.detail == "no holdout to slice: gone"


def test_lower_is_better_metrics_rank_and_compare_the_other_way() -> None:
    d = ModelDefinition(
        name="price",
        dataset="houses",
        target="price",
        features=("a",),
        build_estimator=lambda p: None,
        search_space={"C": Uniform(0.1, 1.0)},
        task="regression",
        metric="rmse",
        mode="min",
        metrics=("rmse", "r2"),
        gates=Gates(
            slices=BANDS,
            max_slice_metrics={"rmse": 10.0},
            max_slice_gap={"rmse": 5.0},
            slice_champion_tolerance={"rmse": 1.0},
        ),
    )

    def rmse(**v: float) -> tuple[SliceScore, ...]:
        return tuple(SliceScore(k, 40, {"rmse": x}) for k, x in v.items())

    ours = _candidate(slices=rmse(low=4.0, mid=3.0, high=12.0))
    theirs = _candidate("1", rmse(low=3.5, mid=3.0, high=6.0))
    top, gap, vs = slice_gates(d.gates, ours, theirs)
    assert not top.passed and top.value == 12.0 and top.detail.startswith("above on high")
    assert not gap.passed and gap.detail == "best mid 3.000, worst high 12.000"
    assert not vs.passed and vs.value == -6.0 and vs.detail.startswith("worse on high")


def test_without_a_sliced_holdout_every_slice_gate_fails() -> None:
    d = _definition(max_slice_gap={"accuracy": 0.2})
    unsliced = replace(_candidate(), slices=None, slices_error="no holdout to slice: no data")
    gates = check_gates(d, unsliced, None)
    failed = {g.name: g.detail for g in gates if not g.passed}
    assert failed == {
        "slice min accuracy": "no holdout to slice: no data",
        "slice gap accuracy": "no holdout to slice: no data",
    }


def test_the_version_tag_holds_valid_json_however_long_the_details() -> None:
    gates = [GateResult(f"slice min m{i}", True, 0.9, ">= 0.5", "x" * 900) for i in range(12)]
    tag = gates_tag(gates, limit=4900)
    assert len(tag) <= 4900
    shown = json.loads(tag)
    assert [g["name"] for g in shown] == [g.name for g in gates]
    assert all(len(g["detail"]) <= 200 for g in shown)
    tiny = json.loads(gates_tag(gates, limit=300))
    assert 0 < len(tiny) < len(gates) and tiny[0]["detail"] == ""


# --- promotion, with a real registry ---------------------------------------------------

MODEL = "tiny"
DEFINITION_FILE = """
from aipaas.modeldef import Gates, ModelDefinition, Slice, Uniform

definition = ModelDefinition(
    name="tiny",
    dataset="tiny",
    target="y",
    features=("a", "b"),
    build_estimator=lambda p: None,
    search_space={"C": Uniform(0.1, 1.0)},
    metrics=("roc_auc", "accuracy"),
    gates=Gates(
        min_metrics={"roc_auc": 0.6},
        champion_tolerance=0.01,
        p99_latency_ms=50.0,
        slices=(
            Slice("low", "a", range=(None, -1.0)),
            Slice("mid", "a", range=(-1.0, 1.0)),
            Slice("high", "a", range=(1.0, None)),
        ),
        min_slice_metrics={"accuracy": 0.35},
        max_slice_gap={"accuracy": 0.5},
        slice_champion_tolerance={"accuracy": 0.05},
    ),
)
"""


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = np.where(a + 0.5 * b + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "y": y})


TRAIN, HOLDOUT = _frame(600, 11), _frame(400, 12)


def _register(s: Settings, kind: str) -> str:
    """Train and register one version as training would; returns its version.

    ``weak``: a linear model that never saw ``a`` (shuffled), poor overall;
    ``good``: a small LightGBM on the true labels; ``flipped``: the same
    trained with the ``low`` band's labels flipped, better than ``weak``
    overall (roc_auc 0.76 against 0.73), wrong on nearly every row of that band.
    """
    import lightgbm as lgb
    import mlflow
    import mlflow.lightgbm
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    registry.connect(s)
    registry.ensure_experiment(s)
    X, y = TRAIN[["a", "b"]], TRAIN["y"].to_numpy()
    if kind == "flipped":
        y = np.where((X["a"] < -1.0).to_numpy(), np.where(y == "yes", "no", "yes"), y)
    if kind == "weak":
        blind = X.assign(a=X["a"].sample(frac=1, random_state=0).to_numpy())
        model: Any = LogisticRegression().fit(blind, y)
    else:
        model = lgb.LGBMClassifier(
            n_estimators=40, num_leaves=4, min_child_samples=10, n_jobs=1, verbose=-1
        ).fit(X, y)
    H = HOLDOUT[["a", "b"]]
    with mlflow.start_run() as run:
        flavor, package = (
            (mlflow.sklearn, "scikit-learn") if kind == "weak" else (mlflow.lightgbm, "lightgbm")
        )
        flavor.log_model(  # type: ignore[attr-defined]
            model,
            name=tags.MODEL_ARTIFACT,
            signature=infer_signature(X, model.predict(X)),
            pip_requirements=[package],
        )
        logged = {
            "roc_auc": roc_auc_score(HOLDOUT["y"] == "yes", model.predict_proba(H)[:, 1]),
            "accuracy": accuracy_score(HOLDOUT["y"], model.predict(H)),
        }
        mlflow.log_metrics({tags.holdout_metric(k): float(v) for k, v in logged.items()})
        mlflow.log_metric(tags.LATENCY_P99_MS, 3.0)
    mv = mlflow.register_model(f"runs:/{run.info.run_id}/{tags.MODEL_ARTIFACT}", MODEL)
    registry.set_tags(MODEL, mv.version, {tags.SUITE_PASSED: "true", tags.DATA_HASH: "abc123"})
    registry.set_alias(MODEL, tags.CHALLENGER, mv.version)
    return str(mv.version)


@pytest.fixture
def sliced(settings: Settings, tmp_path: Path) -> Settings:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.py").write_text(textwrap.dedent(DEFINITION_FILE))
    return settings.model_copy(update={"models_dir": models})


def test_better_overall_but_worse_on_a_slice_is_rejected_and_a_good_one_promoted(
    sliced: Settings, use_settings: Callable[..., Settings]
) -> None:
    s = sliced
    d = load_definition(MODEL, s.models_dir)

    # The first model: its slices are scored on the given holdout (training logs none).
    v1 = _register(s, "weak")
    first = promote(s, d, holdout=HOLDOUT, decided_by="alice")
    assert first.result == "promoted"
    floor = _named(first.gates, "slice min accuracy")
    assert floor.passed and [part.split()[0] for part in floor.detail.split(", ")] == [
        "low",
        "mid",
        "high",
    ]
    assert _named(first.gates, "slice vs champion accuracy").threshold == "no champion yet"

    # Better overall (roc_auc and accuracy beat the champion's), wrong on `low`.
    v2 = _register(s, "flipped")
    assessment = assess(s, d, holdout=HOLDOUT)
    gates = {g.name: g for g in assessment.gates}
    overall = gates["vs champion roc_auc"]
    assert overall.passed and overall.value > float(
        overall.detail.split("scored ")[1].split(",")[0]
    )
    failed = sorted(name for name, g in gates.items() if not g.passed)
    assert failed == ["slice gap accuracy", "slice min accuracy", "slice vs champion accuracy"]
    assert gates["slice min accuracy"].value < 0.2
    assert gates["slice min accuracy"].detail.startswith("below on low;")
    assert gates["slice vs champion accuracy"].detail.startswith("worse on low;")
    assert "worst low" in gates["slice gap accuracy"].detail

    with pytest.raises(GateFailedError) as err:
        promote(s, d, holdout=HOLDOUT, decided_by="alice")
    assert f"champion stays v{v1}" in str(err.value) and "below on low" in str(err.value)
    assert registry.get_alias(MODEL, tags.CHAMPION).version == v1  # type: ignore[union-attr]
    rejected = registry.get_version(MODEL, v2).tags
    assert rejected[tags.PROMOTION_STATUS] == "rejected"
    assert "slice min accuracy" in rejected[tags.PROMOTION_REASONS]
    assert "below on low" in rejected[tags.PROMOTION_REASONS]

    # The same forest on the true labels passes every gate, slices included.
    v3 = _register(s, "good")
    record = promote(s, d, holdout=HOLDOUT, decided_by="bob")
    assert record.result == "promoted" and record.version == v3
    slice_gates_ = [g for g in record.gates if g.name.startswith("slice ")]
    assert [g.name for g in slice_gates_] == [
        "slice min accuracy",
        "slice gap accuracy",
        "slice vs champion accuracy",
    ]
    assert all(g.passed for g in slice_gates_)

    # On record: the audit chain and the version's tags, as `aipaas models show` reads them.
    history = promotion_log.read(s, MODEL)
    assert [(r.version, r.result) for r in history] == [
        (v1, "promoted"),
        (v2, "rejected"),
        (v3, "promoted"),
    ]
    assert any("below on low" in r for r in history[1].reasons)
    shown = {v.version: v for v in model_status(s, MODEL).versions}
    assert not _named(shown[v2].gates, "slice min accuracy").passed
    assert "low " in _named(shown[v3].gates, "slice min accuracy").detail

    from typer.testing import CliRunner

    from aipaas.cli import app

    use_settings(
        env={
            "AIPAAS_HOME": str(s.home),
            "AIPAAS_MODELS_DIR": str(s.models_dir),
            "AIPAAS_MLFLOW__TRACKING_URI": s.mlflow_tracking_uri,
        }
    )
    out = CliRunner().invoke(app, ["models", "show", MODEL])
    assert out.exit_code == 0, out.output
    assert "slice min accuracy" in out.stdout and "slice vs champion accuracy" in out.stdout


def test_slices_without_a_holdout_or_with_a_wrong_column(sliced: Settings) -> None:
    s = sliced
    d = load_definition(MODEL, s.models_dir)
    _register(s, "good")

    # No holdout given and no dataset version recorded: nothing to slice, no pass.
    assessment = assess(s, d)
    unsliced = [g for g in assessment.gates if g.name.startswith("slice ") and not g.passed]
    assert [g.name for g in unsliced] == ["slice min accuracy", "slice gap accuracy"]
    assert unsliced[0].detail.startswith("no holdout to slice: no current holdout")
    assert not assessment.auto_passed

    # A slice on a column the holdout lacks is the definition's error: raised, nothing recorded.
    wrong = replace(d, gates=replace(d.gates, slices=(Slice("adults", "age", range=(18, None)),)))
    with pytest.raises(ConfigurationError, match="slice 'adults': the holdout has no column 'age'"):
        promote(s, wrong, holdout=HOLDOUT)
    assert promotion_log.read(s, MODEL) == []
