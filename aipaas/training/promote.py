"""Gated promotion and rollback: a challenger becomes champion only on evidence.

The policy is pure and lives in :mod:`aipaas.training.gates`; this module is
the registry side of it, in two steps, each usable alone:

- :func:`assess` reads the registry and scores the versions, with no side
  effect, so a Prefect flow can show the gates and pause for approval;
- :func:`decide_promotion` applies the outcome through :func:`record_decision`.

:func:`record_decision` is the one way ``champion`` moves: it signs the
decision (:mod:`aipaas.training.attestation`), tags the version, appends the
decision to the audit chain (:mod:`aipaas.training.promotion_log`), and only
then moves the aliases and nudges serving. Serving loads only a version whose
signed record is the chain's latest decision, so an alias moved by hand in
MLflow is refused. :func:`promote` chains assess and decide for the CLI;
:func:`rollback` moves ``champion`` back to ``previous-champion`` (or to a
named version that was promoted once) in one step; :func:`model_status`
reads it all back.

Champion and challenger are compared on the *same* holdout, the current
dataset version's, scored now; metrics logged at training time may come from
different holdouts. For the very first model there is nothing to compare, and
the absolute gates read the holdout metrics training logged. Slice gates
(``Gates.slices``) are always read on that current holdout, cut into the
definition's slices, the first model's too: training logs no slice metrics.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from aipaas.exceptions import (
    DatasetNotFoundError,
    GateFailedError,
    ModelNotFoundError,
    UnsignedVersionError,
)
from aipaas.modeldef import ModelDefinition
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import attestation, promotion_log, registry, signals, tags
from aipaas.training.attestation import tag_for
from aipaas.training.gates import (
    Approval,
    Candidate,
    SliceScore,
    approval_gate,
    check_gates,
    failure_reasons,
    format_gates,
    now,
    with_approval,
)
from aipaas.training.promotion_log import PromotionRecord
from aipaas.training.registry import ModelVersionInfo

# (model_uri, definition, holdout DataFrame) -> {metric: value}
Scorer = Callable[[str, ModelDefinition, pd.DataFrame], Mapping[str, float]]
# MLflow caps a tag value at 5000 characters.
TAG_LIMIT = 4900


@dataclass(frozen=True)
class Assessment:
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

    @property
    def awaits_approval(self) -> bool:
        """A person must answer before anything is decided."""
        return self.requires_approval and self.auto_passed and not self.already_champion

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["auto_passed"] = self.auto_passed
        return d


# --- evidence ------------------------------------------------------------------


def assess(
    settings: Settings,
    definition: ModelDefinition,
    version: str | None = None,
    *,
    scorer: Scorer | None = None,
    holdout: pd.DataFrame | None = None,
) -> Assessment:
    """Check the gates for ``version`` (default: the ``challenger``); change nothing.

    Args:
        settings: Platform settings (registry location, data).
        definition: The model's definition; its name is the registered name.
        version: The registry version; None means the ``challenger`` alias.
        scorer: Scores a version on a holdout; default
            :func:`aipaas.training.evaluate.score_version`.
        holdout: The holdout both versions are scored on; default the
            current dataset version's.

    Raises:
        ModelNotFoundError: no such version, or no challenger.
    """
    model = definition.name
    registry.connect(settings)
    target = _resolve(model, version)
    champion_info = registry.get_alias(model, tags.CHAMPION)
    champion_version = champion_info.version if champion_info else None
    requires = definition.gates.require_approval
    refusal = serving_refusal(settings, champion_info)
    if champion_version == target.version and refusal is None:
        return Assessment(model, target.version, champion_version, (), requires, True, "unchanged")
    comparable: str | None = None
    champion: Candidate | None = None
    # No champion, or the alias points at this version but serving refuses it
    # (e.g. promoted before records were signed): it stands on its own.
    alone = champion_info is None or champion_version == target.version
    sliced = bool(definition.gates.slices)
    current = _Holdout(None, "none", "")
    if sliced or not alone:
        current = _Holdout(*_current_holdout(settings, definition, holdout))
    score = scorer or _default_scorer()
    if alone or champion_info is None:
        basis = "holdout metrics logged at training"
        ours = _logged_metrics(target)
        if sliced:
            basis += f"; slices: {current.basis if current.frame is not None else 'none'}"
    else:
        ours, theirs, basis, comparable = _compare(
            definition, target, champion_info, score, current
        )
        wanted = sliced and bool(definition.gates.slice_champion_tolerance)
        champion = _candidate(
            champion_info, theirs, _slices(definition, champion_info, score, current, wanted)
        )
    challenger = _candidate(target, ours, _slices(definition, target, score, current, sliced))
    gates = check_gates(definition, challenger, champion, comparable=comparable)
    return Assessment(model, target.version, champion_version, tuple(gates), requires, False, basis)


@dataclass(frozen=True)
class _Holdout:
    """The holdout versions are scored on, what it is, or why there is none."""

    frame: pd.DataFrame | None
    basis: str
    missing: str


def _compare(
    definition: ModelDefinition,
    target: ModelVersionInfo,
    champion: ModelVersionInfo,
    score: Scorer,
    current: _Holdout,
) -> tuple[dict[str, float], dict[str, float], str, str | None]:
    """Both versions' metrics, on what basis, and why they do not compare (or None)."""
    frame, basis, reason = current.frame, current.basis, current.missing
    if frame is not None:
        ours = _normalise(score(target.uri, definition, frame))
        return ours, _normalise(score(champion.uri, definition, frame)), basis, None
    # Without the current holdout, logged metrics compare only when both
    # versions were trained (and so held out) on the same dataset version.
    ours, theirs = _logged_metrics(target), _logged_metrics(champion)
    same = target.tags.get(tags.DATA_HASH)
    if same and same == champion.tags.get(tags.DATA_HASH):
        return ours, theirs, f"holdout metrics logged at training, same data {same[:12]}", None
    return ours, theirs, "none", f"{reason}, and the two versions were trained on different data"


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


