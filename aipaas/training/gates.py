"""The promotion policy: evidence in, gate results out. Pure: no registry, no files.

The policy is the model definition's :class:`aipaas.modeldef.Gates`. Each
gate is recorded with what was measured, against what threshold, and the
outcome (:class:`aipaas.schemas.GateResult`), so a rejection explains itself.
:mod:`aipaas.training.promote` gathers the evidence from the registry and
applies the outcome.

Slice gates read each version's metrics on named parts of the holdout
(:class:`SliceScore`, from :func:`aipaas.training.evaluate.score_slices`), one
gate per kind and metric, every slice's value in its detail. No evidence is
no pass, as for every other gate: a slice with too few rows, a metric the
slice cannot define (AUC on one class), or a holdout that was not sliced fails
the gate and says which slice and why, rather than pass unchecked or be
judged on noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aipaas.modeldef import Gates, ModelDefinition, higher_is_better
from aipaas.schemas import GateResult
from aipaas.training import tags

APPROVAL = "approval"


@dataclass(frozen=True)
class SliceScore:
    """One version's metrics on one slice of the holdout."""

    name: str
    rows: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    # Why the slice was not scored at all ("not enough rows (12 < 20)"), or "".
    unmeasured: str = ""
    # metric -> why these rows cannot define it ("one class (benign) in these rows").
    undefined: Mapping[str, str] = field(default_factory=dict)

    def reading(self, metric: str) -> tuple[float | None, str]:
        """The metric's value, or None and why there is none."""
        if self.unmeasured:
            return None, self.unmeasured
        if metric in self.undefined:
            return None, f"{metric} undefined: {self.undefined[metric]}"
        value = self.metrics.get(metric)
        if value is None or not _finite(value):
            return None, f"{metric} not measured"
        return float(value), ""


@dataclass(frozen=True)
class Candidate:
    """The evidence about one version that the gates read.

    ``slices`` is None when the holdout was not sliced (no slices defined, or
    no holdout: ``slices_error`` says why).
    """

    version: str
    metrics: Mapping[str, float]
    latency_p99_ms: float | None = None
    input_schema: Mapping[str, str] | None = None
    schema_error: str | None = None
    suite_passed: bool | None = None
    slices: tuple[SliceScore, ...] | None = None
    slices_error: str | None = None


def now() -> str:
    """The current UTC time as recorded on decisions (ISO 8601, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Approval:
    """A person's answer to a promotion that asks for one."""

    approved: bool
    reviewer: str
    at: str = field(default_factory=now)
    comment: str = ""


def check_gates(
    definition: ModelDefinition,
    challenger: Candidate,
    champion: Candidate | None,
    *,
    comparable: str | None = None,
) -> list[GateResult]:
    """Check every automatic gate of ``definition.gates``; never raises.

    Args:
        definition: The model definition whose gates are the policy.
        challenger: Evidence about the version asking to be promoted.
        champion: Evidence about the current champion, None for the first model.
        comparable: Why the two cannot be compared on the same holdout, or
            None when their metrics are comparable.
    """
    policy = definition.gates
    results = [
        _bound_gate("min", metric, challenger.metrics.get(metric), floor)
        for metric, floor in policy.min_metrics.items()
    ]
    results += [
        _bound_gate("max", metric, challenger.metrics.get(metric), ceiling)
        for metric, ceiling in policy.max_metrics.items()
    ]
    results.append(_champion_gate(definition, challenger, champion, comparable))
    results += slice_gates(definition.gates, challenger, champion, comparable=comparable)
    results.append(_latency_gate(challenger.latency_p99_ms, policy.p99_latency_ms))
    if policy.require_signature_compatible:
        results.append(_signature_gate(challenger, champion))
    if policy.require_suite_passed:
        results.append(_suite_gate(challenger.suite_passed))
    return results


