"""Flow ``retrain``: guardrails, new training rows, then data -> train -> promote.

Started by the drift flow (as a subflow) when a drift policy is violated, or
by hand. The guardrails (:mod:`aipaas.monitoring.retrain`: cooldown, daily cap,
suggest-only) decide first; then labelled feedback goes to
``data/incoming/<dataset>/`` and the same data, train and promote flows as
the lifecycle run, through the same suite and the same gates. Every
decision and its outcome is recorded with reasons in
``<home>/retrain/history.jsonl``; serving swaps to a promoted version by
itself.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from aipaas.exceptions import AipaasError, GateFailedError
from aipaas.modeldef import load_definition
from aipaas.monitoring import retrain
from aipaas.settings import get_settings


@task(name="check guardrails")
def check_guardrails(model: str) -> retrain.GuardrailVerdict:
    return retrain.check(get_settings(), model)


@task(name="count retrain")
def count_retrain(model: str) -> None:
    retrain.record_start(get_settings(), model)


@task(name="export feedback")
def export_feedback(model: str) -> dict[str, Any]:
    settings = get_settings()
    path, rows = retrain.export_feedback(settings, load_definition(model, settings.models_dir))
    return {"file": str(path) if path else None, "rows": rows}


@task(name="dataset of model")
def dataset_of(model: str) -> str:
    settings = get_settings()
    return load_definition(model, settings.models_dir).dataset


@task(name="record decision")
def record_decision(model: str, decision: dict[str, Any]) -> dict[str, Any]:
    retrain.record_decision(get_settings(), model, decision)
    return decision


@flow(name="retrain", persist_result=True, log_prints=True)
def retrain_flow(model: str = "diagnosis", reason: str = "requested") -> dict[str, Any]:
    """Retrain ``model`` on its data plus labelled feedback, if the guardrails allow."""
    logger = get_run_logger()
    verdict = check_guardrails(model)
    base = {"model": model, "reason": reason, "guardrails": list(verdict.reasons)}
    if not verdict.allowed:
        action = "suggested" if verdict.suggest_only else "skipped"
        logger.info("retrain of %s %s: %s", model, action, " ".join(verdict.reasons))
        return record_decision(model, {**base, "action": action})
    # Imported here: a refused retrain needs none of the pipeline's flows.
    from flows.data import data_flow
    from flows.promote import promote_flow
    from flows.train import train_flow

    count_retrain(model)
    exported = export_feedback(model)
    dataset = dataset_of(model)
    try:
        version = data_flow(dataset)
        trained = train_flow(model)
        promoted = promote_flow(model, str(trained["version"]))
    except GateFailedError as err:
        return record_decision(
            model,
            {**base, "action": "retrained", "outcome": "rejected", "feedback": exported,
             "error": str(err)},
        )  # fmt: skip
    except AipaasError as err:
        record_decision(
            model, {**base, "action": "retrained", "outcome": "failed", "error": str(err)}
        )
        raise
    return record_decision(
        model,
        {
            **base,
            "action": "retrained",
            "outcome": promoted.get("result", "promoted"),
            "feedback": exported,
            "dataset": version,
            "version": promoted.get("version"),
        },
    )
