"""Gated promotion and rollback: a challenger becomes champion only on evidence.

The policy is the model definition's :class:`aipaas.modeldef.Gates`; this
module gathers the evidence (metrics, latency, signature, suite result),
checks every gate, records each one with its value, threshold and outcome,
and only then moves aliases. Three steps, each usable alone:

- :func:`check_gates` is pure: evidence in, gate results out (unit tested
  without MLflow);
- :func:`evaluate` reads the registry and scores the versions, with no side
  effect, so a Prefect flow can show the gates and pause for approval;
- :func:`decide` applies the outcome: aliases, version tags, the promotion
  log, and a nudge to serving.

:func:`promote` chains them for the CLI; :func:`rollback` moves ``champion``
back to ``previous-champion`` in one step.

Champion and challenger are compared on the *same* holdout, the current
dataset version's, scored now; metrics logged at training time may come from
different holdouts. For the very first model there is nothing to compare, and
the absolute gates read the holdout metrics training logged.
"""

from __future__ import annotations

import getpass
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aipaas.exceptions import (
    AipaasError,
    DatasetNotFoundError,
    GateFailedError,
    ModelNotFoundError,
)
from aipaas.modeldef import ModelDefinition, load_definition
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import promotion_log, registry, signals, tags
from aipaas.training.promotion_log import PromotionRecord
from aipaas.training.registry import ModelVersionInfo

LATENCY_METRIC = "latency_p99_ms"
HOLDOUT_PREFIX = "holdout_"

# (model_uri, definition, holdout DataFrame) -> {metric: value}
Scorer = Callable[[str, ModelDefinition, Any], Mapping[str, float]]


@dataclass(frozen=True)
class Candidate:
    """The evidence about one version that the gates read."""

    version: str
    metrics: Mapping[str, float]
    latency_p99_ms: float | None = None
    input_schema: Mapping[str, str] | None = None
    schema_error: str | None = None
    suite_passed: bool | None = None


@dataclass(frozen=True)
class Approval:
    """A person's answer to a promotion that asks for one."""

    approved: bool
    reviewer: str
    at: str = field(default_factory=lambda: _now())
    comment: str = ""


@dataclass(frozen=True)
class Evaluation:
    """Gates checked for one version, before anything is changed."""

    model: str
    version: str
    champion: str | None
    gates: tuple[GateResult, ...]
    requires_approval: bool = False
    already_champion: bool = False
    basis: str = ""

    @property
    def auto_passed(self) -> bool:
        """Every automatic gate passed (approval, if required, is still to come)."""
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gates"] = [g.to_dict() for g in self.gates]
        d["auto_passed"] = self.auto_passed
        return d


# --- the policy --------------------------------------------------------------


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
    results: list[GateResult] = []
    for metric, floor in policy.min_metrics.items():
        value = challenger.metrics.get(metric)
        ok = _finite(value) and value >= floor  # type: ignore[operator]
        results.append(
            GateResult(
                f"min {metric}",
                ok,
                _round(value),
                f">= {floor}",
                "" if value is not None else "metric not measured",
            )
        )
    for metric, ceiling in policy.max_metrics.items():
        value = challenger.metrics.get(metric)
        ok = _finite(value) and value <= ceiling  # type: ignore[operator]
        results.append(
            GateResult(
                f"max {metric}",
                ok,
                _round(value),
                f"<= {ceiling}",
                "" if value is not None else "metric not measured",
            )
        )
    results.append(_champion_gate(definition, challenger, champion, comparable))
    latency = challenger.latency_p99_ms
    results.append(
        GateResult(
            "p99 latency ms",
            _finite(latency) and latency <= policy.p99_latency_ms,  # type: ignore[operator]
            _round(latency),
            f"<= {policy.p99_latency_ms}",
            "" if latency is not None else f"training logged no {LATENCY_METRIC} metric",
        )
    )
    if policy.require_signature_compatible:
        results.append(_signature_gate(challenger, champion))
    if policy.require_suite_passed:
        suite = challenger.suite_passed
        results.append(
            GateResult(
                "data suite passed",
                suite is True,
                "unknown" if suite is None else suite,
                "True",
                f"version has no {tags.SUITE_PASSED} tag" if suite is None else "",
            )
        )
    return results