def approval_gate(approval: Approval | None) -> GateResult:
    """The manual approval gate; a missing answer fails it."""
    if approval is None:
        return GateResult(
            APPROVAL,
            False,
            "not given",
            "approved by a person",
            "approve in the Prefect UI, or run `aipaas promote ... --approve-as NAME`",
        )
    verdict = "approved" if approval.approved else "rejected"
    return GateResult(
        APPROVAL,
        approval.approved,
        f"{verdict} by {approval.reviewer} at {approval.at}",
        "approved by a person",
        approval.comment,
    )


def with_approval(
    gates: Sequence[GateResult], requires_approval: bool, approval: Approval | None
) -> list[GateResult]:
    """The gates a decision records: the automatic ones, plus approval when it was asked.

    No one is asked about a version that already failed an automatic gate, so
    a failed version without an answer records no approval gate.
    """
    out = list(gates)
    if requires_approval and approval is not None:
        out.append(approval_gate(approval))
    return out


def failure_reasons(gates: Sequence[GateResult]) -> list[str]:
    """One line per failed gate: what it measured, what it needed, and why."""
    out = []
    for g in gates:
        if not g.passed:
            text = f"{g.name} = {g.value} (needs {g.threshold})"
            out.append(f"{text}: {g.detail}" if g.detail else text)
    return out


def format_gates(gates: Sequence[GateResult]) -> str:
    """The gates as a plain-text table, for the CLI and error messages."""
    table = [("gate", "value", "threshold", "result", "detail")] + [
        (g.name, str(g.value), g.threshold, "pass" if g.passed else "FAIL", g.detail or "")
        for g in gates
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in table
    ).rstrip()


def gates_table(gates: Sequence[GateResult]) -> list[dict[str, Any]]:
    """The gates as rows for a table artifact (value, threshold, pass or fail)."""
    return [
        {
            "gate": g.name,
            "value": str(g.value),
            "threshold": g.threshold,
            "result": "pass" if g.passed else "FAIL",
            "detail": g.detail or "",
        }
        for g in gates
    ]


# --- one function per gate ------------------------------------------------------


def _bound_gate(kind: str, metric: str, value: float | None, bound: float) -> GateResult:
    if kind == "min":
        ok, threshold = _finite(value) and value >= bound, f">= {bound}"  # type: ignore[operator]
    else:
        ok, threshold = _finite(value) and value <= bound, f"<= {bound}"  # type: ignore[operator]
    why = "" if value is not None else "metric not measured"
    return GateResult(f"{kind} {metric}", bool(ok), _round(value), threshold, why)


def _latency_gate(latency: float | None, budget: float) -> GateResult:
    ok = _finite(latency) and latency <= budget  # type: ignore[operator]
    why = "" if latency is not None else f"training logged no {tags.LATENCY_P99_MS} metric"
    return GateResult("p99 latency ms", bool(ok), _round(latency), f"<= {budget}", why)


def _suite_gate(suite: bool | None) -> GateResult:
    return GateResult(
        "data suite passed",
        suite is True,
        "unknown" if suite is None else suite,
        "True",
        f"version has no {tags.SUITE_PASSED} tag" if suite is None else "",
    )


def _champion_gate(
    definition: ModelDefinition,
    challenger: Candidate,
    champion: Candidate | None,
    comparable: str | None,
) -> GateResult:
    metric, tolerance = definition.metric, definition.gates.champion_tolerance
    name = f"vs champion {metric}"
    value = _round(challenger.metrics.get(metric))
    if champion is None:
        return GateResult(name, True, value, "no champion yet", "first model: absolute gates only")
    if comparable is not None:
        return GateResult(name, False, value, "same holdout", comparable)
    theirs = champion.metrics.get(metric)
    ours = challenger.metrics.get(metric)
    if not (_finite(ours) and _finite(theirs)):
        return GateResult(name, False, value, "measured", f"{metric} missing for one of the two")
    if definition.mode == "max":
        bound = theirs - tolerance  # type: ignore[operator]
        ok, threshold = ours >= bound, f">= {_round(bound)}"  # type: ignore[operator]
    else:
        bound = theirs + tolerance  # type: ignore[operator]
        ok, threshold = ours <= bound, f"<= {_round(bound)}"  # type: ignore[operator]
    detail = f"champion v{champion.version} scored {_round(theirs)}, tolerance {tolerance}"
    return GateResult(name, bool(ok), value, threshold, detail)