def _slices(
    definition: ModelDefinition,
    info: ModelVersionInfo,
    score: Scorer,
    current: _Holdout,
    wanted: bool,
) -> tuple[tuple[SliceScore, ...] | None, str | None]:
    """One version's metrics on each slice of the current holdout, or (None, why not).

    Raises:
        ConfigurationError: a slice does not fit the holdout (a definition error:
            nothing is decided, nothing recorded).
    """
    if not wanted:
        return None, None
    if current.frame is None:
        return None, f"no holdout to slice: {current.missing}"

    def on(rows: pd.DataFrame) -> dict[str, float]:
        return _normalise(score(info.uri, definition, rows))

    return score_slices(definition, current.frame, on), None


def _candidate(
    info: ModelVersionInfo,
    metrics: Mapping[str, float],
    slices: tuple[tuple[SliceScore, ...] | None, str | None] = (None, None),
) -> Candidate:
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
        latency_p99_ms=logged.get(tags.LATENCY_P99_MS),
        input_schema=schema,
        schema_error=schema_error,
        suite_passed=None if suite is None else suite.strip().lower() in ("true", "1", "yes"),
        slices=slices[0],
        slices_error=slices[1],
    )


def _logged_metrics(info: ModelVersionInfo) -> dict[str, float]:
    logged = registry.run_metrics(info.run_id) if info.run_id else {}
    return _normalise({k: v for k, v in logged.items() if k.startswith(tags.HOLDOUT_PREFIX)})


def _normalise(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k.removeprefix(tags.HOLDOUT_PREFIX): float(v) for k, v in metrics.items()}


def _current_holdout(
    settings: Settings, definition: ModelDefinition, holdout: pd.DataFrame | None
) -> tuple[pd.DataFrame | None, str, str]:
    """The current dataset version's holdout, or (None, basis, why not)."""
    from aipaas.datasets.ingest import recorded_version

    if holdout is not None:
        return holdout, "the given holdout", ""
    try:
        current = recorded_version(definition.dataset, settings)
    except DatasetNotFoundError as err:
        return None, "none", f"no current holdout ({err})"
    frame = read_table(Path(current.holdout_path))
    return frame, f"current holdout of {definition.dataset} {current.hash[:12]}", ""