def approval_gate(approval: Approval | None) -> GateResult:
    """The manual approval gate; a missing answer fails it."""
    if approval is None:
        return GateResult(
            "approval",
            False,
            "not given",
            "approved by a person",
            "approve in the Prefect UI, or run `aipaas promote ... --approve-as NAME`",
        )
    verdict = "approved" if approval.approved else "rejected"
    return GateResult(
        "approval",
        approval.approved,
        f"{verdict} by {approval.reviewer} at {approval.at}",
        "approved by a person",
        approval.comment,
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


# --- evidence ------------------------------------------------------------------


def evaluate(
    settings: Settings,
    model: str,
    version: str | None = None,
    *,
    scorer: Scorer | None = None,
    holdout: Any = None,
    definition: ModelDefinition | None = None,
) -> Evaluation:
    """Check the gates for ``version`` (default: the ``challenger``); change nothing.

    Args:
        settings: Platform settings (registry location, models directory).
        model: The model definition's name, also its registered name.
        version: The registry version; None means the ``challenger`` alias.
        scorer: Scores a version on a holdout; default ``aipaas.training.evaluate.score_version``.
        holdout: The holdout DataFrame both versions are scored on; default the
            current dataset version's.
        definition: The definition, when already loaded.

    Raises:
        ModelNotFoundError: no such definition, version, or no challenger.
    """
    definition = definition or load_definition(model, settings.models_dir)
    registry.connect(settings)
    target = _resolve(model, version)
    champion_info = registry.get_alias(model, tags.CHAMPION)
    champion_version = champion_info.version if champion_info else None
    requires_approval = definition.gates.require_approval
    if champion_version == target.version:
        return Evaluation(
            model, target.version, champion_version, (), requires_approval, True, "unchanged"
        )

    comparable: str | None = None
    if champion_info is None:
        basis = "holdout metrics logged at training"
        ours = _logged_metrics(target, definition)
        champion = None
    else:
        frame, basis, reason = _current_holdout(settings, definition, holdout)
        if frame is not None:
            score = scorer or _default_scorer()
            ours = _normalise(score(target.uri, definition, frame))
            theirs = _normalise(score(champion_info.uri, definition, frame))
        else:
            # Without the current holdout, logged metrics compare only when both
            # versions were trained (and so held out) on the same dataset version.
            ours = _logged_metrics(target, definition)
            theirs = _logged_metrics(champion_info, definition)
            same = target.tags.get(tags.DATA_HASH)
            if same and same == champion_info.tags.get(tags.DATA_HASH):
                basis = f"holdout metrics logged at training, same data {same[:12]}"
            else:
                basis = "none"
                comparable = f"{reason}, and the two versions were trained on different data"
        champion = _candidate(champion_info, theirs)
    challenger = _candidate(target, ours)
    gates = check_gates(definition, challenger, champion, comparable=comparable)
    return Evaluation(
        model, target.version, champion_version, tuple(gates), requires_approval, False, basis
    )


def _resolve(model: str, version: str | None) -> ModelVersionInfo:
    if version is not None:
        return registry.get_version(model, version)
    found = registry.get_alias(model, tags.CHALLENGER)
    if found is None:
        raise ModelNotFoundError(
            f"model {model!r} has no {tags.CHALLENGER!r} version to promote: "
            f"train one (`aipaas train {model}`) or pass --version"
        )
    return found


def _candidate(info: ModelVersionInfo, metrics: Mapping[str, float]) -> Candidate:
    logged = registry.run_metrics(info.run_id) if info.run_id else {}
    schema: Mapping[str, str] | None = None
    schema_error: str | None = None
    try:
        schema = registry.input_schema(info.uri)
    except ModelNotFoundError as err:
        schema_error = str(err)
    suite = info.tags.get(tags.SUITE_PASSED)
    return Candidate(
        version=info.version,
        metrics=metrics,
        latency_p99_ms=logged.get(LATENCY_METRIC),
        input_schema=schema,
        schema_error=schema_error,
        suite_passed=None if suite is None else suite.strip().lower() in ("true", "1", "yes"),
    )


def _logged_metrics(info: ModelVersionInfo, definition: ModelDefinition) -> dict[str, float]:
    logged = registry.run_metrics(info.run_id) if info.run_id else {}
    return _normalise({k: v for k, v in logged.items() if k.startswith(HOLDOUT_PREFIX)})


def _normalise(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k.removeprefix(HOLDOUT_PREFIX): float(v) for k, v in metrics.items()}


def _current_holdout(
    settings: Settings, definition: ModelDefinition, holdout: Any
) -> tuple[Any, str, str]:
    """The current dataset version's holdout, or (None, basis, why not)."""
    if holdout is not None:
        return holdout, "the given holdout", ""
    try:
        from aipaas.datasets.ingest import recorded_version
    except ImportError:
        return None, "none", "no data module to load the current holdout"
    try:
        current = recorded_version(definition.dataset, settings)
    except DatasetNotFoundError as err:
        return None, "none", f"no current holdout ({err})"
    frame = read_table(Path(current.holdout_path))
    return frame, f"current holdout of {definition.dataset} {current.hash[:12]}", ""


def read_table(path: Path) -> Any:
    """A holdout file as a DataFrame (parquet or CSV)."""
    import pandas as pd

    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _default_scorer() -> Scorer:
    try:
        from aipaas.training.evaluate import score_version
    except ImportError as err:
        raise AipaasError(
            "cannot score versions: aipaas.training.evaluate is missing from this installation"
        ) from err
    return score_version  # type: ignore[no-any-return]


# --- the decision --------------------------------------------------------------


def decide(
    settings: Settings,
    evaluation: Evaluation,
    *,
    decided_by: str | None = None,
    approval: Approval | None = None,
) -> PromotionRecord:
    """Apply an evaluation: promote on a pass, tag rejected on a fail.

    Promoting the current champion again changes nothing and is not logged.
    When the definition requires approval and none was given, nothing is
    recorded (no one has decided yet) and :class:`GateFailedError` says how to
    give it.

    Raises:
        GateFailedError: a gate failed (the version is now tagged rejected), or
            approval is required and missing. ``err.gates`` holds the record.
    """
    decider = decided_by or default_decider()
    model, version = evaluation.model, evaluation.version
    if evaluation.already_champion:
        return PromotionRecord(
            model=model,
            version=version,
            action="promote",
            result="unchanged",
            decided_by=decider,
            champion_before=version,
            champion_after=version,
        )
    gates = list(evaluation.gates)
    if evaluation.requires_approval:
        if approval is None and evaluation.auto_passed:
            pending = gates + [approval_gate(None)]
            raise GateFailedError(
                f"{model} v{version} passed its automatic gates but its definition "
                "requires a person's approval; nothing was changed. Approve it in the "
                f"Prefect UI (flow `promote`) or run `aipaas promote {model} --version "
                f"{version} --approve-as YOUR_NAME`.\n{format_gates(pending)}",
                gates=pending,
            )
        if approval is not None:  # no one is asked about a version that already failed
            gates.append(approval_gate(approval))
    passed = all(g.passed for g in gates)
    reasons = [_reason(g) for g in gates if not g.passed]
    now = _now()
    current = registry.get_alias(model, tags.CHAMPION)
    before = current.version if current else None
    record_tags: dict[str, Any] = {
        tags.PROMOTION_GATES: json.dumps([g.to_dict() for g in gates], default=str)[:4900],
        tags.PROMOTION_DECIDED_BY: decider,
    }
    if passed:
        if current is not None and current.version != version:
            registry.set_alias(model, tags.PREVIOUS_CHAMPION, current.version)
        registry.set_alias(model, tags.CHAMPION, version)
        record_tags |= {
            tags.PROMOTION_STATUS: "promoted",
            tags.PROMOTION_REASONS: "",
            tags.PROMOTED_AT: now,
        }
    else:
        record_tags |= {
            tags.PROMOTION_STATUS: "rejected",
            tags.PROMOTION_REASONS: "; ".join(reasons)[:4900],
        }
    registry.set_tags(model, version, record_tags)
    record = PromotionRecord(
        model=model,
        version=version,
        action="promote",
        result="promoted" if passed else "rejected",
        decided_by=decider,
        at=now,
        gates=[g.to_dict() for g in gates],
        reasons=reasons,
        champion_before=before,
        champion_after=version if passed else before,
        approved_by=approval.reviewer if approval and approval.approved else None,
    )
    promotion_log.append(settings, record)
    if not passed:
        champion_note = f"champion stays v{before}" if before else "there is still no champion"
        raise GateFailedError(
            f"{model} v{version} was rejected ({champion_note}): {'; '.join(reasons)}\n"
            f"{format_gates(gates)}",
            gates=gates,
        )
    signals.notify_champion_changed(settings, model)
    return record


def promote(
    settings: Settings,
    model: str,
    version: str | None = None,
    *,
    decided_by: str | None = None,
    approval: Approval | None = None,
    scorer: Scorer | None = None,
    holdout: Any = None,
) -> PromotionRecord:
    """Evaluate and decide in one call: what ``aipaas promote`` runs."""
    evaluation = evaluate(settings, model, version, scorer=scorer, holdout=holdout)
    return decide(settings, evaluation, decided_by=decided_by, approval=approval)


def rollback(settings: Settings, model: str, *, decided_by: str | None = None) -> PromotionRecord:
    """Move ``champion`` back to ``previous-champion`` in one step, on record.

    The rolled-back version is tagged ``rolled-back``; ``previous-champion`` is
    cleared, so a second rollback refuses rather than bouncing back to the
    version just rolled away from (re-promote it through the gates instead).

    Raises:
        ModelNotFoundError: there is no previous champion to go back to.
    """
    decider = decided_by or default_decider()
    registry.connect(settings)
    previous = registry.get_alias(model, tags.PREVIOUS_CHAMPION)
    if previous is None:
        raise ModelNotFoundError(
            f"model {model!r} has no {tags.PREVIOUS_CHAMPION!r} to roll back to; "
            f"see `aipaas models show {model}` and promote a version explicitly with "
            f"`aipaas promote {model} --version V`"
        )
    current = registry.get_alias(model, tags.CHAMPION)
    now = _now()
    registry.set_alias(model, tags.CHAMPION, previous.version)
    registry.delete_alias(model, tags.PREVIOUS_CHAMPION)
    if current is not None and current.version != previous.version:
        registry.set_tags(
            model,
            current.version,
            {
                tags.PROMOTION_STATUS: "rolled-back",
                tags.PROMOTION_REASONS: f"rolled back to v{previous.version} by {decider}",
                tags.PROMOTION_DECIDED_BY: decider,
            },
        )
    registry.set_tags(model, previous.version, {tags.PROMOTED_AT: now})
    record = PromotionRecord(
        model=model,
        version=previous.version,
        action="rollback",
        result="rolled-back",
        decided_by=decider,
        at=now,
        champion_before=current.version if current else None,
        champion_after=previous.version,
    )
    promotion_log.append(settings, record)
    signals.notify_champion_changed(settings, model)
    return record


# --- reading -------------------------------------------------------------------


def model_status(settings: Settings, model: str) -> dict[str, Any]:
    """Versions, aliases, gate results and data versions of one model."""
    registry.connect(settings)
    versions = registry.list_versions(model)
    if not versions:
        raise ModelNotFoundError(
            f"model {model!r} has no registered version; train one with `aipaas train {model}`"
        )
    # Searching versions does not return their aliases on every MLflow store:
    # ask for each alias the platform uses.
    aliases: dict[str, str] = {}
    for alias in (tags.CHAMPION, tags.CHALLENGER, tags.PREVIOUS_CHAMPION):
        found = registry.get_alias(model, alias)
        if found is not None:
            aliases[alias] = found.version
    rows = []
    for v in versions:
        gates = v.tags.get(tags.PROMOTION_GATES)
        rows.append(
            {
                "version": v.version,
                "aliases": sorted({*v.aliases, *(a for a, n in aliases.items() if n == v.version)}),
                "status": v.tags.get(tags.PROMOTION_STATUS, ""),
                "reasons": v.tags.get(tags.PROMOTION_REASONS, ""),
                "promoted_at": v.tags.get(tags.PROMOTED_AT, ""),
                "decided_by": v.tags.get(tags.PROMOTION_DECIDED_BY, ""),
                "dataset": v.tags.get(tags.DATASET, ""),
                "data_hash": v.tags.get(tags.DATA_HASH, ""),
                "suite_passed": v.tags.get(tags.SUITE_PASSED, ""),
                "run_id": v.run_id,
                "created": datetime.fromtimestamp(v.created_ms / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                "gates": json.loads(gates) if gates else [],
            }
        )
    history = [r.to_dict() for r in promotion_log.read(settings, model)]
    return {"model": model, "aliases": aliases, "versions": rows, "history": history}


def format_gates(gates: list[GateResult] | list[dict[str, Any]]) -> str:
    """The gates as a plain-text table, for the CLI and error messages."""
    rows = [g.to_dict() if isinstance(g, GateResult) else g for g in gates]
    table = [("gate", "value", "threshold", "result", "detail")] + [
        (
            str(r["name"]),
            str(r["value"]),
            str(r["threshold"]),
            "pass" if r["passed"] else "FAIL",
            str(r.get("detail") or ""),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in table
    ).rstrip()


def gates_table(gates: list[GateResult] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gates as rows for a table artifact (value, threshold, pass or fail)."""
    rows = [g.to_dict() if isinstance(g, GateResult) else g for g in gates]
    return [
        {
            "gate": r["name"],
            "value": str(r["value"]),
            "threshold": r["threshold"],
            "result": "pass" if r["passed"] else "FAIL",
            "detail": r.get("detail") or "",
        }
        for r in rows
    ]


def default_decider() -> str:
    """Who decided, when a person runs the CLI: the OS user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user} (cli)"


def _reason(g: GateResult) -> str:
    text = f"{g.name} = {g.value} (needs {g.threshold})"
    return f"{text}: {g.detail}" if g.detail else text


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