# --- slice gates ------------------------------------------------------------------


@dataclass(frozen=True)
class _Reading:
    """One slice's value of one metric, or why it has none."""

    slice: str
    rows: int
    value: float | None
    why: str = ""

    def shown(self) -> str:
        if self.value is None:
            return f"{self.slice}: {self.why}"
        return f"{self.slice} {self.value:.3f} ({self.rows} rows)"


def slice_gates(
    policy: Gates,
    challenger: Candidate,
    champion: Candidate | None,
    *,
    comparable: str | None = None,
) -> list[GateResult]:
    """The slice gates of ``policy``: one per kind and metric; none without slices.

    Each applies to the slices whose ``metrics`` include its metric (all, by
    default) and fails when any of them has no value, naming the slice.
    """
    if not policy.slices:
        return []
    out = [
        _slice_bound("min", metric, floor, policy, challenger)
        for metric, floor in policy.min_slice_metrics.items()
    ]
    out += [
        _slice_bound("max", metric, ceiling, policy, challenger)
        for metric, ceiling in policy.max_slice_metrics.items()
    ]
    out += [
        _slice_gap(metric, gap, policy, challenger) for metric, gap in policy.max_slice_gap.items()
    ]
    out += [
        _slice_vs_champion(metric, tolerance, policy, challenger, champion, comparable)
        for metric, tolerance in policy.slice_champion_tolerance.items()
    ]
    return out


def _readings(policy: Gates, candidate: Candidate, metric: str) -> list[_Reading]:
    scores = {s.name: s for s in candidate.slices or ()}
    out = []
    for s in policy.slices:
        if not s.applies_to(metric):
            continue
        score = scores.get(s.name)
        if score is None:
            out.append(_Reading(s.name, 0, None, "not scored"))
            continue
        value, why = score.reading(metric)
        out.append(_Reading(s.name, score.rows, value, why))
    return out


def _measured(readings: Sequence[_Reading]) -> list[tuple[_Reading, float]]:
    return [(r, r.value) for r in readings if r.value is not None]


def _unsliced(name: str, threshold: str, candidate: Candidate) -> GateResult | None:
    if candidate.slices is not None:
        return None
    why = candidate.slices_error or "the holdout was not sliced"
    return GateResult(name, False, None, threshold, why)


def _slice_bound(
    kind: str, metric: str, bound: float, policy: Gates, challenger: Candidate
) -> GateResult:
    name = f"slice {kind} {metric}"
    threshold = f"{'>=' if kind == 'min' else '<='} {bound} on every slice"
    unsliced = _unsliced(name, threshold, challenger)
    if unsliced is not None:
        return unsliced
    readings = _readings(policy, challenger, metric)
    measured = _measured(readings)
    values = [v for _, v in measured]
    if kind == "min":
        beyond = [r.slice for r, v in measured if v < bound]
        worst = min(values) if values else None
    else:
        beyond = [r.slice for r, v in measured if v > bound]
        worst = max(values) if values else None
    missing = [r for r in readings if r.value is None]
    notes = [f"{'below' if kind == 'min' else 'above'} on {', '.join(beyond)}"] if beyond else []
    notes += _missing_note(missing)
    detail = "; ".join([*notes, ", ".join(r.shown() for r in readings)])
    return GateResult(name, not beyond and not missing, _round(worst), threshold, detail)