def read_table(path: Path) -> pd.DataFrame:
    """A holdout file as a DataFrame (parquet or CSV)."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _default_scorer() -> Scorer:
    from aipaas.training.evaluate import version_scorer

    return version_scorer()


def score_slices(
    definition: ModelDefinition,
    holdout: pd.DataFrame,
    score: Callable[[pd.DataFrame], Mapping[str, float]],
) -> tuple[SliceScore, ...]:
    """:func:`aipaas.training.evaluate.score_slices`, imported when slices are scored."""
    from aipaas.training import evaluate

    return evaluate.score_slices(definition, holdout, score)


# --- the decision --------------------------------------------------------------


def decide_promotion(
    settings: Settings,
    assessment: Assessment,
    *,
    decided_by: str | None = None,
    approval: Approval | None = None,
    key_id: str | None = None,
) -> PromotionRecord:
    """Apply an assessment: promote on a pass, record the rejection on a fail.

    Promoting the current champion again changes nothing and is not recorded.
    When the definition requires approval and none was given, nothing is
    recorded (no one has decided yet) and :class:`GateFailedError` says how to
    give it. A given approval is recorded (``model.approved``) before the decision.

    Raises:
        GateFailedError: a gate failed (the rejection is now on record), or
            approval is required and missing. ``err.gates`` holds the gates.
    """
    decider = decided_by or default_decider()
    model, version = assessment.model, assessment.version
    if assessment.already_champion:
        return PromotionRecord(model, version, "promote", "unchanged", decider,
                               champion_before=version, champion_after=version)  # fmt: skip
    if assessment.awaits_approval and approval is None:
        pending = [*assessment.gates, approval_gate(None)]
        raise GateFailedError(
            f"{model} v{version} passed its automatic gates but its definition "
            "requires a person's approval; nothing was changed. Approve it in the "
            f"Prefect UI (flow `promote`) or run `aipaas promote {model} --version "
            f"{version} --approve-as YOUR_NAME`.\n{format_gates(pending)}",
            gates=pending,
        )
    gates = with_approval(assessment.gates, assessment.requires_approval, approval)
    approver = _record_approval(settings, assessment, approval, decider, key_id)
    passed = all(g.passed for g in gates)
    decision = PromotionRecord(
        model=model,
        version=version,
        action="promote",
        result="promoted" if passed else "rejected",
        decided_by=decider,
        gates=gates,
        reasons=failure_reasons(gates),
        approved_by=approver,
        key_id=key_id,
    )
    record = record_decision(settings, decision)
    if not passed:
        before = record.champion_before
        champion_note = f"champion stays v{before}" if before else "there is still no champion"
        raise GateFailedError(
            f"{model} v{version} was rejected ({champion_note}): {'; '.join(record.reasons)}\n"
            f"{format_gates(gates)}",
            gates=gates,
        )
    return record


def _record_approval(
    settings: Settings,
    assessment: Assessment,
    approval: Approval | None,
    decider: str,
    key_id: str | None,
) -> str | None:
    """Put a person's approval on the chain (``model.approved``); returns the approver."""
    if approval is None or not approval.approved or not assessment.requires_approval:
        return None
    promotion_log.append_approval(
        settings,
        assessment.model,
        assessment.version,
        approver=approval.reviewer,
        at=approval.at,
        comment=approval.comment,
        recorded_by=decider,
        key_id=key_id,
    )
    return approval.reviewer


def record_decision(settings: Settings, decision: PromotionRecord) -> PromotionRecord:
    """Record one decision and act on it: the only way ``champion`` moves.

    A promotion or a rollback is signed (:func:`attestation.sign`) and the
    signed record goes on the version as its attestation tag; every decision
    is tagged on the version and appended to the audit chain; only then are
    the aliases moved and serving nudged. The record precedes the act: if
    moving the alias fails, serving refuses the lagging alias rather than
    serve a version nobody recorded. ``decision``'s time, champion before and
    after and signature are filled in here.
    """
    registry.connect(settings)
    model, version = decision.model, decision.version
    current = registry.get_alias(model, tags.CHAMPION)
    before = current.version if current else None
    servable = decision.result in attestation.SERVABLE
    record = replace(
        decision,
        at=now(),
        champion_before=before,
        champion_after=version if servable else before,
    )
    att = _sign(settings, record) if servable else None
    record = replace(record, signature=att.signature if att else None)
    # A promotion keeps the last champion on record (read before this decision
    # joins the chain) as previous-champion; a rollback clears it.
    promoting = servable and record.action == "promote"
    on_record = promotion_log.latest_servable(settings, model) if promoting else None
    registry.set_tags(model, version, _decision_tags(record) | (tag_for(att) if att else {}))
    promotion_log.append(settings, record)
    if servable:
        _move_aliases(record, on_record.version if on_record else None)
        signals.notify_champion_changed(settings, model)
    return record


