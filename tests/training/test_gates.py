"""The promotion policy on plain evidence: no registry, no files."""

from __future__ import annotations

import pytest

from aipaas.modeldef import Gates, ModelDefinition, Slice, Uniform
from aipaas.schemas import GateResult
from aipaas.training.gates import (
    Approval,
    Candidate,
    SliceScore,
    approval_gate,
    check_gates,
    failure_reasons,
    format_gates,
    gates_table,
    with_approval,
)


def _definition(**gates: object) -> ModelDefinition:
    return ModelDefinition(
        name="tiny",
        dataset="tiny",
        target="y",
        features=("a", "b"),
        build_estimator=lambda p: None,
        search_space={"C": Uniform(0.1, 1.0)},
        metrics=("roc_auc", "accuracy"),
        gates=Gates(**gates),  # type: ignore[arg-type]
    )


def _candidate(version: str = "2", **kw: object) -> Candidate:
    base: dict[str, object] = {
        "metrics": {"roc_auc": 0.9, "accuracy": 0.85},
        "latency_p99_ms": 5.0,
        "input_schema": {"a": "double", "b": "double"},
        "suite_passed": True,
    }
    base.update(kw)
    return Candidate(version=version, **base)  # type: ignore[arg-type]


def _gate(results: list[GateResult], name: str) -> GateResult:
    [found] = [g for g in results if g.name == name]
    return found


def test_every_gate_passes_for_a_good_challenger() -> None:
    d = _definition(min_metrics={"roc_auc": 0.8}, max_metrics={"accuracy": 0.99})
    results = check_gates(d, _candidate(), _candidate("1", metrics={"roc_auc": 0.88}))
    assert [g.name for g in results] == [
        "min roc_auc",
        "max accuracy",
        "vs champion roc_auc",
        "p99 latency ms",
        "signature compatible",
        "data suite passed",
    ]
    assert all(g.passed for g in results), format_gates(results)


def test_slice_gates_follow_the_champion_comparison() -> None:
    """Slice gates are checked with the others (their logic: test_slice_gates.py)."""
    d = _definition(
        slices=(Slice("low", "a", range=(None, 0)), Slice("high", "a", range=(0, None))),
        min_slice_metrics={"accuracy": 0.8},
        max_slice_gap={"accuracy": 0.1},
    )
    slices = (SliceScore("low", 30, {"accuracy": 0.9}), SliceScore("high", 30, {"accuracy": 0.6}))
    results = check_gates(d, _candidate(slices=slices), _candidate("1", slices=slices))
    assert [g.name for g in results][:4] == [
        "vs champion roc_auc",
        "slice min accuracy",
        "slice gap accuracy",
        "p99 latency ms",
    ]
    assert [g.name for g in results if not g.passed] == ["slice min accuracy", "slice gap accuracy"]


@pytest.mark.parametrize(
    ("gate", "gates", "challenger", "champion"),
    [
        ("min roc_auc", {"min_metrics": {"roc_auc": 0.95}}, {}, None),
        ("min roc_auc", {"min_metrics": {"roc_auc": 0.5}}, {"metrics": {}}, None),
        ("max accuracy", {"max_metrics": {"accuracy": 0.8}}, {}, None),
        ("vs champion roc_auc", {"champion_tolerance": 0.01}, {}, {"metrics": {"roc_auc": 0.95}}),
        ("p99 latency ms", {"p99_latency_ms": 2.0}, {}, None),
        ("p99 latency ms", {}, {"latency_p99_ms": None}, None),
        ("signature compatible", {}, {"input_schema": {"a": "double"}}, {}),
        ("signature compatible", {}, {"input_schema": {"a": "double", "b": "long"}}, {}),
        ("signature compatible", {}, {"input_schema": None}, None),
        ("data suite passed", {}, {"suite_passed": False}, None),
        ("data suite passed", {}, {"suite_passed": None}, None),
    ],
)
def test_each_gate_fails_on_its_own(
    gate: str, gates: dict, challenger: dict, champion: dict | None
) -> None:
    d = _definition(**gates)
    champ = None if champion is None else _candidate("1", **champion)
    results = check_gates(d, _candidate(**challenger), champ)
    failed = [g.name for g in results if not g.passed]
    assert failed == [gate], format_gates(results)