def _slice_gap(metric: str, gap: float, policy: Gates, challenger: Candidate) -> GateResult:
    name, threshold = f"slice gap {metric}", f"<= {gap} between slices"
    unsliced = _unsliced(name, threshold, challenger)
    if unsliced is not None:
        return unsliced
    readings = _readings(policy, challenger, metric)
    sign = 1.0 if higher_is_better(metric) else -1.0
    ranked = sorted(_measured(readings), key=lambda rv: sign * rv[1], reverse=True)
    notes = _missing_note([r for r in readings if r.value is None])
    if len(ranked) < 2:
        notes.append(f"needs {metric} on two slices or more")
        return GateResult(name, False, None, threshold, "; ".join(notes))
    (best, high), (worst, low) = ranked[0], ranked[-1]
    value = abs(high - low)
    notes.append(f"best {best.slice} {high:.3f}, worst {worst.slice} {low:.3f}")
    ok = value <= gap + 1e-12 and len(ranked) == len(readings)
    return GateResult(name, ok, _round(value), threshold, "; ".join(notes))


def _slice_vs_champion(
    metric: str,
    tolerance: float,
    policy: Gates,
    challenger: Candidate,
    champion: Candidate | None,
    comparable: str | None,
) -> GateResult:
    name = f"slice vs champion {metric}"
    threshold = f"no slice worse by more than {tolerance}"
    if champion is None:
        return GateResult(name, True, None, "no champion yet", "first model: absolute gates only")
    if comparable is not None:
        return GateResult(name, False, None, "same holdout", comparable)
    unsliced = _unsliced(name, threshold, challenger) or _unsliced(name, threshold, champion)
    if unsliced is not None:
        return unsliced
    theirs = {r.slice: r for r in _readings(policy, champion, metric)}
    sign = 1.0 if higher_is_better(metric) else -1.0
    changes: list[tuple[str, float, float, float]] = []  # slice, ours, theirs, change
    missing: list[_Reading] = []
    for ours in _readings(policy, challenger, metric):
        their = theirs[ours.slice]
        if ours.value is None:
            missing.append(ours)
        elif their.value is None:
            missing.append(replace(their, why=f"champion: {their.why}"))
        else:
            changes.append((ours.slice, ours.value, their.value, sign * (ours.value - their.value)))
    worse = [c[0] for c in changes if c[3] < -tolerance - 1e-12]
    notes = [f"worse on {', '.join(worse)}"] if worse else []
    notes += _missing_note(missing)
    if changes:
        shown = ", ".join(f"{s} {o:.3f} vs {t:.3f}" for s, o, t, _ in changes)
        notes.append(f"against champion v{champion.version}: {shown}")
    value = _round(min(c[3] for c in changes)) if changes else None
    return GateResult(name, not worse and not missing, value, threshold, "; ".join(notes))


def _missing_note(missing: Sequence[_Reading]) -> list[str]:
    if not missing:
        return []
    return ["no value on " + ", ".join(f"{r.slice} ({r.why})" for r in missing)]


def _signature_gate(challenger: Candidate, champion: Candidate | None) -> GateResult:
    name, threshold = "signature compatible", "no removed or retyped input"
    if challenger.input_schema is None:
        why = challenger.schema_error or "the challenger was logged without a signature"
        return GateResult(name, False, "no signature", threshold, why)
    if champion is None:
        return GateResult(name, True, "compatible", threshold, "no champion yet")
    if champion.input_schema is None:
        return GateResult(name, True, "compatible", threshold, "champion has no signature")
    ours, theirs = challenger.input_schema, champion.input_schema
    removed = sorted(c for c in theirs if c not in ours)
    retyped = sorted(
        f"{c} {theirs[c]}->{ours[c]}" for c in theirs if c in ours and ours[c] != theirs[c]
    )
    problems = ([f"removed: {', '.join(removed)}"] if removed else []) + (
        [f"retyped: {', '.join(retyped)}"] if retyped else []
    )
    if problems:
        return GateResult(name, False, "; ".join(problems), threshold)
    added = sorted(c for c in ours if c not in theirs)
    return GateResult(
        name, True, "compatible", threshold, f"added: {', '.join(added)}" if added else ""
    )


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