def _sign(settings: Settings, record: PromotionRecord) -> attestation.Attestation:
    return attestation.sign(
        settings,
        model=record.model,
        version=record.version,
        action=record.action,
        result=record.result,
        decided_by=record.decided_by,
        at=record.at,
        gates=record.gates,
        approved_by=record.approved_by,
    )


def _move_aliases(record: PromotionRecord, last_champion: str | None) -> None:
    """Point ``champion`` at the decided version.

    A promotion keeps the last champion *on record* (the chain's, not
    whatever the alias pointed at) as ``previous-champion``. A rollback
    clears ``previous-champion``, so a second rollback refuses rather than
    bouncing back, and marks the version rolled away from.
    """
    model, version, before = record.model, record.version, record.champion_before
    if record.action == "rollback":
        registry.set_alias(model, tags.CHAMPION, version)
        registry.delete_alias(model, tags.PREVIOUS_CHAMPION)
        if before is not None and before != version:
            away = {
                tags.PROMOTION_STATUS: "rolled-back",
                tags.PROMOTION_REASONS: f"rolled back to v{version} by {record.decided_by}",
                tags.PROMOTION_DECIDED_BY: record.decided_by,
            }
            registry.set_tags(model, before, away)
        return
    if last_champion is not None and last_champion != version:
        registry.set_alias(model, tags.PREVIOUS_CHAMPION, last_champion)
    registry.set_alias(model, tags.CHAMPION, version)


def _decision_tags(record: PromotionRecord) -> dict[str, str]:
    """The decided version's tags; a rollback only stamps when it became champion again."""
    if record.action == "rollback":
        return {tags.PROMOTED_AT: record.at}
    gates = gates_tag(record.gates)
    out = {tags.PROMOTION_GATES: gates, tags.PROMOTION_DECIDED_BY: record.decided_by}
    if record.result == "rejected":
        return out | {
            tags.PROMOTION_STATUS: "rejected",
            tags.PROMOTION_REASONS: "; ".join(record.reasons)[:TAG_LIMIT],
        }
    return out | {
        tags.PROMOTION_STATUS: "promoted",
        tags.PROMOTION_REASONS: "",
        tags.PROMOTED_AT: record.at,
    }


def gates_tag(gates: Sequence[GateResult], limit: int = TAG_LIMIT) -> str:
    """The gates as JSON within an MLflow tag's length, and always valid JSON.

    Slice gates carry every slice's value in their detail; when the whole does
    not fit, details are shortened, then dropped, then the last gates (the
    audit chain keeps them all). A cut string would not parse, and
    ``aipaas models show`` reads this tag back.
    """
    rows = [g.to_dict() for g in gates]
    for clip in (None, 200, 60, 0):
        shown = [r | {"detail": _clip(str(r.get("detail") or ""), clip)} for r in rows]
        text = json.dumps(shown, default=str)
        if len(text) <= limit:
            return text
    while shown and len(text) > limit:
        shown = shown[:-1]
        text = json.dumps(shown, default=str)
    return text


def _clip(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)] + "..." if limit else ""


def promote(
    settings: Settings,
    definition: ModelDefinition,
    version: str | None = None,
    *,
    decided_by: str | None = None,
    approval: Approval | None = None,
    scorer: Scorer | None = None,
    holdout: pd.DataFrame | None = None,
    key_id: str | None = None,
) -> PromotionRecord:
    """Assess and decide in one call: what ``aipaas promote`` runs."""
    assessment = assess(settings, definition, version, scorer=scorer, holdout=holdout)
    return decide_promotion(
        settings, assessment, decided_by=decided_by, approval=approval, key_id=key_id
    )