def test_a_missing_metric_says_so() -> None:
    g = _gate(check_gates(_definition(min_metrics={"f1": 0.5}), _candidate(), None), "min f1")
    assert not g.passed and g.value is None and g.detail == "metric not measured"


def test_champion_tolerance_and_direction() -> None:
    d = _definition(champion_tolerance=0.02)
    champ = _candidate("1", metrics={"roc_auc": 0.91})
    # 0.9 is within 0.02 of 0.91: passes; the recorded threshold says so.
    g = _gate(check_gates(d, _candidate(), champ), "vs champion roc_auc")
    assert g.passed and g.threshold == ">= 0.89" and "v1 scored 0.91" in g.detail
    lower_is_better = ModelDefinition(**{**d.__dict__, "metric": "rmse", "mode": "min"})
    g = _gate(
        check_gates(
            lower_is_better,
            _candidate(metrics={"rmse": 3.0}),
            _candidate("1", metrics={"rmse": 2.0}),
        ),
        "vs champion rmse",
    )
    assert not g.passed and g.threshold == "<= 2.02"


def test_first_model_skips_comparison_but_not_absolute_gates() -> None:
    d = _definition(min_metrics={"roc_auc": 0.95})
    results = check_gates(d, _candidate(), None)
    assert _gate(results, "vs champion roc_auc").passed
    assert not _gate(results, "min roc_auc").passed


def test_incomparable_versions_fail_the_comparison() -> None:
    results = check_gates(_definition(), _candidate(), _candidate("1"), comparable="no holdout")
    g = _gate(results, "vs champion roc_auc")
    assert not g.passed and g.detail == "no holdout"


def test_signature_allows_added_inputs() -> None:
    wider = _candidate(input_schema={"a": "double", "b": "double", "c": "string"})
    g = _gate(check_gates(_definition(), wider, _candidate("1")), "signature compatible")
    assert g.passed and g.detail == "added: c"


def test_optional_gates_can_be_switched_off() -> None:
    d = _definition(require_signature_compatible=False, require_suite_passed=False)
    names = {g.name for g in check_gates(d, _candidate(input_schema=None), None)}
    assert "signature compatible" not in names and "data suite passed" not in names


def test_approval_gate_records_who_answered() -> None:
    assert not approval_gate(None).passed
    assert "--approve-as" in approval_gate(None).detail
    yes = approval_gate(Approval(approved=True, reviewer="erin", at="2024-01-01T00:00:00+00:00"))
    assert yes.passed and yes.value == "approved by erin at 2024-01-01T00:00:00+00:00"
    no = approval_gate(Approval(approved=False, reviewer="dana", comment="too slow"))
    assert not no.passed and no.value.startswith("rejected by dana") and no.detail == "too slow"


def test_approval_is_recorded_only_when_asked_and_answered() -> None:
    auto = [GateResult("min roc_auc", True, 0.9, ">= 0.8")]
    answer = Approval(approved=True, reviewer="erin")
    assert with_approval(auto, False, answer) == auto
    assert with_approval(auto, True, None) == auto
    assert [g.name for g in with_approval(auto, True, answer)] == ["min roc_auc", "approval"]


def test_reasons_and_tables_show_the_failures() -> None:
    gates = [
        GateResult("min roc_auc", True, 0.9, ">= 0.8"),
        GateResult("p99 latency ms", False, 900.0, "<= 50.0", "slow"),
    ]
    assert failure_reasons(gates) == ["p99 latency ms = 900.0 (needs <= 50.0): slow"]
    text = format_gates(gates).splitlines()
    assert text[0].split() == ["gate", "value", "threshold", "result", "detail"]
    assert text[2].split()[-2:] == ["FAIL", "slow"]
    rows = gates_table(gates)
    assert rows[1] == {
        "gate": "p99 latency ms",
        "value": "900.0",
        "threshold": "<= 50.0",
        "result": "FAIL",
        "detail": "slow",
    }