def rollback(
    settings: Settings,
    model: str,
    *,
    to_version: str | None = None,
    decided_by: str | None = None,
    key_id: str | None = None,
) -> PromotionRecord:
    """Move ``champion`` back in one step, signed and on record.

    Without ``to_version`` it goes back to ``previous-champion``; with it, to
    that version, which must have been promoted once (its signed record is on
    the version): a rollback goes back to a version that served, it does not
    promote one that never passed its gates. The version rolled away from is
    tagged ``rolled-back`` and ``previous-champion`` is cleared, so a second
    plain rollback refuses rather than bouncing back (re-promote it through
    the gates instead). Rolling back to the current champion changes nothing
    and records nothing (result ``unchanged``).

    Raises:
        ModelNotFoundError: no previous champion to go back to, or no such version.
        UnsignedVersionError: the target version was never promoted (a
            rollback does not launder one).
    """
    decider = decided_by or default_decider()
    registry.connect(settings)
    if to_version is None:
        target = registry.get_alias(model, tags.PREVIOUS_CHAMPION)
        if target is None:
            raise ModelNotFoundError(
                f"model {model!r} has no {tags.PREVIOUS_CHAMPION!r} to roll back to; "
                f"see `aipaas models show {model}` and roll back to a version that served "
                f"with `aipaas rollback {model} --to V`"
            )
        what = f"{tags.PREVIOUS_CHAMPION} v{target.version}"
    else:
        target = registry.get_version(model, str(to_version))
        what = f"v{target.version}"
    try:
        attestation.verify(settings, model, target.version, target.tags)
    except UnsignedVersionError as err:
        raise UnsignedVersionError(
            f"cannot roll {model} back to {what}: only a version that was promoted "
            f"may serve again; {err}"
        ) from err
    current = registry.get_alias(model, tags.CHAMPION)
    if current is not None and current.version == target.version:
        if serving_refusal(settings, current) is None:
            return PromotionRecord(model, target.version, "rollback", "unchanged", decider,
                                   champion_before=target.version,
                                   champion_after=target.version)  # fmt: skip
    decision = PromotionRecord(
        model=model,
        version=target.version,
        action="rollback",
        result="rolled-back",
        decided_by=decider,
        key_id=key_id,
    )
    return record_decision(settings, decision)


# --- reading -------------------------------------------------------------------


@dataclass(frozen=True)
class VersionStatus:
    """One registered version as ``aipaas models show`` lists it."""

    version: str
    aliases: list[str]
    status: str
    reasons: str
    promoted_at: str
    decided_by: str
    dataset: str
    data_hash: str
    suite_passed: str
    run_id: str | None
    created: str
    gates: list[GateResult]


@dataclass(frozen=True)
class ModelStatus:
    """Versions, aliases, gate results and promotion history of one model.

    ``history`` is read from the audit chain. ``champion_refused`` says why
    serving refuses the version ``champion`` points at (None when it serves,
    or there is no champion).
    """

    model: str
    aliases: dict[str, str]
    versions: list[VersionStatus]
    history: list[PromotionRecord]
    champion_refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_status(settings: Settings, model: str) -> ModelStatus:
    """Versions, aliases, gate results, data versions and history of one model."""
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
    rows = [_version_status(v, aliases) for v in versions]
    champion = next((v for v in versions if v.version == aliases.get(tags.CHAMPION)), None)
    return ModelStatus(
        model,
        aliases,
        rows,
        promotion_log.read(settings, model),
        serving_refusal(settings, champion),
    )


def serving_refusal(settings: Settings, champion: ModelVersionInfo | None) -> str | None:
    """Why serving would refuse ``champion`` (see :func:`attestation.verify_current`), or None."""
    if champion is None:
        return None
    try:
        attestation.verify_current(settings, champion.name, champion.version, champion.tags)
    except UnsignedVersionError as err:
        return str(err)
    return None


def _version_status(v: ModelVersionInfo, aliases: dict[str, str]) -> VersionStatus:
    t = v.tags
    gates = t.get(tags.PROMOTION_GATES)
    return VersionStatus(
        version=v.version,
        aliases=sorted({*v.aliases, *(a for a, n in aliases.items() if n == v.version)}),
        status=t.get(tags.PROMOTION_STATUS, ""),
        reasons=t.get(tags.PROMOTION_REASONS, ""),
        promoted_at=t.get(tags.PROMOTED_AT, ""),
        decided_by=t.get(tags.PROMOTION_DECIDED_BY, ""),
        dataset=t.get(tags.DATASET, ""),
        data_hash=t.get(tags.DATA_HASH, ""),
        suite_passed=t.get(tags.SUITE_PASSED, ""),
        run_id=v.run_id,
        created=datetime.fromtimestamp(v.created_ms / 1000, UTC).isoformat(timespec="seconds"),
        gates=[GateResult(**g) for g in json.loads(gates)] if gates else [],
    )


def default_decider() -> str:
    """Who decided, when a person runs the CLI: the OS user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user} (cli)"
